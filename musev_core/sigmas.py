"""diffusers' ``EulerDiscreteScheduler`` sigma tables, as MuseV uses them (spec §5.4).

MuseV builds its Euler scheduler from the T2I base model's scheduler config (diffusers 0.24 in the
TME fork) and calls ``set_timesteps(steps)``.  This module reproduces those tables with torch
only, rounding where diffusers rounds:

* betas in float32 (``linear``: ``linspace(beta_start, beta_end)``; ``scaled_linear``:
  ``linspace(sqrt(beta_start), sqrt(beta_end))**2``; ``squaredcos_cap_v2``: the cosine schedule;
  or ``trained_betas``), ``alphas_cumprod = cumprod(1 - betas)`` in float32, training sigmas
  ``sqrt((1 - ᾱ)/ᾱ)`` in float32;
* timesteps (numpy float64 maths, then float32): ``linspace`` = ``linspace(0, T-1, steps)``
  reversed; ``leading`` = ``arange(steps)·(T // steps)`` reversed ``+ steps_offset``; ``trailing`` =
  ``round(arange(T, 0, -T/steps)) - 1``;
* sigmas = linear interpolation of the training sigmas at the timesteps in float64 (``np.interp``),
  optionally converted to Karras sigmas (ρ = 7), then a trailing 0 and a float32 cast;
* ``init_noise_sigma`` = ``max(sigmas)`` for ``linspace``/``trailing`` spacing, else
  ``sqrt(max² + 1)`` (float32).

Examples (SD1.5 betas, 10 steps): linspace 999, 888, ..., 111, 0; leading with steps_offset 1:
901, 801, ..., 1; trailing 999, 899, ..., 99.  With 1 step ``linspace`` gives the single timestep
0 (numpy's ``linspace(0, 999, 1) == [0]``) -- reproduced, like diffusers.

Config keys that diffusers 0.24's Euler does not know (``skip_prk_steps``, ``clip_sample``, ...)
are ignored, as ``from_config`` ignores them; missing keys take Euler's defaults.
"""
import math

import torch

# diffusers 0.24 EulerDiscreteScheduler.__init__ defaults (used for keys missing from a config).
EULER_DEFAULTS = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "timestep_spacing": "linspace",
    "steps_offset": 0,
}

# Stable Diffusion 1.5's scheduler_config.json (a PNDM config: steps_offset 1, no timestep_spacing)
# as seen by diffusers' Euler: spacing falls back to "linspace", so 10 steps are 999, 888, ..., 0.
SD15_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "timestep_spacing": "linspace",
    "steps_offset": 1,
}

SPACINGS = ("linspace", "leading", "trailing")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


class SigmaError(ValueError):
    """A scheduler config or step count that cannot be used; the message names the input."""


