"""IP-Adapter pieces of MuseV (spec §3): the image projection and the decoupled attn2 term."""
import torch

from .attention import DEFAULT_OPS, sdpa_attention


class ImageProjModel(torch.nn.Module):
    """tencent-ailab IP-Adapter ``ImageProjModel``: tokens = LayerNorm(reshape(Linear(embed)))."""

    def __init__(self, clip_dim, cross_dim, tokens, ops=DEFAULT_OPS, dtype=None, device=None):
        super().__init__()
        self.clip_dim, self.cross_dim, self.tokens = clip_dim, cross_dim, tokens
        self.proj = ops.Linear(clip_dim, cross_dim * tokens, dtype=dtype, device=device)
        self.norm = ops.LayerNorm(cross_dim, dtype=dtype, device=device)

    @classmethod
    def from_state_dict(cls, sd, ops=DEFAULT_OPS, dtype=None, device=None):
        """Build with the shapes found in an ``image_proj`` state dict."""
        missing = [k for k in ("proj.weight", "proj.bias", "norm.weight", "norm.bias") if k not in sd]
        if missing:
            raise KeyError(f"image projection weights lack {missing}")
        out_dim, clip_dim = sd["proj.weight"].shape
        cross_dim = sd["norm.weight"].shape[0]
        if out_dim % cross_dim:
            raise ValueError(f"image projection: {out_dim} outputs are not a multiple of the token width {cross_dim}")
        model = cls(clip_dim, cross_dim, out_dim // cross_dim, ops, dtype=dtype, device=device)
        model.load_state_dict(sd, strict=True)
        return model

    def forward(self, image_embeds):
        """(n, clip_dim) -> (n, tokens, cross_dim)."""
        x = self.proj(image_embeds).reshape(-1, self.tokens, self.cross_dim)
        return self.norm(x)

    def tokens_for(self, image_embeds):
        """MuseV's CFG pair for n images: ``{cond: (1, n·tokens, C), uncond: proj(zeros)}``."""
        cond = self(image_embeds).reshape(1, -1, self.cross_dim)
        uncond = self(torch.zeros_like(image_embeds)).reshape(1, -1, self.cross_dim)
        return cond, uncond


class IPKeyValue(torch.nn.Module):
    """``to_k_ip`` / ``to_v_ip`` (no bias) of one spatial attn2."""

    def __init__(self, channels, cross_dim, ops=DEFAULT_OPS, dtype=None, device=None):
        super().__init__()
        self.to_k_ip = ops.Linear(cross_dim, channels, bias=False, dtype=dtype, device=device)
        self.to_v_ip = ops.Linear(cross_dim, channels, bias=False, dtype=dtype, device=device)


def decoupled_cross_attention(q, k, v, ip_k, ip_v, heads, scale, attn_fn=sdpa_attention):
    """``Attn(q, k, v) + scale · Attn(q, ip_k, ip_v)`` (before ``to_out``), shared queries."""
    out = attn_fn(q, k, v, heads)
    if ip_k is None or scale == 0:
        return out
    return out + scale * attn_fn(q, ip_k, ip_v, heads)
