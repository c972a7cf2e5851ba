"""The shipped workflows (example_workflows/*.json), used as a user uses them.

For each workflow, in the real frontend (headless Chromium on a real ComfyUI server):

1. it loads with no missing node type and no error, its nodes do not overlap, and a screenshot is
   kept (test-artifacts/workflow_<name>.png; copied to docs/<name>.png with MUSEV_UPDATE_DOCS=1);
2. ``app.graphToPrompt()`` gives the API prompt the frontend would queue; the released model names
   are replaced by the stand-ins (tests/standins.py), sizes, frames and steps are shrunk, and the
   prompt is queued on /prompt; the videos/images it saves must exist with the expected frame
   count.

The workflows also keep MuseV's defaults (spec §5.10) and a model note: checked on the JSON alone.
"""
import glob
import json
import os
import shutil
import uuid

import pytest

from browser import FrontendPage, load_workflow_in_frontend
from comfy_server import queue_and_wait
from conftest import PACK_DIR
from workflow_inputs import video_frame_count, write_workflow_inputs

SHIPPED = sorted(glob.glob(os.path.join(PACK_DIR, "example_workflows", "*.json")))
NAMES = [os.path.splitext(os.path.basename(p))[0] for p in SHIPPED]
DOCS_DIR = os.path.join(PACK_DIR, "docs")
DOCS_VIEWPORT = {"width": 2400, "height": 1200}
THUMB_WIDTH = 768
SIZE = 64                 # pixels of every image/video in the shrunk runs
FRAMES = 3                # generated frames in the shrunk runs (windows of 2, overlap 1)
INPUT_FRAMES = 8          # frames of the generated source / pose videos

# The kinds of workflow the pack promises (issue 7): one file each.
EXPECTED = {"musev_image_to_video", "musev_text_to_image_to_video", "musev_long_video", "musev_video_to_video",
            "musev_pose_to_video", "musev_looping_video"}

# messages the frontend shows on load (e.g. "Invalid workflow against zod schema", missing models)
TOASTS_JS = """() => [...document.querySelectorAll('.p-toast-message')]
    .filter(e => e.offsetParent !== null).map(e => e.innerText.slice(0, 2000))"""
# the page rectangle of the whole graph (groups included), for a screenshot of the graph alone
GRAPH_CLIP_JS = """() => {
    const c = window.app.canvas, g = window.app.graph, m = 12;
    const b = [Infinity, Infinity, -Infinity, -Infinity];
    for (const item of [...g.nodes, ...g.groups]) {
        const r = item.boundingRect;
        b[0] = Math.min(b[0], r[0]); b[1] = Math.min(b[1], r[1]);
        b[2] = Math.max(b[2], r[0] + r[2]); b[3] = Math.max(b[3], r[1] + r[3]);
    }
    const box = c.canvas.getBoundingClientRect(), dpr = c.canvas.width / box.width, s = c.ds.scale;
    const [x0, y0] = c.ds.convertOffsetToCanvas([b[0], b[1]]);
    const x = Math.max(box.left, box.left + x0 / dpr - m), y = Math.max(box.top, box.top + y0 / dpr - m);
    const w = Math.min(box.right - x, (b[2] - b[0]) * s / dpr + 2 * m);
    const h = Math.min(box.bottom - y, (b[3] - b[1]) * s / dpr + 2 * m);
    return {x, y, width: w, height: h};
}"""
OVERLAP_JS = """() => {
    const rects = window.app.graph.nodes.map(n => ({id: n.id, type: n.type, r: n.boundingRect.slice()}));
    const hits = [];
    for (let i = 0; i < rects.length; i++) for (let j = i + 1; j < rects.length; j++) {
        const a = rects[i].r, b = rects[j].r;
        if (a[0] < b[0] + b[2] && b[0] < a[0] + a[2] && a[1] < b[1] + b[3] && b[1] < a[1] + a[3])
            hits.push([rects[i].type + '#' + rects[i].id, rects[j].type + '#' + rects[j].id]);
    }
    const groups = window.app.graph.groups.map(g => ({title: g.title, r: [...g._bounding]}));
    const outside = [];
    for (const n of rects) {
        const inside = groups.some(g => n.r[0] >= g.r[0] && n.r[1] >= g.r[1]
            && n.r[0] + n.r[2] <= g.r[0] + g.r[2] && n.r[1] + n.r[3] <= g.r[1] + g.r[3]);
        if (!inside) outside.push(n.type + '#' + n.id);
    }
    return {hits, outside, groups: groups.length};
}"""


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------------
# the JSON alone (no browser): what is shipped, MuseV's defaults, the model note

def test_every_kind_of_workflow_is_shipped():
    assert set(NAMES) == EXPECTED, f"example_workflows/ holds {NAMES}"


