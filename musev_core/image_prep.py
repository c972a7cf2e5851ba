"""MuseV's image preparation rules on tensors (spec §3, §5.1).  Pure torch.

Images here are ComfyUI-style ``(n, H, W, C)`` floats in [0, 1] unless a function says otherwise.

Reference / IP images in MuseV (MMCM ``dynamic_crop_resize_image``):
  1. centre-crop to the target aspect: keep the full height when the image is relatively wider than
     the target, else the full width; the box is computed with ``ceil`` and clamped to
     ``x2 <= w - 1``, ``y2 <= h - 1`` with PIL's exclusive right/bottom edge, so the last column and
     row are always dropped (:func:`crop_box_to_aspect` reproduces this exactly);
  2. PIL LANCZOS resize to the target W×H, 8-bit result (:func:`resize`: PIL's separable filter,
     horizontal pass first, each pass rounded to 8 bits; within one 8-bit level of PIL, whose
     coefficients are fixed-point).

CLIP preprocessing (transformers ``CLIPImageProcessor()`` defaults, used by MMCM's
``ImageClipVisionFeatureExtractor``; :func:`clip_preprocess`): resize the shortest side to 224 with
bicubic (PIL, antialiased), the long side to ``int(224 · long / short)``, centre-crop 224×224 with
``(size - 224) // 2`` offsets, ×1/255 of the 8-bit image, normalise with the OpenAI CLIP mean/std.

ComfyUI's own ``comfy.clip_vision.clip_preprocess(crop=True)`` is the same recipe except that it rounds
the long side (``round`` instead of ``int``: the square can sit one pixel further), resizes with
torch's antialiased bicubic (PIL's kernel, a = -0.5), and quantises to 8 bits *after* the resize too;
the pixel values agree within one 8-bit level.
"""
import math

import torch

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_SIZE = 224


def crop_box_to_aspect(width, height, target_width, target_height):
    """MMCM's centre crop box ``(x1, y1, x2, y2)`` (PIL convention: right/bottom exclusive)."""
    if min(width, height, target_width, target_height) <= 0:
        raise ValueError(f"empty image or target ({width}x{height} -> {target_width}x{target_height})")
    if width / height >= target_width / target_height:
        y1, y2 = 0, height - 1
        cut = width - height * target_width / target_height
        x1, x2 = math.ceil(cut / 2), math.ceil(width - cut / 2)
    else:
        x1, x2 = 0, width - 1
        cut = height - width * target_height / target_width
        y1, y2 = math.ceil(cut / 2), math.ceil(height - cut / 2)
    return max(0, x1), max(0, y1), min(x2, width - 1), min(y2, height - 1)


def _lanczos3(x):
    x = x.abs()
    out = torch.sinc(x) * torch.sinc(x / 3.0)
    return torch.where(x < 3.0, out, torch.zeros_like(out))


def _bicubic(x, a=-0.5):
    x = x.abs()
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


_FILTERS = {"lanczos": (_lanczos3, 3.0), "bicubic": (_bicubic, 2.0)}


def resample_taps(in_size, out_size, kind="lanczos", dtype=torch.float64):
    """PIL's separable resampling weights (``precompute_coeffs``): for each output pixel its first
    input index and ``k`` weights normalised to 1, antialiased (the kernel widens by the downscale
    factor).  Returns ``(start (out,) long, weights (out, k))``; taps past the edge weigh 0."""
    fn, support = _FILTERS[kind]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    centers = (torch.arange(out_size, dtype=dtype) + 0.5) * scale
    xmin = torch.clamp((centers - support + 0.5).floor(), min=0)
    xmax = torch.clamp((centers + support + 0.5).floor(), max=in_size)
    k = max(1, int((xmax - xmin).max().item()))
    pos = xmin[:, None] + torch.arange(k, dtype=dtype)[None, :]
    w = fn((pos - centers[:, None] + 0.5) / filterscale) * (pos < xmax[:, None])
    total = w.sum(dim=1, keepdim=True)
    return xmin.long(), w / torch.where(total == 0, torch.ones_like(total), total)


