"""The MuseV motion model: every module MuseV adds to an SD1.5 UNet, under MuseV's own diffusers
key names, built from the shapes found in a checkpoint, plus what one UNet call needs to run them.
"""
from dataclasses import dataclass, field

import torch

from . import keys as K
from .attention import DEFAULT_OPS, sdpa_attention
from .ip_adapter import IPKeyValue, decoupled_cross_attention
from .reference_only import extend_self_attention_context
from .referencenet import ReferEmbFuseAttention, feature_tokens
from .temporal import FrameEmbedding, TemporalConvLayer, TemporalTransformer, per_segment


class MotionCheckpointError(ValueError):
    """A motion checkpoint that does not fit; the message names the problem and the fix."""


@dataclass(frozen=True)
class VariantFlags:
    """What is on for each released model family (spec §2.8)."""
    name: str
    transformer_in: bool
    anivv1: bool                 # SiLU after time/frame embedding, frame index × frame rate
    keep_vision_condition: bool  # zero timestep embedding on vision frames
    refer_fusion: bool
    ip_cross_attn: bool
    default_frame_rate: float = 8.0


VARIANTS = {
    K.VARIANT_MUSEV: VariantFlags(K.VARIANT_MUSEV, True, False, False, False, False),
    K.VARIANT_REFERENCENET_FAMILY: VariantFlags(K.VARIANT_REFERENCENET_FAMILY, False, True, True, True, True),
}


def _set_module(root, path, module):
    parts = path.split(".")
    parent = root
    for p in parts[:-1]:
        child = parent._modules.get(p)
        if child is None:
            child = torch.nn.Module()
            parent.add_module(p, child)
        parent = child
    parent.add_module(parts[-1], module)


def _heads_for(prefix, heads, n_levels):
    if isinstance(heads, int):
        return heads
    heads = list(heads)
    if len(heads) < n_levels:
        raise MotionCheckpointError(f"attention_head_dim {heads} lists {len(heads)} levels, the checkpoint has {n_levels}")
    if prefix.startswith(("down_blocks.", "up_blocks.")):
        level = int(prefix.split(".")[1])
        return heads[level] if prefix.startswith("down_blocks.") else list(reversed(heads))[level]
    if prefix.startswith(("mid_block", "mid_block_refer_emb_attns")):
        return heads[-1]
    return heads[0]