@pytest.mark.parametrize("path", SHIPPED, ids=NAMES)
def test_workflow_keeps_musev_defaults(path):
    wf = load_json(path)
    name = os.path.splitext(os.path.basename(path))[0]
    assert wf.get("version") == 0.4 and wf["links"], "not a frontend-saved (litegraph 0.4) workflow"
    by_type = {}
    for node in wf["nodes"]:
        by_type.setdefault(node["type"], []).append(node)
    notes = " ".join(n["widgets_values"][0] for n in by_type.get("MarkdownNote", []))
    for folder in ("models/checkpoints", "models/vae", "models/clip_vision", "models/musev/motion/",
                   "sd-vae-ft-mse", "TMElyralab/MuseV", "ViT-H/14"):
        assert folder in notes, f"{name}: the model note does not mention {folder!r}"

    def linked(node, inp):
        return any(i["name"] == inp and i.get("link") is not None for i in node.get("inputs", []))
    (sampler,) = by_type["ParallelDenoiseSampler"]
    v = sampler["widgets_values"]
    # widget order: frames, width, height, context_frames, context_overlap, context_schedule,
    # context_batch_size, noise_type, w_ind_noise, img_weight, seed, (control), steps, cfg,
    # sampler_name, scheduler, include_condition_frames, denoise
    assert v[3:5] == [12, 4], f"{name}: windows {v[3:5]}, MuseV uses 12 frames overlapping by 4"
    assert v[7:10] == ["video_fusion", 0.5, 0.001], name
    assert v[12:16] == [10, 3.5, "euler", "musev_linspace"], name
    assert v[5] == ("uniform_looped" if "looping" in name else "uniform_v2"), name
    assert linked(sampler, "vision_image") or linked(sampler, "vision_latent"), f"{name}: no condition frame"
    if not linked(sampler, "frames"):
        assert v[0] >= (48 if "long" in name else 11), f"{name}: frames {v[0]}"
    if "video_to_video" in name:
        assert linked(sampler, "init_latent") and 0 < v[17] < 1, f"{name}: needs init_latent and denoise < 1"
    else:
        assert not linked(sampler, "init_latent") and v[17] == 1, name
    motions = by_type["LoadMuseVMotion"]
    video_motion = [m for m in motions if m["widgets_values"][2] is True]
    assert len(video_motion) == 1, f"{name}: one LoadMuseVMotion with temporal layers on"
    rate = video_motion[0]["widgets_values"][1]
    if "pose" in name:
        assert linked(video_motion[0], "frame_rate"), f"{name}: frame_rate must come from PoseVideoCondition"
    elif "video_to_video" in name:
        assert rate == 1.0, f"{name}: video2video frame rate is the sample rate (1)"
    else:
        assert rate == 8.0, f"{name}: text/image-to-video frame rate is 8 (MuseV's motion_speed)"
    if "text_to_image" in name:
        (first,) = [m for m in motions if m["widgets_values"][2] is False]
        (ks,) = by_type["KSampler"]
        assert ks["widgets_values"][2:5] == [30, 7.5, "euler"], f"{name}: first frame: 30 steps, cfg 7.5, euler"
        (empty,) = by_type["EmptyLatentImage"]
        assert empty["widgets_values"][2] == 1, f"{name}: the first frame is 1 frame"
    for cv in by_type["CreateVideo"]:
        if not linked(cv, "fps"):
            assert cv["widgets_values"][0] == 12, f"{name}: MuseV's README videos are 12 fps"
    assert by_type.get("SaveVideo"), f"{name}: saves no video"


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

@pytest.fixture(scope="module")
def server_models(comfy_host, comfy_server):
    """Stand-ins in the server's models folder and the workflows' input files in its input/."""
    standins = comfy_server.standins()
    write_workflow_inputs(comfy_server.input_dir, size=SIZE, frames=INPUT_FRAMES)
    return standins


@pytest.fixture(scope="module")
def workflow_page(chromium, comfy_server, server_models):
    """One large page for all workflows (docs-sized screenshots)."""
    page = FrontendPage(chromium, comfy_server, viewport=DOCS_VIEWPORT)
    try:
        page.open()
        yield page
    finally:
        page.close()


def update_docs(shot, name):
    """docs/<name>.png (README) and example_workflows/<name>.jpg (the template browser's thumbnail)."""
    from PIL import Image
    os.makedirs(DOCS_DIR, exist_ok=True)
    shutil.copyfile(shot, os.path.join(DOCS_DIR, name + ".png"))
    with Image.open(shot) as im:
        im = im.convert("RGB")
        im.thumbnail((THUMB_WIDTH, THUMB_WIDTH))
        im.save(os.path.join(PACK_DIR, "example_workflows", name + ".jpg"), quality=85)


