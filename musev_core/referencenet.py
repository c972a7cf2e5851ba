"""ReferenceNet fusion (spec §4.3): ``ReferEmbFuseAttention``.

Queries are the main UNet's tokens; keys/values are ``[reference tokens ; own tokens]``
(reference first), no input norm, residual.  The reference features themselves come from an
SD1.5 encoder+middle run at timestep 0 (spec §4.1-4.2), which the host runs on its own UNet code.
"""
import torch

from .attention import AttentionProjections, sdpa_attention

N_REFERENCE_FEATURES = 13   # conv_in output, 11 down-path skips, mid block output


def feature_tokens(feature):
    """(1, C, n_ref, h, w) or (1, C, h, w) reference feature -> (1, n_ref·h·w, C) tokens."""
    if feature.ndim == 4:
        feature = feature[:, :, None]
    b, c = feature.shape[:2]
    return feature.reshape(b, c, -1).transpose(1, 2)


class ReferEmbFuseAttention(AttentionProjections):
    def project_reference(self, tokens):
        """``(k, v)``, each (n, Lr, C): the reference tokens' keys/values.  The same for every call of
        a sampling run, so callers compute them once per run (see ``CallContext``)."""
        return self.to_k(tokens), self.to_v(tokens)

    def fuse(self, x, ref_kv, attn_fn=sdpa_attention):
        """``x``: (rows, C, h, w); ``ref_kv``: ``[(start, stop, k, v)]``, row ranges covering every row
        with the projected reference keys/values (Lr, C) of their sample (:meth:`project_reference`).
        Returns ``x + attn``: keys/values ``[reference ; own tokens]`` (reference first, MuseV's order).
        The reference part is written straight into the key/value buffers (no per-row gather)."""
        rows, c, h, w = x.shape
        tokens = x.reshape(rows, c, h * w).transpose(1, 2).contiguous()   # one copy, read by q, k and v
        q = self.to_q(tokens)
        lr = ref_kv[0][2].shape[0]
        kv = []
        for proj, which in ((self.to_k, 2), (self.to_v, 3)):
            own = proj(tokens)
            buf = own.new_empty((rows, lr + own.shape[1], own.shape[2]))
            buf[:, lr:] = own
            for item in ref_kv:
                buf[item[0]:item[1], :lr] = item[which]
            kv.append(buf)
        out = self.to_out[0](attn_fn(q, kv[0], kv[1], self.heads))
        return x + out.transpose(1, 2).reshape(rows, c, h, w)


# ------------------------------------------------------------------------------------------------
# The ReferenceNet checkpoint: an SD1.5-shaped encoder + middle (diffusers names), spec §4.1

class ReferenceNetCheckpointError(ValueError):
    """A file that is not a usable ReferenceNet; the message says what it is."""


class ReferenceNetGeometry:
    """Architecture of a ReferenceNet, read from its WEIGHT SHAPES (a released ``config.json``
    records diffusers' defaults, not the construction arguments): channels, layers per level,
    which levels have cross-attention and how deep, context width, projection kind."""

    def __init__(self, sd, heads=8):
        def need(key):
            if key not in sd:
                raise ReferenceNetCheckpointError(f"ReferenceNet weights lack {key!r}: the file is incomplete")
            return sd[key]

        conv_in = need("conv_in.weight")
        self.in_channels = int(conv_in.shape[1])
        self.model_channels = int(conv_in.shape[0])
        levels = sorted({int(k.split(".")[1]) for k in sd if k.startswith("down_blocks.")})
        if not levels or levels != list(range(len(levels))):
            raise ReferenceNetCheckpointError(f"ReferenceNet weights have down levels {levels}, expected 0..n")
        self.levels = len(levels)
        self.layers = []
        self.block_out_channels = []
        self.attn_depth = []
        context_dims = set()
        linear = set()
        for i in levels:
            res = sorted({int(k.split(".")[3]) for k in sd if k.startswith(f"down_blocks.{i}.resnets.")})
            if not res:
                raise ReferenceNetCheckpointError(f"ReferenceNet down level {i} has no resnets")
            self.layers.append(len(res))
            self.block_out_channels.append(int(need(f"down_blocks.{i}.resnets.0.conv2.weight").shape[0]))
            self.attn_depth.append(self._depth(sd, f"down_blocks.{i}.attentions.0.", context_dims, linear))
            if i < self.levels - 1 and f"down_blocks.{i}.downsamplers.0.conv.weight" not in sd:
                raise ReferenceNetCheckpointError(f"ReferenceNet down level {i} has no downsampler: not an SD-style UNet")
        self.mid_depth = self._depth(sd, "mid_block.attentions.0.", context_dims, linear)
        need("mid_block.resnets.1.conv2.weight")
        if len(context_dims) != 1:
            raise ReferenceNetCheckpointError(
                f"ReferenceNet cross-attention widths {sorted(context_dims)}: expected one context width")
        self.context_dim = context_dims.pop()
        if len(linear) > 1:
            raise ReferenceNetCheckpointError("ReferenceNet mixes linear and convolutional transformer projections")
        self.linear_projection = bool(linear and linear.pop())
        t1 = need("time_embedding.linear_1.weight")
        if tuple(t1.shape) != (4 * self.model_channels, self.model_channels):
            raise ReferenceNetCheckpointError(
                f"ReferenceNet time embedding is {tuple(t1.shape)}, expected ({4 * self.model_channels}, "
                f"{self.model_channels}) for an SD-style UNet")
        for c in self.block_out_channels:
            if c % self.model_channels:
                raise ReferenceNetCheckpointError(
                    f"ReferenceNet channels {self.block_out_channels} are not multiples of {self.model_channels}")
        self.heads = heads
        self.has_up_path = any(k.startswith(("up_blocks.", "conv_out.", "conv_norm_out.")) for k in sd)

    @staticmethod
    def _depth(sd, prefix, context_dims, linear):
        blocks = {int(k[len(prefix):].split(".")[1]) for k in sd if k.startswith(prefix + "transformer_blocks.")}
        if not blocks:
            return 0
        context_dims.add(int(sd[prefix + "transformer_blocks.0.attn2.to_k.weight"].shape[1]))
        linear.add(sd[prefix + "proj_in.weight"].ndim == 2)
        return len(blocks)

    def heads_per_level(self):
        h = self.heads
        if isinstance(h, int):
            return [h] * self.levels
        h = [int(v) for v in h]
        if len(h) != self.levels:
            raise ReferenceNetCheckpointError(f"attention_head_dim {h} does not list {self.levels} levels")
        return h

    def feature_channels(self):
        """Channels of the 13 features: conv_in, every down layer and downsampler, the mid block."""
        out = [self.model_channels]
        for i, c in enumerate(self.block_out_channels):
            out += [c] * self.layers[i]
            if i < self.levels - 1:
                out.append(c)
        out.append(self.block_out_channels[-1])
        return out

    def describe(self):
        return (f"channels {self.block_out_channels}, {self.layers[0]} layers per level, context "
                f"{self.context_dim}-d, {self.heads} heads")