class MuseVMotionModel(torch.nn.Module):
    """Holds temporal convs/transformers, ``transformer_in``, ``frame_embedding``, IP ``to_k_ip``/
    ``to_v_ip`` and ReferenceNet fusion attentions under MuseV's key names."""

    def __init__(self, variant, prefixes_with_shapes, heads, layers=2, ops=DEFAULT_OPS, dtype=None, device=None):
        super().__init__()
        self.variant = variant
        self.flags = VARIANTS[variant]
        self.layers = layers
        self.heads = heads
        self.placements = []
        self.ip_prefixes = []
        n_levels = 1 + max([int(p.split(".")[1]) for p in prefixes_with_shapes if p.startswith("down_blocks.")] or [3])
        self.n_levels = n_levels
        femb_dim = None
        for prefix, shape_info in sorted(prefixes_with_shapes.items()):
            if prefix == "frame_embedding":
                in_dim, out_dim = shape_info
                _set_module(self, prefix, FrameEmbedding(in_dim, out_dim, ops, dtype, device))
                femb_dim = out_dim
                continue
            if prefix.endswith(".attn2"):
                channels, cross = shape_info
                _set_module(self, prefix, IPKeyValue(channels, cross, ops, dtype, device))
                self.ip_prefixes.append(prefix)
                continue
            place = K.placement(prefix, layers, n_levels)
            if place is None:
                raise MotionCheckpointError(f"no place for MuseV module {prefix!r}")
            h = _heads_for(prefix, heads, n_levels)
            if place.kind == "temp_conv":
                mod = TemporalConvLayer(shape_info[0], ops, dtype, device)
            elif place.kind == "temp_attn":
                channels, fdim = shape_info
                mod = TemporalTransformer(channels, h, fdim, ops, dtype, device)
            else:
                mod = ReferEmbFuseAttention(shape_info[0], h, ops, dtype, device)
            mod.musev_key = prefix
            mod.musev_kind = place.kind
            _set_module(self, prefix, mod)
            self.placements.append(place)
        if femb_dim is None and any(p.kind == "temp_attn" for p in self.placements):
            raise MotionCheckpointError("motion checkpoint has temporal transformers but no frame_embedding.* weights")
        self.femb_dim = femb_dim

    # ---------------------------------------------------------------------------------------
    @staticmethod
    def inspect(sd):
        """``(variant, {prefix: shape info})`` from a MuseV UNet3D state dict (2D keys ignored)."""
        sd = K.strip_common_prefix(sd)
        kind = K.describe_keys(sd.keys())
        if kind not in VARIANTS:
            raise MotionCheckpointError(_kind_message(kind))
        shapes = {}
        for prefix in K.module_prefixes(sd.keys()):
            try:
                if prefix == "frame_embedding":
                    w = sd["frame_embedding.linear_1.weight"]
                    shapes[prefix] = (w.shape[1], w.shape[0])
                elif prefix.endswith(".attn2"):
                    w = sd[prefix + ".to_k_ip.weight"]
                    shapes[prefix] = (w.shape[0], w.shape[1])
                elif ".temp_convs." in prefix:
                    shapes[prefix] = (sd[prefix + ".conv1.2.weight"].shape[0],)
                elif ".temp_attentions." in prefix or prefix == "transformer_in":
                    w = sd[prefix + ".frame_emb_proj.weight"]
                    shapes[prefix] = (w.shape[0], w.shape[1])
                else:
                    shapes[prefix] = (sd[prefix + ".to_q.weight"].shape[0],)
            except KeyError as e:
                raise MotionCheckpointError(
                    f"motion checkpoint is incomplete: module {prefix!r} lacks {e.args[0]!r}; "
                    "the file is damaged or not a MuseV release: download it again") from None
        return kind, shapes

    @classmethod
    def from_state_dict(cls, sd, heads=8, layers=2, ops=DEFAULT_OPS, dtype=None, device=None, strict=True):
        sd = K.strip_common_prefix(sd)
        variant, shapes = cls.inspect(sd)
        model = cls(variant, shapes, heads, layers, ops, dtype, device)
        motion_sd = {k: v for k, v in sd.items() if K.is_motion_key(k)}
        expected = set(model.state_dict().keys())
        missing = sorted(expected - set(motion_sd))
        unexpected = sorted(set(motion_sd) - expected)
        if strict and (missing or unexpected):
            raise MotionCheckpointError(
                f"motion checkpoint does not match MuseV's layout: {len(missing)} missing "
                f"({missing[:3]}...) and {len(unexpected)} unexpected ({unexpected[:3]}...) keys")
        try:
            model.load_state_dict(motion_sd, strict=strict)
        except RuntimeError as e:
            raise MotionCheckpointError(f"motion checkpoint shapes are inconsistent: {str(e)[:400]}") from None
        return model

    def coverage_report(self, sd):
        """Key coverage of a checkpoint: counts of 2D (ignored), motion, missing and unused keys."""
        sd = K.strip_common_prefix(sd)
        motion = {k for k in sd if K.is_motion_key(k)}
        expected = set(self.state_dict().keys())
        return {
            "total": len(sd),
            "ignored_2d": len(sd) - len(motion) - sum(1 for k in sd if K.is_face_key(k)),
            "ignored_face": sum(1 for k in sd if K.is_face_key(k)),
            "motion": len(motion),
            "missing": sorted(expected - motion),
            "unused": sorted(motion - expected),
        }

    def ref_index(self, key):
        """Which of the 13 ReferenceNet features the fusion module ``key`` takes."""
        table = self.__dict__.get("_ref_index_table")
        if table is None:
            table = self.__dict__["_ref_index_table"] = {p.key: p.ref_index for p in self.placements}
        return table[key]

    def module_at(self, prefix):
        mod = self
        for p in prefix.split("."):
            mod = mod._modules[p]
        return mod

    def injected_modules(self):
        """``[(placement, module)]`` in a deterministic order."""
        return [(p, self.module_at(p.key)) for p in self.placements]


