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


# ------------------------------------------------------------------------------------------------
# Image-projection checkpoints

IMAGE_PROJ_KEYS = ("proj.weight", "proj.bias", "norm.weight", "norm.bias")


class ImageProjError(ValueError):
    """A file that is not (or not a usable) MuseV / IP-Adapter image projection; says what it is."""


def _strip(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def image_proj_weights(sd):
    """The plain ``ImageProjModel`` state dict (``proj.*``, ``norm.*``) of a checkpoint: MuseV's
    released container (``{"image_proj": sd}``, flattened to ``image_proj.*``), a tencent-ailab
    ``ip-adapter_sd15.bin`` (``image_proj`` + ``ip_adapter``; the latter is not used, MuseV's
    ``to_k_ip``/``to_v_ip`` live in the motion UNet) or plain keys.  Raises :class:`ImageProjError`
    naming what the file is otherwise."""
    keys = set(sd)
    if any(k.startswith("image_proj.") for k in keys):
        proj = _strip(sd, "image_proj.")
    else:
        proj = dict(sd)
    for wrapper in ("module.", "model."):
        if proj and all(k.startswith(wrapper) for k in proj):
            proj = _strip(proj, wrapper)
    pk = set(proj)
    if set(IMAGE_PROJ_KEYS) <= pk and proj["proj.weight"].ndim == 2:
        extra = sorted(pk - set(IMAGE_PROJ_KEYS))
        if extra:
            raise ImageProjError(f"unexpected image-projection keys {extra[:4]}: not a plain IP-Adapter ImageProjModel")
        return proj
    if "latents" in pk or any(k.startswith(("proj_in.", "layers.")) for k in pk):
        raise ImageProjError(
            "this is an IP-Adapter Plus projection (Resampler on CLIP hidden states), not the plain image "
            "projection MuseV was trained with")
    if {"proj.0.weight", "proj.2.weight"} <= pk:
        raise ImageProjError("this is an IP-Adapter-FaceID file (InsightFace face embeddings): load it with the "
                             "MuseVFaceID node")
    raise ImageProjError(f"no image-projection weights (proj.weight / norm.weight) among {len(keys)} keys "
                         f"(e.g. {sorted(keys)[:3]})")


def describe_image_proj(model):
    """``"<clip_dim> -> <tokens> x <cross_dim>"`` for messages."""
    return f"{model.clip_dim}-d image embeds -> {model.tokens} tokens x {model.cross_dim}"
