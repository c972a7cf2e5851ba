"""MuseV's initial video noise (musev_core.noise) against the pipeline fixtures (spec §5.3)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import pack_module

N = pack_module("musev_core.noise")

# torch's CPU normal kernel differs between CPU capabilities (default vs AVX2/AVX512) by ~2e-6 on
# O(1) values; on the same capability the stream is bit-exact.  A wrong draw order, shape or
# generator gives O(1) differences.
RNG_ATOL = 1e-5


def _pipelines(parity_dir):
    with open(os.path.join(parity_dir, "manifest.json"), "r", encoding="utf-8") as f:
        manifest = json.load(f)
    out = []
    for folder, rec in manifest["pipelines"].items():
        path = os.path.join(parity_dir, folder, "inputs.safetensors")
        assert os.path.isfile(path), path
        out.append((folder, rec, load_file(path)))
    assert out, "no pipeline records in the manifest"
    return out


def _frames(x):
    """(1, C, N, h, w) -> (N, C, h, w)"""
    assert x.shape[0] == 1
    return x[0].permute(1, 0, 2, 3)


def test_parity_video_fusion_formula(parity_dir):
    for folder, rec, t in _pipelines(parity_dir):
        a = rec["call_args"]
        if a["noise_type"] != "video_fusion":
            continue
        got = N.fuse(t["noise_common"], t["noise_individual"], a["w_ind_noise"])
        torch.testing.assert_close(got, t["video_fusion_noise"], rtol=0, atol=1e-6, msg=folder)
        # the same in ComfyUI's frames-first layout
        got_frames = N.fuse(_frames(t["noise_common"]), _frames(t["noise_individual"]), a["w_ind_noise"])
        torch.testing.assert_close(got_frames, _frames(t["video_fusion_noise"]), rtol=0, atol=1e-6, msg=folder)


def test_parity_initial_latents(parity_dir):
    """image-based mix with the condition latents, times init_noise_sigma, in frames layout."""
    for folder, rec, t in _pipelines(parity_dir):
        a = rec["call_args"]
        noise = _frames(t["video_fusion_noise"] if a["noise_type"] == "video_fusion" else t["noise_individual"])
        if a["need_img_based_video_noise"] and "condition_latents" in t:
            noise = N.image_based_mix(noise, _frames(t["condition_latents"]), a["img_weight"])
        got = N.initial_latents(noise, rec["init_noise_sigma"])
        torch.testing.assert_close(got, _frames(t["initial_latents"]), rtol=0, atol=1e-6, msg=folder)


def test_parity_rng_stream_from_generator_seed(parity_dir):
    """MuseV's CPU stream: common noise first, then individual noise, from generator_seed."""
    for folder, rec, t in _pipelines(parity_dir):
        a = rec["call_args"]
        seed = rec["generator_seed"]
        shape = tuple(t["initial_latents"].shape)
        noise, common, individual = N.musev_video_noise(a["noise_type"], shape, seed, a["w_ind_noise"],
                                                        return_parts=True)
        if a["noise_type"] == "video_fusion":
            torch.testing.assert_close(common, t["noise_common"], rtol=0, atol=RNG_ATOL, msg=folder)
            torch.testing.assert_close(individual, t["noise_individual"], rtol=0, atol=RNG_ATOL, msg=folder)
            torch.testing.assert_close(noise, t["video_fusion_noise"], rtol=0, atol=RNG_ATOL, msg=folder)
        if shape[0] == 1:
            b, c, n, h, w = shape
            frames = N.video_noise(a["noise_type"], n, c, h, w, generator=seed, w_ind_noise=a["w_ind_noise"])
            assert frames.shape == (n, c, h, w)
            torch.testing.assert_close(frames, _frames(noise), rtol=0, atol=0, msg=folder)
            # a torch.Generator seeded the same way gives the same numbers
            gen = torch.Generator().manual_seed(seed)
            again = N.video_noise(a["noise_type"], n, c, h, w, gen, a["w_ind_noise"])
            assert torch.equal(again, frames)
            if a["need_img_based_video_noise"]:
                mixed = N.image_based_mix(frames, _frames(t["condition_latents"]), a["img_weight"])
                init = N.initial_latents(mixed, rec["init_noise_sigma"])
                torch.testing.assert_close(init, _frames(t["initial_latents"]), rtol=0,
                                           atol=RNG_ATOL * rec["init_noise_sigma"], msg=folder)


def test_common_noise_is_drawn_first_and_shared():
    n, c, h, w = 5, 4, 3, 6
    out = N.video_noise("video_fusion", n, c, h, w, generator=123, w_ind_noise=0.3)
    g = torch.Generator().manual_seed(123)
    common = torch.randn((1, c, 1, h, w), generator=g)
    ind = torch.randn((1, c, n, h, w), generator=g)
    want = (0.7 ** 0.5) * common + (0.3 ** 0.5) * ind
    torch.testing.assert_close(out, want[0].permute(1, 0, 2, 3), rtol=0, atol=1e-6)
    # w_ind_noise = 0: every frame is the common image; 1: plain individual noise
    same = N.video_noise("video_fusion", n, c, h, w, generator=7, w_ind_noise=0.0)
    assert torch.equal(same, same[:1].expand_as(same))
    indep = N.video_noise("video_fusion", n, c, h, w, generator=7, w_ind_noise=1.0)
    g = torch.Generator().manual_seed(7)
    torch.randn((1, c, 1, h, w), generator=g)
    assert torch.equal(indep, torch.randn((1, c, n, h, w), generator=g)[0].permute(1, 0, 2, 3))


def test_random_noise():
    out = N.video_noise("random", 3, 4, 2, 5, seed=9)
    g = torch.Generator().manual_seed(9)
    assert torch.equal(out, torch.randn((1, 4, 3, 2, 5), generator=g)[0].permute(1, 0, 2, 3))
    assert out.is_contiguous()


def test_image_based_mix_uses_mean_of_condition_frames():
    noise = torch.randn(6, 4, 3, 5, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(2, 4, 3, 5, generator=torch.Generator().manual_seed(2))
    out = N.image_based_mix(noise, cond, 0.25)
    want = 0.5 * cond.mean(0, keepdim=True) + (0.75 ** 0.5) * noise
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    assert N.image_based_mix(noise, cond, 0.0) is noise
    torch.testing.assert_close(N.image_based_mix(noise, cond, 1.0), cond.mean(0, keepdim=True).expand_as(noise))


def test_layout_round_trip():
    x = torch.randn(1, 4, 7, 3, 5)
    assert torch.equal(N.frames_to_musev(N.musev_to_frames(x)), x)
    assert N.musev_to_frames(x)[2].equal(x[0, :, 2])


@pytest.mark.parametrize("call, word", [
    (lambda: N.video_noise("pink", 3, 4, 2, 2, generator=0), "noise_type"),
    (lambda: N.video_noise("random", 0, 4, 2, 2, generator=0), "n_frames"),
    (lambda: N.video_noise("video_fusion", 3, 4, 2, 2, generator=0, w_ind_noise=1.5), "w_ind_noise"),
    (lambda: N.video_noise("random", 3, 4, 2, 2, generator="x"), "seed"),
    (lambda: N.image_based_mix(torch.zeros(3, 4, 2, 2), torch.zeros(1, 4, 2, 3), 0.1), "condition latents"),
    (lambda: N.image_based_mix(torch.zeros(3, 4, 2, 2), torch.zeros(1, 4, 2, 2), -0.1), "img_weight"),
])
def test_errors(call, word):
    with pytest.raises(N.NoiseError, match=word):
        call()
