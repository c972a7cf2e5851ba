"""Checks around a MuseV sampling run (called by the OUTER_SAMPLE wrapper, so they hold under any
sampler: KSampler, SamplerCustom(Advanced), ParallelDenoiseSampler).

Before the run (nothing is loaded onto the device yet): NaN/inf in the latent or the conditioning,
a pose clip whose frame count disagrees with the video's, and a long video without context windows.
After it: NaN/inf in the result is an error that names the likely cause, never a black video.
"""
import logging

import torch

from .host import MuseVInputError, non_finite_message
from .interop import control_chain

log = logging.getLogger("comfyui-musev")

NODE_KEY = "musev_node"        # transformer_options: the node that runs the sampler, when ours
TRAINED_WINDOW = 12            # frames MuseV's temporal layers were trained on (context_frames 12)


def sampler_node(model_options):
    """The node to name in messages: ours when it set itself, else the stock samplers."""
    to = (model_options or {}).get("transformer_options", {})
    return to.get(NODE_KEY) or "the sampler (KSampler / SamplerCustom)"


def hint_frames_problem(conds, n_frames, n_vis, node, frames_input="frames", cond_input="positive"):
    """The message when a ControlNet's control images (a pose clip) cannot be laid over ``n_frames``
    generated frames with ``n_vis`` condition frames in front, else None.  Accepted counts: 1 (a
    static hint), N, or n_vis + N (PoseVideoCondition's: condition pose(s) first)."""
    for control in control_chain(conds):
        hint = getattr(control, "cond_hint_original", None)
        if not isinstance(hint, torch.Tensor) or hint.ndim != 4 or hint.shape[0] == 1:
            continue
        m = int(hint.shape[0])
        if m in (n_frames, n_frames + n_vis):
            continue
        clip = m - n_vis if n_vis and m > n_vis else m
        lead = f" ({n_vis} condition-frame pose(s) + {clip})" if n_vis and m > n_vis else ""
        return (f"{node}: '{frames_input}' is {n_frames} but the pose clip on '{cond_input}' (its ControlNet's "
                f"control images) has {m} frames{lead}: set '{frames_input}' to {clip} -- connect "
                f"PoseVideoCondition's 'frames' output to it -- or change PoseVideoCondition's 'frame_count' to "
                f"{n_frames}")
    return None


def _cond_tensors(conds):
    for cond_list in conds:
        for c in cond_list or []:
            if not isinstance(c, dict):
                continue
            for key, value in c.items():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    yield key, value
            for key, value in (c.get("model_conds") or {}).items():
                t = getattr(value, "cond", None)
                if isinstance(t, torch.Tensor) and t.is_floating_point():
                    yield key, t


def before_sampling(guider, noise, latent_image, state):
    """Raise for inputs that can only give a NaN or a wrong video; warn about a long video without
    windows.  Runs before ComfyUI loads the models for the run."""
    node = sampler_node(guider.model_options)
    if isinstance(latent_image, torch.Tensor) and latent_image.is_floating_point() \
            and not bool(torch.isfinite(latent_image).all()):
        raise MuseVInputError(f"{node}: the 'latent_image' / 'init_latent' input holds NaN/inf values, so every frame "
                              "would be NaN: re-encode the video (VAE Encode) or fix the node that makes the latent")
    conds = list(getattr(guider, "conds", {}).values()) or list(getattr(guider, "original_conds", {}).values())
    for key, t in _cond_tensors(conds):
        if not bool(torch.isfinite(t).all()):
            raise MuseVInputError(f"{node}: the conditioning ('positive' / 'negative', {key}) holds NaN/inf values: "
                                  "check the text encoder / CLIP model and any node that edits the conditioning")
    from .context import MuseVContextHandler
    handler = guider.model_options.get("context_handler")
    n_vis = 0
    if isinstance(handler, MuseVContextHandler):
        vision = getattr(state, "vision", None)
        n_vis = 0 if vision is None else int(vision.shape[0])
    elif noise.ndim == 4 and noise.shape[0] > TRAINED_WINDOW:
        log.warning("[MuseV] %s runs a MuseV MODEL on %d frames in one window (no context windows); MuseV was "
                    "trained on windows of %d frames, so motion degrades and memory grows with the length: put "
                    "MuseVContextWindows between LoadMuseVMotion and the sampler (or use ParallelDenoiseSampler)",
                    node, noise.shape[0], TRAINED_WINDOW)
    if noise.ndim == 4:
        problem = hint_frames_problem(conds, int(noise.shape[0]), n_vis, node, frames_input=(
            "frames" if node == "ParallelDenoiseSampler" else "latent_image (its batch size)"))
        if problem:
            raise MuseVInputError(problem)


def after_sampling(guider, out):
    """NaN/inf in the sampled latent is an error naming the likely cause (never a black video)."""
    if isinstance(out, torch.Tensor) and out.is_floating_point() and not bool(torch.isfinite(out).all()):
        dtype = None
        try:
            dtype = guider.model_patcher.model.get_dtype()
            cast = getattr(guider.model_patcher.model, "manual_cast_dtype", None)
            dtype = cast or dtype
        except Exception:  # noqa: BLE001
            pass
        raise MuseVInputError(f"{sampler_node(guider.model_options)}: {non_finite_message('the sampled video', out, dtype)}")
    return out
