"""diffusers Euler sigma tables (musev_core.sigmas) against MuseV's recorded schedules (spec §5.4)."""
import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import pack_module

S = pack_module("musev_core.sigmas")

# float32 sigmas: the fixture was produced by torch's CPU kernels on another machine; allow 2 ulp.
SIGMA_RTOL = 2.5e-7


def _manifest(parity_dir):
    with open(os.path.join(parity_dir, "manifest.json"), "r", encoding="utf-8") as f:
        return json.load(f)


def _pipelines(parity_dir):
    recs = _manifest(parity_dir)["pipelines"]
    assert recs, "no pipeline records in the manifest"
    return recs


def _close(got, want, msg=""):
    torch.testing.assert_close(got, torch.tensor(want, dtype=got.dtype), rtol=SIGMA_RTOL, atol=0, msg=msg)


# ------------------------------------------------------------------------------------------------
# parity

def test_parity_sigmas_timesteps_init_noise_sigma(parity_dir):
    for folder, rec in _pipelines(parity_dir).items():
        steps = rec["call_args"]["num_inference_steps"]
        sigmas, timesteps = S.euler_sigmas(rec["scheduler_config"], steps)
        assert sigmas.dtype == torch.float32 and sigmas.shape == (steps + 1,)
        assert timesteps.tolist() == rec["timesteps"], folder
        _close(sigmas, rec["sigmas"], folder)
        assert math.isclose(S.init_noise_sigma(rec["scheduler_config"], sigmas), rec["init_noise_sigma"],
                            rel_tol=SIGMA_RTOL, abs_tol=0), folder


def test_parity_steps_file(parity_dir):
    """The per-run ``steps.safetensors`` tables (the tensors MuseV's loop used)."""
    for folder, rec in _pipelines(parity_dir).items():
        path = os.path.join(parity_dir, folder, "steps.safetensors")
        assert os.path.isfile(path), path
        t = load_file(path)
        sigmas, timesteps = S.euler_sigmas(rec["scheduler_config"], rec["call_args"]["num_inference_steps"])
        assert torch.equal(timesteps, t["timesteps"].to(timesteps.dtype)), folder
        torch.testing.assert_close(sigmas, t["sigmas"].float(), rtol=SIGMA_RTOL, atol=0, msg=folder)


def test_parity_sd15_config_as_euler_sees_it(parity_dir):
    """The SD1.5 (PNDM) scheduler config, read by Euler, is the resolved config MuseV recorded and our
    SD15_SCHEDULER_CONFIG constant."""
    for folder, rec in _pipelines(parity_dir).items():
        raw = rec["sd15_scheduler_config"]
        resolved = S.resolve_config(raw)
        recorded = rec["scheduler_config"]
        for key in S.EULER_DEFAULTS:
            if key in recorded:
                assert resolved[key] == recorded[key], (folder, key)
        assert resolved == S.resolve_config(S.SD15_SCHEDULER_CONFIG), folder
        steps = rec["call_args"]["num_inference_steps"]
        sigmas, timesteps = S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, steps)
        assert timesteps.tolist() == rec["timesteps"]
        _close(sigmas, rec["sigmas"], folder)


# ------------------------------------------------------------------------------------------------
# spec §5.4 examples

def test_spec_examples_10_steps():
    cfg = S.SD15_SCHEDULER_CONFIG
    lin = S.euler_timesteps(dict(cfg, timestep_spacing="linspace"), 10)
    assert lin.tolist() == [999.0 - 111.0 * i for i in range(10)]
    lead = S.euler_timesteps(dict(cfg, timestep_spacing="leading", steps_offset=1), 10)
    assert lead.tolist() == [901.0 - 100.0 * i for i in range(10)]
    trail = S.euler_timesteps(dict(cfg, timestep_spacing="trailing"), 10)
    assert trail.tolist() == [999.0 - 100.0 * i for i in range(10)]
    assert lin.dtype == lead.dtype == trail.dtype == torch.float32


def test_init_noise_sigma_rules():
    table = S.training_sigmas(S.SD15_SCHEDULER_CONFIG)
    for spacing in ("linspace", "trailing"):
        cfg = dict(S.SD15_SCHEDULER_CONFIG, timestep_spacing=spacing)
        sigmas, _ = S.euler_sigmas(cfg, 10)
        assert S.init_noise_sigma(cfg, sigmas) == float(table[999]) == float(sigmas[0])
    cfg = dict(S.SD15_SCHEDULER_CONFIG, timestep_spacing="leading")
    sigmas, timesteps = S.euler_sigmas(cfg, 10)
    assert float(sigmas[0]) == float(table[901])
    assert math.isclose(S.init_noise_sigma(cfg, sigmas), math.sqrt(float(table[901]) ** 2 + 1), rel_tol=1e-6)
    # SD1.5 values quoted in the spec / integration study
    assert math.isclose(float(table[999]), 14.6146, abs_tol=1e-4)


# ------------------------------------------------------------------------------------------------
# properties and diffusers' rules

