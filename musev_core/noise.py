"""MuseV's initial video noise (spec §5.3), for ComfyUI's "frames = batch" latents.

MuseV (``MusevControlNetPipeline.prepare_latents`` with ``musev/utils/noise_util.py``) builds the
initial noise of the ``N`` frames to generate (vision-condition frames excluded) as:

* ``"video_fusion"`` (default): ``common = randn(b, c, 1, h, w)`` is drawn FIRST, then
  ``individual = randn(b, c, N, h, w)`` from the same generator;
  ``noise = sqrt(1 - w_ind)·common + sqrt(w_ind)·individual`` (``w_ind_noise`` 0.5).  The common
  image is shared by every frame and hence by every context window.
* ``"random"``: ``noise = randn(b, c, N, h, w)``.
* image-based mix (``need_img_based_video_noise``, default on when condition latents are given):
  ``noise = sqrt(img_weight)·mean_T(cond_latents) + sqrt(1 - img_weight)·noise`` (``img_weight``
  1e-3), the mean over the vision-condition frames broadcast to all N frames.
* ``latents = noise · init_noise_sigma`` (see :mod:`.sigmas`).

Random numbers: MuseV draws with ``diffusers.utils.torch_utils.randn_tensor`` -- one
``torch.randn(shape, generator=g, dtype=dtype)`` per tensor on the generator's device.  Its scripts
seed a CUDA generator (``mmcm.utils.seed_util.set_all_seed`` returns ``torch.Generator("cuda")``)
and run in fp16, so MuseV's released videos cannot be reproduced bit for bit on CPU.  Here noise is
drawn on a CPU ``torch.Generator`` (ComfyUI's convention) in the order and shapes above, which
reproduces MuseV run with a CPU generator exactly (float32).  Note that MuseV's Euler ``step``
also draws a video-fusion noise of the model-output shape at every step (unused, ``s_churn`` = 0),
which advances the generator; only the initial noise is reproduced here.

Layouts: MuseV's is ``(b, c, t, h, w)``; ComfyUI's video latent is ``(N, C, h, w)`` (frames =
batch, one video).  :func:`video_noise` and :func:`image_based_mix` work in ComfyUI's layout and
draw in MuseV's shapes internally; :func:`musev_video_noise` works in MuseV's layout.
"""
import math

import torch

NOISE_TYPES = ("video_fusion", "random")


class NoiseError(ValueError):
    """A noise setting that cannot work; the message names the input and the fix."""


def make_generator(seed_or_generator=None, seed=None):
    """A CPU ``torch.Generator``: the one given, or a new one seeded with ``seed`` (an int).

    ``seed_or_generator`` may itself be an int seed.  With nothing given, seed 0."""
    if isinstance(seed_or_generator, torch.Generator):
        return seed_or_generator
    if seed_or_generator is not None and seed is not None:
        raise NoiseError("give either a generator/seed positionally or seed=, not both")
    value = seed if seed_or_generator is None else seed_or_generator
    if value is None:
        value = 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise NoiseError(f"seed must be an integer or a torch.Generator, got {value!r}")
    generator = torch.Generator(device="cpu")
    generator.manual_seed(value)
    return generator


def _check_weight(name, value):
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise NoiseError(f"{name} is {value}: it is a mixing weight and must lie in [0, 1]")
    return value


def fuse(common, individual, w_ind_noise):
    """``sqrt(1-w)·common + sqrt(w)·individual``, computed as MuseV does (``w`` as a tensor of the
    noise dtype, so the square roots are rounded like MuseV's).  Broadcasts ``common`` over frames."""
    w = _check_weight("w_ind_noise", w_ind_noise)
    dtype = individual.dtype
    s = torch.tensor(w, dtype=dtype)
    # MuseV: torch.sqrt(1 - s), torch.sqrt(s) on 0-d tensors of the noise dtype.  The roots are
    # taken in double and rounded once (= IEEE sqrt in that dtype; some CPU builds of torch use a
    # vectorised sqrt that is an ulp off).
    w_common = torch.tensor(math.sqrt(float(1 - s)), dtype=torch.float64).to(dtype)
    w_ind = torch.tensor(math.sqrt(float(s)), dtype=torch.float64).to(dtype)
    return w_common.to(individual.device) * common + w_ind.to(individual.device) * individual


