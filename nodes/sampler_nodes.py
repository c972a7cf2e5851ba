"""Visual-condition parallel denoising: the context-window MODEL patch and ParallelDenoiseSampler.

(Input schema fixed here; the implementation lands with the context handler.)
"""
import comfy.samplers

CATEGORY = "MuseV"
SCHEDULES = ["uniform_v2", "uniform_looped"]
NOISE_TYPES = ["video_fusion", "random"]
MUSEV_SCHEDULER = "musev_linspace"


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
        "context_batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip":
            "Windows denoised together in one UNet call: faster on a large GPU, same result."}),
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
        }
        req.update(context_inputs())
        req.update(noise_inputs())
        req.update({
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True,
                             "tooltip": "Noise seed."}),
            "steps": ("INT", {"default": 10, "min": 1, "max": 1000, "tooltip": "Denoising steps (MuseV: 10)."}),
            "cfg": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip":
                "Guidance scale (MuseV's video_guidance_scale: 3.5)."}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"default": "euler", "tooltip":
                "Sampler (MuseV: euler)."}),
            "scheduler": ([MUSEV_SCHEDULER] + list(comfy.samplers.KSampler.SCHEDULERS), {
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

    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("The video latents (condition frame(s) first when included).",)
    FUNCTION = "sample"
    CATEGORY = CATEGORY

    def sample(self, **kwargs):
        raise NotImplementedError("ParallelDenoiseSampler: under construction")


class MuseVContextWindows:
    DESCRIPTION = ("Adds MuseV's parallel denoising to a MODEL so that any sampler (KSampler, SamplerCustom...) "
                   "runs it: the vision condition frame(s) are prepended to every window, windows are averaged.")

    @classmethod
    def INPUT_TYPES(cls):
        req = {"model": ("MODEL", {"tooltip": "A MODEL with MuseV installed (LoadMuseVMotion)."})}
        req.update(context_inputs())
        req.update(noise_inputs())
        return {
            "required": req,
            "optional": {
                "vision_latent": ("LATENT", {"tooltip": "Clean condition frame(s) (VAE Encode of the condition "
                                                        "image). Empty = plain text-to-video."}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, **kwargs):
        raise NotImplementedError("MuseVContextWindows: under construction")


NODE_CLASS_MAPPINGS = {"ParallelDenoiseSampler": ParallelDenoiseSampler, "MuseVContextWindows": MuseVContextWindows}
NODE_DISPLAY_NAME_MAPPINGS = {"ParallelDenoiseSampler": "MuseV Parallel Denoise Sampler",
                              "MuseVContextWindows": "MuseV Context Windows (for any sampler)"}
