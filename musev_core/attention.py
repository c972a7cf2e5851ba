"""Default attention kernel and the ``ops`` namespace used when no host provides its own."""
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


class AttentionProjections(torch.nn.Module):
    """``to_q``/``to_k``/``to_v`` (no bias) and ``to_out.0`` (bias), diffusers' key names."""

    def __init__(self, dim, heads, ops=DEFAULT_OPS, dtype=None, device=None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.to_q = ops.Linear(dim, dim, bias=False, dtype=dtype, device=device)
        self.to_k = ops.Linear(dim, dim, bias=False, dtype=dtype, device=device)
        self.to_v = ops.Linear(dim, dim, bias=False, dtype=dtype, device=device)
        self.to_out = torch.nn.ModuleList([ops.Linear(dim, dim, bias=True, dtype=dtype, device=device)])

    def forward(self, x, context=None, attn_fn=sdpa_attention):
        context = x if context is None else context
        out = attn_fn(self.to_q(x), self.to_k(context), self.to_v(context), self.heads)
        return self.to_out[0](out)