@pytest.mark.parametrize("spacing", S.SPACINGS)
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 10, 20, 25, 30, 50, 100])
def test_table_properties(spacing, steps):
    cfg = dict(S.SD15_SCHEDULER_CONFIG, timestep_spacing=spacing)
    sigmas, timesteps = S.euler_sigmas(cfg, steps)
    table = S.training_sigmas(cfg).double()
    assert sigmas.shape == (steps + 1,) and timesteps.shape == (steps,)
    assert sigmas[-1] == 0
    assert torch.all(sigmas[:-1] > 0)
    assert torch.all(timesteps[:-1] > timesteps[1:]) and torch.all(sigmas[:-1] >= sigmas[1:])
    assert 0 <= float(timesteps.min()) and float(timesteps.max()) <= 999
    # sigma = linear interpolation of the training table at the (possibly fractional) timestep
    for s, t in zip(sigmas[:-1].tolist(), timesteps.tolist()):
        lo = int(math.floor(t))
        hi = min(lo + 1, 999)
        want = float(table[lo]) + (float(table[hi]) - float(table[lo])) * (t - lo)
        assert math.isclose(s, want, rel_tol=2e-7), (t, s, want)


def test_linspace_with_one_step_is_timestep_zero():
    # numpy.linspace(0, 999, 1) == [0]: diffusers' Euler gives a single step at t = 0
    sigmas, timesteps = S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, 1)
    assert timesteps.tolist() == [0.0]
    assert float(sigmas[0]) == float(S.training_sigmas(S.SD15_SCHEDULER_CONFIG)[0])


def test_fractional_linspace_timesteps_are_float32_of_float64_linspace():
    _, timesteps = S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, 30)
    want = [float(torch.tensor(999 - i * (999 / 29), dtype=torch.float32)) for i in range(30)]
    assert timesteps.tolist()[1:-1] == pytest.approx(want[1:-1], abs=1e-4)
    assert timesteps[0] == 999 and timesteps[-1] == 0


def test_betas():
    sd = S.betas(S.SD15_SCHEDULER_CONFIG)
    assert sd.dtype == torch.float32 and sd.shape == (1000,)
    assert math.isclose(float(sd[0]), 0.00085, rel_tol=1e-6) and math.isclose(float(sd[-1]), 0.012, rel_tol=1e-6)
    assert torch.all(sd[1:] > sd[:-1])
    lin = S.betas(dict(S.SD15_SCHEDULER_CONFIG, beta_schedule="linear"))
    assert torch.allclose(lin[1:] - lin[:-1], torch.full((999,), (0.012 - 0.00085) / 999), atol=1e-8)
    # scaled_linear: square roots are evenly spaced
    root = sd.double().sqrt()
    assert torch.allclose(root[1:] - root[:-1], torch.full((999,), (0.012 ** 0.5 - 0.00085 ** 0.5) / 999,
                                                           dtype=torch.float64), atol=1e-7)
    # trained betas reproduce the table exactly
    trained = dict(S.SD15_SCHEDULER_CONFIG, trained_betas=sd.tolist(), beta_schedule="ignored")
    assert torch.equal(S.euler_sigmas(trained, 12)[0], S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, 12)[0])


def test_cosine_betas_follow_alpha_bar():
    cfg = {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000}
    b = S.betas(cfg).double()
    assert torch.all(b > 0) and torch.all(b <= float(torch.tensor(0.999, dtype=torch.float32)))

    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    cum = torch.cumprod(1 - b, 0)
    for i in (0, 10, 500, 900, 990):
        assert math.isclose(float(cum[i]), alpha_bar((i + 1) / 1000) / alpha_bar(0), rel_tol=1e-5, abs_tol=1e-9)


def test_karras_sigmas():
    cfg = dict(S.SD15_SCHEDULER_CONFIG, use_karras_sigmas=True)
    base, _ = S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, 20)
    sigmas, timesteps = S.euler_sigmas(cfg, 20)
    assert sigmas.shape == (21,) and sigmas[-1] == 0
    assert math.isclose(float(sigmas[0]), float(base[0]), rel_tol=1e-6)
    assert math.isclose(float(sigmas[-2]), float(base[-2]), rel_tol=1e-6)
    assert torch.all(sigmas[:-2] > sigmas[1:-1])
    # Karras: sigma^(1/7) evenly spaced
    r = sigmas[:-1].double() ** (1 / 7)
    assert torch.allclose(r[1:] - r[:-1], (r[-1] - r[0]).expand(19) / 19, rtol=1e-4)
    # timesteps: the fractional training timesteps of those sigmas
    assert timesteps.dtype == torch.float64
    assert abs(float(timesteps[0]) - 999) < 1e-3 and abs(float(timesteps[-1])) < 1e-3
    table = S.training_sigmas(cfg).double()
    for s, t in zip(sigmas[1:-2].tolist(), timesteps[1:-1].tolist()):
        lo = int(t)
        w = t - lo
        interp = math.exp((1 - w) * math.log(float(table[lo])) + w * math.log(float(table[lo + 1])))
        assert math.isclose(interp, s, rel_tol=1e-5), (t, s, interp)


