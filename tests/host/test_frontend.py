"""The pack in the real ComfyUI frontend (server subprocess + headless system Chromium).

* the context-window preview (web/musev_windows.js) draws what musev_core.windows computes, live
  as widgets and the vision input change, and shows the error for settings that cannot work;
* its frontend-only widgets never leak into the saved workflow or the API prompt;
* ``load_workflow_in_frontend`` reports missing node types and errors of a UI-format workflow
  (every shipped workflow in example_workflows/ goes through it).

Screenshots go to test-artifacts/ (git-ignored).
"""
import glob
import json
import os

import pytest

from browser import load_workflow_in_frontend, widget_inputs
from conftest import PACK_DIR, pack_module

pytestmark = pytest.mark.browser

EXTENSION = "MuseV.ContextWindows"
LAYOUT_WIDGET = "musev_window_layout"
PREVIEW_WIDGET = "preview_frames"
PREVIEW_PROPERTY = "MuseV preview frames"

_SETTING_KEYS = {"frames": "frames", "context_frames": "context_frames", "context_overlap": "context_overlap",
                 "context_schedule": "schedule", "context_batch_size": "batch", "preview_frames": "frames"}

WAIT_LAYOUT_JS = """([id, expect]) => {
    const node = window.app.graph.getNodeById(id);
    const L = node && node.musevLayout;
    if (!L || L.status === 'loading' || !L.drawn || L.drawn.key !== L.key) return false;
    for (const [k, v] of Object.entries(expect)) if (L.settings[k] !== v) return false;
    return true;
}"""
GET_LAYOUT_JS = """(id) => {
    const L = window.app.graph.getNodeById(id).musevLayout;
    return {key: L.key, settings: L.settings, status: L.status, error: L.error, windows: L.windows,
            frameCounts: L.frameCounts, batches: L.batches, unetFrames: L.unetFrames, drawn: L.drawn};
}"""


def W():
    return pack_module("musev_core.windows")


def drawn_layout(frontend, node_id, timeout=30_000, **expect):
    """Wait until the node has drawn the plan for ``expect`` (settings names as in musevLayout)."""
    frontend.page.wait_for_function(WAIT_LAYOUT_JS, arg=[node_id, expect], timeout=timeout)
    return frontend.page.evaluate(GET_LAYOUT_JS, node_id)


def set_widgets(frontend, node_id, **values):
    expect = {}
    for name, value in values.items():
        frontend.set_widget(node_id, name, value)
        expect[_SETTING_KEYS[name]] = value
    return expect


def connect(frontend, src_id, src_slot, dst_id, dst_input):
    frontend.page.evaluate("""([a, slot, b, name]) => {
        const A = window.app.graph.getNodeById(a), B = window.app.graph.getNodeById(b);
        const idx = B.inputs.findIndex(i => i.name === name);
        if (idx < 0) throw new Error('no input ' + name);
        A.connect(slot, B, idx);
        window.app.graph.setDirtyCanvas(true, true);
    }""", [src_id, src_slot, dst_id, dst_input])


def disconnect(frontend, node_id, input_name):
    frontend.page.evaluate("""([id, name]) => {
        const n = window.app.graph.getNodeById(id);
        n.disconnectInput(n.inputs.findIndex(i => i.name === name));
        window.app.graph.setDirtyCanvas(true, true);
    }""", [node_id, input_name])


