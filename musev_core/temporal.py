"""MuseV's temporal layers (spec §2.3, §2.4) and its frame embedding (§2.1 step 2).

Inside a UNet call the layers see ``x`` of shape ``(rows, C, h, w)``; :func:`per_segment` cuts
it into video samples (see :mod:`.layout`) and hands each group ``(S, T, C, h, w)`` to the layer.
"""
import math

import torch
import torch.nn.functional as F

from .attention import DEFAULT_OPS, AttentionProjections, sdpa_attention


def sinusoid(positions, dim, max_period=10000):
    """diffusers ``Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)``: [cos | sin]."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / half
    args = positions[:, None].float() * torch.exp(exponent)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class FrameEmbedding(torch.nn.Module):
    """``frame_embedding.linear_1/linear_2``: sinusoid(frame index) -> Linear, SiLU, Linear."""

    def __init__(self, in_dim, out_dim, ops=DEFAULT_OPS, dtype=None, device=None):
        super().__init__()
        self.in_dim = in_dim
        self.linear_1 = ops.Linear(in_dim, out_dim, dtype=dtype, device=device)
        self.linear_2 = ops.Linear(out_dim, out_dim, dtype=dtype, device=device)

    @staticmethod
    def frame_indices(frames, frame_rate=None, device=None):
        """Window-relative indices 0..T-1; × frame rate (truncated to int) for the referencenet family."""
        idx = torch.arange(frames, dtype=torch.long, device=device)
        if frame_rate is not None:
            idx = (idx * float(frame_rate)).to(torch.long)
        return idx

    def forward(self, frames, frame_rate=None, extra_silu=False, device=None, dtype=None):
        """(T, out_dim) embedding of a T-frame window.  ``extra_silu``: MuseV's anivv1 SiLU."""
        device = device if device is not None else self.linear_1.weight.device
        pos = self.frame_indices(frames, frame_rate, device)
        emb = sinusoid(pos, self.in_dim).to(dtype or self.linear_1.weight.dtype)
        emb = self.linear_2(F.silu(self.linear_1(emb)))
        return F.silu(emb) if extra_silu else emb


class _TimeConvForward:
    """Mixin for an ``ops.Conv3d`` with a ``(k, 1, 1)`` kernel: the convolution itself runs as a 2-D
    convolution over ``(T, h·w)`` (the same sums; PyTorch's CPU conv3d kernel takes about twice as
    long for this shape).  Only ``_conv_forward`` is replaced, so the weights stay 5-D (state dict
    unchanged) and the host's casting / offloading in ``forward`` is untouched."""

    def _conv_forward(self, input, weight, bias, *args, **kwargs):
        if (args or kwargs.get("autopad") is not None or input.ndim != 5 or weight.ndim != 5
                or tuple(weight.shape[-2:]) != (1, 1) or self.padding_mode != "zeros"
                or not isinstance(self.padding, tuple) or tuple(self.padding[1:]) != (0, 0)
                or tuple(self.stride[1:]) != (1, 1) or tuple(self.dilation[1:]) != (1, 1)):
            return super()._conv_forward(input, weight, bias, *args, **kwargs)
        n, c, t, h, w = input.shape
        out = F.conv2d(input.reshape(n, c, t, h * w), weight.squeeze(-1), bias, (self.stride[0], 1),
                       (self.padding[0], 0), (self.dilation[0], 1), self.groups)
        return out.reshape(n, out.shape[1], out.shape[2], h, w)


_TIME_CONV_CLASSES = {}


def time_conv_class(conv3d):
    """``conv3d`` (``torch.nn.Conv3d`` or a host's ops class) with :class:`_TimeConvForward`."""
    cls = _TIME_CONV_CLASSES.get(conv3d)
    if cls is None:
        cls = type(f"TimeConv{conv3d.__name__}", (_TimeConvForward, conv3d), {"__module__": __name__})
        _TIME_CONV_CLASSES[conv3d] = cls
    return cls


class TemporalConvLayer(torch.nn.Module):
    """Four stacked (GroupNorm32, SiLU, Conv3d (3,1,1)) over time; ``x + |w| * h``.

    Keys: ``conv1.0`` (norm), ``conv1.2`` (conv), ``conv{2,3,4}.0`` / ``.3``, ``temporal_weight``."""

    def __init__(self, channels, ops=DEFAULT_OPS, dtype=None, device=None):
        super().__init__()
        self.channels = channels
        conv3d = time_conv_class(ops.Conv3d)

        def stage(conv_index):
            layers = [ops.GroupNorm(32, channels, eps=1e-5, dtype=dtype, device=device), torch.nn.SiLU()]
            if conv_index == 3:
                layers.append(torch.nn.Dropout(0.0))
            layers.append(conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0), dtype=dtype, device=device))
            return torch.nn.Sequential(*layers)

        self.conv1 = stage(2)
        self.conv2 = stage(3)
        self.conv3 = stage(3)
        self.conv4 = stage(3)
        self.temporal_weight = torch.nn.Parameter(torch.empty(1, dtype=dtype, device=device))

    def forward(self, x):
        """``x``: (S, T, C, h, w) -> same shape."""
        identity = x
        h = x.permute(0, 2, 1, 3, 4)          # S C T h w
        h = self.conv4(self.conv3(self.conv2(self.conv1(h))))
        h = h.permute(0, 2, 1, 3, 4)
        return torch.addcmul(identity, self.temporal_weight.abs().to(device=h.device, dtype=h.dtype), h)


