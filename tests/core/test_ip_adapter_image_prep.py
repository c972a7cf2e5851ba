"""MuseV's image preparation (musev_core.image_prep): MMCM's crop-to-aspect box, PIL's LANCZOS/BICUBIC
resampling, and transformers' ``CLIPImageProcessor()`` preprocessing, checked against PIL and
transformers themselves (the libraries MuseV used)."""
import math

import numpy as np
import pytest
import torch

from conftest import pack_module

P = pack_module("musev_core.image_prep")


def _ref_crop_box(w, h, tw, th):
    """MMCM dynamic_crop_resize_image's arithmetic, written out independently."""
    if w / h >= tw / th:
        box = [math.ceil((w - h * tw / th) / 2), 0, math.ceil(w - (w - h * tw / th) / 2), h - 1]
    else:
        box = [0, math.ceil((h - w * th / tw) / 2), w - 1, math.ceil(h - (h - w * th / tw) / 2)]
    return max(0, box[0]), max(0, box[1]), min(box[2], w - 1), min(box[3], h - 1)


@pytest.mark.parametrize("w,h,tw,th", [(500, 300, 192, 128), (300, 500, 192, 128), (192, 128, 192, 128),
                                       (736, 1308, 704, 1216), (1200, 1462, 704, 832), (64, 64, 128, 64)])
def test_crop_box_matches_mmcm(w, h, tw, th):
    box = P.crop_box_to_aspect(w, h, tw, th)
    assert box == _ref_crop_box(w, h, tw, th)
    x1, y1, x2, y2 = box
    cw, ch = x2 - x1, y2 - y1
    assert abs(cw / ch - tw / th) <= (tw / th) * 2.0 / min(cw, ch)   # the target aspect, to a pixel


def test_crop_box_keeps_the_quirk_of_dropping_the_last_row_and_column():
    assert P.crop_box_to_aspect(192, 128, 192, 128) == (0, 0, 191, 127)


def _rand_image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, h, w, 3, generator=g) * 255).round() / 255


def _pil_two_pass(pil, w, h, resample):
    """PIL's separable resize with the horizontal pass first (Pillow's Resample.c as MuseV ran it; the
    8-bit intermediate image is what the C code keeps between its two passes)."""
    if pil.size[0] != w:
        pil = pil.resize((w, pil.size[1]), resample)
    if pil.size[1] != h:
        pil = pil.resize((w, h), resample)
    return pil


@pytest.mark.parametrize("H,W,h,w", [(300, 500, 128, 192), (97, 61, 200, 150), (600, 400, 64, 64), (31, 45, 224, 300),
                                     (705, 333, 474, 224)])
def test_crop_resize_matches_pil_lanczos(H, W, h, w):
    Image = pytest.importorskip("PIL.Image")
    img = _rand_image(H, W, H * W)
    pil = Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8))
    ref = _pil_two_pass(pil.crop(P.crop_box_to_aspect(W, H, w, h)), w, h, Image.LANCZOS)
    ref = np.asarray(ref).astype(np.float32) / 255
    ours = P.crop_resize_to(img, h, w)[0].numpy()
    diff = np.abs(ours - ref) * 255
    assert ours.shape == ref.shape
    assert diff.max() <= 1.0 + 1e-3          # PIL's fixed-point coefficients: at most one 8-bit level
    assert (diff > 0.5).mean() < 0.01


def _normalize(x):
    return (x - torch.tensor(P.CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(P.CLIP_STD).view(1, 3, 1, 1)


def _levels(a, b):
    return ((a - b) * torch.tensor(P.CLIP_STD).view(1, 3, 1, 1) * 255).abs()


@pytest.mark.parametrize("H,W", [(224, 300), (333, 224), (224, 224), (250, 224)])
def test_clip_preprocess_matches_clip_image_processor(H, W):
    """Against transformers' CLIPImageProcessor (PIL backend) where its resize is a single pass."""
    Image = pytest.importorskip("PIL.Image")
    clip = pytest.importorskip("transformers.models.clip")
    proc_cls = getattr(clip, "CLIPImageProcessorPil", None) or getattr(clip, "CLIPImageProcessor")
    img = _rand_image(H, W, H + W)
    pil = Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8))
    ref = proc_cls()(images=[pil], return_tensors="pt").pixel_values
    ours = P.clip_preprocess(img)
    assert ours.shape == ref.shape == (1, 3, P.CLIP_SIZE, P.CLIP_SIZE)
    levels = _levels(ours, ref)
    assert levels.max() <= 1.0 + 1e-3
    assert (levels > 0.5).float().mean() < 0.01