def _kind_message(kind):
    return {
        K.KIND_REFERENCENET: "this is a MuseV ReferenceNet checkpoint (motion/musev_referencenet/referencenet), "
                             "not a motion UNet: load it with the MuseVReferenceNet node",
        K.KIND_FACEID: "this is an IP-Adapter-FaceID file (ip-adapter-faceid_sd15.bin), not a motion UNet: load it "
                       "with the MuseVFaceID node",
        K.KIND_IMAGE_PROJ: "this is an IP-Adapter image projection (ip_adapter_image_proj.bin), not a motion UNet: "
                           "load it with the MuseVIPAdapter node",
        "ldm_checkpoint": "this is a full Stable Diffusion checkpoint: load it with Load Checkpoint and pick a MuseV "
                          "motion file (motion/<variant>/unet) here",
        "diffusers_unet2d": "this is a plain 2D diffusers UNet without MuseV temporal layers: pick "
                            "motion/musev*/unet/diffusion_pytorch_model.*",
        "animatediff": "this is an AnimateDiff motion module, not MuseV: use AnimateDiff-Evolved for it",
        "inconsistent": "this checkpoint mixes the musev and musev_referencenet layouts: it is not a MuseV release",
    }.get(kind, "this file holds no MuseV temporal layers (no temp_convs / temp_attentions keys): pick a MuseV "
                "motion checkpoint (motion/musev, motion/musev_referencenet or motion/musev_referencenet_pose)")


# ---------------------------------------------------------------------------------------------
# One UNet call

