#!/usr/bin/env python
"""Build example_workflows/*.json in the real ComfyUI frontend.

Every workflow is assembled the way a user would build it: a ComfyUI server (with this pack) is
started, the frontend is opened in headless Chromium, the nodes are created with LiteGraph, their
widgets set, their sockets connected; every node is measured as the frontend draws it (previews,
notes and the window chart included), the groups are packed into rows so that the whole graph fits
a full-HD browser window at a readable zoom, and what the frontend exports (``app.graphToPrompt()``'s
workflow with the view, as "Export" saves it) is written to example_workflows/.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_workflows.py [--check] [name ...]

Build with the newest frontend (ComfyUI 0.28's 1.45): the files carry its format; older frontends
(1.27, ComfyUI 0.3.64) load them too (tests/host/test_workflows.py checks both).

``--check`` writes nothing and fails when a committed file differs from what would be built
(node types, widgets, links, layout, view).  The graphs are described below in plain data
(``WORKFLOWS``); model names come from the one model table (nodes/model_table.py).  Needs the
test harness' dependencies (playwright + a system Chromium).
"""
import argparse
import importlib.util
import itertools
import json
import os
import sys

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(PACK_DIR, "tests")
OUT_DIR = os.path.join(PACK_DIR, "example_workflows")


def _model_table():
    """nodes/model_table.py (pure data, no ComfyUI import), loaded by path."""
    spec = importlib.util.spec_from_file_location("musev_model_table", os.path.join(PACK_DIR, "nodes",
                                                                                   "model_table.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, mod)
    spec.loader.exec_module(mod)
    return mod


TABLE = _model_table()


def M(key):
    """The widget value of a model of the table."""
    return TABLE.get(key).name


# ------------------------------------------------------------------------------------------------
# The view a workflow is saved for: a full-HD browser window (1920 x 960 CSS px of page) at
# devicePixelRatio 1 with ComfyUI 0.28's frontend (1.45), which draws its canvas under the whole page
# with a sidebar on the left and tabs / breadcrumb / run bar on top: USABLE_PAGE is the page
# rectangle (left, top, right, bottom) nothing covers there.  Every node must lie inside it at a
# zoom of at least MIN_ZOOM (the frontend draws no node text below about 0.57), in both of that
# frontend's renderers.  0.3.64's frontend (1.27) starts its canvas below and right of its bars
# (OLD_CANVAS_ORIGIN): the same view sits that much lower/right there; the graph still fits its
# canvas at the saved zoom (checked by the tests).
REFERENCE_VIEWPORT = {"width": 1920, "height": 960}
USABLE_PAGE = (64, 104, 1904, 910)
OLD_CANVAS_ORIGIN = (64, 78)
MIN_ZOOM = 0.65
MAX_ZOOM = 1.0


def usable_canvas():
    """The usable rectangle in canvas pixels (the 1.45 canvas starts at the page's corner)."""
    return USABLE_PAGE


# ------------------------------------------------------------------------------------------------
# inputs the workflows name (tests/workflow_inputs.py writes generated ones)
IMAGE = "example.png"
POSE_VIDEO = "video1_girl_poseseq.mp4"
SOURCE_VIDEO = "source_video.mp4"
SEED = 1234

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

THUMBNAIL_NOTE = "*Thumbnail: a frame of this workflow's output made with random-weight stand-in models.*"

# Loader inputs that take a model of the table (node type, widget) -> the table keys they may hold.
MODEL_WIDGETS = {
    ("MuseVCheckpointLoader", "ckpt_name"), ("MuseVVAELoader", "vae_name"),
    ("MuseVCLIPVisionLoader", "clip_name"), ("LoadMuseVMotion", "motion_model"),
    ("MuseVReferenceNet", "referencenet"), ("MuseVIPAdapter", "image_proj"),
    ("ControlNetLoader", "control_net_name"), ("LoraLoaderModelOnly", "lora_name"),
    ("MuseVFaceID", "faceid_model"),
}


def model_entry(folder, name):
    """The table's entry for a widget value, or None."""
    for m in TABLE.MODELS:
        if m.folder == folder and m.name == name:
            return m
    return None


def table_entry_for_widget(value):
    """The table entry a model widget value names (any folder)."""
    hits = [m for m in TABLE.MODELS if m.name == value]
    return hits[0] if hits else None


def frontend_model_metadata(value):
    """``properties.models`` entries for a model widget's value, in the form the 1.45 frontend's
    missing-models check uses (``{name, url, directory}``, ``name`` = the widget value, ``directory``
    = the models folder key).  That check looks the name up among the *files* ComfyUI lists for the
    folder (/api/experiment/models/<folder>), so a folder value (MuseV's diffusers folders, ending
    in ``/``) would always be reported missing, installed or not: folders get no entry (their
    name, folder and URL are in the workflow's note, and the loader's error names them)."""
    m = table_entry_for_widget(value)
    if m is None or m.is_folder:
        return []
    return [{"name": m.name, "url": m.url, "directory": m.folder}]


def readme(title, body, model_keys, width=540):
    """One note per workflow: what it does, then every model file it names (from the table)."""
    lines = [f"### {title}", "", body.strip(), "", "**Models**: folder under `ComfyUI/models/`, name as the loader "
             "shows it, link", ""]
    for key in model_keys:
        m = TABLE.get(key)
        lines.append(f"* `{m.folder}/` `{m.name}` [{'folder' if m.is_folder else 'file'} ↗]({m.url})")
    lines += ["", f"MuseV's files: clone [TMElyralab/MuseV]({TABLE.HF_MUSEV}) (or only these folders) into "
              "`models/musev/`.", "", THUMBNAIL_NOTE]
    return {"type": "MarkdownNote", "title": title, "text": "\n".join(lines), "width": width, "models": model_keys}


def n(type_, title=None, node_width=None, **widgets):
    """A node spec: type, optional title / node width, widget values by widget name (a widget may be
    called ``width``: the node's own width is ``node_width``)."""
    return {"type": type_, "title": title, "width": node_width, "widgets": widgets}


def sampler(title="MuseV Parallel Denoise Sampler", **widgets):
    # context_batch_size / context_stride: the node's defaults (auto batching, MuseV's stride)
    base = dict(frames=12, width=512, height=512, context_frames=12, context_overlap=4, context_schedule="uniform_v2",
                noise_type="video_fusion", w_ind_noise=0.5, img_weight=0.001, seed=SEED,
                control_after_generate="fixed", steps=10, cfg=3.5, sampler_name="euler", scheduler="musev_linspace",
                include_condition_frames=True)
    base.update(widgets)
    return n("ParallelDenoiseSampler", title, **base)


def base_loaders(t2i="t2i_majicmix", clip_vision=True):
    nodes = {
        "base": n("MuseVCheckpointLoader", "Base model (SD1.5)", ckpt_name=M(t2i)),
        "vae": n("MuseVVAELoader", "VAE (sd-vae-ft-mse)", vae_name=M("vae")),
    }
    if clip_vision:
        nodes["clip_vision"] = n("MuseVCLIPVisionLoader", "CLIP vision (ViT-H/14)", clip_name=M("clip_vision"))
    return nodes


def prompts(text):
    return {"positive": n("CLIPTextEncode", "Prompt", 400, text=text),
            "negative": n("CLIPTextEncode", "Negative prompt (MuseV V2)", 400, text=NEGATIVE_V2)}


def reference_chain(motion, image_proj, image_node, vae_node="vae"):
    """LoadMuseVMotion -> MuseVIPAdapter -> MuseVReferenceNet nodes and their links."""
    nodes = {
        "ipadapter": n("MuseVIPAdapter", image_proj=M(image_proj), scale=1.0, start_percent=0.0, end_percent=1.0),
        "referencenet": n("MuseVReferenceNet", referencenet=M("referencenet")),
    }
    links = [(motion, "model", "ipadapter", "model"), ("clip_vision", "CLIP_VISION", "ipadapter", "clip_vision"),
             (image_node, "IMAGE", "ipadapter", "image"), ("ipadapter", "model", "referencenet", "model"),
             (vae_node, "VAE", "referencenet", "vae"), (image_node, "IMAGE", "referencenet", "image")]
    return nodes, links


def video_out(name, fps=12.0):
    return {"decode": n("VAEDecode"), "video": n("CreateVideo", fps=fps),
            "save": n("SaveVideo", "Save video", filename_prefix=f"video/{name}", format="auto", codec="auto")}


VIDEO_LINKS = [("decode", "IMAGE", "video", "images"), ("video", "VIDEO", "save", "video")]
REFERENCE_MODELS = ["t2i_majicmix", "vae", "clip_vision", "motion_referencenet", "image_proj_referencenet",
                    "referencenet"]

WORKFLOWS = {}


def image_to_video(name, title, about, frames, prompt, schedule="uniform_v2", include_condition=True):
    nodes = {"readme": readme(title, about, REFERENCE_MODELS)}
    nodes.update(base_loaders())
    nodes["image"] = n("LoadImage", "Condition image (first frame)", 300, image=IMAGE)
    nodes.update(prompts(prompt))
    nodes["motion"] = n("LoadMuseVMotion", motion_model=M("motion_referencenet"), frame_rate=8.0, temporal_layers=True)
    chain_nodes, chain_links = reference_chain("motion", "image_proj_referencenet", "image")
    nodes.update(chain_nodes)
    nodes["sampler"] = sampler(frames=frames, context_schedule=schedule, include_condition_frames=include_condition)
    nodes.update(video_out(name))
    links = [("base", "MODEL", "motion", "model"), ("base", "CLIP", "positive", "clip"),
             ("base", "CLIP", "negative", "clip"), ("referencenet", "model", "sampler", "model"),
             ("positive", "CONDITIONING", "sampler", "positive"), ("negative", "CONDITIONING", "sampler", "negative"),
             ("image", "IMAGE", "sampler", "vision_image"), ("vae", "VAE", "sampler", "vae"),
             ("sampler", "latent", "decode", "samples"), ("vae", "VAE", "decode", "vae")] + VIDEO_LINKS + chain_links
    groups = [("Read me", ["readme"]), ("Models", ["base", "vae", "clip_vision"]), ("Condition image", ["image"]),
              ("Prompt", ["positive", "negative"]), ("MuseV model", ["motion", "ipadapter", "referencenet"]),
              ("Parallel denoising", ["sampler"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "groups": groups}


WORKFLOWS["musev_image_to_video"] = image_to_video(
    "musev_image_to_video", "MuseV: image to video",
    "The condition image is the clean first frame every context window sees, the IP-Adapter image prompt and the "
    "ReferenceNet's reference (MuseV's `text2video.py` with a condition image).\n\n"
    "* MuseV's defaults: 12 frames after the condition frame, windows of 12 overlapping by 4, 10 euler steps on "
    "`musev_linspace`, cfg 3.5, `video_fusion` noise 0.5, image noise 1e-3, frame rate 8, 12 fps.\n"
    "* The image is centre-cropped and resized to the sampler's width x height (multiples of 64). About 12 GB "
    "of GPU memory at 512x512.",
    frames=12, prompt=PROMPT_GIRL)

WORKFLOWS["musev_long_video"] = image_to_video(
    "musev_long_video", "MuseV: long video (parallel denoising)",
    "MuseV's *visual-conditioned parallel denoising*: 48 frames denoised at once in windows of 12 overlapping by "
    "4 (the sampler draws them); every window also sees the clean condition frame, so windows far apart stay "
    "consistent. Overlapping predictions are averaged.\n\n"
    "* Memory stays that of one window group: only the latent grows with the length.\n"
    "* `context_batch_size` (advanced input) > 1 runs several windows per UNet call: faster on a large GPU, "
    "same result.",
    frames=48, prompt=PROMPT_SEA)

WORKFLOWS["musev_looping_video"] = image_to_video(
    "musev_looping_video", "MuseV: looping video",
    "`context_schedule = uniform_looped`: the windows wrap around the end (the last window covers the last frames "
    "and the first ones), so frame 23 flows into frame 0: a closed loop.\n\n"
    "* `include_condition_frames` is off: the output is exactly the 24 loop frames.\n"
    "* Good subjects: water, fire, clouds, hair in the wind.",
    frames=24, prompt=PROMPT_WATERFALL, schedule="uniform_looped", include_condition=False)


def size_primitives():
    return {"width": n("PrimitiveInt", "width", value=512, control_after_generate="fixed"),
            "height": n("PrimitiveInt", "height", value=512, control_after_generate="fixed")}


def text_to_image_to_video():
    name = "musev_text_to_image_to_video"
    nodes = {"readme": readme(
        "MuseV: text to image to video",
        "MuseV's `text2video.py` without a condition image: the first frame comes from the same model with its "
        "temporal layers off (`temporal_layers` off = MuseV's `skip_temporal_layer`): 1 frame, 30 steps, cfg 7.5. "
        "Its latent becomes the condition frame, its image the IP-Adapter / ReferenceNet reference; the video adds "
        "11 frames with MuseV's video defaults (10 steps, cfg 3.5).\n\n"
        "* `width` / `height` set both the first frame and the video.\n"
        "* Change the first KSampler's seed until you like the first frame.",
        REFERENCE_MODELS)}
    nodes.update(base_loaders())
    nodes.update(size_primitives())
    nodes.update(prompts(PROMPT_GIRL))
    nodes.update({
        "image_motion": n("LoadMuseVMotion", "MuseV motion (first frame: temporal layers off)",
                          motion_model=M("motion_referencenet"), frame_rate=8.0, temporal_layers=False),
        "empty": n("EmptyLatentImage", "First frame latent", batch_size=1),
        "ksampler": n("KSampler", "First frame (30 steps, cfg 7.5)", seed=SEED, control_after_generate="fixed",
                      steps=30, cfg=7.5, sampler_name="euler", scheduler="normal", denoise=1.0),
        "first_decode": n("VAEDecode", "Decode first frame"),
        "first_preview": n("PreviewImage", "First frame", 260),
        "motion": n("LoadMuseVMotion", motion_model=M("motion_referencenet"), frame_rate=8.0, temporal_layers=True),
        "sampler": sampler(frames=11),
    })
    chain_nodes, chain_links = reference_chain("motion", "image_proj_referencenet", "first_decode")
    nodes.update(chain_nodes)
    nodes.update(video_out(name))
    links = [("base", "MODEL", "image_motion", "model"), ("base", "MODEL", "motion", "model"),
             ("base", "CLIP", "positive", "clip"), ("base", "CLIP", "negative", "clip"),
             ("width", "INT", "empty", "width"), ("height", "INT", "empty", "height"),
             ("width", "INT", "sampler", "width"), ("height", "INT", "sampler", "height"),
             ("image_motion", "model", "ksampler", "model"), ("positive", "CONDITIONING", "ksampler", "positive"),
             ("negative", "CONDITIONING", "ksampler", "negative"), ("empty", "LATENT", "ksampler", "latent_image"),
             ("ksampler", "LATENT", "first_decode", "samples"), ("vae", "VAE", "first_decode", "vae"),
             ("first_decode", "IMAGE", "first_preview", "images"),
             ("referencenet", "model", "sampler", "model"), ("positive", "CONDITIONING", "sampler", "positive"),
             ("negative", "CONDITIONING", "sampler", "negative"), ("ksampler", "LATENT", "sampler", "vision_latent"),
             ("sampler", "latent", "decode", "samples"), ("vae", "VAE", "decode", "vae")] + VIDEO_LINKS + chain_links
    groups = [("Read me", ["readme"]), ("Models", ["base", "vae", "clip_vision", "width", "height"]),
              ("Prompt", ["positive", "negative"]),
              ("1. First frame (text to image)", ["image_motion", "empty", "ksampler", "first_decode", "first_preview"]),
              ("2. MuseV model", ["motion", "ipadapter", "referencenet"]),
              ("Parallel denoising", ["sampler"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "groups": groups}


WORKFLOWS["musev_text_to_image_to_video"] = text_to_image_to_video()


def video_to_video():
    name = "musev_video_to_video"
    nodes = {"readme": readme(
        "MuseV: video to video",
        "RGB initialisation: the source frames, VAE-encoded, start the denoising (`init_latent`) at `denoise` 0.7 "
        "(lower keeps more of the source). Frame 0 is the condition frame every window sees and the IP-Adapter / "
        "ReferenceNet reference; the next `frames` frames are re-generated.\n\n"
        "* `frames`, `width`, `height` are set once and feed every node that needs them.\n"
        "* `frame_rate` 1: MuseV's video2video frame-embedding rate (the sample rate).\n"
        "* The output keeps the source video's frame rate.",
        ["t2i_fantasticmix", "vae", "clip_vision", "motion_referencenet", "image_proj_referencenet", "referencenet"])}
    nodes.update(base_loaders("t2i_fantasticmix"))
    nodes.update(size_primitives())
    nodes.update({
        "load_video": n("LoadVideo", "Source video", 300, file=SOURCE_VIDEO),
        "frames": n("PrimitiveInt", "frames", value=12, control_after_generate="fixed"),
        "components": n("GetVideoComponents"),
        "scale": n("ImageScale", "Resize (centre crop)", upscale_method="lanczos", crop="center"),
        "first": n("ImageFromBatch", "Condition frame (frame 0)", batch_index=0, length=1),
        "rest": n("ImageFromBatch", "Frames to re-generate", batch_index=1),
        "encode": n("VAEEncode", "Encode source frames"),
    })
    nodes.update(prompts(PROMPT_V2V))
    nodes["motion"] = n("LoadMuseVMotion", motion_model=M("motion_referencenet"), frame_rate=1.0, temporal_layers=True)
    chain_nodes, chain_links = reference_chain("motion", "image_proj_referencenet", "first")
    nodes.update(chain_nodes)
    nodes["sampler"] = sampler(denoise=0.7)
    nodes.update(video_out(name))
    links = [("base", "MODEL", "motion", "model"), ("base", "CLIP", "positive", "clip"),
             ("base", "CLIP", "negative", "clip"), ("load_video", "VIDEO", "components", "video"),
             ("components", "images", "scale", "image"), ("width", "INT", "scale", "width"),
             ("height", "INT", "scale", "height"), ("scale", "IMAGE", "first", "image"),
             ("scale", "IMAGE", "rest", "image"), ("frames", "INT", "rest", "length"),
             ("rest", "IMAGE", "encode", "pixels"), ("vae", "VAE", "encode", "vae"),
             ("referencenet", "model", "sampler", "model"), ("positive", "CONDITIONING", "sampler", "positive"),
             ("negative", "CONDITIONING", "sampler", "negative"), ("first", "IMAGE", "sampler", "vision_image"),
             ("vae", "VAE", "sampler", "vae"), ("encode", "LATENT", "sampler", "init_latent"),
             ("frames", "INT", "sampler", "frames"), ("width", "INT", "sampler", "width"),
             ("height", "INT", "sampler", "height"),
             ("sampler", "latent", "decode", "samples"), ("vae", "VAE", "decode", "vae"),
             ("components", "fps", "video", "fps")] + VIDEO_LINKS + chain_links
    groups = [("Read me", ["readme"]), ("Models", ["base", "vae", "clip_vision"]),
              ("Settings", ["frames", "width", "height"]),
              ("Source video", ["load_video", "components", "scale", "first", "rest", "encode"]),
              ("Prompt", ["positive", "negative"]), ("MuseV model", ["motion", "ipadapter", "referencenet"]),
              ("Parallel denoising", ["sampler"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "groups": groups}


WORKFLOWS["musev_video_to_video"] = video_to_video()


def pose_to_video():
    name = "musev_pose_to_video"
    nodes = {"readme": readme(
        "MuseV: pose to video",
        "The driving video holds rendered OpenPose skeletons (MuseV's `video_is_middle`, e.g. its "
        "`video1_girl_poseseq.mp4`); set `mode` to `detect` for a real video (DWPose files in `models/dwpose/`).\n\n"
        "* Frame 0 is the condition image's pose (`video_has_condition`); the next `frame_count` poses drive the "
        "video.\n"
        "* The pose node gives the sampler its frame count and size (0 = from the condition image) and the motion "
        "model its `frame_rate`; the sampler's window chart follows `frame_count`.\n"
        "* The ReferenceNet is musev_referencenet's (the pose release has none).",
        ["t2i_fantasticmix", "vae", "clip_vision", "controlnet_openpose", "motion_pose", "image_proj_pose",
         "referencenet"])}
    nodes.update(base_loaders("t2i_fantasticmix"))
    nodes.update({
        "controlnet": n("ControlNetLoader", "OpenPose ControlNet", control_net_name=M("controlnet_openpose")),
        "image": n("LoadImage", "Condition image (first frame)", 300, image=IMAGE),
        "load_video": n("LoadVideo", "Pose video", 300, file=POSE_VIDEO),
        "components": n("GetVideoComponents"),
    })
    nodes.update(prompts(PROMPT_DANCE))
    nodes.update({
        "pose": n("PoseVideoCondition", mode="pose video", video_has_condition=True, sample_rate=1, frame_count=24,
                  width=0, height=0, strength=1.0, start_percent=0.0, end_percent=1.0, pose_align="off",
                  detector="auto"),
        "pose_preview": n("PreviewImage", "Pose frames", 260),
        "motion": n("LoadMuseVMotion", motion_model=M("motion_pose"), frame_rate=1.0, temporal_layers=True),
        "sampler": sampler(),
    })
    chain_nodes, chain_links = reference_chain("motion", "image_proj_pose", "image")
    nodes.update(chain_nodes)
    nodes.update(video_out(name))
    links = [("base", "MODEL", "motion", "model"), ("base", "CLIP", "positive", "clip"),
             ("base", "CLIP", "negative", "clip"), ("load_video", "VIDEO", "components", "video"),
             ("positive", "CONDITIONING", "pose", "positive"), ("negative", "CONDITIONING", "pose", "negative"),
             ("controlnet", "CONTROL_NET", "pose", "control_net"), ("components", "images", "pose", "frames"),
             ("image", "IMAGE", "pose", "condition_image"), ("pose", "pose_images", "pose_preview", "images"),
             ("pose", "frame_rate", "motion", "frame_rate"),
             ("referencenet", "model", "sampler", "model"), ("pose", "positive", "sampler", "positive"),
             ("pose", "negative", "sampler", "negative"), ("pose", "frames", "sampler", "frames"),
             ("pose", "width", "sampler", "width"), ("pose", "height", "sampler", "height"),
             ("image", "IMAGE", "sampler", "vision_image"), ("vae", "VAE", "sampler", "vae"),
             ("sampler", "latent", "decode", "samples"), ("vae", "VAE", "decode", "vae"),
             ("components", "fps", "video", "fps")] + VIDEO_LINKS + chain_links
    groups = [("Read me", ["readme"]), ("Models", ["base", "vae", "clip_vision", "controlnet"]),
              ("Inputs", ["image", "load_video", "components"]), ("Prompt", ["positive", "negative"]),
              ("Pose condition", ["pose", "pose_preview"]), ("MuseV model", ["motion", "ipadapter", "referencenet"]),
              ("Parallel denoising", ["sampler"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "groups": groups}


WORKFLOWS["musev_pose_to_video"] = pose_to_video()


def ksampler_context():
    name = "musev_ksampler_context"
    nodes = {"readme": readme(
        "MuseV: context windows + KSampler",
        "The AnimateDiff habit: `MuseV Context Windows` turns the MuseV MODEL into a video model for any sampler; "
        "the stock KSampler denoises an Empty Latent batch (frames = batch size) in MuseV's overlapping windows, "
        "all seeing the clean condition frame (`vision_latent`, the VAE-encoded condition image).\n\n"
        "* Same maths as the Parallel Denoise Sampler; `musev_linspace` gives MuseV's sigmas.\n"
        "* The chart on the context node follows the latent's batch size (24 frames, 3 windows).\n"
        "* `width` / `height` set both the latent and the condition image's size.",
        REFERENCE_MODELS)}
    nodes.update(base_loaders())
    nodes.update(size_primitives())
    nodes.update({
        "image": n("LoadImage", "Condition image", 300, image=IMAGE),
        "scale": n("ImageScale", "Resize (centre crop)", upscale_method="lanczos", crop="center"),
        "encode": n("VAEEncode", "Encode condition frame"),
    })
    nodes.update(prompts(PROMPT_GIRL))
    nodes["motion"] = n("LoadMuseVMotion", motion_model=M("motion_referencenet"), frame_rate=8.0, temporal_layers=True)
    chain_nodes, chain_links = reference_chain("motion", "image_proj_referencenet", "image")
    nodes.update(chain_nodes)
    nodes.update({
        "context": n("MuseVContextWindows", "MuseV Context Windows", context_frames=12, context_overlap=4,
                     context_schedule="uniform_v2", noise_type="video_fusion", w_ind_noise=0.5,
                     img_weight=0.001),
        "empty": n("EmptyLatentImage", "Video latent (frames = batch)", batch_size=24),
        "ksampler": n("KSampler", seed=SEED, control_after_generate="fixed", steps=10, cfg=3.5, sampler_name="euler",
                      scheduler="musev_linspace", denoise=1.0),
    })
    nodes.update(video_out(name))
    links = [("base", "MODEL", "motion", "model"), ("base", "CLIP", "positive", "clip"),
             ("base", "CLIP", "negative", "clip"),
             ("image", "IMAGE", "scale", "image"), ("width", "INT", "scale", "width"), ("height", "INT", "scale", "height"),
             ("scale", "IMAGE", "encode", "pixels"), ("vae", "VAE", "encode", "vae"),
             ("referencenet", "model", "context", "model"), ("encode", "LATENT", "context", "vision_latent"),
             ("width", "INT", "empty", "width"), ("height", "INT", "empty", "height"),
             ("context", "model", "ksampler", "model"), ("positive", "CONDITIONING", "ksampler", "positive"),
             ("negative", "CONDITIONING", "ksampler", "negative"), ("empty", "LATENT", "ksampler", "latent_image"),
             ("ksampler", "LATENT", "decode", "samples"), ("vae", "VAE", "decode", "vae")] + VIDEO_LINKS + chain_links
    groups = [("Read me", ["readme"]), ("Models", ["base", "vae", "clip_vision", "width", "height"]),
              ("Condition frame", ["image", "scale", "encode"]), ("Prompt", ["positive", "negative"]),
              ("MuseV model", ["motion", "ipadapter", "referencenet"]), ("Context windows", ["context", "empty"]),
              ("KSampler", ["ksampler"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "groups": groups}


WORKFLOWS["musev_ksampler_context"] = ksampler_context()


def shot_chaining():
    name = "musev_shot_chaining"
    nodes = {"readme": readme(
        "MuseV: shot chaining",
        "MuseV's end-to-end chaining (`n_batch`): shot 1 starts from the condition image; the last frame of its "
        "latents (`MuseV Shot Condition`, not re-encoded) is shot 2's condition frame; `MuseV Join Shots` drops "
        "shot 2's leading condition frame and appends the rest. Chain more shots the same way.\n\n"
        "* `width` / `height` feed both samplers: shots must have one size.\n"
        "* Shot 2 uses another seed, as MuseV's generator moves on.",
        REFERENCE_MODELS)}
    nodes.update(base_loaders())
    nodes.update(size_primitives())
    nodes["image"] = n("LoadImage", "Condition image (first frame)", 300, image=IMAGE)
    nodes.update(prompts(PROMPT_GIRL))
    nodes["motion"] = n("LoadMuseVMotion", motion_model=M("motion_referencenet"), frame_rate=8.0, temporal_layers=True)
    chain_nodes, chain_links = reference_chain("motion", "image_proj_referencenet", "image")
    nodes.update(chain_nodes)
    nodes.update({
        "shot1": sampler("Shot 1"),
        "condition": n("MuseVShotCondition", "Last frame -> next condition", condition_frames=1),
        "shot2": sampler("Shot 2", seed=SEED + 1),
        "join": n("MuseVJoinShots", drop_leading_frames=1),
    })
    nodes.update(video_out(name))
    links = [("base", "MODEL", "motion", "model"), ("base", "CLIP", "positive", "clip"),
             ("base", "CLIP", "negative", "clip")]
    for shot in ("shot1", "shot2"):
        links += [("referencenet", "model", shot, "model"), ("positive", "CONDITIONING", shot, "positive"),
                  ("negative", "CONDITIONING", shot, "negative"), ("width", "INT", shot, "width"),
                  ("height", "INT", shot, "height")]
    links += [("image", "IMAGE", "shot1", "vision_image"), ("vae", "VAE", "shot1", "vae"),
              ("shot1", "latent", "condition", "latent"), ("condition", "vision_latent", "shot2", "vision_latent"),
              ("shot1", "latent", "join", "video"), ("shot2", "latent", "join", "next_shot"),
              ("join", "video", "decode", "samples"), ("vae", "VAE", "decode", "vae")] + VIDEO_LINKS + chain_links
    groups = [("Read me", ["readme"]), ("Models", ["base", "vae", "clip_vision", "width", "height"]),
              ("Condition image", ["image"]), ("Prompt", ["positive", "negative"]),
              ("MuseV model", ["motion", "ipadapter", "referencenet"]), ("Shot 1", ["shot1"]),
              ("Chain", ["condition", "join"]), ("Shot 2", ["shot2"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "groups": groups}


WORKFLOWS["musev_shot_chaining"] = shot_chaining()


def lcm_fast():
    name = "musev_lcm_fast"
    nodes = {"readme": readme(
        "MuseV: fast path (LCM-LoRA, 6 steps)",
        "LCM-LoRA on the SD1.5 base (MuseV's configs offer LCM) with ComfyUI's own LCM pieces: `ModelSamplingDiscrete` "
        "set to `lcm` and the `lcm` sampler, 6 steps instead of 10, cfg 1.5 (1.0 skips the negative pass: about "
        "twice as fast again).\n\n"
        "* The LoRA goes on the base, before the MuseV layers; the windows and the condition frame work as usual.\n"
        "* Timesteps are LCM's own (its 50-step grid), not MuseV's continuous ones.",
        REFERENCE_MODELS + ["lcm_lora"])}
    nodes.update(base_loaders())
    nodes.update({
        "lora": n("LoraLoaderModelOnly", "LCM-LoRA", lora_name=M("lcm_lora"), strength_model=1.0),
        "lcm": n("ModelSamplingDiscrete", "LCM sampling", sampling="lcm", zsnr=False),
        "image": n("LoadImage", "Condition image (first frame)", 300, image=IMAGE),
    })
    nodes.update(prompts(PROMPT_GIRL))
    nodes["motion"] = n("LoadMuseVMotion", motion_model=M("motion_referencenet"), frame_rate=8.0, temporal_layers=True)
    chain_nodes, chain_links = reference_chain("motion", "image_proj_referencenet", "image")
    nodes.update(chain_nodes)
    nodes["sampler"] = sampler(steps=6, cfg=1.5, sampler_name="lcm", scheduler="sgm_uniform")
    nodes.update(video_out(name))
    links = [("base", "MODEL", "lora", "model"), ("lora", "MODEL", "lcm", "model"), ("lcm", "MODEL", "motion", "model"),
             ("base", "CLIP", "positive", "clip"), ("base", "CLIP", "negative", "clip"),
             ("referencenet", "model", "sampler", "model"),
             ("positive", "CONDITIONING", "sampler", "positive"), ("negative", "CONDITIONING", "sampler", "negative"),
             ("image", "IMAGE", "sampler", "vision_image"), ("vae", "VAE", "sampler", "vae"),
             ("sampler", "latent", "decode", "samples"), ("vae", "VAE", "decode", "vae")] + VIDEO_LINKS + chain_links
    groups = [("Read me", ["readme"]), ("Models", ["base", "vae", "clip_vision"]), ("LCM", ["lora", "lcm"]),
              ("Condition image", ["image"]), ("Prompt", ["positive", "negative"]),
              ("MuseV model", ["motion", "ipadapter", "referencenet"]),
              ("Parallel denoising (LCM)", ["sampler"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "groups": groups}


if "lcm_lora" in TABLE.BY_KEY:
    WORKFLOWS["musev_lcm_fast"] = lcm_fast()


def faceid_image_to_video():
    """Image -> video with all four of MuseV's identity techniques: the vision frame, IP-Adapter,
    ReferenceNet and IP-Adapter-FaceID (the face comes from the same condition image, as in MuseV)."""
    name = "musev_faceid_image_to_video"
    nodes = {"readme": readme(
        "MuseV: image to video with FaceID",
        "MuseV's image-to-video plus **IP-Adapter-FaceID**, its fourth identity technique: InsightFace `buffalo_l` "
        "finds the face in the condition image and embeds it; `MuseVFaceID` projects the embedding to 4 tokens and "
        "adds their attention (`scale` = MuseV's `ip_adapter_face_scale`) in every cross-attention, after the text "
        "and image-prompt terms.\n\n"
        "* Needs **onnxruntime** in ComfyUI's Python (`pip install onnxruntime`, or `onnxruntime-gpu` on CUDA).\n"
        "* `face_analysis` auto finds `buffalo_l` in MuseV's place (below) or in `models/insightface/models/buffalo_l/`.\n"
        "* `channel_order` RGB reproduces MuseV (which hands RGB to InsightFace); BGR is InsightFace's own.\n"
        "* A condition image without a face stops the run with a message naming the image.",
        REFERENCE_MODELS + ["faceid", "insightface"])}
    nodes.update(base_loaders())
    nodes["image"] = n("LoadImage", "Condition image (with a face)", 300, image=IMAGE)
    nodes.update(prompts(PROMPT_GIRL))
    nodes["motion"] = n("LoadMuseVMotion", motion_model=M("motion_referencenet"), frame_rate=8.0, temporal_layers=True)
    chain_nodes, chain_links = reference_chain("motion", "image_proj_referencenet", "image")
    nodes.update(chain_nodes)
    nodes["faceid"] = n("MuseVFaceID", "MuseV FaceID", faceid_model=M("faceid"), scale=1.0, face_analysis="auto",
                        channel_order="RGB (as MuseV)")
    nodes["sampler"] = sampler()
    nodes.update(video_out(name))
    links = [("base", "MODEL", "motion", "model"), ("base", "CLIP", "positive", "clip"),
             ("base", "CLIP", "negative", "clip"), ("referencenet", "model", "faceid", "model"),
             ("image", "IMAGE", "faceid", "image"), ("faceid", "model", "sampler", "model"),
             ("positive", "CONDITIONING", "sampler", "positive"), ("negative", "CONDITIONING", "sampler", "negative"),
             ("image", "IMAGE", "sampler", "vision_image"), ("vae", "VAE", "sampler", "vae"),
             ("sampler", "latent", "decode", "samples"), ("vae", "VAE", "decode", "vae")] + VIDEO_LINKS + chain_links
    groups = [("Read me", ["readme"]), ("Models", ["base", "vae", "clip_vision"]), ("Condition image", ["image"]),
              ("Prompt", ["positive", "negative"]), ("MuseV model", ["motion", "ipadapter", "referencenet", "faceid"]),
              ("Parallel denoising", ["sampler"]), ("Video", ["decode", "video", "save"])]
    return {"nodes": nodes, "links": links, "groups": groups}


if "faceid" in TABLE.BY_KEY:
    WORKFLOWS["musev_faceid_image_to_video"] = faceid_image_to_video()


# ------------------------------------------------------------------------------------------------
# in the frontend

GAP = 20                 # between groups (both ways)
NODE_GAP = 18            # between nodes of a column (the title bar sits above node.pos)
COLUMN_GAP = 18          # between the two sub-columns of a split group
GROUP_PAD = 8
GROUP_TITLE = 36         # room for the group's title above its first node's title bar
GROUP_COLORS = {"Read me": "#3f789e", "MuseV model": "#8A8", "Parallel denoising": "#a1309b",
                "Parallel denoising (LCM)": "#a1309b", "Pose condition": "#b58b2a", "Context windows": "#a1309b",
                "Shot 1": "#a1309b", "Shot 2": "#a1309b"}

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
            if (!w && name === 'control_after_generate') continue;   // (a node without seed control)
            if (!w) throw new Error(s.type + ' has no widget ' + name);
            if (w.options && Array.isArray(w.options.values) && !w.options.values.includes(value)
                    && name !== 'control_after_generate')
                w.options.values = [...w.options.values, value];   // a model this server lacks: keep the name
            w.value = value;
            w.callback?.(value, app.canvas, node);
        }
        if (s.models && s.models.length) { node.properties = node.properties || {}; node.properties.models = s.models; }
        ids[key] = node.id;
    }
    for (const [a, out, b, inp] of spec.links) {
        const A = app.graph.getNodeById(ids[a]), B = app.graph.getNodeById(ids[b]);
        let oi = A.outputs.findIndex(o => o.name === out);
        if (oi < 0 && A.outputs.filter(o => o.type === out).length === 1) oi = A.outputs.findIndex(o => o.type === out);
        const ii = B.inputs.findIndex(i => i.name === inp || (i.widget && i.widget.name === inp));
        if (oi < 0) throw new Error(A.type + ' has no output ' + out);
        if (ii < 0) throw new Error(B.type + ' has no input ' + inp);
        if (!A.connect(oi, B, ii)) throw new Error('cannot connect ' + a + '.' + out + ' -> ' + b + '.' + inp);
    }
    return {ids, titleHeight: LG.NODE_TITLE_HEIGHT};
}"""

# Size every node as the frontend draws it at zoom 1, one node in view at a time (nodes off screen
# are not drawn, and drawing is what grows nodes with previews): wait for image/video previews and
# the window chart, grow notes until their text needs no scrolling.
MEASURE_JS = """async ([ids, wanted, fixWidths, spread, types]) => {
    const app = window.app, c = app.canvas;
    const frames = async (k) => { for (let i = 0; i < k; i++) await new Promise(r => requestAnimationFrame(r)); };
    const videoReady = (n) => {
        const w = (n.widgets || []).find(w => w.name === 'video-preview');
        const v = w && w.element && w.element.querySelector('video');
        return !!(v && v.readyState >= 2);
    };
    const layoutReady = (L) => !!(L && L.status !== 'loading' && L.drawn && L.drawn.key === L.key);
    const pending = (n) => (n.type === 'LoadImage' && !(n.imgs && n.imgs.length && n.imgs.every(i => i.complete)))
        || (n.type === 'LoadVideo' && !videoReady(n))
        || (n.musevLayout !== undefined && !layoutReady(n.musevLayout));
    const sizes = {};
    if (spread) {   // freshly created nodes all sit at one spot: give each its own place first
        let i = 0;
        for (const id of Object.values(ids)) app.graph.getNodeById(id).pos = [(i++) * 1200, 0];
    }
    for (const [key, id] of Object.entries(ids)) {
        const node = app.graph.getNodeById(id);
        if (!node || (types && node.type !== types[key]))
            throw new Error('node ' + key + ' (id ' + id + ') is ' + (node && node.type) + ', not ' + (types && types[key]));
        c.ds.scale = 1;
        c.ds.offset = [200 - node.pos[0], 200 - node.pos[1]];
        c.setDirty(true, true);
        const deadline = Date.now() + 15000;
        await frames(2);
        while (pending(node) && Date.now() < deadline) { c.setDirty(true, true); await frames(1); }
        if (pending(node)) throw new Error('preview of ' + node.type + ' did not load');
        await frames(2);
        const want = wanted[key] || [0, 0];
        const min = node.computeSize();
        let w = fixWidths ? want[0] : Math.ceil(Math.max(min[0], want[0], node.size[0]));
        let h = Math.ceil(Math.max(min[1], want[1], node.size[1]));
        if (w !== node.size[0] || h !== node.size[1]) node.setSize([w, h]);
        if (node.type === 'MarkdownNote' || node.type === 'Note') {
            const el = node.widgets && node.widgets[0] && node.widgets[0].element;
            for (let i = 0; el && i < 8; i++) {
                c.setDirty(true, true); await frames(3);
                const inner = el.querySelector('.tiptap, .ProseMirror, .comfy-markdown') || el;
                const over = Math.max(inner.scrollHeight - inner.clientHeight, el.scrollHeight - el.clientHeight);
                if (over <= 1) break;
                h = Math.ceil(node.size[1] + over + 6);
                node.setSize([w, h]);
            }
        }
        sizes[key] = [Math.ceil(node.size[0]), Math.ceil(node.size[1])];
    }
    return sizes;
}"""

PLACE_JS = """async ([ids, pos, groups, view]) => {
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
    c.ds.scale = view.scale; c.ds.offset = view.offset;
    c.setDirty(true, true);
    await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
    // what "Export" writes: the prompt's workflow with the view
    const wf = (await app.graphToPrompt()).workflow;
    wf.extra = wf.extra || {};
    wf.extra.ds = {scale: view.scale, offset: view.offset};
    return JSON.stringify(wf);
}"""

RELOAD_JS = """async (text) => {
    await window.app.loadGraphData(JSON.parse(text), true, true, 'build',
        {showMissingNodesDialog: false, showMissingModelsDialog: false});
}"""


def group_box(sizes, keys, title_h, split):
    """Width/height of a group holding ``keys`` stacked (in two sub-columns when ``split``)."""
    cols = [keys] if not split else _split(sizes, keys, title_h)
    widths = [max(sizes[k][0] for k in col) for col in cols]
    heights = [sum(sizes[k][1] + title_h for k in col) + NODE_GAP * (len(col) - 1) for col in cols]
    return cols, sum(widths) + COLUMN_GAP * (len(cols) - 1) + 2 * GROUP_PAD, max(heights) + GROUP_TITLE + GROUP_PAD, widths


def _split(sizes, keys, title_h):
    """Two sub-columns of a group, split where their heights are the closest."""
    total = [sizes[k][1] + title_h + NODE_GAP for k in keys]
    best, cut = None, 1
    for i in range(1, len(keys)):
        d = abs(sum(total[:i]) - sum(total[i:]))
        if best is None or d < best:
            best, cut = d, i
    return [keys[:cut], keys[cut:]]


def layout(spec, sizes, title_h):
    """Place the groups (each a column of nodes, or two sub-columns) in reading order, either in rows
    (left to right, then the next row) or in columns of groups (top to bottom, then the next
    column); try every row break / column height and split, keep the arrangement that fits the
    reference view at the largest zoom.  Returns (positions, groups, view)."""
    ul, ut, ur, ub = usable_canvas()
    uw, uh = ur - ul, ub - ut
    groups = spec["groups"]
    splittable = [i for i, (_, keys) in enumerate(groups) if len(keys) > 1]
    best = None
    for splits in itertools.product((False, True), repeat=len(splittable)):
        split = {i: s for i, s in zip(splittable, splits)}
        boxes = [group_box(sizes, keys, title_h, split.get(i, False)) for i, (_, keys) in enumerate(groups)]
        for arrangement in _row_arrangements(boxes) + _column_arrangements(boxes):
            placed, width, height = arrangement
            zoom = min(MAX_ZOOM, uw / width, uh / height)
            if best is None or zoom > best[0] + 1e-9:
                best = (zoom, placed, boxes, width, height)
    zoom, placed, boxes, width, height = best
    if zoom < MIN_ZOOM:
        raise RuntimeError(f"the graph needs zoom {zoom:.3f} < {MIN_ZOOM} to fit the reference view "
                           f"({width}x{height} graph units for {uw}x{uh} px): make it smaller")
    pos, out_groups = {}, []
    for i, (x, y, gw, gh) in placed.items():
        cols, _, _, widths = boxes[i]
        title = groups[i][0]
        cx = x + GROUP_PAD
        for col, cw in zip(cols, widths):
            ny = y + GROUP_TITLE + title_h
            for k in col:
                pos[k] = [cx, ny]
                ny += sizes[k][1] + title_h + NODE_GAP
            cx += cw + COLUMN_GAP
        out_groups.append({"title": title, "x": x, "y": y, "w": gw, "h": gh, "color": GROUP_COLORS.get(title)})
    # the view: the graph centred in the usable rectangle (canvas px = (graph + offset) * scale)
    ox = (ul + (uw - width * zoom) / 2) / zoom
    oy = (ut + (uh - height * zoom) / 2) / zoom
    view = {"scale": round(zoom, 4), "offset": [round(ox, 2), round(oy, 2)]}
    return pos, out_groups, view


def _row_arrangements(boxes, max_rows=3):
    """Groups in rows: every way to cut them (in order) into 1..max_rows rows.  A group is as tall
    as the tallest of its row (one baseline per row)."""
    n = len(boxes)
    out = []
    for k in range(0, max_rows):
        for cuts in itertools.combinations(range(1, n), k):
            bounds = (0,) + cuts + (n,)
            placed, y, width = {}, 0, 0
            for r in range(len(bounds) - 1):
                row = range(bounds[r], bounds[r + 1])
                row_h = max(boxes[i][2] for i in row)
                x = 0
                for i in row:
                    placed[i] = (x, y, boxes[i][1], row_h)
                    x += boxes[i][1] + GAP
                width = max(width, x - GAP)
                y += row_h + GAP
            out.append((placed, width, y - GAP))
    return out


def _column_arrangements(boxes):
    """Groups stacked in columns (reading order: down, then right): for every column-height budget,
    the cut of the group sequence into columns that is narrowest (dynamic programming); every group
    of a column as wide as the column's widest."""
    n = len(boxes)

    def col_height(i, j):
        return sum(boxes[k][2] for k in range(i, j)) + GAP * (j - i - 1)

    budgets = sorted({col_height(i, j) for i in range(n) for j in range(i + 1, n + 1)})
    tallest = max(b[2] for b in boxes)
    out = []
    for budget in budgets:
        if budget < tallest:
            continue
        best = [(0, [])] + [None] * n      # best[j]: (width, columns) for the first j groups
        for j in range(1, n + 1):
            for i in range(j):
                if best[i] is None or col_height(i, j) > budget:
                    continue
                w = best[i][0] + max(boxes[k][1] for k in range(i, j)) + GAP
                if best[j] is None or w < best[j][0]:
                    best[j] = (w, best[i][1] + [list(range(i, j))])
        placed, x, height = {}, 0, 0
        for col in best[n][1]:
            cw = max(boxes[i][1] for i in col)
            y = 0
            for i in col:
                placed[i] = (x, y, cw, boxes[i][2])
                y += boxes[i][2] + GAP
            height = max(height, y - GAP)
            x += cw + GAP
        out.append((placed, x - GAP, height))
    return out


def check_spec(name, spec):
    placed = [k for _, keys in spec["groups"] for k in keys]
    assert sorted(placed) == sorted(spec["nodes"]), (name, set(placed) ^ set(spec["nodes"]))
    assert len(placed) == len(set(placed)), name


def js_nodes_of(spec):
    out = {}
    for key, s in spec["nodes"].items():
        d = {"type": s["type"], "title": s.get("title"), "width": s.get("width")}
        if "text" in s:
            d["text"] = s["text"]
            d["height"] = 120
        else:
            d["widgets"] = s["widgets"]
            models = []
            for wname, value in s["widgets"].items():
                if (s["type"], wname) in MODEL_WIDGETS:
                    models += frontend_model_metadata(value)
            d["models"] = models
        out[key] = d
    return out


VUE_SETTING = "Comfy.VueNodes.Enabled"

# In the Vue-nodes renderer ("Nodes 2.0") a node's DOM grows to its content and node.size follows it:
# read every node's size once the previews have loaded and the sizes stopped changing.
VUE_SIZES_JS = """async ([ids, types]) => {
    const app = window.app;
    const missing = Object.entries(ids).filter(([k, id]) => !app.graph.getNodeById(id)
                                                        || app.graph.getNodeById(id).type !== types[k]);
    if (missing.length) throw new Error('not in the graph loaded in the Vue-nodes renderer: ' + JSON.stringify(missing)
        + ' (graph has ' + JSON.stringify(app.graph.nodes.map(n => [n.id, n.type])) + ')');
    const read = () => Object.fromEntries(Object.entries(ids).map(([k, id]) => {
        const n = app.graph.getNodeById(id);
        return [k, [Math.ceil(n.size[0]), Math.ceil(n.size[1])]];
    }));
    let last = null;
    for (let i = 0; i < 40; i++) {
        await new Promise(r => setTimeout(r, 250));
        const now = read();
        if (last && JSON.stringify(now) === JSON.stringify(last)) return now;
        last = now;
    }
    return last;
}"""


def renderer_supports_vue(frontend):
    """Whether this frontend offers the Vue-nodes renderer to users (1.45: a visible setting; 1.27: a
    hidden experiment)."""
    return frontend.page.evaluate("""(k) => { const s = window.app.extensionManager.setting.settings;
        const d = s && s[k]; return !!(d && d.type !== 'hidden'); }""", VUE_SETTING)


def set_renderer(frontend, vue):
    frontend.page.evaluate("async ([k, v]) => { await window.app.extensionManager.setting.set(k, v); }", [VUE_SETTING, vue])
    frontend.page.wait_for_timeout(300)
    frontend.open()     # the renderer is chosen at start-up


def vue_sizes(frontend, text, ids, types):
    set_renderer(frontend, True)
    try:
        for attempt in range(4):
            # (right after start-up the frontend may still restore its last workflow over ours)
            frontend.page.wait_for_timeout(500 * attempt)
            frontend.page.evaluate(RELOAD_JS, text)
            try:
                return frontend.page.evaluate(VUE_SIZES_JS, [ids, types])
            except Exception as e:  # noqa: BLE001
                if "not in the graph" not in str(e) or attempt == 3:
                    raise
    finally:
        set_renderer(frontend, False)


def build(frontend, name, spec, vue=True):
    """Build ``spec`` in the classic renderer; with ``vue``, also measure every node in the Vue-nodes
    renderer and lay out for the larger of the two sizes, so that the graph fits and nothing
    overlaps in either."""
    check_spec(name, spec)
    js_nodes = js_nodes_of(spec)
    built = frontend.page.evaluate(BUILD_JS, {"nodes": js_nodes, "links": spec["links"]})
    ids = built["ids"]
    wanted = {k: [d.get("width") or 0, d.get("height") or 0] for k, d in js_nodes.items()}
    types = {k: d["type"] for k, d in js_nodes.items()}
    sizes = frontend.page.evaluate(MEASURE_JS, [ids, wanted, False, True, types])
    if os.environ.get("MUSEV_BUILD_DEBUG"):
        print(name, "classic", json.dumps(sizes))
    for _ in range(6):
        # lay out, save, and load the saved workflow as a user would (in both renderers): nodes with
        # previews may come back larger; repeat until what loads is what was laid out
        try:
            pos, groups, view = layout(spec, sizes, built["titleHeight"])
        except RuntimeError:
            if os.environ.get("MUSEV_BUILD_DEBUG"):
                with open(f"/tmp/musev_sizes_{name}.json", "w") as f:
                    json.dump({"target": sizes, "title_h": built["titleHeight"]}, f)
            raise
        text = frontend.page.evaluate(PLACE_JS, [ids, pos, groups, view])
        target = sizes
        if vue:
            vs = vue_sizes(frontend, text, ids, types)
            if os.environ.get("MUSEV_BUILD_DEBUG"):
                print(name, "vue", json.dumps(vs))
            target = {k: [max(sizes[k][0], vs[k][0]), max(sizes[k][1], vs[k][1])] for k in sizes}
        if os.environ.get("MUSEV_BUILD_DEBUG"):
            with open(f"/tmp/musev_sizes_{name}.json", "w") as f:
                json.dump({"target": target, "title_h": built["titleHeight"]}, f)
        frontend.page.evaluate(RELOAD_JS, text)
        again = frontend.page.evaluate(MEASURE_JS, [ids, target, True, False, types])
        if again == sizes:
            break
        sizes = again
    else:
        raise RuntimeError(f"{name}: node sizes do not settle: {sizes}")
    workflow = json.loads(text)
    errors = frontend.pack_errors()
    if errors:
        raise RuntimeError(f"{name}: the frontend logged errors of this pack while building:\n" + "\n".join(errors))
    print(f"{name}: {len(workflow['nodes'])} nodes, zoom {view['scale']}")
    return workflow


READY_JS = """async () => {
    const app = window.app;
    const frames = async (k) => { for (let i = 0; i < k; i++) await new Promise(r => requestAnimationFrame(r)); };
    const videoReady = (n) => { const w = (n.widgets || []).find(w => w.name === 'video-preview');
        const v = w && w.element && w.element.querySelector('video'); return !!(v && v.readyState >= 2); };
    const pending = () => app.graph.nodes.some(n =>
        (n.type === 'LoadImage' && !(n.imgs && n.imgs.length && n.imgs.every(i => i.complete)))
        || (n.type === 'LoadVideo' && !videoReady(n))
        || (n.musevLayout !== undefined && !(n.musevLayout.drawn && n.musevLayout.drawn.key === n.musevLayout.key)));
    const deadline = Date.now() + 15000;
    while (pending() && Date.now() < deadline) { app.canvas.setDirty(true, true); await frames(1); }
    await frames(4);
    return !pending();
}"""


def model_placeholders(server):
    """Empty files under the table's file names in the build's own server: the frontend then finds
    every model file, so screenshots show no missing-model marks.  Added only after the layout is
    built: nodes are measured as a user without the files sees them (the Vue renderer adds an
    error line under a loader whose file is missing)."""
    for m in TABLE.MODELS:
        if not m.is_folder:
            dest = os.path.join(server.base_dir, "models", m.folder, m.name)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            open(dest, "ab").close()


def screenshot_as_opened(browser, server, name, text, path):
    """The workflow as a user opens it (a fresh page in the reference window, saved view), for the
    README."""
    from browser import FrontendPage
    model_placeholders(server)
    page = FrontendPage(browser, server, viewport=REFERENCE_VIEWPORT)
    try:
        page.open()
        page.page.evaluate("""async ([text, name]) => {
            await window.app.loadGraphData(JSON.parse(text), true, true, name,
                {showMissingNodesDialog: false, showMissingModelsDialog: false}); }""", [text, name])
        if not page.page.evaluate(READY_JS):
            raise RuntimeError("previews did not load for the screenshot")
        page.close_dialogs()
        page.page.wait_for_timeout(300)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        page.page.screenshot(path=path)
        errors = page.pack_errors()
        if errors:
            raise RuntimeError(f"{name}: errors of this pack when opened:\n" + "\n".join(errors))
    finally:
        page.close()
    return path


def dump(workflow):
    return json.dumps(workflow, indent=1, ensure_ascii=False) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="workflows to build (default: all)")
    ap.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    ap.add_argument("--out", default=OUT_DIR)
    ap.add_argument("--docs", action="store_true",
                    help="also write docs/<name>.png: the workflow as it opens in the reference window (saved view)")
    ap.add_argument("--docs-only", action="store_true", help="only write docs/<name>.png, from the committed files")
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
            page = FrontendPage(browser, server, viewport=REFERENCE_VIEWPORT)
            page.open()
            vue = renderer_supports_vue(page)
            if not vue:
                print("this frontend has no user-facing Vue-nodes renderer: laying out for the classic one only")
            written = {}
            for name in names:
                if args.docs_only:
                    with open(os.path.join(args.out, name + ".json"), encoding="utf-8") as f:
                        written[name] = f.read()
                    continue
                page.console.clear()
                page.page_errors.clear()
                page.failed.clear()
                text = dump(build(page, name, WORKFLOWS[name], vue=vue))
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
                written[name] = text
            if args.docs or args.docs_only:     # after every build (they add model placeholders)
                for name, text in written.items():
                    shot = screenshot_as_opened(browser, server, name, text,
                                                os.path.join(PACK_DIR, "docs", name + ".png"))
                    print("wrote", os.path.relpath(shot, PACK_DIR))
            page.close()
        finally:
            browser.close()
    if stale:
        print("out of date (re-run scripts/build_workflows.py):", *stale, sep="\n  ")
        return 1
    return 0


def _shape(wf):
    """What --check compares: node types, titles, widgets, positions, sizes, links, groups and the
    view (not ids the frontend may number differently)."""
    nodes = sorted((x["type"], x.get("title") or "", json.dumps(x.get("widgets_values")), tuple(x["pos"]),
                    tuple(x["size"]), json.dumps((x.get("properties") or {}).get("models"))) for x in wf["nodes"])
    types = {x["id"]: (x["type"], x.get("title") or "") for x in wf["nodes"]}
    links = sorted((types[l[1]], l[2], types[l[3]], l[4], l[5]) for l in wf["links"])
    groups = sorted((g["title"], tuple(g["bounding"])) for g in wf.get("groups", []))
    return nodes, links, groups, json.dumps(wf.get("extra", {}).get("ds"))


if __name__ == "__main__":
    sys.exit(main())
