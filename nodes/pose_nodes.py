"""PoseVideoCondition: MuseV's pose2video / video2video control images on ComfyUI's ControlNet."""
import logging
import os

import numpy as np
import torch

import comfy.model_management
import comfy.utils

from ..musev_core import pose as P
from . import dwpose
from .host import MuseVInputError

log = logging.getLogger("musev")
dwpose.register()
CATEGORY = "MuseV"
NODE = "PoseVideoCondition"
MODES = ["pose video", "detect"]
WEIGHT_EXTS = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")

HINT_CONTRACT = (
    "Hint order (the contract with MuseV's sampler): the control images attached to the ControlNet are "
    "[pose of the condition/vision frame(s) (n_vis, normally 1); poses of the N generated frames]. The sampler "
    "slices them per context window to [vision hints; hints of the window's frames], so the ControlNet sees "
    "exactly the UNet's window input, as in MuseV.")


# ---------------------------------------------------------------------------------------------
# helpers

def _err(input_name, text):
    return MuseVInputError(f"{NODE}: '{input_name}': {text}")


def _as_images(x, input_name):
    if x is None:
        return None
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[-1] not in (1, 3, 4):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise _err(input_name, f"expected an IMAGE batch (frames, height, width, channels), got {shape}")
    if x.shape[0] == 0:
        raise _err(input_name, "the image batch is empty (0 frames): check the video loader (path, frame cap, "
                               "skipped frames)")
    x = x.float()
    if x.shape[-1] == 1:
        x = x.expand(-1, -1, -1, 3)
    return x[..., :3]


def crop_resize(images, width, height, method="bilinear"):
    """MuseV's centre crop to the target aspect, then a resize to width x height (IMAGE layout)."""
    b, h, w, _ = images.shape
    if (w, h) == (width, height):
        return images
    y0, y1, x0, x1 = P.center_crop_box(h, w, height, width)
    x = images[:, y0:y1, x0:x1].movedim(-1, 1)
    if method == "lanczos":
        x = comfy.utils.common_upscale(x, width, height, "lanczos", "disabled")
    else:
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.movedim(1, -1).clamp(0, 1)


def _to_u8(img):
    return (img.clamp(0, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)


def _control_source_name(prompt, unique_id):
    """The weight-file name on the node that feeds our control_net input (ControlNetLoader's
    control_net_name and the like), from the executing prompt; None when unknown."""
    try:
        link = prompt[str(unique_id)]["inputs"]["control_net"]
        src = prompt[str(link[0])]
    except (KeyError, TypeError, IndexError):
        return None
    for value in src.get("inputs", {}).values():
        if isinstance(value, str) and value.lower().endswith(WEIGHT_EXTS):
            return value
    return None


def control_net_warnings(control_net, prompt=None, unique_id=None):
    """Reasons to believe ``control_net`` is not an SD1.5 OpenPose ControlNet (empty = fine)."""
    import comfy.cldm.cldm
    import comfy.controlnet
    if not isinstance(control_net, comfy.controlnet.ControlBase):
        raise _err("control_net", f"got a {type(control_net).__name__}, not a CONTROL_NET: connect a ControlNet "
                                  "Loader with control_v11p_sd15_openpose")
    out = []
    model = getattr(control_net, "control_model", None)
    if not isinstance(control_net, comfy.controlnet.ControlNet) or not isinstance(model, comfy.cldm.cldm.ControlNet):
        out.append(f"the ControlNet is a {type(control_net).__name__} ({type(model).__name__}), not an SD1.5 "
                   "ControlNet; MuseV's pose model is control_v11p_sd15_openpose")
    else:
        hint_in = model.input_hint_block[0].in_channels
        if hint_in != 3:
            out.append(f"the ControlNet takes {hint_in}-channel hints; OpenPose ControlNets take RGB pose images")
    name = _control_source_name(prompt, unique_id) if prompt is not None else None
    if name is not None and "pose" not in os.path.basename(name).lower():
        out.append(f"the ControlNet file '{name}' does not look like an OpenPose ControlNet (MuseV uses "
                   "control_v11p_sd15_openpose): pose images steer only a pose ControlNet; load "
                   "control_v11p_sd15_openpose in the ControlNet Loader")
    return out


def apply_control(positive, negative, control_net, images, strength, start_percent, end_percent, vae=None):
    """ComfyUI's own Apply ControlNet (Advanced) node (``nodes.ControlNetApplyAdvanced``): one copy of
    the ControlNet per previous ControlNet, shared by positive and negative, chained after the existing
    controls.  ``images`` is the IMAGE batch (B, H, W, 3) in [0, 1]."""
    import nodes as comfy_nodes          # ComfyUI's nodes.py (this package's own is ``.nodes``)
    return comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control_net, images, strength,
                                                                  start_percent, end_percent, vae=vae)


