"""The shipped workflows (example_workflows/*.json), used as a user uses them.

On the JSON (plus the server's node definitions):

* every workflow the build script (scripts/build_workflows.py) describes is shipped, with its
  thumbnail and README screenshot;
* MuseV's defaults (spec §5.10), fixed example seeds, no size setting that can diverge;
* model names exactly from the one model table (nodes/model_table.py), the frontend's model
  metadata (``properties.models``) on model loaders, every model named in the workflow's note;
* the saved view: zoom >= 0.65 and every node inside the reference window (full HD).

In the real frontend (headless Chromium on a real ComfyUI server), each workflow opened as saved:

1. no missing node type, no error; the view is the saved one, its zoom is above the frontend's
   text threshold, every node lies inside the visible canvas, none overlap; the window charts are
   drawn; a screenshot is kept (test-artifacts/workflow_<name>.png);
2. ``app.graphToPrompt()`` gives the API prompt the frontend would queue; the model names are
   replaced by stand-ins (tests/standins.py, a random LCM-LoRA), sizes / frames / steps shrunk,
   and it is queued on /prompt: the videos it saves must exist with the expected frame count.
   With ``MUSEV_UPDATE_DOCS=1`` the last frame of the output becomes the workflow's thumbnail
   (example_workflows/<name>.jpg), as its note says.

docs/<name>.png (README) are written by ``scripts/build_workflows.py --docs``.
"""
import glob
import importlib.util
import json
import os
import uuid

import pytest

from browser import FrontendPage, load_workflow_in_frontend, widget_inputs
from comfy_server import queue_and_wait
from conftest import PACK_DIR
from workflow_inputs import video_frame_count, write_workflow_inputs

SHIPPED = sorted(glob.glob(os.path.join(PACK_DIR, "example_workflows", "*.json")))
NAMES = [os.path.splitext(os.path.basename(p))[0] for p in SHIPPED]
DOCS_DIR = os.path.join(PACK_DIR, "docs")
SIZE = 64                 # pixels of every image/video in the shrunk runs
FRAMES = 3                # generated frames per sampler in the shrunk runs (windows of 2, overlap 1)
INPUT_FRAMES = 8          # frames of the generated source / pose videos
THUMB_SIZE = 128          # MUSEV_UPDATE_DOCS=1: the runs that make the thumbnails (upscaled to 512)
LCM_LORA_STANDIN = "musev_standin_lcm_lora.safetensors"


