"""context_batch_size auto (0, the default) and the per-run constants of the patched UNet call.

* auto takes as many windows per UNet call as ComfyUI's memory estimate of their rows fits in the
  free memory (ComfyUI's own batching margin, MuseV's factor), 1 under low VRAM; the result is the
  one-window-at-a-time result up to float rounding (bound: 1e-5 of the latent scale, fp32);
* PREPARE_SAMPLING asks ComfyUI for one window's rows and auto's choice is made right after the
  models are loaded, kept for the run;
* ReferenceNet K/V of the fusions and the IP K/V are projected once per run, not once per call,
  with the same numbers as computing them per call."""
import pytest
import torch

from musev_testlib import fixture_musev_model


@pytest.fixture(scope="module")
def musev(comfy_host, parity_dir):
    return fixture_musev_model(comfy_host, parity_dir, "pipeline", tag="autobatch")


def pds(host, model, positive, negative, vision, frames, **kw):
    nodes = host.pack("nodes.sampler_nodes")
    h, w = vision.shape[2] * 8, vision.shape[3] * 8
    args = dict(frames=frames, width=w, height=h, context_frames=4, context_overlap=2, context_schedule="uniform_v2",
                context_batch_size=0, noise_type="video_fusion", w_ind_noise=0.5, img_weight=1e-3, seed=3, steps=2,
                cfg=3.5, sampler_name="euler", scheduler="musev_linspace", include_condition_frames=False,
                vision_latent={"samples": vision})
    args.update(kw)
    return nodes.ParallelDenoiseSampler().sample(model, positive, negative, **args)[0]["samples"]


class _Calls:
    """Counts UNet calls and the rows of each (a DIFFUSION_MODEL wrapper)."""

    def __init__(self):
        self.rows = []

    def __call__(self, executor, x, *args, **kwargs):
        self.rows.append(int(x.shape[0]))
        return executor(x, *args, **kwargs)

    def __deepcopy__(self, memo):
        return self


def _with_counter(model):
    from comfy.patcher_extension import WrappersMP
    m = model.clone()
    calls = _Calls()
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test_counter", calls)
    return m, calls


def test_input_default_is_auto(comfy_host):
    nodes = comfy_host.pack("nodes.sampler_nodes")
    for cls in (nodes.ParallelDenoiseSampler, nodes.MuseVContextWindows):
        kind, opts = cls.INPUT_TYPES()["required"]["context_batch_size"]
        assert kind == "INT" and opts["default"] == 0 and opts["min"] == 0
        assert "auto" in opts["tooltip"] and "0" in opts["tooltip"]


def test_auto_equals_one_window_at_a_time(comfy_host, musev, monkeypatch):
    ctx = comfy_host.pack("nodes.context")
    model, pos, neg, vision, _, _ = musev
    # auto batches on accelerators only; this host is a CPU: let it batch here as on a GPU
    monkeypatch.setattr(ctx, "batching_pays", lambda device: True)
    frames = 9                         # F=4 O=2 -> 4 windows, the last one shorter
    m1, c1 = _with_counter(model)
    ref = pds(comfy_host, m1, pos, neg, vision, frames, context_batch_size=1)
    ma, ca = _with_counter(model)
    auto = pds(comfy_host, ma, pos, neg, vision, frames, context_batch_size=0)
    # GBs free: auto takes all 4 windows in one call (2 calls per step, CFG halves batched)
    per_step = len(ca.rows) // 2
    assert per_step < len(c1.rows) // 2, f"auto made {ca.rows}, batch 1 made {c1.rows}"
    assert max(ca.rows) > max(c1.rows)
    err = (auto - ref).abs().max().item()
    assert err <= 1e-5 * max(1.0, ref.abs().max().item()), f"auto vs batch 1: {err:.3g}"
    assert ctx.AUTO_BATCH == 0