# ---------------------------------------------------------------------------------------------
# the node

class PoseVideoCondition:
    DESCRIPTION = (
        "MuseV pose2video / video2video: turns a driving video into OpenPose control images (DWPose body + hands, "
        "no face, as MuseV's dwpose_body_hand) and applies them to positive/negative through a ComfyUI ControlNet "
        "(control_v11p_sd15_openpose), like Apply ControlNet (Advanced). Frames from any loader (Load Video + "
        "Get Video Components, VHS). 'pose video': the frames already are rendered pose images (MuseV's "
        "video_is_middle). 'detect': RGB frames, DWPose runs on each (weights in models/dwpose/). "
        + HINT_CONTRACT + " Wire 'frames' into the sampler's frame count and 'frame_rate' into Load MuseV Motion "
        "Model's frame_rate (MuseV uses the sample rate there in video2video, not 8).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "positive": ("CONDITIONING", {"tooltip": "Prompt conditioning; the ControlNet is chained after any "
                                                         "control it already has."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt conditioning (shares the ControlNet with "
                                                         "positive, as Apply ControlNet (Advanced) does)."}),
                "control_net": ("CONTROL_NET", {"tooltip": "An SD1.5 OpenPose ControlNet from ControlNet Loader: "
                                                           "control_v11p_sd15_openpose (MuseV's). Another kind "
                                                           "gives a warning."}),
                "frames": ("IMAGE", {"tooltip": "The driving video as an IMAGE batch (frames = batch) from any loader: "
                                                "rendered pose frames ('pose video') or a real video ('detect'). Frames "
                                                "of another size are centre-cropped and resized to the generation size."}),
                "mode": (MODES, {"default": "pose video", "tooltip":
                    "pose video: the frames already are OpenPose renderings and are used as they are (MuseV's "
                    "video_is_middle=True, the dance examples). detect: run DWPose (body + hands, no face, threshold "
                    "0.3, at min(width, height)) on every frame."}),
                "video_has_condition": ("BOOLEAN", {"default": True, "tooltip":
                    "True (MuseV's default): the video's first (sampled) frame shows the condition image's pose; its "
                    "pose becomes the condition frame's control and the following frames are generated. False: the "
                    "condition image's own pose is detected (needs condition_image and DWPose weights) and put first; "
                    "every sampled frame is generated (MuseV's unaligned 'duffy' case)."}),
                "sample_rate": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip":
                    "Take every n-th frame of the video (MuseV's sample_rate, default 1). It is also MuseV's "
                    "frame-embedding multiplier in video2video: see the frame_rate output."}),
                "frame_count": ("INT", {"default": 0, "min": 0, "max": 100000, "tooltip":
                    "Frames to generate (N) after the condition frame; 0 = all the clip gives at this sample rate "
                    "(a longer clip is cut to N). A clip too short for N is an error."}),
                "width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8, "tooltip":
                    "Generation width (multiple of 8; MuseV uses multiples of 64). 0 = from the condition image "
                    "(else the video), floored to a multiple of 64 as MuseV does. Must match your latent."}),
                "height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8, "tooltip":
                    "Generation height (multiple of 8). 0 = from the condition image (else the video), floored to "
                    "a multiple of 64."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip":
                    "ControlNet strength (MuseV's controlnet_conditioning_scale, 1.0)."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip":
                    "Fraction of the schedule where the ControlNet starts (MuseV: 0)."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001, "tooltip":
                    "Fraction of the schedule where the ControlNet stops (MuseV: 1)."}),
                "pose_align": (list(P.ALIGN_MODES), {"default": "off", "tooltip":
                    "Move every driving skeleton so that the first one fits the condition image's skeleton (needs "
                    "condition_image and DWPose weights). scale+translate: body size from neck-hip, shoulders, hips, "
                    "legs; anchor at the neck (else the hip centre). translate: anchor only. One transform for the "
                    "whole clip. In 'pose video' mode the first frame's joints are read from its colours (one "
                    "dancer)."}),
                "detector": (list(dwpose.DETECTOR_CHOICES), {"default": "auto", "tooltip":
                    "DWPose weights in models/dwpose/: auto picks the first complete set (openmmlab if mmpose is "
                    "installed, onnx if onnxruntime is, torchscript). Needed for 'detect', for "
                    "video_has_condition False and for pose_align."}),
            },
            "optional": {
                "condition_image": ("IMAGE", {"tooltip": "The condition (first-frame / vision) image, the same one "
                                                         "given to the sampler. Sets the size when width/height are 0; "
                                                         "required for video_has_condition False and pose_align."}),
                "vae": ("VAE", {"tooltip": "Only for ControlNets that need a VAE (not SD1.5 OpenPose)."}),
            },
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def VALIDATE_INPUTS(cls, width=None, height=None, start_percent=None, end_percent=None):
        # widget values, before anything loads (ComfyUI's own range checks of these inputs are replaced here)
        from .host import widget_problem
        problem = widget_problem(cls, NODE, width=width, height=height, start_percent=start_percent,
                                 end_percent=end_percent)
        if problem:
            return problem
        for name, value in (("width", width), ("height", height)):
            if value is not None and value % 8:
                return (f"{NODE}: '{name}' is {value}: the generation size must be a multiple of 8 (latents are 1/8 "
                        "of the image): use multiples of 8, or 64 as MuseV (0 = from the condition image)")
        if start_percent is not None and end_percent is not None and start_percent > end_percent:
            return f"{NODE}: 'start_percent' {start_percent} must be <= 'end_percent' {end_percent}"
        return True

    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "IMAGE", "INT", "FLOAT", "INT", "INT")
    RETURN_NAMES = ("positive", "negative", "pose_images", "frames", "frame_rate", "width", "height")
    OUTPUT_TOOLTIPS = (
        "Positive conditioning with the pose ControlNet attached (hints: vision pose(s) first, then the N frames).",
        "Negative conditioning with the same ControlNet.",
        "The control images at the generation size, in hint order: condition-frame pose(s) first, then one per "
        "generated frame (n_vis + N images).",
        "N: the number of frames to generate (the sampler's frame count, without the condition frame).",
        "MuseV's video2video frame-embedding multiplier = sample_rate (connect to Load MuseV Motion Model's "
        "frame_rate).",
        "Generation width.",
        "Generation height.")
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, positive, negative, control_net, frames, mode="pose video", video_has_condition=True,
              sample_rate=1, frame_count=0, width=0, height=0, strength=1.0, start_percent=0.0, end_percent=1.0,
              pose_align="off", detector="auto", condition_image=None, vae=None, prompt=None, unique_id=None):
        if mode not in MODES:
            raise _err("mode", f"{mode!r} is not one of {MODES}")
        if pose_align not in P.ALIGN_MODES:
            raise _err("pose_align", f"{pose_align!r} is not one of {P.ALIGN_MODES}")
        if frames is None:
            raise _err("frames", "no video frames: connect a video loader's IMAGE output")
        frames = _as_images(frames, "frames")
        cond = _as_images(condition_image, "condition_image")
        if not video_has_condition and cond is None:
            raise _err("condition_image", "video_has_condition is False, so the condition image's own pose is put "
                                          "first, but no condition_image is connected: connect the condition image "
                                          "(the one the sampler gets), or set video_has_condition True")
        if pose_align != "off" and cond is None:
            raise _err("condition_image", f"pose_align '{pose_align}' fits the video's skeleton onto the condition "
                                          "image's, but no condition_image is connected: connect it or set "
                                          "pose_align off")
        if not (0.0 <= start_percent <= end_percent <= 1.0):
            raise _err("start_percent", f"start_percent {start_percent} must be <= end_percent {end_percent}, "
                                        "both in [0, 1]")

        # size (spec §5.1)
        src = cond if cond is not None else frames
        try:
            W, H = P.generation_size(width, height, src.shape[2], src.shape[1])
        except ValueError as e:
            raise _err("width", f"{e}; set width and height") from None
        if W % 8 or H % 8:
            raise _err("width" if W % 8 else "height",
                       f"the generation size {W}x{H} is not a multiple of 8 (latents are 1/8 of the image): use "
                       f"multiples of 8, or 64 as MuseV")

        # frame selection (spec §6)
        n_cond = cond.shape[0] if cond is not None else 0
        if video_has_condition and n_cond > 1:
            raise _err("condition_image", f"{n_cond} condition images with video_has_condition True: the video's "
                                          "first pose belongs to ONE condition frame. Pass one image, or set "
                                          "video_has_condition False (each condition image gets its own pose)")
        try:
            plan = P.plan_frames(frames.shape[0], sample_rate, frame_count, video_has_condition, max(n_cond, 1))
        except ValueError as e:
            field = "frame_count" if "requested" in str(e) else "frames"
            raise _err(field, f"the pose clip is too short: {e}. Load more frames, lower sample_rate or "
                              "frame_count") from None

        for w in control_net_warnings(control_net, prompt, unique_id):
            log.warning("[MuseV] %s: %s", NODE, w)

        needs_detector = mode == "detect" or not video_has_condition or pose_align != "off"
        det = dwpose.load(detector, NODE) if needs_detector else None
        if det is not None:
            det.to(comfy.model_management.get_torch_device())

        idx = list(plan.frame_indices)
        fh, fw = frames.shape[1:3]
        if (fw, fh) != (W, H):
            log.info("[MuseV] %s: video frames %dx%d are centre-cropped and resized to the generation size %dx%d",
                     NODE, fw, fh, W, H)
        cond_work = n_cond if (det is not None and (plan.prepend_condition or pose_align != "off")) else 0
        pbar = comfy.utils.ProgressBar(len(plan.frame_indices) + cond_work + (1 if pose_align != "off" else 0),
                                       node_id=unique_id)

        # condition image(s): resized like MuseV (centre crop + Lanczos); their poses when needed
        cond_poses, ref = [], None
        if cond_work:
            cond_rs = crop_resize(cond, W, H, "lanczos")
            for i in range(cond_rs.shape[0]):
                comfy.model_management.throw_exception_if_processing_interrupted()
                kp, sc, canvas = dwpose.detect_frame(det, _to_u8(cond_rs[i]))
                if i == 0:
                    ref = (kp, sc)
                if plan.prepend_condition:
                    cond_poses.append(dwpose.draw_frame(kp, sc, W, H, canvas))
                pbar.update(1)

        if mode == "pose video":
            sim = None
            if pose_align != "off":
                comfy.model_management.throw_exception_if_processing_interrupted()
                pts, sc = dwpose.parse_rendered_body(_to_u8(frames[idx[0]]))
                pts = P.crop_resize_points(pts, P.center_crop_box(fh, fw, H, W), W, H)
                sim = self._similarity(ref, pts, sc, pose_align, "the first pose frame (read from its joint colours)")
                pbar.update(1)
            out = []
            for i in idx:                     # frame by frame: memory stays at one output batch
                comfy.model_management.throw_exception_if_processing_interrupted()
                img = crop_resize(frames[i:i + 1], W, H, "bilinear")[0]
                if sim is not None and not sim.identity:
                    import cv2
                    img = torch.from_numpy(cv2.warpAffine(img.cpu().numpy(), sim.matrix(), (W, H),
                                                          flags=cv2.INTER_LINEAR, borderValue=0))
                out.append(img)
                pbar.update(1)
            poses = torch.stack(out)
        else:
            sim, out = None, []
            for n_done, i in enumerate(idx):
                comfy.model_management.throw_exception_if_processing_interrupted()
                rgb = crop_resize(frames[i:i + 1], W, H, "bilinear")[0]
                kp, sc, canvas = dwpose.detect_frame(det, _to_u8(rgb))
                if n_done == 0 and pose_align != "off":
                    j = P.main_person(kp, sc)
                    if j is None:
                        raise _err("frames", "pose_align: no person found in the first video frame; set pose_align "
                                             "off or start the clip where the dancer is visible")
                    sim = self._similarity(ref, kp[j][:18], sc[j][:18], pose_align, "the first video frame")
                    pbar.update(1)
                out.append(torch.from_numpy(dwpose.draw_frame(kp, sc, W, H, canvas, sim)).float() / 255.0)
                pbar.update(1)
            poses = torch.stack(out)

        if cond_poses:
            cond_t = torch.from_numpy(np.stack(cond_poses)).float() / 255.0
            hints = torch.cat([cond_t, poses.float()], dim=0)
        else:
            hints = poses.float()
        hints = hints.clamp(0, 1).contiguous().to(comfy.model_management.intermediate_device())
        assert hints.shape[0] == plan.hints, (hints.shape, plan)
        if sim is not None:
            log.info("[MuseV] %s: pose_align %s: scale %.3f, shift (%.1f, %.1f) px", NODE, pose_align, sim.scale,
                     sim.tx, sim.ty)

        pos, neg = apply_control(positive, negative, control_net, hints, strength, start_percent,
                                 end_percent, vae=vae)
        return (pos, neg, hints, plan.frames, float(plan.sample_rate), W, H)

    @staticmethod
    def _similarity(ref, drv_points, drv_scores, mode, what):
        if ref is None:
            raise _err("condition_image", "pose_align needs the condition image's pose, which was not computed")
        kp, sc = ref
        j = P.main_person(kp, sc)
        if j is None:
            raise _err("condition_image", "pose_align: no person found in the condition image; set pose_align off")
        try:
            sim, info = P.estimate_alignment(kp[j][:18], sc[j][:18], drv_points, drv_scores, mode)
        except ValueError as e:
            raise _err("pose_align", f"cannot fit {what} onto the condition image: {e}. Set pose_align off or "
                                     "'translate'") from None
        log.info("[MuseV] %s: pose_align anchor %s, size from %s", NODE, info.get("anchor"),
                 ", ".join("-".join(s) for s in info.get("segments", [])) or "-")
        return sim


NODE_CLASS_MAPPINGS = {"PoseVideoCondition": PoseVideoCondition}
NODE_DISPLAY_NAME_MAPPINGS = {"PoseVideoCondition": "MuseV Pose Video Condition"}