def musev_video_noise(kind, shape, generator=None, w_ind_noise=0.5, dtype=torch.float32, return_parts=False):
    """MuseV's noise in MuseV's layout: ``shape = (b, c, t, h, w)``.

    ``kind``: ``"video_fusion"`` or ``"random"``.  ``generator``: a ``torch.Generator`` or an int
    seed.  With ``return_parts=True`` returns ``(noise, common, individual)`` (``common`` is ``None``
    for ``"random"``).  Drawn on the generator's device, in ``dtype``.
    """
    if kind not in NOISE_TYPES:
        raise NoiseError(f"noise_type {kind!r} is unknown: choose one of {', '.join(NOISE_TYPES)}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 5 or min(shape) < 1:
        raise NoiseError(f"noise shape must be (batch, channels, frames, height, width) with sizes >= 1, got {shape}")
    gen = make_generator(generator)
    device = gen.device
    if kind == "random":
        noise = torch.randn(shape, generator=gen, dtype=dtype, device=device)
        return (noise, None, noise) if return_parts else noise
    b, c, _, h, w = shape
    common = torch.randn((b, c, 1, h, w), generator=gen, dtype=dtype, device=device)
    individual = torch.randn(shape, generator=gen, dtype=dtype, device=device)
    noise = fuse(common, individual, w_ind_noise)
    return (noise, common, individual) if return_parts else noise


def video_noise(kind, n_frames, channels, height, width, generator=None, w_ind_noise=0.5, *, seed=None,
                dtype=torch.float32, device=None):
    """MuseV's initial noise for one video in ComfyUI's layout: returns ``(N, C, h, w)``.

    ``height``/``width`` are LATENT sizes.  ``generator``: a ``torch.Generator`` (CPU) or an int
    seed (``seed=`` works too).  The numbers are those MuseV draws for ``(1, C, N, h, w)`` with the
    same generator (common image first for ``"video_fusion"``), moved to frames-first order.
    The result is moved to ``device`` if given (drawing always happens on the generator's device).
    """
    for name, value in (("n_frames", n_frames), ("channels", channels), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise NoiseError(f"{name} must be a positive integer, got {value!r}")
    gen = make_generator(generator, seed)
    noise = musev_video_noise(kind, (1, channels, n_frames, height, width), gen, w_ind_noise, dtype)
    noise = musev_to_frames(noise)
    return noise if device is None else noise.to(device)


def image_based_mix(noise, cond_latents, img_weight):
    """``sqrt(img_weight)·mean(cond_latents) + sqrt(1-img_weight)·noise`` in ComfyUI's layout.

    ``noise``: ``(N, C, h, w)``; ``cond_latents``: the clean vision-condition latents
    ``(n_vis, C, h, w)`` in the model's latent space (VAE latent × scaling factor), averaged over
    their frames and broadcast to all N frames.  ``img_weight`` 0 returns ``noise`` unchanged.
    """
    w = _check_weight("img_weight", img_weight)
    if noise.ndim != 4 or cond_latents.ndim != 4:
        raise NoiseError(
            f"image_based_mix expects noise (frames, C, h, w) and condition latents (n_vis, C, h, w), got "
            f"{tuple(noise.shape)} and {tuple(cond_latents.shape)}")
    if tuple(cond_latents.shape[1:]) != tuple(noise.shape[1:]):
        raise NoiseError(
            f"condition latents {tuple(cond_latents.shape[1:])} (C, h, w) do not match the video noise "
            f"{tuple(noise.shape[1:])}: encode the condition image at the video's size")
    if cond_latents.shape[0] < 1:
        raise NoiseError("image_based_mix needs at least one condition latent frame")
    if w == 0.0:
        return noise
    mean = cond_latents.to(device=noise.device, dtype=noise.dtype).mean(dim=0, keepdim=True)
    return w ** 0.5 * mean + (1 - w) ** 0.5 * noise


def initial_latents(noise, init_noise_sigma):
    """``noise · init_noise_sigma`` (MuseV's start latents for a pure-noise run)."""
    return noise * init_noise_sigma


def frames_to_musev(x):
    """``(N, C, h, w)`` -> ``(1, C, N, h, w)``."""
    if x.ndim != 4:
        raise NoiseError(f"expected a (frames, C, h, w) tensor, got shape {tuple(x.shape)}")
    return x.permute(1, 0, 2, 3).unsqueeze(0)


def musev_to_frames(x):
    """``(1, C, N, h, w)`` -> ``(N, C, h, w)`` (contiguous)."""
    if x.ndim != 5 or x.shape[0] != 1:
        raise NoiseError(f"expected a (1, C, frames, h, w) tensor, got shape {tuple(x.shape)}")
    return x[0].permute(1, 0, 2, 3).contiguous()


__all__ = [
    "NOISE_TYPES", "NoiseError", "make_generator", "fuse", "musev_video_noise", "video_noise",
    "image_based_mix", "initial_latents", "frames_to_musev", "musev_to_frames",
]