def test_auto_picks_the_largest_batch_that_fits(comfy_host, musev, monkeypatch):
    """The choice is the largest k with estimate(k)·margin < free; less free memory, fewer windows;
    low VRAM (or a partly loaded model): 1."""
    import comfy.model_management as mm
    ctx = comfy_host.pack("nodes.context")
    compat = comfy_host.pack("nodes.compat")
    model, *_ = musev
    handler = ctx.MuseVContextHandler("uniform_v2", 4, 2, ctx.AUTO_BATCH)
    shape = (20, 4, 8, 8)
    monkeypatch.setattr(compat, "free_memory", lambda m, d: 1e15)
    assert handler.auto_batch_size(model, 20, 1, shape, [torch.device("cpu")]) == (1, "CPU: one window per call")
    monkeypatch.setattr(ctx, "batching_pays", lambda device: True)
    n_windows = len(handler.windows(20))
    need = [handler.memory_for(model, 20, 1, shape, k) for k in range(1, n_windows + 1)]
    assert all(a < b for a, b in zip(need, need[1:])), "the estimate grows with the windows per call"
    dev = torch.device("cpu")
    for k in (1, 2, 3, n_windows):
        free = need[k - 1] * ctx.BATCH_MARGIN * 1.001        # just enough for k windows
        monkeypatch.setattr(compat, "free_memory", lambda m, d, free=free: free)
        got, _ = handler.auto_batch_size(model, 20, 1, shape, [dev])
        assert got == k, f"free for {k} windows -> auto took {got}"
    monkeypatch.setattr(compat, "free_memory", lambda m, d: 1e15)
    assert handler.auto_batch_size(model, 20, 1, shape, [dev])[0] == n_windows
    # MultiGPU: every device keeps a window group
    assert handler.auto_batch_size(model, 20, 1, shape, [dev, dev])[0] == -(-n_windows // 2)
    monkeypatch.setattr(mm, "vram_state", mm.VRAMState.LOW_VRAM)
    assert handler.auto_batch_size(model, 20, 1, shape, [dev]) == (1, "low VRAM")


def test_prepare_sampling_estimate_matches_auto(comfy_host, musev, monkeypatch):
    """ComfyUI's PREPARE_SAMPLING estimate is asked for the rows of one window group (with the vision
    frame); auto's choice is made after the load and is what every step of the run uses."""
    import comfy.sampler_helpers as sh
    ctx = comfy_host.pack("nodes.context")
    model, pos, neg, vision, _, _ = musev
    monkeypatch.setattr(ctx, "batching_pays", lambda device: True)     # batch here as on a GPU
    seen = []
    real = sh.estimate_memory

    def spy(model_, noise_shape, conds):
        seen.append(list(noise_shape))
        return real(model_, noise_shape, conds)
    monkeypatch.setattr(sh, "estimate_memory", spy)
    decisions = []
    real_auto = ctx.MuseVContextHandler.auto_batch_size

    def auto(self, *a, **kw):
        out = real_auto(self, *a, **kw)
        decisions.append(out[0])
        return out
    monkeypatch.setattr(ctx.MuseVContextHandler, "auto_batch_size", auto)
    m, calls = _with_counter(model)
    pds(comfy_host, m, pos, neg, vision, 9, context_batch_size=0, steps=3)
    n_vis = vision.shape[0]
    assert seen and seen[0][0] == 4 + n_vis, f"estimate for {seen[0][0]} rows, one window is {4 + n_vis}"
    assert len(decisions) == 1, "auto decides once per run"
    k = decisions[0]
    assert k > 1
    handler = ctx.MuseVContextHandler("uniform_v2", 4, 2, k)
    rows = [sum(len(w) + n_vis for w in g) for g in handler.groups(9)]
    assert sorted(set(calls.rows)) == sorted({2 * r for r in rows}), (calls.rows, rows)


def test_bad_batch_size(comfy_host, musev):
    ctx = comfy_host.pack("nodes.context")
    host = comfy_host.pack("nodes.host")
    model, *_ = musev
    with pytest.raises(host.MuseVInputError, match="context_batch_size"):
        ctx.apply_parallel_denoise(model, context_batch_size=-1)


def test_constants_once_per_run(comfy_host, parity_dir, monkeypatch):
    """The fusions' reference K/V and the IP K/V are projected once per run (per role, per device);
    with the per-run constants switched off they are projected in every call; same numbers."""
    patch = comfy_host.pack("nodes.patch")
    referencenet = comfy_host.pack("musev_core.referencenet")
    model, pos, neg, vision, spec, _ = fixture_musev_model(comfy_host, parity_dir, "pipeline", tag="constants")
    state = patch.get_state(model)
    assert state.reference is not None and state.ip is not None, "the fixture pipeline has ReferenceNet and IP"
    counts = {"ref": 0, "ip": 0}
    real_ref = referencenet.ReferEmbFuseAttention.project_reference

    def count_ref(self, tokens):
        counts["ref"] += 1
        return real_ref(self, tokens)
    monkeypatch.setattr(referencenet.ReferEmbFuseAttention, "project_reference", count_ref)

    def count_ip(mod):
        real = mod.to_k_ip.forward

        def fwd(x):
            counts["ip"] += 1
            return real(x)
        return fwd
    motion = state.motion
    for prefix in motion.ip_prefixes:
        mod = motion.module_at(prefix)
        monkeypatch.setattr(mod.to_k_ip, "forward", count_ip(mod))
    n_fusions = sum(1 for p in motion.placements if p.kind == "refer_fuse")
    n_ip = len(motion.ip_prefixes)
    results = {}
    for on in (True, False):
        counts.update(ref=0, ip=0)
        m, calls = _with_counter(model)
        m.model_options.setdefault("transformer_options", {})[patch.CONSTANTS_KEY] = on
        results[on] = pds(comfy_host, m, pos, neg, vision, 5, context_batch_size=1, steps=2)
        n_calls = len(calls.rows)
        assert n_calls >= 4
        per_run = 2 * n_fusions            # two guidance roles
        if on:
            assert counts["ref"] == per_run, (counts, n_calls)
            assert counts["ip"] == 2 * n_ip, counts
        else:
            assert counts["ref"] == per_run * n_calls, (counts, n_calls)
            assert counts["ip"] == 2 * n_ip * n_calls, counts
    # off also attends the text per row (not per chunk): equal up to float rounding (random weights blow
    # the latents up to O(100): relative bound, the fixture README's latent rule)
    err = (results[True] - results[False]).abs().max().item()
    assert err <= 1e-5 * results[False].abs().max().item(), err