@dataclass
class CallContext:
    """Everything MuseV's layers need during one UNet call."""
    motion: MuseVMotionModel
    layout: object                     # layout.CallLayout
    frame_rate: float = 8.0
    temporal: bool = True
    refer: dict = None                 # role -> list of reference features (1, C, n_ref, h, w)
    ip_tokens: dict = None             # role -> (1, n_tok, cross_dim)
    ip_scale: float = 1.0
    face: object = None                # faceid.FaceCall (IP-Adapter-FaceID term) or None
    attn_fn: object = sdpa_attention
    # Per-run store (one dict per device, kept by the host for a whole sampling run) of what is the
    # same for every call: frame embeddings, the ReferenceNet K/V of the 13 fusions, the IP K/V.
    # None: computed once per call (a call outside a sampling run).
    constants: dict = None
    # Every guidance chunk's rows share one text context (the host said so): the text/IP attention
    # of attn2 runs once per chunk with the chunk's rows folded into the query sequence, and the
    # host may hand over one text row per chunk (``reduce_text_context``, blocks in ``fold_blocks``).
    text_fold: bool = False
    fold_blocks: frozenset = frozenset()
    _local: dict = field(default_factory=dict)

    def constant(self, key, sources, build):
        """``build()`` computed once and reused (per run when ``constants`` is given, else per call)
        for as long as ``sources`` are the very same objects (the providers hand out the same
        tensors for a whole run; anything else is recomputed)."""
        store = self._local if self.constants is None else self.constants
        hit = store.get(key)
        if hit is not None and len(hit[0]) == len(sources) and all(a is b for a, b in zip(hit[0], sources)):
            return hit[1]
        value = build()
        store[key] = (tuple(sources), value)
        return value

    # -- frame embedding -----------------------------------------------------------------
    def femb(self, frames, device, dtype):
        flags = self.motion.flags
        rate = self.frame_rate if flags.anivv1 else None
        key = ("femb", id(self.motion), frames, rate, str(device), dtype)
        return self.constant(key, (), lambda: self.motion.frame_embedding(
            frames, rate, extra_silu=flags.anivv1, device=device, dtype=dtype))

    # -- injected modules ------------------------------------------------------------------
    def run_injected(self, module, x):
        kind = module.musev_kind
        if kind == "temp_conv":
            if not self.temporal:
                return x
            return per_segment(self.layout, x, lambda s, frames: module(s))
        if kind == "temp_attn":
            if not self.temporal:
                return x
            return per_segment(self.layout, x, lambda s, frames: module(
                s, self.femb(frames, x.device, x.dtype), attn_fn=self.attn_fn))
        if kind == "refer_fuse":
            if not self.refer:
                return x
            return module.fuse(x, self._ref_kv(module, x), attn_fn=self.attn_fn)
        raise ValueError(kind)

    def _ref_kv(self, module, x):
        """``[(start, stop, k, v)]`` for the fusion ``module``: every run of rows of one guidance role
        with the projected reference tokens (Lr, C) of that role (computed once per run)."""
        idx = self.motion.ref_index(module.musev_key)
        per_role = {}
        for role in self.layout.roles():
            feats = self.refer.get(role)
            if feats is None:
                raise ValueError(f"ReferenceNet features are missing for guidance role {role}")
            feat = feats[idx]

            def project(feat=feat):
                tokens = feature_tokens(feat).to(device=x.device, dtype=x.dtype)
                if tokens.shape[-1] != x.shape[1]:
                    raise ValueError(
                        f"ReferenceNet feature {idx} has {tokens.shape[-1]} channels where the UNet has "
                        f"{x.shape[1]}: the ReferenceNet does not belong to this base model")
                k, v = module.project_reference(tokens)
                return k[0], v[0]
            key = ("refer_kv", id(module), role, str(x.device), x.dtype)
            per_role[role] = self.constant(key, (feat,), project)
        return [(start, stop) + per_role[role] for start, stop, role in self.layout.role_runs()]

    # -- attention patches -----------------------------------------------------------------
    def reference_only_context(self, n):
        return extend_self_attention_context(n, self.layout)

    def reduce_text_context(self, block, context, value):
        """attn2 K/V inputs of ``block`` with one row per guidance chunk (when the chunks' rows share a
        text context and this block's attn2 is MuseV's, which expands them): the host then projects
        ``chunks`` rows instead of ``rows``.  Unchanged otherwise."""
        if not self.text_fold or block not in self.fold_blocks or context is None or context.shape[0] != self.layout.rows:
            return context, value
        starts = self.layout.chunk_starts(context.device)
        reduced = context[starts]
        if value is context:
            return reduced, reduced
        return reduced, (value if value is None or value.shape[0] != self.layout.rows else value[starts])

    def _folded(self, q, k, v):
        """``(q, k, v)`` with the rows of every guidance chunk folded into one query sequence and one
        K/V row per chunk (attention is per query, so the result is the same), or None."""
        lay = self.layout
        if not self.text_fold or not lay.chunks or q.shape[0] != lay.rows or k.shape[0] not in (lay.rows, lay.chunks):
            return None
        if k.shape[0] != lay.chunks:
            starts = lay.chunk_starts(k.device)
            k, v = k[starts], v[starts]
        return q.reshape(lay.chunks, -1, q.shape[-1]), k, v

    def text_attention(self, q, k, v, heads):
        folded = self._folded(q, k, v)
        if folded is None:
            return self.attn_fn(q, k, v, heads)
        return self.attn_fn(*folded, heads).reshape(q.shape[0], q.shape[1], -1)

    def ip_attention(self, prefix, q, k, v, heads):
        if not self.ip_tokens or self.ip_scale == 0:
            return self.text_attention(q, k, v, heads)
        roles = self.layout.roles()
        missing = [r for r in roles if self.ip_tokens.get(r) is None]
        if missing:
            raise ValueError(f"IP-Adapter tokens are missing for guidance role {missing[0]}")
        sources = tuple(self.ip_tokens[r] for r in roles)

        def project():                     # once per run: the image tokens' to_k_ip / to_v_ip
            mod = self.motion.module_at(prefix)
            kk, vv = {}, {}
            for role, tok in zip(roles, sources):
                tok = tok.to(device=q.device, dtype=q.dtype)
                kk[role], vv[role] = mod.to_k_ip(tok)[0], mod.to_v_ip(tok)[0]
            first = next(iter(kk))
            n_roles = max(kk) + 1
            return (torch.stack([kk.get(r, kk[first]) for r in range(n_roles)]),
                    torch.stack([vv.get(r, vv[first]) for r in range(n_roles)]))
        key = ("ip_kv", id(self.motion), prefix, tuple(roles), str(q.device), q.dtype)
        k_all, v_all = self.constant(key, sources, project)
        role_rows = self.layout.row_index("role", q.device)
        if q.shape[0] != role_rows.shape[0]:
            raise ValueError(f"IP attention got {q.shape[0]} rows for a {role_rows.shape[0]}-row layout")
        folded = self._folded(q, k, v)
        if folded is not None:             # one text and one IP attention per guidance chunk
            chunk_roles = self.layout.chunk_roles(q.device)
            out = decoupled_cross_attention(*folded, k_all[chunk_roles], v_all[chunk_roles], heads, self.ip_scale,
                                            self.attn_fn)
            return out.reshape(q.shape[0], q.shape[1], -1)
        return decoupled_cross_attention(q, k, v, k_all[role_rows], v_all[role_rows], heads, self.ip_scale, self.attn_fn)

    def face_attention(self, prefix, q, out, heads):
        """``out`` (text + IP attention, before ``to_out``) plus the FaceID term, added last as MuseV."""
        if self.face is None:
            return out
        return self.face.add(prefix, q, out, heads, self.layout, self.attn_fn)

    def zero_vision_time_embedding(self, emb):
        if not (self.motion.flags.keep_vision_condition and self.layout.uses_vision):
            return emb
        mask = self.layout.row_index("is_vision", emb.device)
        if emb.shape[0] != mask.shape[0]:
            raise ValueError(f"time embedding has {emb.shape[0]} rows for a {mask.shape[0]}-row layout")
        return emb.masked_fill(mask[:, None], 0.0)
