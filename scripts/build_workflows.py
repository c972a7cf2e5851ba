#!/usr/bin/env python
"""Build example_workflows/*.json in the real ComfyUI frontend.

Every workflow is assembled the way a user would build it: a ComfyUI server (with this pack) is
started, the frontend is opened in headless Chromium, the nodes are created with LiteGraph, their
widgets set, their sockets connected, they are laid out in labelled columns (groups), and
``app.graph.serialize()`` -- what the frontend saves -- is written to example_workflows/.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_workflows.py [--check] [name ...]

``--check`` writes nothing and fails when a committed file differs from what would be built
(node types, widgets, links, layout).  The graphs are described below in plain data
(``WORKFLOWS``); the layout is computed from the sizes the frontend gives each node, so that no
two nodes overlap.  Needs the test harness' dependencies (playwright + a system Chromium).
"""
import argparse
import json
import os
import sys

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(PACK_DIR, "tests")
OUT_DIR = os.path.join(PACK_DIR, "example_workflows")

# ------------------------------------------------------------------------------------------------
# released files (the names a user gets from the links in each workflow's model note)
CKPT_T2V = "majicmixRealv6Fp16.safetensors"
CKPT_V2V = "fantasticmix_v10.safetensors"
VAE = "vae-ft-mse-840000-ema-pruned.safetensors"
CLIP_VISION = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
CONTROLNET = "control_v11p_sd15_openpose.pth"
MOTION_MUSEV = "motion/musev/"
MOTION_REF = "motion/musev_referencenet/"
MOTION_POSE = "motion/musev_referencenet_pose/"
REFERENCENET = "motion/musev_referencenet/referencenet/"
IMAGE_PROJ_REF = "motion/musev_referencenet/ip_adapter_image_proj.bin"
IMAGE_PROJ_POSE = "motion/musev_referencenet_pose/ip_adapter_image_proj.bin"
IMAGE = "example.png"
POSE_VIDEO = "video1_girl_poseseq.mp4"
SOURCE_VIDEO = "source_video.mp4"

# Every model file name used in the shipped workflows (tests map each one to a stand-in).
MODEL_FILES = {
    "ckpt_name": (CKPT_T2V, CKPT_V2V),
    "vae_name": (VAE,),
    "clip_name": (CLIP_VISION,),
    "control_net_name": (CONTROLNET,),
    "motion_model": (MOTION_MUSEV, MOTION_REF, MOTION_POSE),
    "referencenet": (REFERENCENET,),
    "image_proj": (IMAGE_PROJ_REF, IMAGE_PROJ_POSE),
}

# MuseV's negative prompt "V2" (spec §5.2) without its textual-inversion names (badhandv4,
# ng_deepnegative_v1_75t), which ComfyUI would read as plain words; add them as
# "embedding:badhandv4" if you have the files in models/embeddings.
NEGATIVE_V2 = ("(((multiple heads))), (((bad body))), (((two people))), ((extra arms)), ((deformed body)), "
               "(((sexy))), paintings,(((two heads))), ((big head)),sketches, (worst quality:2), (low quality:2), "
               "(normal quality:2), lowres, ((monochrome)), ((grayscale)), skin spots, acnes, skin blemishes, "
               "age spot, glans, (((nsfw))), nipples, extra fingers, (extra legs), (long neck), mutated hands, "
               "(fused fingers), (too many fingers)")
PROMPT_GIRL = ("(masterpiece, best quality, highres:1),(1girl, solo:1),(beautiful face, soft skin, costume:1),"
               "(eye blinks:1.8),(head wave:1.3)")
PROMPT_SEA = "(masterpiece, best quality, highres:1), peaceful beautiful sea scene"
PROMPT_WATERFALL = "(masterpiece, best quality, highres:1), peaceful beautiful waterfall, an endless waterfall"
PROMPT_DANCE = ("(masterpiece, best quality, highres:1) , a girl is dancing, wearing a dress made of stars, "
                "animation")
PROMPT_V2V = "(masterpiece, best quality, highres:1), a girl dancing, anime style, vivid colors"