def _build_script():
    spec = importlib.util.spec_from_file_location("musev_build_workflows",
                                                  os.path.join(PACK_DIR, "scripts", "build_workflows.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


BW = _build_script()
TABLE = BW.TABLE


def update_docs():
    return os.environ.get("MUSEV_UPDATE_DOCS", "") not in ("", "0")


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def widget_names(node_def):
    """The frontend's widget order of a node type (what ``widgets_values`` holds, in order)."""
    out = []
    for name, _, opts in widget_inputs(node_def):
        out.append(name)
        if opts.get("control_after_generate"):
            out.append("control_after_generate")
    return out


@pytest.fixture(scope="module")
def defs(comfy_server):
    return comfy_server.object_info()


class Graph:
    """A saved workflow with widgets by name and links by input name."""

    def __init__(self, wf, defs):
        self.wf = wf
        self.nodes = wf["nodes"]
        self.by_id = {n["id"]: n for n in self.nodes}
        self.links = {l[0]: l for l in wf["links"]}
        self.defs = defs

    def of_type(self, t):
        return [n for n in self.nodes if n["type"] == t]

    def widgets(self, node):
        if node["type"] in ("MarkdownNote", "Note"):
            return {"text": node["widgets_values"][0]}
        names = widget_names(self.defs[node["type"]])
        values = node.get("widgets_values") or []
        if node["type"] == "PrimitiveInt" and len(values) == len(names) + 1:
            names = names + ["control_after_generate"]     # the frontend's own control widget
        # the frontend's own trailing widgets (LoadImage's upload button...) come after the node's
        assert len(values) >= len(names), (node["type"], names, values)
        return dict(zip(names, values))

    def source(self, node, inp):
        """The node feeding input ``inp`` of ``node`` (or None)."""
        for i in node.get("inputs", []):
            if (i["name"] == inp or (i.get("widget") or {}).get("name") == inp) and i.get("link") is not None:
                return self.by_id[self.links[i["link"]][1]]
        return None

    def linked(self, node, inp):
        return self.source(node, inp) is not None


def graphs(defs):
    return {name: Graph(load_json(path), defs) for name, path in zip(NAMES, SHIPPED)}


# ------------------------------------------------------------------------------------------------
# the JSON (and the node definitions)

def test_every_workflow_is_shipped_with_thumbnail_and_screenshot():
    assert set(NAMES) == set(BW.WORKFLOWS), f"example_workflows/ holds {NAMES}, the build script {sorted(BW.WORKFLOWS)}"
    for name in NAMES:
        thumb = os.path.join(PACK_DIR, "example_workflows", name + ".jpg")
        assert os.path.isfile(thumb), f"{name}: no thumbnail (MUSEV_UPDATE_DOCS=1 pytest tests/host/test_workflows.py)"
        assert os.path.isfile(os.path.join(DOCS_DIR, name + ".png")), f"{name}: no docs screenshot (--docs)"


def check_sampler(name, g, node, frames_min=11):
    w = g.widgets(node)
    lcm = "lcm" in name
    assert (w["context_frames"], w["context_overlap"]) == (12, 4), f"{name}: windows, MuseV uses 12 overlapping by 4"
    assert (w["noise_type"], w["w_ind_noise"], w["img_weight"]) == ("video_fusion", 0.5, 0.001), name
    if lcm:
        assert (w["sampler_name"], w["scheduler"]) == ("lcm", "sgm_uniform") and 4 <= w["steps"] <= 8, name
        assert 1.0 <= w["cfg"] <= 2.0, name
    else:
        assert (w["steps"], w["cfg"], w["sampler_name"], w["scheduler"]) == (10, 3.5, "euler", "musev_linspace"), name
    assert w["context_schedule"] == ("uniform_looped" if "looping" in name else "uniform_v2"), name
    assert g.linked(node, "vision_image") or g.linked(node, "vision_latent"), f"{name}: no condition frame"
    if not g.linked(node, "frames"):
        assert w["frames"] >= (48 if "long" in name else frames_min), f"{name}: frames {w['frames']}"
    if "video_to_video" in name:
        assert g.linked(node, "init_latent") and 0 < w["denoise"] < 1, f"{name}: needs init_latent and denoise < 1"
    else:
        assert not g.linked(node, "init_latent") and w["denoise"] == 1, name


def test_workflows_keep_musev_defaults(defs):
    for name, g in graphs(defs).items():
        samplers = g.of_type("ParallelDenoiseSampler")
        for s in samplers:
            check_sampler(name, g, s)
        motions = g.of_type("LoadMuseVMotion")
        video_motion = [m for m in motions if g.widgets(m)["temporal_layers"] is True]
        assert len(video_motion) == 1, f"{name}: one LoadMuseVMotion with temporal layers on"
        rate = g.widgets(video_motion[0])["frame_rate"]
        if "pose" in name:
            assert g.linked(video_motion[0], "frame_rate"), f"{name}: frame_rate must come from PoseVideoCondition"
        elif "video_to_video" in name:
            assert rate == 1.0, f"{name}: video2video frame rate is the sample rate (1)"
        else:
            assert rate == 8.0, f"{name}: text/image-to-video frame rate is 8 (MuseV's motion_speed)"
        for cv in g.of_type("CreateVideo"):
            if not g.linked(cv, "fps"):
                assert g.widgets(cv)["fps"] == 12, f"{name}: MuseV's README videos are 12 fps"
        assert g.of_type("SaveVideo"), f"{name}: saves no video"
        if name == "musev_text_to_image_to_video":
            (ks,) = g.of_type("KSampler")
            k = g.widgets(ks)
            assert (k["steps"], k["cfg"], k["sampler_name"]) == (30, 7.5, "euler"), name
            assert g.widgets(g.of_type("EmptyLatentImage")[0])["batch_size"] == 1, f"{name}: the first frame is 1 frame"
        if name == "musev_ksampler_context":
            assert not samplers
            (ctx,) = g.of_type("MuseVContextWindows")
            c = g.widgets(ctx)
            assert (c["context_frames"], c["context_overlap"], c["context_schedule"]) == (12, 4, "uniform_v2")
            assert g.source(ctx, "vision_latent")["type"] == "VAEEncode", f"{name}: the condition frame"
            (ks,) = g.of_type("KSampler")
            k = g.widgets(ks)
            assert (k["steps"], k["cfg"], k["sampler_name"], k["scheduler"]) == (10, 3.5, "euler", "musev_linspace")
            assert g.source(ks, "model") is ctx and g.source(ks, "latent_image")["type"] == "EmptyLatentImage"
        if name == "musev_shot_chaining":
            assert len(samplers) == 2
            (cond,) = g.of_type("MuseVShotCondition")
            (join,) = g.of_type("MuseVJoinShots")
            shot1 = g.source(cond, "latent")
            shot2 = [s for s in samplers if s is not shot1][0]
            assert shot1 in samplers and g.source(shot2, "vision_latent") is cond
            assert g.source(join, "video") is shot1 and g.source(join, "next_shot") is shot2
            assert g.widgets(join)["drop_leading_frames"] == g.widgets(cond)["condition_frames"] == 1
            assert g.widgets(shot1)["seed"] != g.widgets(shot2)["seed"], f"{name}: shot 2 must not repeat shot 1's noise"
        if name == "musev_lcm_fast":
            (lora,) = g.of_type("LoraLoaderModelOnly")
            (ms,) = g.of_type("ModelSamplingDiscrete")
            assert g.widgets(lora)["lora_name"] == TABLE.get("lcm_lora").name
            assert g.widgets(ms)["sampling"] == "lcm" and g.source(ms, "model") is lora
            assert g.source(lora, "model")["type"] == "MuseVCheckpointLoader"
            assert g.source(video_motion[0], "model") is ms, f"{name}: LCM goes on the base, before MuseV"


def test_seeds_are_fixed_and_sizes_set_once(defs):
    for name, g in graphs(defs).items():
        controls = [(n["type"], g.widgets(n)["control_after_generate"]) for n in g.nodes
                    if "control_after_generate" in g.widgets(n)]
        assert controls, name
        assert all(c == "fixed" for _, c in controls), f"{name}: seeds must stay fixed: {controls}"
        # width/height where more than one node needs them: set once, linked from one place
        users = [n for n in g.nodes if n["type"] in ("ParallelDenoiseSampler", "EmptyLatentImage", "ImageScale")]
        if len(users) > 1:
            for dim in ("width", "height"):
                sources = {(g.source(n, dim) or {}).get("id") for n in users}
                assert None not in sources and len(sources) == 1, f"{name}: {dim} is set in several places"
        for frames_user in g.of_type("ImageFromBatch"):
            if g.widgets(frames_user)["batch_index"] > 0:     # the frames to re-generate = the sampler's frames
                (s,) = g.of_type("ParallelDenoiseSampler")
                assert g.source(frames_user, "length") is g.source(s, "frames") is not None, name


def test_models_come_from_the_table(defs):
    names = {m.name: m for m in TABLE.MODELS}
    for name, g in graphs(defs).items():
        used = []
        for node in g.nodes:
            w = g.widgets(node)
            for (ntype, wname) in BW.MODEL_WIDGETS:
                if node["type"] != ntype:
                    continue
                value = w[wname]
                assert value in names, f"{name}: {ntype}.{wname} = {value!r} is not in nodes/model_table.py"
                m = names[value]
                assert m.loader.split(".")[0] == ntype or m.loader == f"{ntype}.{wname}", (name, value, m.loader)
                used.append(m)
                # the 1.45 frontend's missing-models metadata: {name, url, directory} for files; folders
                # get none (its check only knows files: a folder would always read as missing)
                want = [] if m.is_folder else [{"name": m.name, "url": m.url, "directory": m.folder}]
                assert (node.get("properties") or {}).get("models", []) == want, (name, ntype, value)
        assert used, name
        (note,) = g.of_type("MarkdownNote")
        text = note["widgets_values"][0]
        for m in used:
            for part in (m.name, m.folder + "/", m.url):
                assert part in text, f"{name}: the note does not give {part!r} of {m.key}"
        assert "stand-in" in text, f"{name}: the note must say what the thumbnail is"


def node_rect(node, title_h=30):
    x, y = node["pos"]
    w, h = node["size"]
    collapsed = (node.get("flags") or {}).get("collapsed")
    return [x, y - title_h, w, (0 if collapsed else h) + title_h]


def test_saved_view_is_readable(defs):
    """On the JSON alone: the zoom and every node's rectangle in the reference window (the browser
    test below checks what the frontend really shows)."""
    l, t, r, b = BW.USABLE_PAGE
    for name, g in graphs(defs).items():
        ds = g.wf["extra"]["ds"]
        assert ds["scale"] >= BW.MIN_ZOOM, f"{name}: saved at zoom {ds['scale']}"
        for node in g.nodes:
            x, y, w, h = node_rect(node)
            px, py = (x + ds["offset"][0]) * ds["scale"], (y + ds["offset"][1]) * ds["scale"]
            assert l <= px and px + w * ds["scale"] <= r and t <= py and py + h * ds["scale"] <= b, \
                (name, node["type"], node.get("title"), [px, py, w * ds["scale"], h * ds["scale"]])


def test_templates_are_served(comfy_server):
    """ComfyUI's template browser lists the workflows (GET /workflow_templates) and serves each one
    and its thumbnail."""
    status, listed = comfy_server.get_json("/workflow_templates")
    assert status == 200
    assert sorted(listed.get(comfy_server.pack_name, [])) == NAMES, listed
    for name, path in zip(NAMES, SHIPPED):
        base = f"/api/workflow_templates/{comfy_server.pack_name}/{name}"
        code, body, _ = comfy_server.request("GET", base + ".json")
        assert code == 200 and json.loads(body) == load_json(path), name
        code, body, headers = comfy_server.request("GET", base + ".jpg")
        assert code == 200 and body[:3] == b"\xff\xd8\xff", f"{name}: no thumbnail {name}.jpg (MUSEV_UPDATE_DOCS=1)"


# ------------------------------------------------------------------------------------------------
# in the frontend, then through the HTTP API

def run_size():
    return THUMB_SIZE if update_docs() else SIZE


@pytest.fixture(scope="module")
def server_models(comfy_host, comfy_server):
    """Stand-ins in the server's models folder (plus a random LCM-LoRA for the stand-in base) and
    the workflows' input files in its input/."""
    from safetensors import safe_open
    from lora_standin import unet_lora_targets, write_random_lora
    from standins import sd15_unet_config
    standins = comfy_server.standins()
    models = os.path.join(comfy_server.base_dir, "models")
    lora = os.path.join(models, "loras", LCM_LORA_STANDIN)
    if not os.path.exists(lora):
        os.makedirs(os.path.dirname(lora), exist_ok=True)
        with safe_open(os.path.join(models, "checkpoints", standins.checkpoint), "pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        write_random_lora(lora, unet_lora_targets(sd15_unet_config(), shapes))
    write_workflow_inputs(comfy_server.input_dir, size=run_size(), frames=INPUT_FRAMES)
    if "faceid" in TABLE.BY_KEY:
        write_faceid_standins(models, comfy_server.input_dir, run_size())
    return standins


FACE_INPUT = "musev_standin_face.png"


def write_faceid_standins(models, input_dir, size):
    """FaceID at the table's own place (so the workflow's name needs no mapping), buffalo_l where
    ``face_analysis = auto`` finds it, and a condition image the stand-in detector sees a face in."""
    from PIL import Image
    from faceid_standins import gray_face_image, place_buffalo, write_faceid_standin
    from standins import CONTEXT_DIM, UNET_CHANNELS
    path = os.path.join(models, "musev", *TABLE.get("faceid").name.split("/"))
    if not os.path.exists(path):
        write_faceid_standin(path, unet_channels=tuple(UNET_CHANNELS), cross=CONTEXT_DIM)
    if not os.path.isdir(os.path.join(models, "insightface", "models", "buffalo_l")):
        place_buffalo(models)
    Image.fromarray(gray_face_image(size, size, size / 2, size / 2, size / 8)).save(os.path.join(input_dir, FACE_INPUT))


@pytest.fixture(scope="module")
def workflow_page(chromium, comfy_server, server_models):
    """One page in the reference window (full HD) for all workflows."""
    page = FrontendPage(chromium, comfy_server, viewport=BW.REFERENCE_VIEWPORT)
    try:
        page.open()
        yield page
    finally:
        page.close()


def standin_map(s):
    """(input name, table name) -> stand-in name, for every model the workflows may name."""
    out = {}
    for m in TABLE.MODELS:
        key = m.key
        if key.startswith("t2i_"):
            out[("ckpt_name", m.name)] = s.checkpoint
        elif key == "vae":
            out[("vae_name", m.name)] = s.vae
        elif key == "clip_vision":
            out[("clip_name", m.name)] = s.clip_vision
        elif key == "controlnet_openpose":
            out[("control_net_name", m.name)] = s.controlnet
        elif key.startswith("motion_"):
            out[("motion_model", m.name)] = s.motion[m.name.split("/")[1]]
        elif key == "referencenet":
            out[("referencenet", m.name)] = s.referencenet
        elif key.startswith("image_proj_"):
            out[("image_proj", m.name)] = s.image_proj[m.name.split("/")[1]]
        elif key == "lcm_lora":
            out[("lora_name", m.name)] = LCM_LORA_STANDIN
        elif key == "faceid":
            out[("faceid_model", m.name)] = m.name          # the stand-in sits at the released place
    return out


MODEL_INPUTS = {"ckpt_name", "vae_name", "clip_name", "control_net_name", "motion_model", "referencenet", "image_proj",
                "lora_name", "faceid_model"}


def is_link(value):
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def consumers(prompt, node_id):
    """[(node id, input name)] that take an output of ``node_id``."""
    return [(nid, k) for nid, n in prompt.items() for k, v in n["inputs"].items() if is_link(v) and v[0] == node_id]


def shrink(prompt, models, tag, size):
    """The prompt with stand-in models and tiny sizes/frames/steps; returns (prompt, expected)
    where expected maps SaveVideo node ids to their frame counts."""
    p = json.loads(json.dumps(prompt))
    for node_id, node in p.items():
        inputs, cls = node["inputs"], node["class_type"]
        for key in list(inputs):
            if key in MODEL_INPUTS and not is_link(inputs[key]):
                assert (key, inputs[key]) in models, f"{cls}.{key} = {inputs[key]!r} has no stand-in"
                inputs[key] = models[(key, inputs[key])]

        def put(key, value):
            if key in inputs and not is_link(inputs[key]):
                inputs[key] = value
        if cls in ("ParallelDenoiseSampler", "MuseVContextWindows"):
            put("frames", FRAMES)
            put("width", size)
            put("height", size)
            put("context_frames", 2)
            put("context_overlap", 1)
            put("steps", 1)
        elif cls in ("EmptyLatentImage", "ImageScale"):
            put("width", size)
            put("height", size)
            if cls == "EmptyLatentImage" and inputs.get("batch_size", 1) > 1:
                put("batch_size", FRAMES)
        elif cls == "KSampler":
            put("steps", 1)
        elif cls == "PrimitiveInt":   # what it sets decides the value
            targets = {k for _, k in consumers(p, node_id)}
            put("value", size if targets & {"width", "height"} else FRAMES)
        elif cls == "PoseVideoCondition":
            put("frame_count", FRAMES)
        elif cls in ("SaveVideo", "SaveImage"):
            inputs["filename_prefix"] = f"musev_workflows/{tag}/{cls}"
        elif cls == "MuseVFaceID" and is_link(inputs.get("image")):
            # the stand-in detector finds its 'face' (a bright blob) only in this image
            face_source = p[inputs["image"][0]]
            if face_source["class_type"] == "LoadImage":
                face_source["inputs"]["image"] = FACE_INPUT
    expected = {nid: latent_frames(p, n["inputs"]["video"][0]) for nid, n in p.items() if n["class_type"] == "SaveVideo"}
    return p, expected


def value_of(prompt, value):
    """An INT input's value: a literal, or what a PrimitiveInt / PoseVideoCondition gives."""
    if not is_link(value):
        return value
    src = prompt[value[0]]["inputs"]
    return src.get("value", src.get("frame_count"))


def latent_frames(prompt, node_id):
    """Frames of the video a node passes on (walks back to the samplers)."""
    n = prompt[node_id]
    cls, inp = n["class_type"], n["inputs"]
    if cls == "ParallelDenoiseSampler":
        vision = inp.get("vision_image") or inp.get("vision_latent")
        return value_of(prompt, inp["frames"]) + (1 if vision and inp["include_condition_frames"] else 0)
    if cls == "KSampler":
        return latent_frames(prompt, inp["latent_image"][0])
    if cls == "EmptyLatentImage":
        return value_of(prompt, inp["batch_size"])
    if cls == "MuseVJoinShots":
        return latent_frames(prompt, inp["video"][0]) + latent_frames(prompt, inp["next_shot"][0]) \
            - inp["drop_leading_frames"]
    for key in ("samples", "images", "video"):
        if is_link(inp.get(key)):
            return latent_frames(prompt, inp[key][0])
    raise AssertionError(f"cannot follow the video through {cls}")


WINDOWS_DRAWN_JS = """() => window.app.graph.nodes.filter(n => n.musevLayout !== undefined).map(n => {
    const L = n.musevLayout;
    return {type: n.type, status: L.status, drawn: !!(L.drawn && L.drawn.key === L.key), frames: L.settings.frames,
            message: L.message || null, error: L.error};
})"""
# every node's rectangle on the page (CSS px), title bar included, and the canvas' page origin
VIEW_JS = """() => {
    const c = window.app.canvas, box = c.canvas.getBoundingClientRect(), dpr = c.canvas.width / box.width;
    const rect = (r) => { const [x, y] = c.ds.convertOffsetToCanvas([r[0], r[1]]);
        return [box.left + x / dpr, box.top + y / dpr, r[2] * c.ds.scale / dpr, r[3] * c.ds.scale / dpr]; };
    return {scale: c.ds.scale, offset: [...c.ds.offset], origin: [box.left, box.top], size: [box.width, box.height],
            threshold: c._lowQualityZoomThreshold ?? c.low_quality_zoom_threshold ?? 0.6, lowQuality: !!c.low_quality,
            nodes: window.app.graph.nodes.map(n => ({id: n.id, type: n.type, title: n.title, r: rect(n.boundingRect)})),
            groups: window.app.graph.groups.map(g => ({title: g.title, r: rect(g._bounding)}))};
}"""


def overlaps(rects):
    hits = []
    for i in range(len(rects)):
        for j in range(i + 1, len(rects)):
            a, b = rects[i]["r"], rects[j]["r"]
            if a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]:
                hits.append((rects[i]["type"], rects[j]["type"]))
    return hits


def check_view(name, view, saved_ds):
    assert abs(view["scale"] - saved_ds["scale"]) < 1e-6, f"{name}: the frontend did not restore the saved zoom"
    assert view["scale"] >= max(BW.MIN_ZOOM, view["threshold"]) and not view["lowQuality"], \
        f"{name}: zoom {view['scale']} (text threshold {view['threshold']})"
    assert overlaps(view["nodes"]) == [], f"{name}: overlapping nodes {overlaps(view['nodes'])}"
    for n in view["nodes"]:
        inside = [g for g in view["groups"] if g["r"][0] <= n["r"][0] and g["r"][1] <= n["r"][1]
                  and n["r"][0] + n["r"][2] <= g["r"][0] + g["r"][2] and n["r"][1] + n["r"][3] <= g["r"][1] + g["r"][3]]
        assert inside, f"{name}: {n['type']} is outside every group"
    if tuple(round(v) for v in view["origin"]) == (0, 0):
        # 1.45 (ComfyUI 0.28): what the view was saved for, the page's uncovered rectangle
        l, t, r, b = BW.USABLE_PAGE
        outside = [(n["type"], [round(v) for v in n["r"]]) for n in view["nodes"]
                   if not (l <= n["r"][0] and n["r"][0] + n["r"][2] <= r and t <= n["r"][1] and n["r"][1] + n["r"][3] <= b)]
        assert outside == [], f"{name}: nodes outside the visible canvas {outside}"
    else:
        # 1.27 (0.3.64) starts its canvas below / right of its bars: the same view sits that much
        # lower; the graph still fits the canvas at this zoom
        xs = [n["r"][0] for n in view["nodes"]] + [n["r"][0] + n["r"][2] for n in view["nodes"]]
        ys = [n["r"][1] for n in view["nodes"]] + [n["r"][1] + n["r"][3] for n in view["nodes"]]
        assert max(xs) - min(xs) <= view["size"][0] and max(ys) - min(ys) <= view["size"][1], name
        assert min(xs) >= view["origin"][0] and min(ys) >= view["origin"][1], name


@pytest.mark.browser
@pytest.mark.parametrize("path", SHIPPED, ids=NAMES)
def test_workflow_opens_readable_and_runs(workflow_page, comfy_server, server_models, path):
    name = os.path.splitext(os.path.basename(path))[0]
    wf = load_json(path)

    # 1. the frontend: loads cleanly, as saved, readable, every node in view, charts drawn
    report = load_workflow_in_frontend(workflow_page, path, screenshot_name=f"workflow_{name}_page", fit=False)
    assert report["missing_nodes"] == [], f"{name} uses node types this install lacks"
    assert report["errors"] == [], "\n".join(report["errors"])
    assert report["node_count"] == len(wf["nodes"])
    check_view(name, workflow_page.page.evaluate(VIEW_JS), wf["extra"]["ds"])
    charts = workflow_page.page.evaluate(WINDOWS_DRAWN_JS)
    assert charts and all(c["drawn"] and c["status"] in ("ok", "linked") for c in charts), (name, charts)
    workflow_page.screenshot(f"workflow_{name}")

    # 2. the API prompt the frontend would queue, on stand-in models, through /prompt
    api = workflow_page.page.evaluate("async () => (await window.app.graphToPrompt()).output")
    virtual = {n["type"] for n in wf["nodes"]} - {n["class_type"] for n in api.values()}
    assert virtual <= {"MarkdownNote", "Note"}, f"{name}: nodes missing from the API prompt: {virtual}"
    prompt, expected = shrink(api, standin_map(server_models), f"{name}_{uuid.uuid4().hex[:6]}", run_size())
    assert expected, f"{name}: no SaveVideo"
    entry = queue_and_wait(comfy_server, prompt, timeout=600)
    outputs = entry["outputs"]
    for node_id, frames in expected.items():
        files = outputs[node_id]["images"]
        assert len(files) == 1, files
        path_out = comfy_server.output_path(files[0])
        assert os.path.isfile(path_out) and os.path.getsize(path_out) > 0, path_out
        assert video_frame_count(path_out) == frames, (path_out, frames)
        if update_docs():
            write_thumbnail(path_out, name)
    for node_id in [i for i, n in prompt.items() if n["class_type"] == "PreviewImage"]:
        for info in outputs[node_id]["images"]:
            assert os.path.isfile(comfy_server.output_path(info)), info


def write_thumbnail(video, name):
    """example_workflows/<name>.jpg: the output video's last frame (stand-in models)."""
    import av
    from PIL import Image
    with av.open(video) as container:
        frame = None
        for frame in container.decode(video=0):
            pass
        img = frame.to_image().convert("RGB")
    img = img.resize((512, 512 * img.height // img.width), Image.NEAREST)
    img.save(os.path.join(PACK_DIR, "example_workflows", name + ".jpg"), quality=88)