def check_against_core(layout, schedule, n, f, o, batch, n_vis):
    """The layout is musev_core's plan for these settings; ``batch`` None: the node's own
    context_batch_size (0 = auto: no grouping drawn, it is chosen at run time)."""
    if batch is None:
        batch = layout["settings"]["batch"]
    windows = W().get_windows(schedule, n, f, o)
    assert layout["status"] == "ok", layout["error"]
    assert layout["settings"]["n_vis"] == n_vis
    assert layout["windows"] == windows
    assert layout["frameCounts"] == W().frame_counts(windows, n)
    if batch == 0:
        assert layout["settings"]["autoBatch"] and layout["batches"] is None
        batch_of = {i: None for i in range(len(windows))}
    else:
        assert layout["batches"] == W().batch_windows(list(range(len(windows))), batch)
        batch_of = {i: b for b, group in enumerate(layout["batches"]) for i in group}
    assert layout["unetFrames"] == [n_vis + len(w) for w in windows]
    drawn = layout["drawn"]
    assert drawn["nVis"] == n_vis
    assert drawn["frameCounts"] == W().frame_counts(windows, n)
    # every drawn row is the window it claims to be, batch included; the rest are counted as hidden
    for row in drawn["rows"]:
        assert row["frames"] == windows[row["window"]]
        assert row["batch"] == batch_of[row["window"]]
    shown = [r["window"] for r in drawn["rows"]]
    assert shown == sorted(set(shown)) and shown[0] == 0 and shown[-1] == len(windows) - 1
    assert len(shown) + drawn["hiddenWindows"] == len(windows)
    return windows


PIXELS_JS = """([id, points]) => {
    // the chart is the node's own <canvas> (a DOM widget): read it, whatever renderer placed it
    const node = window.app.graph.getNodeById(id);
    const canvas = node.musevPreview.querySelector('canvas');
    const r = node.musevLayout.drawn.pixelRatio, ctx = canvas.getContext('2d');
    return points.map(([x, y]) => {
        const d = ctx.getImageData(Math.floor(x * r), Math.floor(y * r), 1, 1).data;
        return [d[0], d[1], d[2]];
    });
}"""


def hex_rgb(color):
    color = color.lstrip("#")
    return tuple(int(color[i:i + 2], 16) for i in (0, 2, 4))


def near(rgb, ref, tol=24):
    return max(abs(a - b) for a, b in zip(rgb, ref)) <= tol


def check_pixels(frontend, node_id, layout):
    """The canvas shows what musevLayout.drawn says: sample the centre of every frame cell of every
    drawn row, the vision cell and the coverage strip."""
    drawn = layout["drawn"]
    n = len(layout["frameCounts"])
    assert drawn["cellWidth"] * drawn["pixelRatio"] >= 6, "cells too narrow to sample"
    points, expect = [], []
    for row in drawn["rows"]:
        cy = row["y"] + row["height"] / 2
        inside = set(row["frames"])
        for f in range(n):
            points.append((drawn["gridX"] + (f + 0.5) * drawn["cellWidth"], cy))
            expect.append(("row", row["window"], f, hex_rgb(row["color"]), f in inside))
        points.append((drawn["visionX"] + max(drawn["visionCell"], 12) / 2, row["y"] + 1.5))
        expect.append(("vision", row["window"], None, hex_rgb(drawn["visionColor"]), drawn["nVis"] > 0))
    for f in range(n):
        points.append((drawn["gridX"] + (f + 0.5) * drawn["cellWidth"], drawn["coverY"] + 1.5))
        expect.append(("cover", None, f, None, None))
    pixels = frontend.page.evaluate(PIXELS_JS, [node_id, points])
    cover = {}
    for rgb, (kind, window, frame, ref, inside) in zip(pixels, expect):
        if kind == "cover":
            cover.setdefault(layout["frameCounts"][frame], set()).add(tuple(rgb))
            continue
        assert near(rgb, ref) == inside, (kind, window, frame, rgb, ref, inside)
    # one colour per coverage count, a different one for each count
    assert all(len(c) == 1 for c in cover.values()), cover
    assert len({next(iter(c)) for c in cover.values()}) == len(cover), cover


ANY = object()


def expected_widget_values(node_def, **overrides):
    """widgets_values the frontend saves for a node with default values (ANY: not checked)."""
    out = []
    for name, kind, opts in widget_inputs(node_def):
        default = opts.get("default", kind[0] if isinstance(kind, list) and kind else ANY)
        out.append(overrides.get(name, default))
        if opts.get("control_after_generate"):
            out.append(ANY)                              # the frontend's seed control widget
    return out


def assert_widget_values(values, node_def, **overrides):
    expected = expected_widget_values(node_def, **overrides)
    assert len(values) == len(expected), (values, expected)
    for got, want in zip(values, expected):
        if want is not ANY:
            assert got == want, (values, expected)


