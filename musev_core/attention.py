"""Default attention kernel and the ``ops`` namespace used when no host provides its own.

Precision: ``sdpa_attention`` is PyTorch's fused kernel, which accumulates the scores of half-precision
inputs in float32 (checked on CPU with scores past float16's range: tests/host/test_precision.py), so MuseV's
layers never overflow with it.  Hosts pass their own attention function (``nodes/host.py``
``host_attention``), which must give the same guarantee for every backend it may pick.
"""
import types

import torch
import torch.nn.functional as F

DEFAULT_OPS = types.SimpleNamespace(
    Linear=torch.nn.Linear,
    Conv3d=torch.nn.Conv3d,
    GroupNorm=torch.nn.GroupNorm,
    LayerNorm=torch.nn.LayerNorm,
)


def sdpa_attention(q, k, v, heads):
    """Multi-head attention on ``(B, Lq, heads*d)`` / ``(B, Lk, heads*d)`` tensors, scale d^-0.5."""
    b, lq, inner = q.shape
    d = inner // heads
    q = q.view(b, lq, heads, d).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(b, lq, inner)


class AttentionShapeError(ValueError):
    """An attention width that does not split into the requested number of heads."""


class AttentionProjections(torch.nn.Module):
    """``to_q``/``to_k``/``to_v`` (no bias) and ``to_out.0`` (bias), diffusers' key names."""

    def __init__(self, dim, heads, ops=DEFAULT_OPS, dtype=None, device=None):
        super().__init__()
        if not isinstance(heads, int) or heads < 1 or dim % heads:
            raise AttentionShapeError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = ops.Linear(dim, dim, bias=False, dtype=dtype, device=device)
        self.to_k = ops.Linear(dim, dim, bias=False, dtype=dtype, device=device)
        self.to_v = ops.Linear(dim, dim, bias=False, dtype=dtype, device=device)
        self.to_out = torch.nn.ModuleList([ops.Linear(dim, dim, bias=True, dtype=dtype, device=device)])

    def forward(self, x, context=None, attn_fn=sdpa_attention):
        context = x if context is None else context
        out = attn_fn(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out[0](out)