def standin_map(s):
    """(input name, released file name) -> stand-in name, for every model the workflows may name."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("build_workflows", os.path.join(PACK_DIR, "scripts",
                                                                                  "build_workflows.py"))
    bw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bw)
    out = {}
    for name in bw.MODEL_FILES["ckpt_name"]:
        out[("ckpt_name", name)] = s.checkpoint
    out[("vae_name", bw.VAE)] = s.vae
    out[("clip_name", bw.CLIP_VISION)] = s.clip_vision
    out[("control_net_name", bw.CONTROLNET)] = s.controlnet
    for variant, choice in s.motion.items():
        out[("motion_model", f"motion/{variant}/")] = choice
    out[("referencenet", bw.REFERENCENET)] = s.referencenet
    for variant, choice in s.image_proj.items():
        out[("image_proj", f"motion/{variant}/ip_adapter_image_proj.bin")] = choice
    missing = [(k, v) for k, vals in bw.MODEL_FILES.items() for v in vals if (k, v) not in out]
    assert not missing, f"no stand-in for {missing}"
    return out


MODEL_INPUTS = {"ckpt_name", "vae_name", "clip_name", "control_net_name", "motion_model", "referencenet", "image_proj"}


def is_link(value):
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def shrink(prompt, models, tag):
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
        if cls == "ParallelDenoiseSampler":
            put("frames", FRAMES)
            put("width", SIZE)
            put("height", SIZE)
            put("context_frames", 2)
            put("context_overlap", 1)
            put("steps", 1)
        elif cls in ("EmptyLatentImage", "ImageScale"):
            put("width", SIZE)
            put("height", SIZE)
        elif cls == "KSampler":
            put("steps", 1)
        elif cls == "PrimitiveInt":
            put("value", FRAMES)
        elif cls == "PoseVideoCondition":
            put("frame_count", FRAMES)
        elif cls in ("SaveVideo", "SaveImage"):
            inputs["filename_prefix"] = f"musev_workflows/{tag}/{cls}"
    expected = {}
    for node_id, node in p.items():
        if node["class_type"] != "SaveVideo":
            continue
        sampler = upstream(p, node_id, "ParallelDenoiseSampler")
        assert sampler is not None, f"SaveVideo {node_id} is not fed by ParallelDenoiseSampler"
        inp = p[sampler]["inputs"]
        frames = inp["frames"]
        if is_link(frames):   # PrimitiveInt value or PoseVideoCondition frame_count
            src = p[frames[0]]
            frames = src["inputs"].get("value", src["inputs"].get("frame_count"))
        assert isinstance(frames, int) and frames == FRAMES, (sampler, frames)
        expected[node_id] = frames + (1 if inp["include_condition_frames"] else 0)
    return p, expected


def upstream(prompt, node_id, class_type, seen=None):
    seen = seen if seen is not None else set()
    if node_id in seen:
        return None
    seen.add(node_id)
    for value in prompt[node_id]["inputs"].values():
        if is_link(value):
            if prompt[value[0]]["class_type"] == class_type:
                return value[0]
            hit = upstream(prompt, value[0], class_type, seen)
            if hit:
                return hit
    return None


@pytest.mark.browser
@pytest.mark.parametrize("path", SHIPPED, ids=NAMES)
def test_workflow_loads_and_runs(workflow_page, comfy_server, server_models, path):
    name = os.path.splitext(os.path.basename(path))[0]
    wf = load_json(path)

    # 1. the frontend: loads cleanly, readable, screenshot
    report = load_workflow_in_frontend(workflow_page, path, screenshot_name=f"workflow_{name}_page")
    assert report["missing_nodes"] == [], f"{name} uses node types this install lacks"
    assert report["errors"] == [], "\n".join(report["errors"])
    assert report["node_count"] == len(wf["nodes"])
    toasts = workflow_page.page.evaluate(TOASTS_JS)
    assert toasts == [], f"{name}: the frontend complained on load: {toasts}"
    layout = workflow_page.page.evaluate(OVERLAP_JS)
    assert layout["hits"] == [], f"{name}: overlapping nodes {layout['hits']}"
    assert layout["groups"] >= 3 and layout["outside"] == [], f"{name}: nodes outside every group {layout['outside']}"
    shot = workflow_page.screenshot(f"workflow_{name}", clip=workflow_page.page.evaluate(GRAPH_CLIP_JS))
    assert os.path.getsize(shot) > 50_000
    if os.environ.get("MUSEV_UPDATE_DOCS", "") not in ("", "0"):
        update_docs(shot, name)

    # 2. the API prompt the frontend would queue, on stand-in models, through /prompt
    api = workflow_page.page.evaluate("async () => (await window.app.graphToPrompt()).output")
    virtual = {n["type"] for n in wf["nodes"]} - {n["class_type"] for n in api.values()}
    assert virtual <= {"MarkdownNote", "Note"}, f"{name}: nodes missing from the API prompt: {virtual}"
    prompt, expected = shrink(api, standin_map(server_models), f"{name}_{uuid.uuid4().hex[:6]}")
    assert expected, f"{name}: no SaveVideo"
    entry = queue_and_wait(comfy_server, prompt, timeout=600)
    outputs = entry["outputs"]
    for node_id, frames in expected.items():
        files = outputs[node_id]["images"]
        assert len(files) == 1, files
        path_out = comfy_server.output_path(files[0])
        assert os.path.isfile(path_out) and os.path.getsize(path_out) > 0, path_out
        assert video_frame_count(path_out) == frames, (path_out, frames)
    previews = [node_id for node_id, node in prompt.items() if node["class_type"] == "PreviewImage"]
    for node_id in previews:
        for info in outputs[node_id]["images"]:
            assert os.path.isfile(comfy_server.output_path(info)), info