@pytest.mark.parametrize("H,W", [(128, 192), (300, 201), (100, 100), (705, 333)])
def test_clip_preprocess_matches_pil_recipe(H, W):
    """Resize shortest side to 224 (PIL bicubic, horizontal pass first), int() long side, centre crop."""
    Image = pytest.importorskip("PIL.Image")
    img = _rand_image(H, W, H + W)
    pil = Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8))
    rh, rw = P.clip_resize_size(H, W)
    r = np.asarray(_pil_two_pass(pil, rw, rh, Image.BICUBIC)).astype(np.float32) / 255
    top, left = (rh - P.CLIP_SIZE) // 2, (rw - P.CLIP_SIZE) // 2
    r = torch.from_numpy(r[top:top + P.CLIP_SIZE, left:left + P.CLIP_SIZE]).permute(2, 0, 1)[None]
    levels = _levels(P.clip_preprocess(img), _normalize(r))
    assert levels.max() <= 2.0 + 1e-3        # a one-level rounding difference in each of two passes
    assert (levels > 0.5).float().mean() < 0.01


def test_clip_resize_keeps_the_square_centre_of_the_image():
    # the long side is floored like transformers (ComfyUI's clip_preprocess rounds it)
    assert P.clip_resize_size(128, 192) == (224, 336)
    assert P.clip_resize_size(333, 705) == (224, 474)
    assert P.clip_resize_size(705, 333) == (474, 224)
    # a picture whose left and right thirds are black: CLIP sees only the centre square
    img = torch.zeros(1, 96, 288, 3)
    img[:, :, 96:192] = 1.0
    x = P.clip_preprocess(img)
    white = (1.0 - torch.tensor(P.CLIP_MEAN)) / torch.tensor(P.CLIP_STD)
    assert torch.allclose(x[0, :, 10:-10, 10:-10].mean(dim=(1, 2)), white, atol=1e-4)


def test_crop_resize_is_pils_own_lanczos_bit_for_bit():
    """The 8-bit path is Pillow's own LANCZOS on the cropped 8-bit image, horizontal pass first (the
    order of MuseV's Pillow; Pillow 13 may pick the vertical pass first for a single resize call)."""
    Image = pytest.importorskip("PIL.Image")
    for (H, W, h, w) in ((143, 211, 64, 96), (705, 333, 474, 224)):
        img = _rand_image(H, W, 5)
        pil = Image.fromarray((img[0].numpy() * 255).round().astype(np.uint8))
        ref = np.asarray(_pil_two_pass(pil.crop(P.crop_box_to_aspect(W, H, w, h)), w, h, Image.LANCZOS))
        ours = P.crop_resize_to(img, h, w)[0].numpy() * 255
        np.testing.assert_array_equal(np.round(ours).astype(np.uint8), ref)


def test_float_path_and_dtype():
    """quantize=False resizes float channels with the same filter (no 8-bit rounding); the dtype of the
    input is kept; a 1-channel batch works too."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 90), torch.linspace(0, 1, 130), indexing="ij")
    smooth = torch.stack([0.2 + 0.6 * xx, 0.5 + 0.3 * torch.sin(3 * yy), 0.3 + 0.4 * xx * yy], -1)[None]
    smooth = (smooth * 255).round() / 255
    q = P.crop_resize_to(smooth, 40, 64)
    f = P.crop_resize_to(smooth, 40, 64, quantize=False)
    assert f.shape == q.shape == (1, 40, 64, 3)
    assert (f - q).abs().max().item() <= 2.0 / 255           # 8-bit roundings of the two passes
    assert not torch.equal(f, q)                              # really unrounded
    dbl = P.crop_resize_to(smooth.double(), 40, 64)
    assert dbl.dtype == torch.float64 and torch.allclose(dbl.float(), q)
    gray = P.crop_resize_to(smooth[..., :1], 40, 64)
    assert gray.shape == (1, 40, 64, 1)