MODEL_TABLE = """| folder | file | where from |
|---|---|---|
| `models/checkpoints` | a single-file SD1.5 checkpoint: MuseV used **majicmixRealv6Fp16** (t2v/i2v) and **fantasticmix_v10** (pose/v2v); any SD1.5 model works | civitai (majicMIX realistic v6, fantasticmix v1.0) or your own |
| `models/vae` | `vae-ft-mse-840000-ema-pruned.safetensors` (sd-vae-ft-mse) | stabilityai/sd-vae-ft-mse-original |
| `models/clip_vision` | IP-Adapter's `image_encoder` (OpenCLIP ViT-H/14), saved as `CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors` | h94/IP-Adapter `models/image_encoder/model.safetensors` |
| `models/controlnet` | `control_v11p_sd15_openpose.pth` (pose only) | lllyasviel/ControlNet-v1-1 |
| `models/musev/motion/` | the `musev/`, `musev_referencenet/` and `musev_referencenet_pose/` folders, unchanged (`unet/`, `referencenet/`, `ip_adapter_image_proj.bin`) | Hugging Face TMElyralab/MuseV, folder `motion/` |
"""


def note(title, body, width=560):
    return {"type": "MarkdownNote", "title": title, "text": body, "width": width}


def models_note(extra=""):
    return note("Models: what goes where", "### Models\n\n" + MODEL_TABLE + ("\n" + extra if extra else ""), 620)


def n(type_, title=None, width=None, **widgets):
    """A node spec: type, optional title/width, widget values by widget name."""
    return {"type": type_, "title": title, "width": width, "widgets": widgets}


def sampler(**widgets):
    base = dict(frames=12, width=512, height=512, context_frames=12, context_overlap=4, context_schedule="uniform_v2",
                context_batch_size=1, noise_type="video_fusion", w_ind_noise=0.5, img_weight=0.001, seed=1234,
                steps=10, cfg=3.5, sampler_name="euler", scheduler="musev_linspace", include_condition_frames=True)
    base.update(widgets)
    return n("ParallelDenoiseSampler", "MuseV Parallel Denoise Sampler", **base)


def reference_chain(motion, image_proj, image_node, vae_node="vae"):
    """LoadMuseVMotion -> MuseVIPAdapter -> MuseVReferenceNet nodes and their links."""
    nodes = {
        "ipadapter": n("MuseVIPAdapter", image_proj=image_proj, scale=1.0, start_percent=0.0, end_percent=1.0),
        "referencenet": n("MuseVReferenceNet", referencenet=REFERENCENET),
    }
    links = [("motion", "model", "ipadapter", "model"), ("clip_vision", "CLIP_VISION", "ipadapter", "clip_vision"),
             (image_node, "IMAGE", "ipadapter", "image"), ("ipadapter", "model", "referencenet", "model"),
             (vae_node, "VAE", "referencenet", "vae"), (image_node, "IMAGE", "referencenet", "image")]
    return nodes, links


