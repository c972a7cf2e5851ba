"""musev_core: what MuseV adds to an SD1.5 UNet, in pure torch (no ComfyUI imports).

Modules take an ``ops`` namespace (``Linear``, ``Conv3d``, ``GroupNorm``, ``LayerNorm``; default
``torch.nn``) and an attention function ``attn_fn(q, k, v, heads) -> out`` on ``(B, L, heads*d)``
tensors (default: torch SDPA), so a host can pass its own casting layers and attention kernels.
"""

__all__ = [
    "attention", "checkpoints", "keys", "layout", "temporal", "reference_only", "ip_adapter",
    "referencenet", "motion", "windows", "noise", "sigmas", "pose", "image_prep",
]