def resolve_config(config=None):
    """Euler's view of a scheduler config: known keys from ``config``, Euler defaults for the rest."""
    out = dict(EULER_DEFAULTS)
    if config:
        for key in EULER_DEFAULTS:
            if key in config and not (key == "trained_betas" and config[key] is None):
                out[key] = config[key]
    if out["beta_schedule"] not in BETA_SCHEDULES and out["trained_betas"] is None:
        raise SigmaError(f"scheduler beta_schedule {out['beta_schedule']!r} is not supported: "
                         f"use one of {', '.join(BETA_SCHEDULES)} or trained_betas")
    if out["timestep_spacing"] not in SPACINGS:
        raise SigmaError(f"scheduler timestep_spacing {out['timestep_spacing']!r} is not supported: "
                         f"use one of {', '.join(SPACINGS)}")
    if out["interpolation_type"] != "linear":
        raise SigmaError(f"scheduler interpolation_type {out['interpolation_type']!r} is not supported: "
                         "only 'linear' (diffusers' default, used by every SD1.5 config)")
    n = out["num_train_timesteps"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise SigmaError(f"scheduler num_train_timesteps must be an integer >= 2, got {n!r}")
    if out["trained_betas"] is not None and len(out["trained_betas"]) != n:
        raise SigmaError(f"scheduler trained_betas has {len(out['trained_betas'])} values, "
                         f"num_train_timesteps is {n}")
    return out


def _cosine_betas(n, max_beta=0.999):
    """The ``squaredcos_cap_v2`` (Nichol & Dhariwal) betas, float64 maths then float32."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
    values = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return torch.tensor(values, dtype=torch.float32)


def betas(config=None):
    """float32 betas of the training schedule."""
    cfg = resolve_config(config)
    n = cfg["num_train_timesteps"]
    if cfg["trained_betas"] is not None:
        return torch.tensor(list(cfg["trained_betas"]), dtype=torch.float32)
    if cfg["beta_schedule"] == "linear":
        return torch.linspace(cfg["beta_start"], cfg["beta_end"], n, dtype=torch.float32)
    if cfg["beta_schedule"] == "scaled_linear":
        return torch.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n, dtype=torch.float32) ** 2
    return _cosine_betas(n)


def _sqrt_f32(values):
    """Correctly rounded float32 square roots of float32 ``values``.

    (diffusers writes ``x ** 0.5`` on a float32 tensor; IEEE sqrt is correctly rounded on AVX2,
    CUDA and numpy, but some torch CPU builds use a vectorised approximation that is off by an
    ulp, so the root is taken in Python double precision and rounded once to float32.)"""
    return torch.tensor([math.sqrt(v) for v in values.tolist()], dtype=torch.float64).to(torch.float32)


def _log_f32(values):
    """float32 natural logs of float32 ``values`` (double precision, rounded once)."""
    return torch.tensor([math.log(v) for v in values.tolist()], dtype=torch.float64).to(torch.float32)


def training_sigmas(config=None):
    """float32 ``sqrt((1 - ᾱ_t)/ᾱ_t)`` for t = 0 .. T-1 (ascending).

    ``ᾱ`` = ``torch.cumprod(1 - betas)`` exactly as diffusers computes it (float32 output, the
    CPU kernel accumulates in double)."""
    alphas_cumprod = torch.cumprod(1.0 - betas(config), dim=0)
    return _sqrt_f32((1 - alphas_cumprod) / alphas_cumprod)


def _check_steps(steps):
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SigmaError(f"steps must be a positive integer, got {steps!r}")


def _numpy_linspace(stop, num):
    """float64 ``numpy.linspace(0, stop, num)`` (step multiply, exact last value)."""
    y = torch.arange(num, dtype=torch.float64)
    if num > 1:
        y = y * (float(stop) / (num - 1))
        y[-1] = float(stop)
    else:
        y = y * float(stop)
    return y


def _numpy_arange_down(start, step):
    """float64 ``numpy.arange(start, 0, -step)`` for positive ``step``: numpy's length rule
    ``ceil((0 - start) / -step)`` and its fill rule ``x0 + i·((x0 - step) - x0)``."""
    length = math.ceil((0 - start) / -step)
    first = float(start)
    second = first + -step
    delta = second - first
    values = [first + i * delta for i in range(length)]
    if length > 1:
        values[1] = second
    return torch.tensor(values, dtype=torch.float64)


def euler_timesteps(config, steps):
    """diffusers Euler's ``timesteps`` for ``steps`` (float32, descending)."""
    cfg = resolve_config(config)
    _check_steps(steps)
    n = cfg["num_train_timesteps"]
    spacing = cfg["timestep_spacing"]
    if spacing == "linspace":
        return _numpy_linspace(n - 1, steps).flip(0).to(torch.float32)
    if spacing == "leading":
        ratio = n // steps
        t = (torch.arange(steps, dtype=torch.int64) * ratio).flip(0).to(torch.float32)
        return t + cfg["steps_offset"]
    ratio = n / steps
    t = torch.round(_numpy_arange_down(n, ratio)).to(torch.float32)
    return t - 1


def _interp(x, table):
    """``numpy.interp(x, arange(len(table)), table)`` in float64 (x inside the table range)."""
    x = x.to(torch.float64)
    table = table.to(torch.float64)
    last = table.shape[0] - 1
    lo = torch.floor(x).clamp(0, last).to(torch.int64)
    hi = (lo + 1).clamp(max=last)
    slope = table[hi] - table[lo]
    out = slope * (x - lo.to(torch.float64)) + table[lo]
    exact = (x == lo.to(torch.float64)) | (lo == last)
    out = torch.where(exact, table[lo], out)
    out = torch.where(x <= 0, table[0], out)
    return torch.where(x >= last, table[last], out)


def _karras(sigmas, steps, rho=7.0):
    """Karras et al. (2022) sigmas between the first and last of ``sigmas`` (float64)."""
    sigma_min = float(sigmas[-1])
    sigma_max = float(sigmas[0])
    ramp = _numpy_linspace(1.0, steps)
    min_inv = sigma_min ** (1 / rho)
    max_inv = sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def _sigma_to_t(sigmas, log_table):
    """Fractional training timesteps of ``sigmas`` by linear interpolation in log sigma (float64)."""
    log_table = log_table.to(torch.float64)
    log_s = torch.log(torch.clamp(sigmas, min=1e-10))
    last = log_table.shape[0] - 1
    # index of the last table entry <= log sigma (0 if none), at most T-2
    below = (log_s[None, :] - log_table[:, None]) >= 0
    low = torch.where(below.any(0), below.shape[0] - 1 - below.flip(0).to(torch.int64).argmax(0),
                      torch.zeros_like(log_s, dtype=torch.int64)).clamp(max=last - 1)
    high = low + 1
    lo_v, hi_v = log_table[low], log_table[high]
    w = ((lo_v - log_s) / (lo_v - hi_v)).clamp(0, 1)
    return (1 - w) * low.to(torch.float64) + w * high.to(torch.float64)


def euler_sigmas(config, steps):
    """``(sigmas, timesteps)`` of diffusers' Euler after ``set_timesteps(steps)``.

    ``sigmas``: float32, ``steps + 1`` values, descending, ending with 0 (a ComfyUI SIGMAS
    tensor).  ``timesteps``: the UNet timesteps of the first ``steps`` sigmas (float32; float64 with
    ``use_karras_sigmas``, as diffusers).  ``config``: a scheduler config dict (``None`` = Euler
    defaults; MuseV/SD1.5: :data:`SD15_SCHEDULER_CONFIG`).
    """
    cfg = resolve_config(config)
    timesteps = euler_timesteps(cfg, steps)
    table = training_sigmas(cfg)
    sigmas = _interp(timesteps, table)
    if cfg["use_karras_sigmas"]:
        sigmas = _karras(sigmas, steps)
        timesteps = _sigma_to_t(sigmas, _log_f32(table))
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)
    return sigmas, timesteps


