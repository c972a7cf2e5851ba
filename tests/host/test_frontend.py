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

from browser import load_workflow_in_frontend
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
    windows = W().get_windows(schedule, n, f, o)
    assert layout["status"] == "ok", layout["error"]
    assert layout["settings"]["n_vis"] == n_vis
    assert layout["windows"] == windows
    assert layout["frameCounts"] == W().frame_counts(windows, n)
    assert layout["batches"] == W().batch_windows(list(range(len(windows))), batch)
    assert layout["unetFrames"] == [n_vis + len(w) for w in windows]
    drawn = layout["drawn"]
    assert drawn["nVis"] == n_vis
    assert drawn["frameCounts"] == W().frame_counts(windows, n)
    # every drawn row is the window it claims to be, batch included; the rest are counted as hidden
    batch_of = {i: b for b, group in enumerate(layout["batches"]) for i in group}
    for row in drawn["rows"]:
        assert row["frames"] == windows[row["window"]]
        assert row["batch"] == batch_of[row["window"]]
    shown = [r["window"] for r in drawn["rows"]]
    assert shown == sorted(set(shown)) and shown[0] == 0 and shown[-1] == len(windows) - 1
    assert len(shown) + drawn["hiddenWindows"] == len(windows)
    return windows


PIXELS_JS = """([id, points]) => {
    const c = window.app.canvas, node = window.app.graph.getNodeById(id);
    const ctx = c.canvas.getContext('2d');
    return points.map(([x, y]) => {
        const [px, py] = c.ds.convertOffsetToCanvas([node.pos[0] + x, node.pos[1] + y]);
        const d = ctx.getImageData(Math.floor(px), Math.floor(py), 1, 1).data;
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
    assert drawn["cellWidth"] * 2 >= 6, "cells too narrow to sample"
    frontend.show_node(node_id, scale=2, widget=LAYOUT_WIDGET)
    frontend.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
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
    order = node_def.get("input_order") or {k: list(v) for k, v in node_def["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = node_def["input"][section][name]
            kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if not (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")):
                continue                                 # a socket, not a widget
            default = opts.get("default", kind[0] if isinstance(kind, list) and kind else ANY)
            out.append(overrides.get(name, default))
            if opts.get("control_after_generate"):
                out.append(ANY)                          # the frontend's seed control widget
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
    check_against_core(layout, "uniform_v2", 12, 12, 4, 1, 0)   # the node's defaults: one window

    cases = [
        (dict(frames=24), ("uniform_v2", 24, 12, 4, 1)),
        (dict(frames=13), ("uniform_v2", 13, 12, 4, 1)),
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
    check_against_core(layout, "uniform_v2", 30, 12, 6, 1, 0)
    frontend.set_widget(frames, "value", 50)              # live: a change upstream redraws
    check_against_core(drawn_layout(frontend, node, frames=50), "uniform_v2", 50, 12, 6, 1, 0)
    prompt = frontend.page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert prompt[str(node)]["inputs"]["frames"] == [str(frames), 0]
    assert frontend.pack_errors() == []


def test_frontend_widgets_stay_out_of_workflow_and_prompt(frontend, comfy_server):
    node = frontend.add_node("MuseVContextWindows", pos=(60, 40))
    layout = drawn_layout(frontend, node, frames=24)
    assert layout["settings"]["framesFrom"] == "preview"
    check_against_core(layout, "uniform_v2", 24, 12, 4, 1, 0)
    layout = drawn_layout(frontend, node, **set_widgets(frontend, node, preview_frames=40, context_overlap=2))
    check_against_core(layout, "uniform_v2", 40, 12, 2, 1, 0)
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
    check_against_core(layout, "uniform_v2", 40, 12, 2, 1, 0)
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


def test_shipped_workflows_in_vue_nodes_mode(frontend, comfy_server):
    """The frontend's (experimental) Vue-nodes renderer: every shipped workflow loads without errors
    and queues exactly the prompt it queues in the classic canvas renderer."""
    classic = {}
    for path in SHIPPED:
        report = load_workflow_in_frontend(frontend, path, settle_ms=200)
        assert report["errors"] == [], "\n".join(report["errors"])
        classic[path] = frontend.page.evaluate(PROMPT_JS)
    page = frontend.page
    assert page.evaluate("""async (k) => { await window.app.extensionManager.setting.set(k, true);
                                           return window.app.extensionManager.setting.get(k); }""", VUE_SETTING)
    try:
        page.wait_for_timeout(500)
        frontend.open()                      # the renderer is chosen at start-up
        assert page.evaluate("(k) => window.app.extensionManager.setting.get(k)", VUE_SETTING) is True
        for path in SHIPPED:
            name = os.path.basename(path)
            report = load_workflow_in_frontend(frontend, path, settle_ms=800,
                                               screenshot_name="vue_" + os.path.splitext(name)[0])
            assert report["missing_nodes"] == [] and report["errors"] == [], (name, report["errors"])
            rendered = page.evaluate("() => document.querySelectorAll('[data-node-id]').length")
            assert rendered == report["node_count"], f"{name}: {rendered} Vue nodes for {report['node_count']}"
            assert page.evaluate(PROMPT_JS) == classic[path], f"{name}: another prompt in Vue-nodes mode"
    finally:
        page.evaluate("async (k) => { await window.app.extensionManager.setting.set(k, false); }", VUE_SETTING)
        page.wait_for_timeout(300)