def test_extension_loads_without_errors(frontend):
    assert frontend.extension_loaded(EXTENSION)
    assert frontend.pack_errors() == []


def test_sampler_preview_follows_widgets(frontend):
    node = frontend.add_node("ParallelDenoiseSampler", pos=(60, 40))
    layout = drawn_layout(frontend, node, frames=12, context_frames=12, context_overlap=4)
    check_against_core(layout, "uniform_v2", 12, 12, 4, None, 0)   # the node's defaults: one window

    cases = [
        (dict(frames=24), ("uniform_v2", 24, 12, 4, None)),
        (dict(frames=13), ("uniform_v2", 13, 12, 4, None)),
        (dict(frames=36, context_batch_size=3), ("uniform_v2", 36, 12, 4, 3)),
        (dict(frames=24, context_schedule="uniform_looped", context_batch_size=2), ("uniform_looped", 24, 12, 4, 2)),
        (dict(frames=200, context_frames=16, context_schedule="uniform_v2"), ("uniform_v2", 200, 16, 4, 2)),
    ]
    for values, (schedule, n, f, o, batch) in cases:
        layout = drawn_layout(frontend, node, **set_widgets(frontend, node, **values))
        windows = check_against_core(layout, schedule, n, f, o, batch, 0)
        if n <= 40:
            check_pixels(frontend, node, layout)
        if n == 24 and schedule == "uniform_looped":
            assert windows[-1] == list(range(16, 24)) + [0, 1, 2, 3]   # the wrapped window is drawn
        if n == 200:
            assert layout["drawn"]["hiddenWindows"] > 0                 # long plans are condensed
    frontend.screenshot_node(node, "frontend_sampler_200_frames", widget=LAYOUT_WIDGET)

    # a connected vision input puts one clean frame in front of every window
    latent = frontend.add_node("EmptyLatentImage", pos=(-300, 40))
    values = set_widgets(frontend, node, frames=24, context_frames=12, context_batch_size=2)
    connect(frontend, latent, 0, node, "vision_latent")
    layout = drawn_layout(frontend, node, n_vis=1, **values)
    check_against_core(layout, "uniform_v2", 24, 12, 4, 2, 1)
    check_pixels(frontend, node, layout)
    frontend.screenshot_node(node, "frontend_sampler_vision_latent", widget=LAYOUT_WIDGET)
    frontend.screenshot_node(node, "frontend_sampler_node")
    disconnect(frontend, node, "vision_latent")
    check_against_core(drawn_layout(frontend, node, n_vis=0, **values), "uniform_v2", 24, 12, 4, 2, 0)

    # settings that cannot work: the widget shows musev_core's message instead of a drawing
    bad = set_widgets(frontend, node, frames=12, context_frames=12, context_overlap=12)
    layout = drawn_layout(frontend, node, **bad)
    assert layout["status"] == "error" and layout["windows"] is None
    with pytest.raises(W().WindowError) as info:
        W().describe("uniform_v2", 12, 12, 12, 0, 2)
    assert layout["error"]["message"] == str(info.value)
    assert layout["error"]["param"] == "context_overlap"
    assert layout["drawn"]["error"] == str(info.value)
    frontend.screenshot_node(node, "frontend_sampler_error", widget=LAYOUT_WIDGET)
    # ... and recovers
    good = set_widgets(frontend, node, context_overlap=4)
    check_against_core(drawn_layout(frontend, node, **good), "uniform_v2", 12, 12, 4, 2, 0)

    assert frontend.pack_errors() == []


