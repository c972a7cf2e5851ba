"""MuseV's image preparation rules (spec §3, §5.1), done by the libraries MuseV itself used.

Images here are ComfyUI-style ``(n, H, W, C)`` float tensors in [0, 1]; results come back on the
input's device and dtype.  This module uses Pillow and transformers (both already required by the
pack: ComfyUI ships Pillow, transformers is a runtime dependency) and imports them lazily.

Reference / IP images in MuseV (MMCM ``dynamic_crop_resize_image``):
  1. centre-crop to the target aspect: keep the full height when the image is relatively wider than
     the target, else the full width; the box is computed with ``ceil`` and clamped to
     ``x2 <= w - 1``, ``y2 <= h - 1`` with PIL's exclusive right/bottom edge, so the last column and
     row are always dropped.  :func:`crop_box_to_aspect` is MMCM's arithmetic written out, kept
     only for MuseV parity (no library has this box, quirk included);
  2. PIL's LANCZOS resize of the 8-bit image to the target W×H (:func:`crop_resize_to` calls Pillow
     itself, so the pixels are MuseV's by construction).

Pass order: Pillow resizes in two separable passes with an 8-bit image in between.  Up to 12.x it
always ran the horizontal pass first (MuseV's Pillow 10); Pillow 13 runs the vertical pass first when
that intermediate is smaller, which moves 8-bit roundings (up to ~25 levels on noise, at a few
shapes such as 332×703 -> 224×474).  :func:`pil_resize` therefore asks Pillow for the two passes one
at a time, horizontal first: MuseV's pixels on every Pillow version.

CLIP preprocessing (:func:`clip_preprocess`): transformers' ``CLIPImageProcessor`` with PIL
resampling (``CLIPImageProcessorPil`` in transformers 5, ``CLIPImageProcessor`` before), the
processor MMCM's ``ImageClipVisionFeatureExtractor`` used: shortest side to 224 (bicubic), the long
side ``int(224 · long / short)``, centre crop 224×224, ×1/255 of the 8-bit image, OpenAI CLIP
mean/std.  The resize step is done by :func:`pil_resize` (same size rule, MuseV's pass order, see
above) and the processor does the rest (``do_resize=False``).  ComfyUI's own ``comfy.clip_vision.clip_preprocess(crop=True)`` differs slightly: it
rounds the long side (the square can sit one pixel further) and resizes with torch's antialiased
bicubic, within one 8-bit level.
"""
import functools
import math

import numpy as np
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
    x1, y1 = min(max(0, x1), width - 1), min(max(0, y1), height - 1)
    x2, y2 = min(x2, width - 1), min(y2, height - 1)
    # never an empty box: MMCM's "- 1" (its last row/column is always cut) would leave nothing of an image
    # one pixel high or wide, or of an extreme aspect; keep at least one pixel each way
    return x1, y1, max(x2, x1 + 1), max(y2, y1 + 1)


def quantize8(images):
    """Round to 8-bit levels and clip, as a PIL ``uint8`` image would hold them."""
    return torch.clamp((images * 255.0).round(), 0, 255) / 255.0


def to_pil(image):
    """One ``(H, W, C)`` float image in [0, 1] -> an 8-bit RGB ``PIL.Image`` (round to nearest)."""
    from PIL import Image
    pixels = image[..., :3].detach().float().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")


def _from_pil(img, like):
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).to(device=like.device, dtype=like.dtype)


def pil_resize(img, width, height, resample):
    """Pillow's resize of ``img`` to ``width×height``, horizontal pass first (see the module docstring:
    the order MuseV's Pillow used, made explicit because Pillow 13 may run the vertical pass first)."""
    if img.size[0] != width:
        img = img.resize((width, img.size[1]), resample)
    if img.size[1] != height:
        img = img.resize((width, height), resample)
    return img


def _resize_float(image, box, width, height):
    """PIL LANCZOS on 32-bit float channels (mode 'F'): the same filter without 8-bit rounding."""
    from PIL import Image
    x = image.detach().float().cpu().numpy()
    chans = [pil_resize(Image.fromarray(np.ascontiguousarray(x[..., c]), "F").crop(box), width, height, Image.LANCZOS)
             for c in range(x.shape[-1])]
    out = np.stack([np.asarray(c, dtype=np.float32) for c in chans], -1)
    return torch.from_numpy(out).to(device=image.device, dtype=image.dtype)


def crop_resize_to(images, height, width, quantize=True):
    """MuseV's reference-image rule: MMCM's centre crop to the aspect of ``width×height``, then PIL's
    LANCZOS resize to it.  ``images`` ``(n, H, W, C)`` in [0, 1]; returns ``(n, height, width, C)``.
    ``quantize`` (MuseV): the 8-bit image as PIL holds it; otherwise float channels (no rounding)."""
    from PIL import Image
    n, h, w, c = images.shape
    box = crop_box_to_aspect(w, h, width, height)
    out = []
    for i in range(n):
        if quantize and c >= 3:
            img = pil_resize(to_pil(images[i]).crop(box), width, height, Image.LANCZOS)
            out.append(_from_pil(img, images))
        else:
            out.append(_resize_float(images[i], box, width, height).clamp(0.0, 1.0))
    return torch.stack(out)


def needs_resize(images, height, width):
    return tuple(images.shape[1:3]) != (height, width)


def clip_resize_size(height, width, size=CLIP_SIZE):
    """transformers' ``get_resize_output_image_size(default_to_square=False)``: shortest side to
    ``size``, the other ``int(size · long / short)``."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


@functools.lru_cache(maxsize=8)
def clip_image_processor(size=CLIP_SIZE, mean=CLIP_MEAN, std=CLIP_STD):
    """transformers' CLIP image processor (PIL backend) for ``size`` and the given mean/std."""
    import transformers.models.clip as clip
    cls = getattr(clip, "CLIPImageProcessorPil", None) or clip.CLIPImageProcessor
    return cls(size={"shortest_edge": int(size)}, crop_size={"height": int(size), "width": int(size)},
               image_mean=list(mean), image_std=list(std))


def clip_preprocess(images, size=CLIP_SIZE, mean=CLIP_MEAN, std=CLIP_STD):
    """``(n, H, W, 3+)`` in [0, 1] -> ``(n, 3, size, size)`` normalised pixel values, by transformers'
    ``CLIPImageProcessor`` on the 8-bit images (see the module docstring)."""
    from PIL import Image
    proc = clip_image_processor(int(size), tuple(float(v) for v in mean), tuple(float(v) for v in std))
    pil = []
    for i in range(images.shape[0]):
        img = to_pil(images[i])
        rh, rw = clip_resize_size(img.size[1], img.size[0], int(size))
        pil.append(pil_resize(img, rw, rh, Image.BICUBIC))
    pixels = proc(images=pil, do_resize=False, return_tensors="pt")["pixel_values"]
    return pixels.to(device=images.device, dtype=torch.float32)
