"""Visual-condition parallel denoising: the context-window MODEL patch (for any sampler),
ParallelDenoiseSampler (the one-node front end over the same machinery), shot chaining.
"""
import logging

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import latent_preview

from ..musev_core import sigmas as S
from ..musev_core import windows as W
from . import checks, compat
from .context import PROGRESS_KEY, apply_parallel_denoise
from .host import MuseVInputError, widget_problem
from .patch import NoiseSettings, get_state

log = logging.getLogger("comfyui-musev")

CATEGORY = "MuseV"
SCHEDULES = ["uniform_v2", "uniform_looped"]
NOISE_TYPES = ["video_fusion", "random"]
MUSEV_SCHEDULER = "musev_linspace"
# Expert knobs (context_stride where a node has it): flagged as advanced inputs, which ComfyUI 0.28's
# frontend folds away in its Vue-nodes renderer and lists apart in its side panel.
ADVANCED_INPUTS = ("context_batch_size", "context_stride", "noise_type", "w_ind_noise", "img_weight")


def mark_advanced(inputs):
    """``inputs`` with the expert knobs (:data:`ADVANCED_INPUTS`) flagged as advanced."""
    return {name: (spec[0], compat.advanced(spec[1])) if name in ADVANCED_INPUTS and len(spec) > 1 else spec
            for name, spec in inputs.items()}


def musev_linspace_sigmas(model_sampling, steps):
    """The ``musev_linspace`` scheduler for KSampler / BasicScheduler: MuseV's Euler sigmas (diffusers'
    linspace spacing on SD1.5's scaled-linear betas), exactly ``musev_core.sigmas.euler_sigmas``.
    MuseV is SD1.5-only, so the table is SD1.5's whatever ``model_sampling`` says."""
    sigmas, _ = S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, int(steps))
    top = float(getattr(model_sampling, "sigma_max", sigmas[0]))
    if abs(top - float(sigmas[0])) > 1e-3 * float(sigmas[0]):
        log.warning("%s: this model's sigma range (max %.4g) is not SD1.5's (%.4g): the MuseV schedule is meant "
                    "for SD1.5 models", MUSEV_SCHEDULER, top, float(sigmas[0]))
    return sigmas


def context_inputs():
    return {
        "context_frames": ("INT", {"default": 12, "min": 2, "max": 256, "tooltip":
            "Frames per window (MuseV's context_frames, 12 as trained). Videos longer than this are denoised "
            "in overlapping windows that all see the condition frame(s)."}),
        "context_overlap": ("INT", {"default": 4, "min": 0, "max": 255, "tooltip":
            "Frames shared by consecutive windows (MuseV: 4). Must be smaller than context_frames."}),
        "context_schedule": (SCHEDULES, {"default": "uniform_v2", "tooltip":
            "uniform_v2: MuseV's default, windows start at 0, F-O, ... and are cut at the end. uniform_looped: "
            "windows wrap around the end (closed loop) for seamlessly looping videos."}),
        "context_batch_size": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip":
            "Windows denoised together in one UNet call. 0 = auto (default): on a GPU as many as its free memory "
            "allows by ComfyUI's memory estimate; 1 on the CPU and under low VRAM. Any value gives the same video "
            "(up to float rounding); more windows per call is faster on a large GPU and needs more memory."}),
    }


def noise_inputs():
    return {
        "noise_type": (NOISE_TYPES, {"default": "video_fusion", "tooltip":
            "video_fusion (MuseV): a noise image shared by all frames mixed with per-frame noise; random: "
            "independent noise per frame."}),
        "w_ind_noise": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
            "video_fusion: weight of the per-frame noise (MuseV: 0.5)."}),
        "img_weight": ("FLOAT", {"default": 0.001, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip":
            "Image-based noise: mixes this much of the condition latent's mean into the initial noise (MuseV: 1e-3; "
            "0 = off)."}),
    }


