"""What changed between ComfyUI 0.3.64 and 0.28, checked on whichever host runs the suite.

* Context windows: 0.28's ``IndexListContextWindow`` takes ``total_frames`` and divides by it in its
  constructor (``center_ratio``).  The windows our handler builds carry ``total_frames`` (and
  ``context_overlap``) wherever the host's class takes them; a control shows that the constructor
  call older ComfyUI accepted (no ``total_frames``) breaks on a host that has the argument, so this
  test fails without ``compat.context_window``.
* PREPARE_SAMPLING: the memory ComfyUI frees before sampling is estimated for one window group, the
  same figure for a 24- and a 96-frame video (core's own context windows do the same).
"""
import inspect

import pytest
import torch

from musev_testlib import fixture_musev_model


@pytest.fixture(scope="module")
def musev(comfy_host, parity_dir):
    return fixture_musev_model(comfy_host, parity_dir, "pipeline", tag="compat")


def _host_takes_total_frames():
    from comfy.context_windows import IndexListContextWindow
    return "total_frames" in inspect.signature(IndexListContextWindow.__init__).parameters


def _run_windows(comfy_host, musev, frames):
    """One sampling step over ``frames`` frames (windows of 4 overlapping by 2, one per call); returns
    the ``context_window`` objects the UNet calls received."""
    import comfy.sample
    from comfy.patcher_extension import WrappersMP
    ctx = comfy_host.pack("nodes.context")
    model, pos, neg, vision, _, _ = musev
    m = ctx.apply_parallel_denoise(model, vision=vision, context_frames=4, context_overlap=2, context_batch_size=1)
    seen = []

    def spy(executor, x, *args, **kwargs):
        to = kwargs.get("transformer_options") or (args[4] if len(args) > 4 else {})
        seen.append(to.get("context_window"))
        return executor(x, *args, **kwargs)

    spy.__deepcopy__ = lambda memo: spy
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test_compat_spy", spy)
    latent = torch.zeros(frames, *vision.shape[1:])
    comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 0), 1, 3.5, "euler", "normal", pos, neg, latent,
                        disable_pbar=True, seed=0)
    return [w for w in seen if w is not None]


def test_windows_carry_total_frames_and_overlap(comfy_host, musev):
    frames = 6                       # windows of 4 overlapping by 2: [0..3], [2..5]
    windows = _run_windows(comfy_host, musev, frames)
    assert windows, "no UNet call saw a context window"
    for w in windows:
        assert w.dim == 0 and w.index_list and max(w.index_list) < frames
        if _host_takes_total_frames():
            assert w.total_frames == frames and w.context_overlap == 2
            assert 0.0 <= w.center_ratio <= 1.0
            assert 0 <= w.get_region_index(4) < 4


def test_window_constructor_of_older_hosts_breaks_where_total_frames_exists(comfy_host):
    """The control: what the pack did before the compat module (no total_frames) fails on a host whose
    IndexListContextWindow takes it, and compat.context_window works on every host."""
    from comfy.context_windows import IndexListContextWindow
    compat = comfy_host.pack("nodes.compat")
    if _host_takes_total_frames():
        with pytest.raises(ZeroDivisionError):
            IndexListContextWindow([0, 1, 2, 3], dim=0)
    else:
        IndexListContextWindow([0, 1, 2, 3], dim=0)
    w = compat.context_window([4, 5, 6, 7], total_frames=12, context_overlap=2)
    assert w.index_list == [4, 5, 6, 7]


def test_prepare_sampling_estimate_is_one_window_group_whatever_the_length(comfy_host, musev, monkeypatch):
    """ComfyUI's PREPARE_SAMPLING memory estimate for a 96-frame video equals that for 24 frames: one
    window group (+ its vision frame), not the video."""
    import comfy.sampler_helpers as sh
    ctx = comfy_host.pack("nodes.context")
    model, pos, neg, vision, _, _ = musev
    n_vis = vision.shape[0]
    estimates = []
    real = sh.estimate_memory

    def spy(model_, noise_shape, conds):
        out = real(model_, noise_shape, conds)
        estimates.append((list(noise_shape), out))
        return out

    monkeypatch.setattr(sh, "estimate_memory", spy)

    def prepare(m, frames):
        """What the sampler does before its first step: the patcher's wrappers into the run's options,
        then PREPARE_SAMPLING (which estimates the memory and loads the models)."""
        import comfy.model_patcher
        options = comfy.model_patcher.create_model_options_clone(m.model_options)
        conds = {"positive": sh.convert_cond(pos), "negative": sh.convert_cond(neg)}
        sh.prepare_model_patcher(m, conds, options)
        _, _, loaded = sh.prepare_sampling(m, [frames] + list(vision.shape[1:]), conds, model_options=options)
        sh.cleanup_models(conds, loaded)

    m = ctx.apply_parallel_denoise(model, vision=vision, context_frames=12, context_overlap=4, context_batch_size=1)
    for frames in (24, 96):
        prepare(m, frames)
    (shape24, mem24), (shape96, mem96) = estimates
    assert shape24[0] == shape96[0] == 12 + n_vis, (shape24, shape96)
    assert mem24 == mem96        # (memory_required, minimum_memory_required)
    # ...while ComfyUI's own estimate for the video's rows grows with them
    assert real(m, [96] + shape96[1:], {})[0] > real(m, [24] + shape96[1:], {})[0]