class GEGLUFeedForward(torch.nn.Module):
    """diffusers ``FeedForward(activation_fn="geglu")``: keys ``net.0.proj`` and ``net.2``."""

    def __init__(self, dim, mult=4, ops=DEFAULT_OPS, dtype=None, device=None):
        super().__init__()
        inner = dim * mult
        proj = torch.nn.Module()
        proj.proj = ops.Linear(dim, inner * 2, dtype=dtype, device=device)
        self.net = torch.nn.ModuleList([proj, torch.nn.Dropout(0.0), ops.Linear(inner, dim, dtype=dtype, device=device)])

    def forward(self, x):
        value, gate = self.net[0].proj(x).chunk(2, dim=-1)
        return self.net[2](value * F.gelu(gate))


class TemporalBlock(torch.nn.Module):
    """MuseV's temporal BasicTransformerBlock: two self-attentions and a GEGLU feed-forward.

    LayerNorm eps follows MuseV exactly: norm1/norm3 eps 0 (a positional-argument slip in MuseV),
    norm2 eps 1e-5."""

    def __init__(self, dim, heads, ops=DEFAULT_OPS, dtype=None, device=None):
        super().__init__()
        self.norm1 = ops.LayerNorm(dim, eps=0.0, dtype=dtype, device=device)
        self.attn1 = AttentionProjections(dim, heads, ops, dtype, device)
        self.norm2 = ops.LayerNorm(dim, eps=1e-5, dtype=dtype, device=device)
        self.attn2 = AttentionProjections(dim, heads, ops, dtype, device)
        self.norm3 = ops.LayerNorm(dim, eps=0.0, dtype=dtype, device=device)
        self.ff = GEGLUFeedForward(dim, ops=ops, dtype=dtype, device=device)

    def forward(self, x, attn_fn=sdpa_attention):
        x = x + self.attn1(self.norm1(x), attn_fn=attn_fn)
        x = x + self.attn2(self.norm2(x), attn_fn=attn_fn)
        return x + self.ff(self.norm3(x))


class TemporalTransformer(torch.nn.Module):
    """MuseV ``TransformerTemporalModel`` (one block, double self-attention, GEGLU)."""

    def __init__(self, channels, heads, femb_dim, ops=DEFAULT_OPS, dtype=None, device=None):
        super().__init__()
        self.channels = channels
        self.heads = heads
        self.norm = ops.GroupNorm(32, channels, eps=1e-6, affine=True, dtype=dtype, device=device)
        self.proj_in = ops.Linear(channels, channels, dtype=dtype, device=device)
        self.frame_emb_proj = ops.Linear(femb_dim, channels, dtype=dtype, device=device)
        self.transformer_blocks = torch.nn.ModuleList([TemporalBlock(channels, heads, ops, dtype, device)])
        self.proj_out = ops.Linear(channels, channels, dtype=dtype, device=device)
        self.temporal_weight = torch.nn.Parameter(torch.empty(1, dtype=dtype, device=device))

    def forward(self, x, femb, attn_fn=sdpa_attention):
        """``x``: (S, T, C, h, w); ``femb``: (T, femb_dim) -> (S, T, C, h, w)."""
        s, t, c, h, w = x.shape
        # One copy into the transformer's layout (S h w T C); the GroupNorm (stats over C/32, T, h, w)
        # reads it as a channels-last (S, C, h, w, T) tensor, which PyTorch's CPU kernel normalises in
        # place of layout (other devices may copy, as the plain permute did).
        y = x.permute(0, 3, 4, 1, 2).contiguous()                # S h w T C
        y = self.norm(y.permute(0, 4, 1, 2, 3))                  # (S, C, h, w, T) view
        y = y.permute(0, 2, 3, 4, 1).reshape(s * h * w, t, c)     # (S h w) T C
        y = self.proj_in(y)
        y = y + self.frame_emb_proj(F.silu(femb.to(y.dtype)))[None]
        for block in self.transformer_blocks:
            y = block(y, attn_fn=attn_fn)
        y = self.proj_out(y)
        y = y.reshape(s, h, w, t, c).permute(0, 3, 4, 1, 2)      # S T C h w
        return torch.addcmul(x, self.temporal_weight.abs().to(device=y.device, dtype=y.dtype), y)


def per_segment(layout, x, fn):
    """Run ``fn((S, T, C, h, w), frames) -> same`` on every group of equal-length segments of
    ``x`` (rows, C, h, w) and return the re-assembled (rows, C, h, w) tensor."""
    rows = x.shape[0]
    groups = layout.frame_groups()
    if len(groups) == 1 and groups[0][2] is None:
        frames, n_seg, _ = groups[0]
        return fn(x.reshape(n_seg, frames, *x.shape[1:]), frames).reshape(rows, *x.shape[1:])
    out = torch.empty_like(x)
    for frames, n_seg, idx in groups:
        idx = idx.to(x.device)
        y = fn(x[idx.reshape(-1)].reshape(n_seg, frames, *x.shape[1:]), frames)
        out[idx.reshape(-1)] = y.reshape(n_seg * frames, *x.shape[1:])
    return out