def test_linked_widget_inputs_are_followed(frontend):
    """frames / context_overlap fed by primitive nodes: the preview uses the primitives' values."""
    node = frontend.add_node("ParallelDenoiseSampler", pos=(400, 40))
    frames = frontend.add_node("PrimitiveInt", pos=(0, 40))
    overlap = frontend.add_node("PrimitiveInt", pos=(0, 200))
    drawn_layout(frontend, node, frames=12)
    frontend.set_widget(frames, "value", 30)
    frontend.set_widget(overlap, "value", 6)
    connect(frontend, frames, 0, node, "frames")
    connect(frontend, overlap, 0, node, "context_overlap")
    layout = drawn_layout(frontend, node, frames=30, context_overlap=6)
    assert layout["settings"]["framesFrom"] == "input" and layout["settings"]["unknown"] == []
    check_against_core(layout, "uniform_v2", 30, 12, 6, None, 0)
    frontend.set_widget(frames, "value", 50)              # live: a change upstream redraws
    check_against_core(drawn_layout(frontend, node, frames=50), "uniform_v2", 50, 12, 6, None, 0)
    prompt = frontend.page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert prompt[str(node)]["inputs"]["frames"] == [str(frames), 0]
    assert frontend.pack_errors() == []


def test_frontend_widgets_stay_out_of_workflow_and_prompt(frontend, comfy_server):
    node = frontend.add_node("MuseVContextWindows", pos=(60, 40))
    layout = drawn_layout(frontend, node, frames=24)
    assert layout["settings"]["framesFrom"] == "preview"
    check_against_core(layout, "uniform_v2", 24, 12, 4, None, 0)
    layout = drawn_layout(frontend, node, **set_widgets(frontend, node, preview_frames=40, context_overlap=2))
    check_against_core(layout, "uniform_v2", 40, 12, 2, None, 0)
    frontend.screenshot_node(node, "frontend_context_windows_node")

    sampler = frontend.add_node("ParallelDenoiseSampler", pos=(500, 40))
    drawn_layout(frontend, sampler, frames=12)
    defs = comfy_server.object_info()
    out = frontend.page.evaluate("""async () => {
        const p = await window.app.graphToPrompt();
        return {output: p.output, nodes: p.workflow.nodes.map(n => ({id: n.id, type: n.type,
                widgets_values: n.widgets_values, properties: n.properties}))};
    }""")
    for node_id, entry in out["output"].items():
        d = defs[entry["class_type"]]["input"]
        allowed = set(d.get("required", {})) | set(d.get("optional", {}))
        assert set(entry["inputs"]) <= allowed, (entry["class_type"], set(entry["inputs"]) - allowed)
    cw = out["output"][str(node)]["inputs"]
    assert cw["context_overlap"] == 2 and PREVIEW_WIDGET not in cw and LAYOUT_WIDGET not in cw
    saved = {n["id"]: n for n in out["nodes"]}
    # widgets_values hold exactly the node's own widgets (nothing of ours shifts their positions)
    assert_widget_values(saved[node]["widgets_values"], defs["MuseVContextWindows"], context_overlap=2)
    assert saved[node]["properties"][PREVIEW_PROPERTY] == 40
    assert_widget_values(saved[sampler]["widgets_values"], defs["ParallelDenoiseSampler"])

    # a save / load round trip restores the preview length and redraws it
    frontend.page.evaluate("""async () => {
        const wf = window.app.graph.serialize();
        await window.app.loadGraphData(wf, true, true, 'roundtrip',
            {showMissingNodesDialog: false, showMissingModelsDialog: false});
    }""")
    layout = drawn_layout(frontend, node, frames=40, context_overlap=2)
    check_against_core(layout, "uniform_v2", 40, 12, 2, None, 0)
    assert frontend.page.evaluate("""([id, w]) => window.app.graph.getNodeById(id).widgets
        .find(x => x.name === w).value""", [node, PREVIEW_WIDGET]) == 40
    assert frontend.pack_errors() == []


