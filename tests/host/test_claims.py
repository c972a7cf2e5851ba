"""Claims match measurements (issue 13, class 6).

(Batched windows vs one window per call -- equal up to float32 rounding, a bound, not 0 -- are tested
in test_sampler.py::test_batched_windows_equal_one_at_a_time.)

* A MuseV MODEL sampled by a stock sampler on more frames than MuseV's trained window (12), with no
  context windows, logs a warning that suggests MuseVContextWindows; with the windows, or within
  one window, it does not.
"""
import logging

import pytest
import torch

from musev_testlib import fixture_musev_model
from reference_fixtures import catch_log


@pytest.fixture(scope="module")
def musev(comfy_host, parity_dir):
    return fixture_musev_model(comfy_host, parity_dir, "pipeline_musev", tag="claims", with_reference=False)


def _ksample(comfy_host, model, pos, neg, vision, frames):
    import comfy.sample
    latent = torch.zeros(frames, *vision.shape[1:])
    noise = comfy.sample.prepare_noise(latent, 3)
    return comfy.sample.sample(model, noise, 1, 3.5, "euler", "normal", pos, neg, latent, seed=3, disable_pbar=True)


def test_stock_sampler_on_a_long_video_without_windows_warns(comfy_host, musev):
    model, pos, neg, vision, _, _ = musev
    nodes = comfy_host.pack("nodes.sampler_nodes")
    with catch_log("comfyui-musev", logging.WARNING) as records:
        _ksample(comfy_host, model, pos, neg, vision, 13)
    warned = [r.getMessage() for r in records if "MuseVContextWindows" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in records]
    assert "13 frames" in warned[0] and "12" in warned[0]
    with catch_log("comfyui-musev", logging.WARNING) as records:
        _ksample(comfy_host, model, pos, neg, vision, 12)                   # one window: fine
        (windowed,) = nodes.MuseVContextWindows().apply(model, 4, 2, "uniform_v2", 1, "video_fusion", 0.5, 1e-3)
        _ksample(comfy_host, windowed, pos, neg, vision, 13)                # windows: fine
    assert not [r for r in records if "MuseVContextWindows" in r.getMessage()]