def test_matches_diffusers_numpy_formulas():
    """Our torch-only emulation of numpy's linspace / arange / interp equals the numpy expressions of
    diffusers' Euler ``set_timesteps`` for every spacing and many step counts."""
    np = pytest.importorskip("numpy")
    table = S.training_sigmas(S.SD15_SCHEDULER_CONFIG)
    tab = table.numpy().astype(np.float32)
    for spacing in S.SPACINGS:
        cfg = dict(S.SD15_SCHEDULER_CONFIG, timestep_spacing=spacing)
        for steps in list(range(1, 80)) + [97, 128, 150, 333, 999, 1000]:
            if spacing == "linspace":
                ts = np.linspace(0, 999, steps, dtype=np.float32)[::-1].copy()
            elif spacing == "leading":
                ts = (np.arange(0, steps) * (1000 // steps)).round()[::-1].copy().astype(np.float32)
                ts += cfg["steps_offset"]
            else:
                ts = np.arange(1000, 0, -(1000 / steps)).round().copy().astype(np.float32)
                ts -= 1
            sig = np.concatenate([np.interp(ts, np.arange(0, 1000), tab), [0.0]]).astype(np.float32)
            sigmas, timesteps = S.euler_sigmas(cfg, steps)
            assert np.array_equal(timesteps.numpy(), ts), (spacing, steps)
            assert np.array_equal(sigmas.numpy(), sig), (spacing, steps)


@pytest.mark.parametrize("config, steps, word", [
    ({}, 0, "steps"),
    ({}, 2.5, "steps"),
    ({"timestep_spacing": "quadratic"}, 10, "timestep_spacing"),
    ({"beta_schedule": "sigmoid"}, 10, "beta_schedule"),
    ({"interpolation_type": "log_linear"}, 10, "interpolation_type"),
    ({"num_train_timesteps": 1}, 10, "num_train_timesteps"),
    ({"trained_betas": [0.1, 0.2]}, 10, "trained_betas"),
])
def test_errors(config, steps, word):
    with pytest.raises(S.SigmaError, match=word):
        S.euler_sigmas(dict(S.SD15_SCHEDULER_CONFIG, **config), steps)


def test_unknown_keys_are_ignored_and_defaults_fill_in():
    pndm = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000, "skip_prk_steps": True, "set_alpha_to_one": False,
            "steps_offset": 1, "trained_betas": None, "clip_sample": False}
    cfg = S.resolve_config(pndm)
    assert cfg["timestep_spacing"] == "linspace" and cfg["steps_offset"] == 1
    assert "skip_prk_steps" not in cfg
    assert S.resolve_config(None) == S.EULER_DEFAULTS


def test_training_sigmas_are_correctly_rounded():
    """float32 sqrt((1-ᾱ)/ᾱ) rounded once (IEEE sqrt, as numpy/AVX2/CUDA compute it), whatever the
    CPU build of torch does for a float32 ``** 0.5``."""
    np = pytest.importorskip("numpy")
    b = S.betas(S.SD15_SCHEDULER_CONFIG)
    ac = torch.cumprod(1.0 - b, dim=0)
    ratio = ((1 - ac) / ac).numpy()
    assert np.array_equal(S.training_sigmas(S.SD15_SCHEDULER_CONFIG).numpy(), np.sqrt(ratio))


# ------------------------------------------------------------------------------------------------
# sigma -> UNet timestep (the inverse MuseV's Euler implies)

@pytest.mark.parametrize("spacing", ["linspace", "trailing"])
@pytest.mark.parametrize("steps", [2, 3, 7, 20, 25, 30, 50])
def test_sigma_to_timestep_recovers_euler_timesteps(spacing, steps):
    cfg = dict(S.SD15_SCHEDULER_CONFIG, timestep_spacing=spacing)
    sigmas, timesteps = S.euler_sigmas(cfg, steps)
    got = S.sigma_to_timestep(sigmas[:-1], S.training_sigmas(cfg))
    assert got.dtype == torch.float32 and got.shape == timesteps.shape
    # the sigma itself was rounded to float32: worth < 2e-5 of a timestep (a few float32 ulps)
    assert (got - timesteps.float()).abs().max().item() <= 2e-5
    if steps == 3 and spacing == "linspace":
        assert got.tolist() == [999.0, 499.5, 0.0]           # a fractional MuseV timestep, exactly


def test_sigma_to_timestep_table_values_clamps_and_shapes():
    table = S.training_sigmas(S.SD15_SCHEDULER_CONFIG)
    idx = torch.tensor([0, 1, 2, 500, 998, 999])
    assert S.sigma_to_timestep(table[idx], table).tolist() == idx.float().tolist()
    assert S.sigma_to_timestep(torch.tensor([0.0, 1e-6, 1e6]), table).tolist() == [0.0, 0.0, 999.0]
    mid = (table[10] + table[11]) / 2
    assert abs(float(S.sigma_to_timestep(mid, table)) - 10.5) < 1e-3
    assert S.sigma_to_timestep(table[torch.tensor([[3, 4], [5, 6]])], table).shape == (2, 2)
    with pytest.raises(S.SigmaError, match="at least 2"):
        S.sigma_to_timestep(torch.tensor([1.0]), torch.tensor([1.0]))