def image_to_video(name, title, about, frames, prompt, schedule="uniform_v2", include_condition=True, fps=12,
                   extra_note=""):
    nodes = {
        "note": models_note(extra_note),
        "about": note(title, about, 620),
        "ckpt": n("CheckpointLoaderSimple", ckpt_name=CKPT_T2V),
        "vae": n("VAELoader", "VAE (sd-vae-ft-mse)", vae_name=VAE),
        "clip_vision": n("CLIPVisionLoader", "CLIP vision (ViT-H/14)", clip_name=CLIP_VISION),
        "image": n("LoadImage", "Condition image (first frame)", 300, image=IMAGE),
        "positive": n("CLIPTextEncode", "Prompt", 420, text=prompt),
        "negative": n("CLIPTextEncode", "Negative prompt (MuseV V2)", 420, text=NEGATIVE_V2),
        "motion": n("LoadMuseVMotion", motion_model=MOTION_REF, frame_rate=8.0, temporal_layers=True),
        "sampler": sampler(frames=frames, context_schedule=schedule, include_condition_frames=include_condition),
        "decode": n("VAEDecode"),
        "video": n("CreateVideo", fps=float(fps)),
        "save": n("SaveVideo", filename_prefix=f"video/{name}", format="auto", codec="auto"),
    }
    chain_nodes, chain_links = reference_chain("motion", IMAGE_PROJ_REF, "image")
    nodes.update(chain_nodes)
    links = [("ckpt", "MODEL", "motion", "model"), ("ckpt", "CLIP", "positive", "clip"),
             ("ckpt", "CLIP", "negative", "clip"), ("referencenet", "model", "sampler", "model"),
             ("positive", "CONDITIONING", "sampler", "positive"), ("negative", "CONDITIONING", "sampler", "negative"),
             ("image", "IMAGE", "sampler", "vision_image"), ("vae", "VAE", "sampler", "vae"),
             ("sampler", "latent", "decode", "samples"), ("vae", "VAE", "decode", "vae"),
             ("decode", "IMAGE", "video", "images"), ("video", "VIDEO", "save", "video")] + chain_links
    columns = [("Read me", ["about", "note"]), ("Models & inputs", ["ckpt", "vae", "clip_vision", "image"]),
               ("Prompt", ["positive", "negative"]), ("MuseV model", ["motion", "ipadapter", "referencenet"]),
               ("Parallel denoising", ["sampler"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "columns": columns}


WORKFLOWS = {}

WORKFLOWS["musev_image_to_video"] = image_to_video(
    "musev_image_to_video", "MuseV: image to video",
    "### Image to video (musev_referencenet)\n\n"
    "The condition image is the clean first frame every context window sees, the IP-Adapter image prompt "
    "and the ReferenceNet's reference, as in MuseV's `text2video.py` with a condition image.\n\n"
    "* MuseV defaults: 12 frames after the condition frame, 12-frame windows with overlap 4, 10 euler steps "
    "on `musev_linspace`, cfg 3.5, `video_fusion` noise (0.5), image-based noise 1e-3, frame rate 8, saved "
    "at 12 fps.\n"
    "* Sizes: the image is centre-cropped and resized to the sampler's width x height (multiples of 64, as "
    "MuseV). About 12 GB of GPU memory at 512x512.",
    frames=12, prompt=PROMPT_GIRL)

WORKFLOWS["musev_long_video"] = image_to_video(
    "musev_long_video", "MuseV: long video (parallel denoising)",
    "### Long video: 48 frames in overlapping windows\n\n"
    "MuseV's *visual-conditioned parallel denoising*: 48 frames are denoised at once in windows of 12 frames "
    "overlapping by 4 (the sampler draws the windows), and every window also sees the clean condition frame, "
    "so windows far apart stay consistent. Predictions of overlapping windows are averaged.\n\n"
    "* Memory stays that of one window: only the latent grows with the length.\n"
    "* `context_batch_size` > 1 denoises several windows per UNet call (faster on a large GPU, same result).\n"
    "* 4 s at 12 fps; raise `frames` for longer videos.",
    frames=48, prompt=PROMPT_SEA)

WORKFLOWS["musev_looping_video"] = image_to_video(
    "musev_looping_video", "MuseV: looping video",
    "### Seamlessly looping video\n\n"
    "`context_schedule = uniform_looped`: the windows wrap around the end of the video (the last window "
    "covers the last frames AND the first ones), so frame 23 flows into frame 0 -- a closed loop "
    "(AnimateAnyone's `uniform` schedule in MuseV).\n\n"
    "* `include_condition_frames` is off: the output is exactly the 24 loop frames (the condition frame "
    "would sit in front of the loop).\n"
    "* Good subjects: water, fire, clouds, hair in the wind.",
    frames=24, prompt=PROMPT_WATERFALL, schedule="uniform_looped", include_condition=False)


def text_to_image_to_video():
    nodes = {
        "note": models_note(),
        "about": note("MuseV: text to image to video",
                      "### Text to image to video\n\n"
                      "MuseV's `text2video.py` without a condition image: the first frame is generated by the "
                      "same model with its temporal layers switched off (`temporal_layers` off = MuseV's "
                      "`skip_temporal_layer`), 1 frame, 30 steps, cfg 7.5; its latent (not re-encoded) becomes "
                      "the condition frame and its image the IP-Adapter / ReferenceNet reference. The video then "
                      "adds 11 frames (12 in all) with MuseV's video defaults (10 steps, cfg 3.5).\n\n"
                      "* Change the seed of the first KSampler until you like the first frame; the video part "
                      "re-runs from it.", 620),
        "ckpt": n("CheckpointLoaderSimple", ckpt_name=CKPT_T2V),
        "vae": n("VAELoader", "VAE (sd-vae-ft-mse)", vae_name=VAE),
        "clip_vision": n("CLIPVisionLoader", "CLIP vision (ViT-H/14)", clip_name=CLIP_VISION),
        "positive": n("CLIPTextEncode", "Prompt", 420, text=PROMPT_GIRL),
        "negative": n("CLIPTextEncode", "Negative prompt (MuseV V2)", 420, text=NEGATIVE_V2),
        "image_motion": n("LoadMuseVMotion", "Load MuseV Motion Model (first frame: temporal layers off)",
                          motion_model=MOTION_REF, frame_rate=8.0, temporal_layers=False),
        "empty": n("EmptyLatentImage", "First frame size", width=512, height=512, batch_size=1),
        "ksampler": n("KSampler", "First frame (MuseV: 30 steps, cfg 7.5)", seed=1234, control_after_generate="fixed",
                      steps=30, cfg=7.5, sampler_name="euler", scheduler="normal", denoise=1.0),
        "first_decode": n("VAEDecode", "Decode first frame"),
        "first_preview": n("PreviewImage", "First frame"),
        "motion": n("LoadMuseVMotion", motion_model=MOTION_REF, frame_rate=8.0, temporal_layers=True),
        "sampler": sampler(frames=11),
        "decode": n("VAEDecode"),
        "video": n("CreateVideo", fps=12.0),
        "save": n("SaveVideo", filename_prefix="video/musev_text_to_image_to_video", format="auto", codec="auto"),
    }
    chain_nodes, chain_links = reference_chain("motion", IMAGE_PROJ_REF, "first_decode")
    nodes.update(chain_nodes)
    links = [("ckpt", "MODEL", "image_motion", "model"), ("ckpt", "MODEL", "motion", "model"),
             ("ckpt", "CLIP", "positive", "clip"), ("ckpt", "CLIP", "negative", "clip"),
             ("image_motion", "model", "ksampler", "model"), ("positive", "CONDITIONING", "ksampler", "positive"),
             ("negative", "CONDITIONING", "ksampler", "negative"), ("empty", "LATENT", "ksampler", "latent_image"),
             ("ksampler", "LATENT", "first_decode", "samples"), ("vae", "VAE", "first_decode", "vae"),
             ("first_decode", "IMAGE", "first_preview", "images"),
             ("referencenet", "model", "sampler", "model"), ("positive", "CONDITIONING", "sampler", "positive"),
             ("negative", "CONDITIONING", "sampler", "negative"), ("ksampler", "LATENT", "sampler", "vision_latent"),
             ("sampler", "latent", "decode", "samples"), ("vae", "VAE", "decode", "vae"),
             ("decode", "IMAGE", "video", "images"), ("video", "VIDEO", "save", "video")] + chain_links
    columns = [("Read me", ["about", "note"]), ("Models", ["ckpt", "vae", "clip_vision"]),
               ("Prompt", ["positive", "negative"]),
               ("1. First frame (text to image)",
                ["image_motion", "empty", "ksampler", "first_decode", "first_preview"]),
               ("2. MuseV model", ["motion", "ipadapter", "referencenet"]),
               ("Parallel denoising", ["sampler"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "columns": columns}


WORKFLOWS["musev_text_to_image_to_video"] = text_to_image_to_video()


def video_to_video():
    nodes = {
        "note": models_note(),
        "about": note("MuseV: video to video",
                      "### Video to video (RGB initialisation)\n\n"
                      "The source video's frames, VAE-encoded, start the denoising (`init_latent`) at "
                      "`denoise` 0.7: lower keeps more of the source, higher follows the prompt more. Its first "
                      "frame is the condition frame every window sees and the IP-Adapter / ReferenceNet "
                      "reference; the following `frames` frames are re-generated.\n\n"
                      "* `frames` (one primitive) sets both the frames taken from the video and the sampler's "
                      "frame count: they must match.\n"
                      "* `frame_rate` 1: MuseV's video2video frame-embedding rate (the sample rate), not 8.\n"
                      "* The output keeps the source video's frame rate.", 620),
        "ckpt": n("CheckpointLoaderSimple", ckpt_name=CKPT_V2V),
        "vae": n("VAELoader", "VAE (sd-vae-ft-mse)", vae_name=VAE),
        "clip_vision": n("CLIPVisionLoader", "CLIP vision (ViT-H/14)", clip_name=CLIP_VISION),
        "load_video": n("LoadVideo", "Source video", file=SOURCE_VIDEO),
        "frames": n("PrimitiveInt", "frames", value=12, control_after_generate="fixed"),
        "components": n("GetVideoComponents"),
        "scale": n("ImageScale", "Resize to 512x512 (centre crop)", upscale_method="lanczos", width=512, height=512,
                   crop="center"),
        "first": n("ImageFromBatch", "Condition frame (video frame 0)", batch_index=0, length=1),
        "rest": n("ImageFromBatch", "Frames to re-generate", batch_index=1, length=12),
        "encode": n("VAEEncode", "Encode source frames"),
        "positive": n("CLIPTextEncode", "Prompt", 420, text=PROMPT_V2V),
        "negative": n("CLIPTextEncode", "Negative prompt (MuseV V2)", 420, text=NEGATIVE_V2),
        "motion": n("LoadMuseVMotion", motion_model=MOTION_REF, frame_rate=1.0, temporal_layers=True),
        "sampler": sampler(denoise=0.7),
        "decode": n("VAEDecode"),
        "video": n("CreateVideo", fps=12.0),
        "save": n("SaveVideo", filename_prefix="video/musev_video_to_video", format="auto", codec="auto"),
    }
    chain_nodes, chain_links = reference_chain("motion", IMAGE_PROJ_REF, "first")
    nodes.update(chain_nodes)
    links = [("ckpt", "MODEL", "motion", "model"), ("ckpt", "CLIP", "positive", "clip"),
             ("ckpt", "CLIP", "negative", "clip"), ("load_video", "VIDEO", "components", "video"),
             ("components", "images", "scale", "image"), ("scale", "IMAGE", "first", "image"),
             ("scale", "IMAGE", "rest", "image"), ("frames", "INT", "rest", "length"),
             ("rest", "IMAGE", "encode", "pixels"), ("vae", "VAE", "encode", "vae"),
             ("referencenet", "model", "sampler", "model"), ("positive", "CONDITIONING", "sampler", "positive"),
             ("negative", "CONDITIONING", "sampler", "negative"), ("first", "IMAGE", "sampler", "vision_image"),
             ("vae", "VAE", "sampler", "vae"), ("encode", "LATENT", "sampler", "init_latent"),
             ("frames", "INT", "sampler", "frames"),
             ("sampler", "latent", "decode", "samples"), ("vae", "VAE", "decode", "vae"),
             ("decode", "IMAGE", "video", "images"), ("components", "fps", "video", "fps"),
             ("video", "VIDEO", "save", "video")] + chain_links
    columns = [("Read me", ["about", "note"]), ("Models", ["ckpt", "vae", "clip_vision"]),
               ("Source video", ["load_video", "frames", "components", "scale", "first", "rest", "encode"]),
               ("Prompt", ["positive", "negative"]), ("MuseV model", ["motion", "ipadapter", "referencenet"]),
               ("Parallel denoising", ["sampler"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "columns": columns}


WORKFLOWS["musev_video_to_video"] = video_to_video()


def pose_to_video():
    nodes = {
        "note": models_note(),
        "about": note("MuseV: pose to video",
                      "### Pose to video (musev_referencenet_pose + OpenPose ControlNet)\n\n"
                      "The driving video already holds rendered OpenPose skeletons (MuseV's `video_is_middle`, "
                      "e.g. MuseV's `data/source_video/video1_girl_poseseq.mp4`); switch `mode` to `detect` for a "
                      "real video (DWPose weights in `models/dwpose/`).\n\n"
                      "* Frame 0 of the video is the condition image's pose (`video_has_condition`); the next "
                      "`frame_count` poses drive the generated frames (0 = the whole clip).\n"
                      "* The pose node gives the sampler its frame count and size (0 = from the condition image, "
                      "floored to a multiple of 64) and Load MuseV Motion Model its `frame_rate` (the sample rate: "
                      "MuseV's video2video frame embedding).\n"
                      "* The reference net is musev_referencenet's (the pose release has none).", 620),
        "ckpt": n("CheckpointLoaderSimple", ckpt_name=CKPT_V2V),
        "vae": n("VAELoader", "VAE (sd-vae-ft-mse)", vae_name=VAE),
        "clip_vision": n("CLIPVisionLoader", "CLIP vision (ViT-H/14)", clip_name=CLIP_VISION),
        "controlnet": n("ControlNetLoader", "OpenPose ControlNet", control_net_name=CONTROLNET),
        "image": n("LoadImage", "Condition image (first frame)", 300, image=IMAGE),
        "load_video": n("LoadVideo", "Pose video", file=POSE_VIDEO),
        "components": n("GetVideoComponents"),
        "positive": n("CLIPTextEncode", "Prompt", 420, text=PROMPT_DANCE),
        "negative": n("CLIPTextEncode", "Negative prompt (MuseV V2)", 420, text=NEGATIVE_V2),
        "pose": n("PoseVideoCondition", mode="pose video", video_has_condition=True, sample_rate=1, frame_count=24,
                  width=0, height=0, strength=1.0, start_percent=0.0, end_percent=1.0, pose_align="off",
                  detector="auto"),
        "pose_preview": n("PreviewImage", "Pose frames (control images)"),
        "motion": n("LoadMuseVMotion", motion_model=MOTION_POSE, frame_rate=1.0, temporal_layers=True),
        "sampler": sampler(),
        "decode": n("VAEDecode"),
        "video": n("CreateVideo", fps=12.0),
        "save": n("SaveVideo", filename_prefix="video/musev_pose_to_video", format="auto", codec="auto"),
    }
    chain_nodes, chain_links = reference_chain("motion", IMAGE_PROJ_POSE, "image")
    nodes.update(chain_nodes)
    links = [("ckpt", "MODEL", "motion", "model"), ("ckpt", "CLIP", "positive", "clip"),
             ("ckpt", "CLIP", "negative", "clip"), ("load_video", "VIDEO", "components", "video"),
             ("positive", "CONDITIONING", "pose", "positive"), ("negative", "CONDITIONING", "pose", "negative"),
             ("controlnet", "CONTROL_NET", "pose", "control_net"), ("components", "images", "pose", "frames"),
             ("image", "IMAGE", "pose", "condition_image"), ("pose", "pose_images", "pose_preview", "images"),
             ("pose", "frame_rate", "motion", "frame_rate"),
             ("referencenet", "model", "sampler", "model"), ("pose", "positive", "sampler", "positive"),
             ("pose", "negative", "sampler", "negative"), ("pose", "frames", "sampler", "frames"),
             ("pose", "width", "sampler", "width"), ("pose", "height", "sampler", "height"),
             ("image", "IMAGE", "sampler", "vision_image"), ("vae", "VAE", "sampler", "vae"),
             ("sampler", "latent", "decode", "samples"), ("vae", "VAE", "decode", "vae"),
             ("decode", "IMAGE", "video", "images"), ("components", "fps", "video", "fps"),
             ("video", "VIDEO", "save", "video")] + chain_links
    columns = [("Read me", ["about", "note"]),
               ("Models & inputs", ["ckpt", "vae", "clip_vision", "controlnet", "image", "load_video", "components"]),
               ("Prompt", ["positive", "negative"]), ("Pose condition", ["pose", "pose_preview"]),
               ("MuseV model", ["motion", "ipadapter", "referencenet"]),
               ("Parallel denoising", ["sampler"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "columns": columns}


WORKFLOWS["musev_pose_to_video"] = pose_to_video()


# ------------------------------------------------------------------------------------------------
# in the frontend

COLUMN_GAP = 70          # between groups
NODE_GAP = 40            # between nodes of a column (the title bar sits above node.pos)
GROUP_PAD = 16
GROUP_TITLE = 46         # room for the group's title above its first node's title bar

BUILD_JS = """async (spec) => {
    const app = window.app, LG = window.LiteGraph;
    app.graph.clear();
    const ids = {};
    for (const [key, s] of Object.entries(spec.nodes)) {
        const node = LG.createNode(s.type);
        if (!node) throw new Error('unknown node type ' + s.type);
        app.graph.add(node);
        if (s.title) node.title = s.title;
        if (s.text !== undefined) {
            const w = node.widgets && node.widgets[0];
            if (!w) throw new Error('note without a text widget: ' + s.type);
            w.value = s.text;
        }
        for (const [name, value] of Object.entries(s.widgets || {})) {
            const w = (node.widgets || []).find(w => w.name === name);
            if (!w) throw new Error(s.type + ' has no widget ' + name);
            w.value = value;
            w.callback?.(value, app.canvas, node);
        }
        ids[key] = node.id;
    }
    for (const [a, out, b, inp] of spec.links) {
        const A = app.graph.getNodeById(ids[a]), B = app.graph.getNodeById(ids[b]);
        const oi = A.outputs.findIndex(o => o.name === out);
        const ii = B.inputs.findIndex(i => i.name === inp);
        if (oi < 0) throw new Error(A.type + ' has no output ' + out);
        if (ii < 0) throw new Error(B.type + ' has no input ' + inp);
        if (!A.connect(oi, B, ii)) throw new Error('cannot connect ' + a + '.' + out + ' -> ' + b + '.' + inp);
    }
    return {ids, titleHeight: LG.NODE_TITLE_HEIGHT};
}"""

# Place the nodes, show them all (nodes off screen are not drawn, and drawing is what grows nodes
# with previews), wait for the previews, return every node's size.
MEASURE_JS = """async ([ids, pos, wanted, fixWidths]) => {
    const app = window.app, c = app.canvas;
    for (const [key, p] of Object.entries(pos || {})) app.graph.getNodeById(ids[key]).pos = p;
    const frames = async (k) => { for (let i = 0; i < k; i++) await new Promise(r => requestAnimationFrame(r)); };
    const fit = () => {
        const b = [Infinity, Infinity, -Infinity, -Infinity];
        for (const n of app.graph.nodes) {
            const r = n.boundingRect;
            b[0] = Math.min(b[0], r[0]); b[1] = Math.min(b[1], r[1]);
            b[2] = Math.max(b[2], r[0] + r[2]); b[3] = Math.max(b[3], r[1] + r[3]);
        }
        c.ds.fitToBounds([b[0], b[1], b[2] - b[0], b[3] - b[1]], {zoom: 0.95});
        c.setDirty(true, true);
    };
    fit();
    // image/video previews load asynchronously and grow their node; so does our sampler's window
    // preview once the server's plan is drawn
    const videoReady = (n) => {
        const w = (n.widgets || []).find(w => w.name === 'video-preview');
        const v = w && w.element && w.element.querySelector('video');
        return !!(v && v.readyState >= 2);
    };
    const layoutReady = (L) => !!(L && L.status !== 'loading' && L.drawn && L.drawn.key === L.key);
    const pending = () => app.graph.nodes.some(n =>
        (n.type === 'LoadImage' && !(n.imgs && n.imgs.length && n.imgs.every(i => i.complete)))
        || (n.type === 'LoadVideo' && !videoReady(n))
        || (n.type === 'ParallelDenoiseSampler' && !layoutReady(n.musevLayout)));
    const deadline = Date.now() + 15000;
    while (pending() && Date.now() < deadline) { c.setDirty(true, true); await frames(1); }
    if (pending()) throw new Error('image/video previews or window previews did not load');
    await frames(3);
    await new Promise(r => setTimeout(r, 200));
    await frames(3);
    const sizes = {};
    for (const [key, id] of Object.entries(ids)) {
        const node = app.graph.getNodeById(id);
        const min = node.computeSize();
        const want = wanted[key] || [0, 0];
        // widths are settled in the first pass (a video preview's minimum width follows the node's)
        const w = fixWidths ? want[0] : Math.ceil(Math.max(min[0], want[0], node.size[0]));
        const h = Math.ceil(Math.max(min[1], want[1], node.size[1]));
        if (w !== node.size[0] || h !== node.size[1]) node.setSize([w, h]);
        sizes[key] = [w, h];
    }
    await frames(2);
    return sizes;
}"""

PLACE_JS = """async ([ids, pos, groups]) => {
    const app = window.app, LG = window.LiteGraph;
    for (const [key, p] of Object.entries(pos)) app.graph.getNodeById(ids[key]).pos = p;
    for (const g of [...app.graph.groups]) app.graph.remove(g);
    for (const g of groups) {
        const group = new LG.LGraphGroup(g.title);
        group.pos = [g.x, g.y];
        group.size = [g.w, g.h];
        if (g.color) group.color = g.color;
        app.graph.add(group);
    }
    const c = app.canvas;
    c.ds.scale = 1; c.ds.offset = [0, 0];
    const b = [Infinity, Infinity, -Infinity, -Infinity];
    for (const item of [...app.graph.nodes, ...app.graph.groups]) {
        const r = item.boundingRect;
        b[0] = Math.min(b[0], r[0]); b[1] = Math.min(b[1], r[1]);
        b[2] = Math.max(b[2], r[0] + r[2]); b[3] = Math.max(b[3], r[1] + r[3]);
    }
    c.ds.fitToBounds([b[0], b[1], b[2] - b[0], b[3] - b[1]], {zoom: 0.95});
    c.setDirty(true, true);
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    return JSON.stringify(app.graph.serialize());   // (undefined fields stay out, as when saved)
}"""

RELOAD_JS = """async (text) => {
    await window.app.loadGraphData(JSON.parse(text), true, true, 'build',
        {showMissingNodesDialog: false, showMissingModelsDialog: false});
}"""

GROUP_COLORS = {"Read me": "#3f789e", "MuseV model": "#8A8", "Parallel denoising": "#a1309b",
                "Pose condition": "#b58b2a"}


def layout(spec, sizes, title_h):
    """Columns left to right (one group each), nodes stacked top-down inside a column."""
    pos, groups = {}, []
    x = 0
    for title, keys in spec["columns"]:
        width = max(sizes[k][0] for k in keys)
        y = GROUP_TITLE + title_h
        for k in keys:
            pos[k] = [x + GROUP_PAD, y]
            y += sizes[k][1] + title_h + NODE_GAP
        height = y - NODE_GAP + GROUP_PAD
        groups.append({"title": title, "x": x, "y": 0, "w": width + 2 * GROUP_PAD, "h": height,
                       "color": GROUP_COLORS.get(title)})
        x += width + 2 * GROUP_PAD + COLUMN_GAP
    return pos, groups


def check_spec(name, spec):
    placed = [k for _, keys in spec["columns"] for k in keys]
    assert sorted(placed) == sorted(spec["nodes"]), (name, set(placed) ^ set(spec["nodes"]))
    assert len(placed) == len(set(placed)), name


def build(frontend, name, spec):
    check_spec(name, spec)
    js_nodes = {}
    for key, s in spec["nodes"].items():
        d = {"type": s["type"], "title": s.get("title"), "width": s.get("width")}
        if "text" in s:
            d["text"] = s["text"]
            d["height"] = 330 if key == "note" else 250
        else:
            d["widgets"] = s["widgets"]
        js_nodes[key] = d
    built = frontend.page.evaluate(BUILD_JS, {"nodes": js_nodes, "links": spec["links"]})
    wanted = {k: [d.get("width") or 0, d.get("height") or 0] for k, d in js_nodes.items()}
    sizes = frontend.page.evaluate(MEASURE_JS, [built["ids"], None, wanted, False])
    for _ in range(5):
        # lay out, save, and load the saved workflow as a user would: nodes with previews may come
        # back larger; repeat until what loads is what was laid out
        pos, groups = layout(spec, sizes, built["titleHeight"])
        text = frontend.page.evaluate(PLACE_JS, [built["ids"], pos, groups])
        frontend.page.evaluate(RELOAD_JS, text)
        again = frontend.page.evaluate(MEASURE_JS, [built["ids"], None, sizes, True])
        if again == sizes:
            break
        sizes = again
    else:
        raise RuntimeError(f"{name}: node sizes do not settle: {sizes}")
    workflow = json.loads(text)
    errors = frontend.errors()
    if errors:
        raise RuntimeError(f"{name}: the frontend logged errors while building:\n" + "\n".join(errors))
    return workflow


def dump(workflow):
    return json.dumps(workflow, indent=1, ensure_ascii=False) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="workflows to build (default: all)")
    ap.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    ap.add_argument("--out", default=OUT_DIR)
    args = ap.parse_args(argv)
    sys.path.insert(0, TESTS_DIR)
    from browser import BrowserSession, FrontendPage
    from comfy_server import ComfyServer
    from conftest import find_comfyui_path
    from workflow_inputs import write_workflow_inputs

    comfy = find_comfyui_path()
    if comfy is None:
        ap.error("set COMFYUI_PATH to a ComfyUI tree")
    names = args.names or list(WORKFLOWS)
    unknown = set(names) - set(WORKFLOWS)
    if unknown:
        ap.error(f"unknown workflow(s) {sorted(unknown)}; known: {sorted(WORKFLOWS)}")
    stale = []
    with ComfyServer(comfy) as server:
        # the input files the workflows name (else the frontend's image preview answers 404)
        write_workflow_inputs(server.input_dir, IMAGE, SOURCE_VIDEO, POSE_VIDEO, size=256, frames=12)
        browser = BrowserSession()
        try:
            page = FrontendPage(browser, server)
            page.open()
            for name in names:
                page.console.clear()
                page.page_errors.clear()
                page.failed.clear()
                text = dump(build(page, name, WORKFLOWS[name]))
                path = os.path.join(args.out, name + ".json")
                if args.check:
                    old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
                    if old is None or _shape(json.loads(old)) != _shape(json.loads(text)):
                        stale.append(path)
                    continue
                os.makedirs(args.out, exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
                print("wrote", os.path.relpath(path, PACK_DIR))
            page.close()
        finally:
            browser.close()
    if stale:
        print("out of date (re-run scripts/build_workflows.py):", *stale, sep="\n  ")
        return 1
    return 0


def _shape(wf):
    """What --check compares: node types, titles, widgets, positions, sizes, links, groups (not ids
    the frontend may number differently, nor its view state)."""
    nodes = sorted((x["type"], x.get("title") or "", json.dumps(x.get("widgets_values")), tuple(x["pos"]),
                    tuple(x["size"])) for x in wf["nodes"])
    types = {x["id"]: (x["type"], x.get("title") or "") for x in wf["nodes"]}
    links = sorted((types[l[1]], l[2], types[l[3]], l[4], l[5]) for l in wf["links"])
    groups = sorted((g["title"], tuple(g["bounding"])) for g in wf.get("groups", []))
    return nodes, links, groups


if __name__ == "__main__":
    sys.exit(main())