def resample_matrix(in_size, out_size, kind="lanczos", dtype=torch.float64):
    """The same weights as a dense ``(out_size, in_size)`` matrix."""
    start, w = resample_taps(in_size, out_size, kind, dtype)
    idx = (start[:, None] + torch.arange(w.shape[1])[None, :]).clamp(max=in_size - 1)
    return torch.zeros(out_size, in_size, dtype=dtype).scatter_add_(1, idx, w)


DENSE_LIMIT = 1 << 24      # resample with one dense matrix (BLAS) up to this many weights, else tap by tap


def _resample_rows(x, out_size, kind):
    """Resample dimension -2 of float32 ``x`` with PIL's weights."""
    in_size = x.shape[-2]
    if in_size * out_size <= DENSE_LIMIT:
        m = resample_matrix(in_size, out_size, kind).to(device=x.device, dtype=torch.float32)
        return torch.matmul(m, x)
    start, w = resample_taps(in_size, out_size, kind)          # huge images: memory ~ the output
    start, w = start.to(x.device), w.to(device=x.device, dtype=torch.float32)
    x = x.contiguous()
    out = torch.zeros(*x.shape[:-2], out_size, x.shape[-1], device=x.device, dtype=torch.float32)
    for j in range(w.shape[1]):
        out += x.index_select(-2, (start + j).clamp(max=in_size - 1)) * w[:, j, None]
    return out


def resize(images, height, width, kind="lanczos", eight_bit=False):
    """Separable PIL-style resize of ``(n, C, H, W)`` floats, horizontal pass first as in Pillow's
    Resample.c.  ``eight_bit``: behave like PIL on an 8-bit image (each pass rounded and clipped to
    [0, 1] in 1/255 steps); otherwise plain float maths (no clamping)."""
    n, c, h, w = images.shape
    out = images.float()
    if w != width:
        out = _resample_rows(out.transpose(-1, -2), width, kind).transpose(-1, -2)
        if eight_bit:
            out = quantize8(out)
    if h != height:
        out = _resample_rows(out, height, kind)
        if eight_bit:
            out = quantize8(out)
    return out.to(images.dtype)


def quantize8(images):
    """Round to 8-bit levels and clip, as a PIL ``uint8`` image would hold them."""
    return torch.clamp((images * 255.0).round(), 0, 255) / 255.0


def crop_resize_to(images, height, width, quantize=True):
    """MuseV's reference-image rule: centre crop to the aspect of ``width×height`` then LANCZOS resize
    to it.  ``images`` ``(n, H, W, C)`` in [0, 1]; returns ``(n, height, width, C)``."""
    n, h, w, c = images.shape
    x1, y1, x2, y2 = crop_box_to_aspect(w, h, width, height)
    x = images[:, y1:y2, x1:x2, :].movedim(-1, 1)
    x = resize(x, height, width, "lanczos", eight_bit=quantize)
    return x.clamp(0.0, 1.0).movedim(1, -1)


def needs_resize(images, height, width):
    return tuple(images.shape[1:3]) != (height, width)


def clip_resize_size(height, width, size=CLIP_SIZE):
    """transformers' ``get_resize_output_image_size(default_to_square=False)``: shortest side to
    ``size``, the other ``int(size · long / short)``."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def clip_preprocess(images, size=CLIP_SIZE, mean=CLIP_MEAN, std=CLIP_STD):
    """``(n, H, W, 3+)`` in [0, 1] -> ``(n, 3, size, size)`` normalised pixel values, the rules of
    ``CLIPImageProcessor()`` (see the module docstring)."""
    x = images[..., :3].movedim(-1, 1).float()
    x = quantize8(x.clamp(0.0, 1.0))
    h, w = x.shape[-2:]
    rh, rw = clip_resize_size(h, w, size)
    if (rh, rw) != (h, w):
        x = resize(x, rh, rw, "bicubic", eight_bit=True)
    top, left = (rh - size) // 2, (rw - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s