def sigma_to_timestep(sigma, table):
    """The UNet timestep diffusers' Euler pairs with ``sigma``: the inverse of its linear
    interpolation of the training sigmas ``table`` (ascending, one per training step).

    MuseV's default 30-step linspace schedule has fractional timesteps (999·k/29) and its UNet gets
    them as they are; a table value gives its integer index exactly.  Sigmas outside the table clamp
    to 0 / T-1.  Returns float32 with the shape of ``sigma``."""
    table = torch.as_tensor(table).to(torch.float64).reshape(-1)
    if table.shape[0] < 2:
        raise SigmaError(f"a sigma table needs at least 2 values, got {table.shape[0]}")
    s = torch.as_tensor(sigma).to(device="cpu", dtype=torch.float64)
    flat = s.reshape(-1)
    last = table.shape[0] - 1
    hi = torch.searchsorted(table, flat).clamp(1, last)
    lo = hi - 1
    w = ((flat - table[lo]) / (table[hi] - table[lo])).clamp(0, 1)
    t = lo.to(torch.float64) + w
    t = torch.where(flat <= table[0], torch.zeros_like(t), t)
    t = torch.where(flat >= table[last], torch.full_like(t, float(last)), t)
    return t.to(torch.float32).reshape(s.shape)


def init_noise_sigma(config, sigmas):
    """diffusers Euler's ``init_noise_sigma`` for these ``sigmas``, as a Python float.

    ``max(sigmas)`` for ``linspace``/``trailing`` spacing, else ``sqrt(max(sigmas)² + 1)`` (float32)."""
    cfg = resolve_config(config)
    top = torch.as_tensor(sigmas, dtype=torch.float32).max()
    if cfg["timestep_spacing"] in ("linspace", "trailing"):
        return float(top)
    return float((top ** 2 + 1) ** 0.5)


__all__ = [
    "EULER_DEFAULTS", "SD15_SCHEDULER_CONFIG", "SPACINGS", "BETA_SCHEDULES", "SigmaError", "resolve_config",
    "betas", "training_sigmas", "euler_timesteps", "euler_sigmas", "sigma_to_timestep", "init_noise_sigma",
]