# ------------------------------------------------------------------------------------------
# workflow loading
# ------------------------------------------------------------------------------------------
def ui_workflow(nodes, links):
    """A UI-format (litegraph 0.4) workflow from compact node specs:
    ``(id, type, pos, inputs=[(name, type)], outputs=[(name, type)], widgets_values)``;
    ``links``: ``(src_id, src_slot, dst_id, dst_input_name)``."""
    out_nodes = {}
    for order, (nid, ntype, pos, inputs, outputs, values) in enumerate(nodes):
        out_nodes[nid] = {
            "id": nid, "type": ntype, "pos": list(pos), "size": [320, 120], "flags": {}, "order": order,
            "mode": 0, "properties": {"Node name for S&R": ntype},
            "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
            "outputs": [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(outputs)],
            "widgets_values": list(values),
        }
    out_links = []
    for lid, (src, slot, dst, name) in enumerate(links, start=1):
        target = out_nodes[dst]
        tslot = [i["name"] for i in target["inputs"]].index(name)
        target["inputs"][tslot]["link"] = lid
        out_nodes[src]["outputs"][slot]["links"].append(lid)
        out_links.append([lid, src, slot, dst, tslot, out_nodes[src]["outputs"][slot]["type"]])
    return {"last_node_id": max(out_nodes), "last_link_id": len(out_links), "nodes": list(out_nodes.values()),
            "links": out_links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def sockets_and_values(node_def, **overrides):
    """Socket inputs ``[(name, type)]`` and widgets_values of a node (old, pre-widget-socket format)."""
    sockets = []
    order = node_def.get("input_order") or {k: list(v) for k, v in node_def["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            kind = node_def["input"][section][name][0]
            if not (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")):
                sockets.append((name, kind))
    values = ["fixed" if v is ANY else v for v in expected_widget_values(node_def, **overrides)]
    return sockets, values


SAMPLER_SETTINGS = dict(frames=20, context_batch_size=2, seed=7)


def small_workflow(defs, extra_nodes=()):
    sampler_inputs, sampler_values = sockets_and_values(defs["ParallelDenoiseSampler"], **SAMPLER_SETTINGS)
    nodes = [
        (1, "CheckpointLoaderSimple", (0, 0), [], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
         ["sd15_for_musev.safetensors"]),
        (2, "CLIPTextEncode", (360, -200), [("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")], ["a dancer"]),
        (3, "CLIPTextEncode", (360, 0), [("clip", "CLIP")], [("CONDITIONING", "CONDITIONING")], ["blurry"]),
        (4, "EmptyLatentImage", (360, 200), [], [("LATENT", "LATENT")], [512, 512, 1]),
        (5, "ParallelDenoiseSampler", (760, 0), sampler_inputs, [("latent", "LATENT")], sampler_values),
        (6, "VAEDecode", (1160, 0), [("samples", "LATENT"), ("vae", "VAE")], [("IMAGE", "IMAGE")], []),
        (7, "SaveImage", (1400, 0), [("images", "IMAGE")], [], ["musev"]),
    ] + list(extra_nodes)
    links = [(1, 0, 5, "model"), (1, 1, 2, "clip"), (1, 1, 3, "clip"), (2, 0, 5, "positive"),
             (3, 0, 5, "negative"), (4, 0, 5, "vision_latent"), (5, 0, 6, "samples"), (1, 2, 6, "vae"),
             (6, 0, 7, "images")]
    return ui_workflow(nodes, links)


def test_load_workflow_in_frontend(frontend, comfy_server, tmp_path):
    defs = comfy_server.object_info()
    path = tmp_path / "musev_small.json"
    path.write_text(json.dumps(small_workflow(defs)))
    report = load_workflow_in_frontend(frontend, str(path), screenshot_name="frontend_workflow_small")
    assert report["missing_nodes"] == []
    assert report["errors"] == [] and report["pack_errors"] == []
    assert report["node_count"] == 7
    assert os.path.isfile(report["screenshot"]) and os.path.getsize(report["screenshot"]) > 10_000

    # the loaded sampler got its saved widget values and drew their windows, vision frame included
    layout = drawn_layout(frontend, 5, frames=20, batch=2, n_vis=1)
    check_against_core(layout, "uniform_v2", 20, 12, 4, 2, 1)
    prompt = frontend.page.evaluate("async () => (await window.app.graphToPrompt()).output")
    inputs = prompt["5"]["inputs"]
    assert {k: inputs[k] for k in SAMPLER_SETTINGS} == SAMPLER_SETTINGS
    assert inputs["vision_latent"] == ["4", 0]

    # a workflow with node types the server does not have
    missing = small_workflow(defs, extra_nodes=[
        (8, "MuseVNodeThatDoesNotExist", (0, 400), [], [("IMAGE", "IMAGE")], [1, "x"]),
        (9, "AnotherMissingNode", (400, 400), [("image", "IMAGE")], [], []),
    ])
    missing["links"].append([10, 8, 0, 9, 0, "IMAGE"])
    missing["nodes"][-2]["outputs"][0]["links"] = [10]
    missing["nodes"][-1]["inputs"][0]["link"] = 10
    missing["last_link_id"] = 10
    path2 = tmp_path / "musev_missing.json"
    path2.write_text(json.dumps(missing))
    report = load_workflow_in_frontend(frontend, str(path2), screenshot_name="frontend_workflow_missing")
    assert report["missing_nodes"] == ["AnotherMissingNode", "MuseVNodeThatDoesNotExist"]
    assert report["pack_errors"] == []
    assert report["node_count"] == 9

    with pytest.raises(ValueError):
        api_prompt = tmp_path / "api.json"
        api_prompt.write_text(json.dumps({"1": {"class_type": "EmptyImage", "inputs": {}}}))
        load_workflow_in_frontend(frontend, str(api_prompt))


SHIPPED = sorted(glob.glob(os.path.join(PACK_DIR, "example_workflows", "*.json")))


@pytest.mark.skipif(not SHIPPED, reason="no workflows in example_workflows/ yet")
@pytest.mark.parametrize("path", SHIPPED, ids=[os.path.basename(p) for p in SHIPPED])
def test_shipped_workflow_loads(frontend, path):
    report = load_workflow_in_frontend(frontend, path)
    assert report["missing_nodes"] == [], f"{os.path.basename(path)} uses node types this install lacks"
    assert report["errors"] == [], "\n".join(report["errors"])


VUE_SETTING = "Comfy.VueNodes.Enabled"
PROMPT_JS = "async () => (await window.app.graphToPrompt()).output"
VUE_OFFERED_JS = """(k) => { const d = (window.app.extensionManager.setting.settings || {})[k];
                            return !!(d && d.type !== 'hidden'); }"""
# every node's DOM box in the Vue-nodes renderer, and where each window chart sits
VUE_VIEW_JS = """() => ({
    scale: window.app.canvas.ds.scale,
    nodes: window.app.graph.nodes.map(n => {
        const el = document.querySelector(`[data-node-id="${n.id}"]`);
        const r = el && el.getBoundingClientRect();
        return {id: n.id, type: n.type, r: r ? [r.left, r.top, r.width, r.height] : null};
    }),
    charts: window.app.graph.nodes.filter(n => n.musevPreview).map(n => {
        const L = n.musevLayout, el = n.musevPreview, host = el.closest('[data-node-id]');
        return {type: n.type, status: L && L.status, drawn: !!(L && L.drawn && L.drawn.key === L.key),
                inNode: !!host && host.dataset.nodeId === String(n.id), h: el.clientHeight};
    }),
})"""


def load_as_saved(page, path):
    return load_workflow_in_frontend(page, path, settle_ms=800, fit=False)


def test_shipped_workflows_in_vue_nodes_mode(chromium, comfy_server):
    """The frontend's Vue-nodes renderer ("Nodes 2.0": a user setting in 1.45, the default on Desktop
    and Cloud for new installs; a hidden experiment in 1.27): every shipped workflow loads without
    errors and queues exactly the prompt it queues in the classic renderer.  Where the renderer is
    offered to users, the saved view also holds there: every node box inside the reference window's
    uncovered rectangle, none overlapping, every window chart drawn inside its node."""
    import importlib.util
    from browser import FrontendPage
    spec = importlib.util.spec_from_file_location("bw", os.path.join(PACK_DIR, "scripts", "build_workflows.py"))
    bw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bw)
    page_obj = FrontendPage(chromium, comfy_server, viewport=bw.REFERENCE_VIEWPORT)
    page = page_obj.page
    try:
        page_obj.open()
        classic = {}
        for path in SHIPPED:
            report = load_as_saved(page_obj, path)
            assert report["errors"] == [], "\n".join(report["errors"])
            classic[path] = page.evaluate(PROMPT_JS)
        offered = page.evaluate(VUE_OFFERED_JS, VUE_SETTING)
        assert page.evaluate("""async (k) => { await window.app.extensionManager.setting.set(k, true);
                                               return window.app.extensionManager.setting.get(k); }""", VUE_SETTING)
        page.wait_for_timeout(500)
        page_obj.open()                      # the renderer is chosen at start-up
        assert page.evaluate("(k) => window.app.extensionManager.setting.get(k)", VUE_SETTING) is True
        l, t, r, b = bw.USABLE_PAGE
        for path in SHIPPED:
            name = os.path.splitext(os.path.basename(path))[0]
            report = load_as_saved(page_obj, path)
            assert report["missing_nodes"] == [] and report["errors"] == [], (name, report["errors"])
            rendered = page.evaluate("() => document.querySelectorAll('[data-node-id]').length")
            assert rendered == report["node_count"], f"{name}: {rendered} Vue nodes for {report['node_count']}"
            assert page.evaluate(PROMPT_JS) == classic[path], f"{name}: another prompt in Vue-nodes mode"
            if not offered:
                continue
            page.wait_for_function("""() => window.app.graph.nodes.filter(n => n.musevLayout).every(n =>
                n.musevLayout.drawn && n.musevLayout.drawn.key === n.musevLayout.key)""", timeout=30_000)
            view = page.evaluate(VUE_VIEW_JS)
            page_obj.screenshot("vue_" + name)
            boxes = view["nodes"]
            assert all(n["r"] for n in boxes), f"{name}: nodes without a DOM box"
            outside = [(n["type"], [round(v) for v in n["r"]]) for n in boxes
                       if not (l <= n["r"][0] and n["r"][0] + n["r"][2] <= r and t <= n["r"][1]
                               and n["r"][1] + n["r"][3] <= b)]
            assert outside == [], f"{name}: nodes outside the visible canvas in the Vue renderer {outside}"
            hits = [(a["type"], c["type"]) for i, a in enumerate(boxes) for c in boxes[i + 1:]
                    if a["r"][0] < c["r"][0] + c["r"][2] and c["r"][0] < a["r"][0] + a["r"][2]
                    and a["r"][1] < c["r"][1] + c["r"][3] and c["r"][1] < a["r"][1] + a["r"][3]]
            assert hits == [], f"{name}: overlapping nodes in the Vue renderer {hits}"
            assert view["charts"] and all(c["drawn"] and c["inNode"] and c["h"] > 40 for c in view["charts"]), \
                (name, view["charts"])
        assert page_obj.pack_errors() == []
    finally:
        page.evaluate("async (k) => { await window.app.extensionManager.setting.set(k, false); }", VUE_SETTING)
        page.wait_for_timeout(300)
        page_obj.close()


def pose_workflow():
    return os.path.join(PACK_DIR, "example_workflows", "musev_pose_to_video.json")


def test_preview_of_the_pose_workflow_follows_the_pose_node(frontend):
    """The pose->video workflow: the sampler's frames come from PoseVideoCondition (frame_count 24), so
    the chart shows 24 frames in 3 windows (not the stale widget's 12 in 1); with frame_count 0 (the
    whole clip, known only when the graph runs) it says where the frames come from and draws no chart."""
    report = load_workflow_in_frontend(frontend, pose_workflow(), settle_ms=500, fit=False)
    assert report["errors"] == [], report["errors"]
    ids = frontend.page.evaluate("""() => ({
        sampler: window.app.graph.nodes.find(n => n.type === 'ParallelDenoiseSampler').id,
        pose: window.app.graph.nodes.find(n => n.type === 'PoseVideoCondition').id,
        stale: window.app.graph.nodes.find(n => n.type === 'ParallelDenoiseSampler').widgets
                   .find(w => w.name === 'frames').value,
        title: window.app.graph.nodes.find(n => n.type === 'PoseVideoCondition').title})""")
    assert ids["stale"] != 24      # the widget under the link holds another value: it must not be drawn
    frontend.show_node(ids["sampler"])
    layout = drawn_layout(frontend, ids["sampler"], frames=24)
    assert layout["settings"]["framesFrom"] == "input" and layout["settings"]["sources"]["frames"] == ids["title"]
    windows = check_against_core(layout, "uniform_v2", 24, 12, 4, None, 1)
    assert len(windows) == 3
    check_pixels(frontend, ids["sampler"], layout)
    frontend.screenshot_node(ids["sampler"], "frontend_pose_workflow_sampler")
    chart = frontend.screenshot_node(ids["sampler"], "frontend_pose_workflow_chart", scale=1.5, widget=LAYOUT_WIDGET)
    if os.environ.get("MUSEV_UPDATE_DOCS", "") not in ("", "0"):
        import shutil
        shutil.copyfile(chart, os.path.join(PACK_DIR, "docs", "window_preview.png"))   # the README's picture

    frontend.set_widget(ids["pose"], "frame_count", 0)
    frontend.page.wait_for_function("""(id) => { const L = window.app.graph.getNodeById(id).musevLayout;
        return L && L.status === 'linked' && L.drawn && L.drawn.key === L.key; }""", arg=ids["sampler"],
                                    timeout=30_000)
    layout = frontend.page.evaluate(GET_LAYOUT_JS, ids["sampler"])
    assert layout["windows"] is None and layout["drawn"]["linked"] == f"frames from {ids['title']}"
    badge = frontend.page.evaluate("(id) => window.app.graph.getNodeById(id).__musev.badge?.text", ids["sampler"])
    assert badge in (None, "windows: at run time")
    frontend.screenshot_node(ids["sampler"], "frontend_pose_frames_at_run_time", widget=LAYOUT_WIDGET)
    frontend.set_widget(ids["pose"], "frame_count", 36)   # and back to a chart
    check_against_core(drawn_layout(frontend, ids["sampler"], frames=36), "uniform_v2", 36, 12, 4, None, 1)
    assert frontend.pack_errors() == []


def test_auto_batching_is_shown(frontend):
    """context_batch_size 0 = windows per UNet call chosen from free memory at run time: the chart
    draws the windows and says "auto" instead of a grouping."""
    node = frontend.add_node("ParallelDenoiseSampler", pos=(60, 40))
    drawn_layout(frontend, node, frames=12)
    layout = drawn_layout(frontend, node, **set_widgets(frontend, node, frames=30, context_batch_size=2))
    check_against_core(layout, "uniform_v2", 30, 12, 4, 2, 0)
    assert len({r["color"] for r in layout["drawn"]["rows"]}) == 2        # two UNet calls per step
    frontend.page.evaluate("""(id) => { const n = window.app.graph.getNodeById(id);
        n.widgets.find(w => w.name === 'context_batch_size').value = 0; }""", node)   # (a widget of min 1 clamps)
    layout = drawn_layout(frontend, node, frames=30, batch=0)
    check_against_core(layout, "uniform_v2", 30, 12, 4, 0, 0)
    assert layout["drawn"]["autoBatch"] and "auto batching" in layout["drawn"]["footer"]
    assert {r["color"] for r in layout["drawn"]["rows"]} == {layout["drawn"]["rows"][0]["color"]}
    frontend.screenshot_node(node, "frontend_sampler_auto_batch", widget=LAYOUT_WIDGET)
    assert frontend.pack_errors() == []


def test_no_node_colours_are_forced(frontend):
    """The extension leaves node colours alone (they would be saved into users' workflows)."""
    ids = [frontend.add_node(t, pos=(60 + 400 * i, 40)) for i, t in
           enumerate(["ParallelDenoiseSampler", "MuseVContextWindows", "LoadMuseVMotion"])]
    saved = frontend.page.evaluate("(ids) => window.app.graph.serialize().nodes.filter(n => ids.includes(n.id))"
                                   ".map(n => [n.type, n.color ?? null, n.bgcolor ?? null])", ids)
    assert all(c is None and bg is None for _, c, bg in saved), saved