class ParallelDenoiseSampler:
    DESCRIPTION = ("MuseV's visual-condition parallel denoising in one node: video noise, overlapping context "
                   "windows that all see the clean condition frame(s), window averaging, any ComfyUI sampler. "
                   "Outputs a LATENT video (frames = batch).")

    @classmethod
    def INPUT_TYPES(cls):
        req = {
            "model": ("MODEL", {"tooltip": "A MODEL with MuseV installed (LoadMuseVMotion, optionally "
                                           "MuseVIPAdapter / MuseVReferenceNet)."}),
            "positive": ("CONDITIONING", {"tooltip": "Prompt (ControlNets applied to it are sliced per window)."}),
            "negative": ("CONDITIONING", {"tooltip": "Negative prompt."}),
            "frames": ("INT", {"default": 12, "min": 1, "max": 4096, "tooltip":
                "Frames to generate after the condition frame(s)."}),
            "width": ("INT", {"default": 512, "min": 64, "max": 8192, "step": 8, "tooltip":
                "Video width in pixels (MuseV uses multiples of 64). The condition image is centre-cropped "
                "and resized to it; a vision_latent / init_latent must already have this size."}),
            "height": ("INT", {"default": 512, "min": 64, "max": 8192, "step": 8, "tooltip":
                "Video height in pixels (see width)."}),
        }
        req.update(mark_advanced(context_inputs()))
        req.update(mark_advanced(noise_inputs()))
        req.update({
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                             "tooltip": "Noise seed."}),
            "steps": ("INT", {"default": 10, "min": 1, "max": 1000, "tooltip": "Denoising steps (MuseV: 10)."}),
            "cfg": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip":
                "Guidance scale (MuseV's video_guidance_scale: 3.5)."}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler", "tooltip":
                "Sampler (MuseV: euler)."}),
            "scheduler": ([MUSEV_SCHEDULER] + [s for s in comfy.samplers.KSampler.SCHEDULERS if s != MUSEV_SCHEDULER], {
                "default": MUSEV_SCHEDULER, "tooltip":
                "musev_linspace reproduces MuseV's Euler sigmas exactly (diffusers linspace); 'normal' is within 1e-5."}),
            "include_condition_frames": ("BOOLEAN", {"default": True, "tooltip":
                "Put the condition frame(s) in front of the output, as MuseV does."}),
        })
        return {
            "required": req,
            "optional": {
                "vision_image": ("IMAGE", {"tooltip": "Condition image(s): the clean first frame(s) every window sees. "
                                                      "Needs 'vae'. Leave empty for plain text-to-video."}),
                "vae": ("VAE", {"tooltip": "VAE to encode vision_image (MuseV used sd-vae-ft-mse)."}),
                "vision_latent": ("LATENT", {"tooltip": "Condition frame(s) as latents (e.g. the last frame of a "
                                                        "previous shot); used instead of vision_image."}),
                "sigmas": ("SIGMAS", {"tooltip": "Custom sigmas; overrides steps/scheduler."}),
                "init_latent": ("LATENT", {"tooltip": "video-to-video: latents of the driving video (VAE Encode); "
                                                      "noised to 'denoise'."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                    "With init_latent: how much of the schedule to run (1.0 = MuseV)."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, context_frames=None, context_overlap=None,
                        context_batch_size=None):
        return window_problem(cls, "ParallelDenoiseSampler", width, height, context_frames, context_overlap,
                              context_batch_size)

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The video latents (condition frame(s) first when included).",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, model, positive, negative, frames, width, height, context_frames, context_overlap,
               context_schedule, context_batch_size, noise_type, w_ind_noise, img_weight, seed, steps, cfg,
               sampler_name, scheduler, include_condition_frames, vision_image=None, vae=None, vision_latent=None,
               sigmas=None, init_latent=None, denoise=1.0):
        node = "ParallelDenoiseSampler"
        get_state(model, node)
        if frames < 1:
            raise MuseVInputError(f"{node}: 'frames' is {frames}: generate at least 1 frame")
        if width % 8 or height % 8:
            raise MuseVInputError(f"{node}: width/height {width}x{height} must be multiples of 8 (MuseV: 64)")
        try:
            W.validate(frames, context_frames, context_overlap, max(1, context_batch_size))
        except W.WindowError as e:
            raise MuseVInputError(f"{node}: {e}") from None
        n_vis = condition_count(vision_image, vision_latent)
        problem = checks.hint_frames_problem([[c[1] for c in cond if len(c) > 1 and isinstance(c[1], dict)]
                                              for cond in (positive, negative)], frames, n_vis, node)
        if problem:      # before the VAE / CLIP vision / models load
            raise MuseVInputError(problem)
        vision = condition_latents(node, vision_image, vae, vision_latent, width, height)
        channels = model.model.latent_format.latent_channels
        if vision is not None and vision.shape[1] != channels:
            what = ("'vision_latent'" if vision_latent is not None else "'vision_image' (encoded by 'vae')")
            raise MuseVInputError(f"{node}: {what} has {vision.shape[1]} latent channels but the MODEL's latents have "
                                  f"{channels}: use the SD1.5 VAE (4 channels, e.g. vae-ft-mse-840000) for the "
                                  "condition image")
        h, w = height // 8, width // 8
        if init_latent is not None:
            latent = checked_latent(node, "init_latent", init_latent, frames, channels, h, w)
            if not 0.0 < denoise <= 1.0:
                raise MuseVInputError(f"{node}: 'denoise' is {denoise}: with an init_latent it must be above 0 "
                                      "(how much of the schedule to run; 1.0 = MuseV)")
        else:
            latent = torch.zeros(frames, channels, h, w)
            if denoise < 1.0:   # would be ignored: a full text/image-to-video run, not what was asked
                raise MuseVInputError(f"{node}: 'denoise' is {denoise} but no 'init_latent' is connected: connect "
                                      "the driving video's latents (VAE Encode) to init_latent, or set denoise "
                                      "to 1.0")
        # MuseV mixes the condition latent into the noise only without an init video (spec §5.3).
        noise = NoiseSettings(noise_type, float(w_ind_noise), 0.0 if init_latent is not None else float(img_weight),
                              diffusers_init=(sigmas is None and scheduler == MUSEV_SCHEDULER))
        m = apply_parallel_denoise(model, vision=vision, schedule=context_schedule, context_frames=context_frames,
                                   context_overlap=context_overlap, context_batch_size=context_batch_size,
                                   noise=noise, node=node)
        sig = make_sigmas(m, scheduler, steps, denoise if init_latent is not None else 1.0, sigmas, node)
        n_windows = len(W.get_windows(context_schedule, frames, context_frames, context_overlap))
        out = run_sampler(m, positive, negative, latent, sig, sampler_name, cfg, seed, n_windows)
        if include_condition_frames and vision is not None:
            out = torch.cat([vision.to(out.dtype), out])
        return ({"samples": out},)


class MuseVContextWindows:
    DESCRIPTION = ("Adds MuseV's parallel denoising to a MODEL so that any sampler (KSampler, SamplerCustom...) "
                   "runs it: the vision condition frame(s) are prepended to every window, windows are averaged.")

    @classmethod
    def INPUT_TYPES(cls):
        req = {"model": ("MODEL", {"tooltip": "A MODEL with MuseV installed (LoadMuseVMotion)."})}
        req.update(mark_advanced(context_inputs()))
        req.update(mark_advanced(noise_inputs()))
        return {
            "required": req,
            "optional": {
                "vision_latent": ("LATENT", {"tooltip": "Clean condition frame(s) (VAE Encode of the condition "
                                                        "image). Empty = plain text-to-video."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, context_frames=None, context_overlap=None, context_batch_size=None):
        return window_problem(cls, "MuseVContextWindows", context_frames=context_frames,
                              context_overlap=context_overlap, context_batch_size=context_batch_size)

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The MODEL with MuseV's context windows (a clone; the input MODEL is untouched): sample it "
                       "with KSampler / SamplerCustom (scheduler musev_linspace = MuseV's sigmas).",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, model, context_frames, context_overlap, context_schedule, context_batch_size, noise_type,
              w_ind_noise, img_weight, vision_latent=None):
        vision = None
        if vision_latent is not None:
            vision = latent_samples("MuseVContextWindows", "vision_latent", vision_latent)
            channels = model.model.latent_format.latent_channels if hasattr(model, "model") else vision.shape[1]
            if vision.shape[1] != channels:
                raise MuseVInputError(f"MuseVContextWindows: 'vision_latent' has {vision.shape[1]} latent channels but "
                                      f"the MODEL's latents have {channels}: encode the condition image with the SD1.5 "
                                      "VAE (4 channels, e.g. vae-ft-mse-840000)")
        noise = NoiseSettings(noise_type, float(w_ind_noise), float(img_weight), diffusers_init=False)
        return (apply_parallel_denoise(model, vision=vision, schedule=context_schedule, context_frames=context_frames,
                                       context_overlap=context_overlap, context_batch_size=context_batch_size,
                                       noise=noise, node="MuseVContextWindows"),)


class MuseVShotCondition:
    DESCRIPTION = ("End-to-end shot chaining (MuseV's n_batch): the last frame(s) of one shot's latents become "
                   "the next shot's vision condition (not re-encoded, as MuseV).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "latent": ("LATENT", {"tooltip": "The previous shot (ParallelDenoiseSampler output)."}),
            "condition_frames": ("INT", {"default": 1, "min": 1, "max": 16, "tooltip":
                "How many trailing frames become the next shot's condition (MuseV: 1)."}),
        }}

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("vision_latent",)
    OUTPUT_TOOLTIPS = ("The last condition_frames latent frame(s) of the shot: the next shot's vision_latent.",)
    FUNCTION = "take"
    CATEGORY = CATEGORY

    def take(self, latent, condition_frames):
        samples = latent_samples("MuseVShotCondition", "latent", latent)
        if samples.shape[0] < condition_frames:
            raise MuseVInputError(f"MuseVShotCondition: 'latent' has {samples.shape[0]} frames, fewer than "
                                  f"condition_frames={condition_frames}: lower condition_frames or pass a longer "
                                  "shot")
        return ({"samples": samples[-condition_frames:].clone()},)


class MuseVJoinShots:
    DESCRIPTION = ("Joins chained shots into one video: drops the leading condition frame(s) of the next shot "
                   "(they repeat the previous shot's last frames), as MuseV does.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "video": ("LATENT", {"tooltip": "The video so far."}),
            "next_shot": ("LATENT", {"tooltip": "The next shot, sampled with include_condition_frames on or off."}),
            "drop_leading_frames": ("INT", {"default": 1, "min": 0, "max": 16, "tooltip":
                "Leading frames of next_shot to drop (its condition frames; 0 if it was sampled without them)."}),
        }}

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("video",)
    OUTPUT_TOOLTIPS = ("The joined video latents: video, then next_shot without its leading condition frame(s).",)
    FUNCTION = "join"
    CATEGORY = CATEGORY

    def join(self, video, next_shot, drop_leading_frames):
        a = latent_samples("MuseVJoinShots", "video", video)
        b = latent_samples("MuseVJoinShots", "next_shot", next_shot)
        if a.shape[1] != b.shape[1]:
            raise MuseVInputError(f"MuseVJoinShots: 'next_shot' has {b.shape[1]} latent channels, 'video' {a.shape[1]}: "
                                  "both shots must come from the same model and VAE")
        if a.shape[1:] != b.shape[1:]:
            raise MuseVInputError(f"MuseVJoinShots: 'video' frames are {tuple(a.shape[1:])}, 'next_shot' frames "
                                  f"{tuple(b.shape[1:])}: shots must have the same size")
        if drop_leading_frames >= b.shape[0]:
            raise MuseVInputError(f"MuseVJoinShots: 'drop_leading_frames' is {drop_leading_frames} but 'next_shot' "
                                  f"has only {b.shape[0]} frames, nothing would be left: lower drop_leading_frames "
                                  "(1 = the condition frame; 0 if it was sampled without it)")
        return ({"samples": torch.cat([a, b[drop_leading_frames:].to(a.dtype)])},)


# ------------------------------------------------------------------------------------------------

def latent_samples(node, name, latent):
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        raise MuseVInputError(f"{node}: '{name}' is not a LATENT")
    if samples.ndim != 4:
        raise MuseVInputError(f"{node}: '{name}' must be an image latent batch (frames, channels, h, w), got "
                              f"shape {tuple(samples.shape)}")
    if samples.shape[0] == 0:
        raise MuseVInputError(f"{node}: '{name}' is empty (0 frames): connect a latent batch with at least one "
                              "frame (check the node that makes it: frame range, batch index)")
    if not torch.isfinite(samples).all():
        raise MuseVInputError(f"{node}: '{name}' contains NaN/inf values: re-encode or regenerate it")
    return samples


def condition_count(image, latent):
    """Condition frames the sampler will put in front of every window (known before anything is encoded)."""
    for value in (latent.get("samples") if isinstance(latent, dict) else None, image):
        if isinstance(value, torch.Tensor) and value.ndim == 4:
            return int(value.shape[0])
    return 0


def window_problem(cls, node, width=None, height=None, context_frames=None, context_overlap=None,
                   context_batch_size=None):
    """VALIDATE_INPUTS of the sampler and the context-window node (widget values only; before any
    model loads): ComfyUI's range checks for these inputs, sizes in multiples of 8, windows that advance."""
    problem = widget_problem(cls, node, width=width, height=height, context_frames=context_frames,
                             context_overlap=context_overlap, context_batch_size=context_batch_size)
    if problem:
        return problem
    for name, value in (("width", width), ("height", height)):
        if value is not None and value % 8:
            return f"{node}: '{name}' is {value}: width/height must be multiples of 8 (MuseV: 64)"
    if context_frames is not None and context_overlap is not None:
        try:
            W.validate(1, int(context_frames), int(context_overlap), 1)
        except W.WindowError as e:
            return f"{node}: {e}"
    return True


def checked_latent(node, name, latent, frames, channels, h, w):
    samples = latent_samples(node, name, latent)
    if samples.shape[0] != frames:
        raise MuseVInputError(f"{node}: '{name}' has {samples.shape[0]} frames but 'frames' is {frames}: set frames "
                              f"to {samples.shape[0]} or trim the latent batch")
    if samples.shape[1] != channels:
        raise MuseVInputError(f"{node}: '{name}' has {samples.shape[1]} latent channels but the MODEL's latents have "
                              f"{channels}: encode it with the SD1.5 VAE (4 channels)")
    if tuple(samples.shape[1:]) != (channels, h, w):
        raise MuseVInputError(f"{node}: '{name}' is {tuple(samples.shape[1:])} (channels, h, w) but the video is "
                              f"{(channels, h, w)}: encode it at {w * 8}x{h * 8}")
    return samples


def condition_latents(node, image, vae, latent, width, height):
    """Raw (VAE-space) condition latents from vision_latent or vision_image + vae, or None."""
    if latent is not None:
        samples = latent_samples(node, "vision_latent", latent)
        if tuple(samples.shape[2:]) != (height // 8, width // 8):
            raise MuseVInputError(f"{node}: 'vision_latent' is {samples.shape[3] * 8}x{samples.shape[2] * 8} but the "
                                  f"video is {width}x{height}: set width/height to match or re-encode the image")
        if image is not None:
            log.warning("%s: both vision_latent and vision_image given; using vision_latent", node)
        return samples
    if image is None:
        return None
    if vae is None:
        raise MuseVInputError(f"{node}: 'vision_image' needs the 'vae' input to be encoded (MuseV used sd-vae-ft-mse)")
    if image.ndim != 4 or image.shape[0] == 0:
        raise MuseVInputError(f"{node}: 'vision_image' is empty: connect a condition image")
    pixels = image[..., :3]
    if pixels.shape[1] != height or pixels.shape[2] != width:
        log.info("%s: condition image %dx%d centre-cropped and resized to %dx%d", node, pixels.shape[2],
                 pixels.shape[1], width, height)
        pixels = comfy.utils.common_upscale(pixels.movedim(-1, 1), width, height, "lanczos", "center").movedim(1, -1)
    return vae.encode(pixels).float()


def make_sigmas(model, scheduler, steps, denoise, sigmas, node):
    if sigmas is not None:
        if sigmas.ndim != 1 or sigmas.shape[0] < 2:
            raise MuseVInputError(f"{node}: 'sigmas' needs at least 2 values, got {tuple(sigmas.shape)}")
        return sigmas.float().cpu()
    total = steps if denoise >= 0.9999 else int(steps / denoise)
    if scheduler == MUSEV_SCHEDULER:
        sig, _ = S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, total)
    else:
        sig = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, total).cpu()
    return sig[-(steps + 1):].float()


def run_sampler(model, positive, negative, latent, sigmas, sampler_name, cfg, seed, n_windows):
    """Samples ``model``; the progress bar counts denoised windows (``n_windows`` per step, however
    many of them each UNet call takes)."""
    n_groups = n_windows
    steps = sigmas.shape[0] - 1
    pbar = comfy.utils.ProgressBar(max(1, steps * n_groups))
    previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
    state = {"done": 0}

    def progress(n):
        state["done"] += n
        pbar.update_absolute(state["done"], steps * n_groups)

    def callback(step, x0, x, total):
        if previewer is not None:
            preview = previewer.decode_latent_to_preview_image("JPEG", x0[:1])
            pbar.update_absolute(state["done"], steps * n_groups, preview)

    m = model.clone()
    m.model_options.setdefault("transformer_options", {})[PROGRESS_KEY] = progress
    m.model_options["transformer_options"][checks.NODE_KEY] = "ParallelDenoiseSampler"
    noise = comfy.sample.prepare_noise(latent, seed)
    sampler = comfy.samplers.sampler_object(sampler_name)
    return comfy.sample.sample_custom(m, noise, cfg, sampler, sigmas.to(latent.device), positive, negative, latent,
                                      callback=callback, disable_pbar=True, seed=seed).float()


NODE_CLASS_MAPPINGS = {"ParallelDenoiseSampler": ParallelDenoiseSampler, "MuseVContextWindows": MuseVContextWindows,
                       "MuseVShotCondition": MuseVShotCondition, "MuseVJoinShots": MuseVJoinShots}
NODE_DISPLAY_NAME_MAPPINGS = {"ParallelDenoiseSampler": "MuseV Parallel Denoise Sampler",
                              "MuseVContextWindows": "MuseV Context Windows (for any sampler)",
                              "MuseVShotCondition": "MuseV Shot Condition (last frames)",
                              "MuseVJoinShots": "MuseV Join Shots"}

compat.register_scheduler(MUSEV_SCHEDULER, musev_linspace_sigmas)
