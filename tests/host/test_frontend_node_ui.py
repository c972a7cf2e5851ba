"""The node UI in the real frontend and server: the expert knobs are advanced inputs the way core V3
inputs are (ComfyUI 0.28's frontend 1.45 folds them in its Vue-nodes renderer) and still reach the
queued prompt; /object_info carries the flags, the output tooltips and musev_linspace in KSampler's
list; /i18n serves the zh locale."""
import pytest

pytestmark = pytest.mark.browser

EXPERT_KNOBS = ("context_batch_size", "noise_type", "w_ind_noise", "img_weight")

WIDGETS_JS = """(id) => {
    const node = window.app.graph.getNodeById(id);
    return {
        supportsAdvanced: typeof node.hasAdvancedWidgets === 'function',
        widgets: Object.fromEntries(node.widgets.map(w => [w.name, {
            advanced: !!(w.options?.advanced ?? w.advanced), value: w.value}])),
    };
}"""

PROMPT_JS = """async (id) => (await window.app.graphToPrompt()).output[String(id)].inputs"""

NODE_TEXT_JS = """(id) => document.querySelector('[data-node-id="' + id + '"]')?.innerText ?? null"""

SHOW_ADVANCED_JS = """(id) => {
    const el = document.querySelector('[data-node-id="' + id + '"]');
    const b = [...el.querySelectorAll('button')].find(b => /advanced/i.test(b.innerText || b.getAttribute('aria-label') || ''));
    if (!b) return false;
    b.click();
    return true;
}"""

VUE_SETTING = "Comfy.VueNodes.Enabled"


def test_object_info_carries_flags_tooltips_and_scheduler(comfy_server):
    status, info = comfy_server.get_json("/object_info")
    assert status == 200
    for name in ("ParallelDenoiseSampler", "MuseVContextWindows"):
        spec = info[name]["input"]["required"]
        for knob in EXPERT_KNOBS:
            assert spec[knob][1].get("advanced") is True, (name, knob)
        assert not spec["context_frames"][1].get("advanced")
    ours = [n for n, d in info.items() if d.get("python_module", "").startswith("custom_nodes.")
            and d.get("category", "").startswith("MuseV")]
    assert "ParallelDenoiseSampler" in ours
    for name in ours:
        assert len(info[name].get("output_tooltips") or []) == len(info[name]["output"]), name
    assert "musev_linspace" in info["KSampler"]["input"]["required"]["scheduler"][0]


def test_i18n_serves_the_zh_node_definitions(comfy_server):
    status, i18n = comfy_server.get_json("/i18n")
    assert status == 200
    zh = i18n["zh"]["nodeDefs"]
    assert zh["ParallelDenoiseSampler"]["display_name"] == "MuseV 并行去噪采样器"
    assert zh["ParallelDenoiseSampler"]["inputs"]["noise_type"]["tooltip"]


def test_expert_knobs_without_advanced_support_are_plain_widgets(frontend):
    """A frontend without advanced inputs (1.27, ComfyUI 0.3.64) shows the knobs as ordinary widgets
    and queues them; with the support this is the test below."""
    node = frontend.add_node("ParallelDenoiseSampler", pos=(60, 40))
    state = frontend.page.evaluate(WIDGETS_JS, node)
    for knob in EXPERT_KNOBS:
        assert knob in state["widgets"], knob
    frontend.set_widget(node, "w_ind_noise", 0.25)
    inputs = frontend.page.evaluate(PROMPT_JS, node)
    assert inputs["w_ind_noise"] == 0.25 and inputs["noise_type"] == "video_fusion"


@pytest.mark.host_feature("frontend_advanced_inputs")
def test_expert_knobs_are_advanced_widgets_like_cores_and_still_queue(frontend):
    """Classic canvas: the knobs carry the same flag as a core V3 node's advanced input
    (CLIPTextEncodeSD3.empty_padding; the 1.45 canvas itself shows both) and their values are
    queued."""
    node = frontend.add_node("ParallelDenoiseSampler", pos=(60, 40))
    state = frontend.page.evaluate(WIDGETS_JS, node)
    assert state["supportsAdvanced"]
    widgets = state["widgets"]
    for knob in EXPERT_KNOBS:
        assert widgets[knob]["advanced"], knob
    for plain in ("frames", "context_frames", "context_overlap", "seed", "steps"):
        assert not widgets[plain]["advanced"], plain
    core = frontend.add_node("CLIPTextEncodeSD3", pos=(700, 40))
    assert frontend.page.evaluate(WIDGETS_JS, core)["widgets"]["empty_padding"]["advanced"]
    frontend.set_widget(node, "w_ind_noise", 0.25)
    inputs = frontend.page.evaluate(PROMPT_JS, node)
    assert inputs["w_ind_noise"] == 0.25 and inputs["noise_type"] == "video_fusion"
    assert inputs["context_batch_size"] == widgets["context_batch_size"]["value"]


@pytest.mark.host_feature("frontend_advanced_inputs")
def test_vue_nodes_fold_the_expert_knobs(frontend):
    """The Vue-nodes renderer hides advanced inputs behind "Show advanced inputs", as for core nodes."""
    page = frontend.page
    probe = frontend.add_node("ParallelDenoiseSampler", pos=(60, 40))
    assert frontend.page.evaluate(WIDGETS_JS, probe)["supportsAdvanced"]
    page.evaluate("async (k) => { await window.app.extensionManager.setting.set(k, true); }", VUE_SETTING)
    try:
        page.wait_for_timeout(500)
        frontend.open()                      # the renderer is chosen at start-up
        node = frontend.add_node("ParallelDenoiseSampler", pos=(60, 40))
        page.wait_for_function("(id) => !!document.querySelector('[data-node-id=\"' + id + '\"]')", arg=node)
        folded = page.evaluate(NODE_TEXT_JS, node).split("\n")
        for knob in EXPERT_KNOBS:
            assert knob not in folded, knob
        for plain in ("frames", "context_frames", "context_overlap", "seed"):
            assert plain in folded, plain
        assert page.evaluate(SHOW_ADVANCED_JS, node), "no 'Show advanced inputs' button"
        page.wait_for_timeout(500)
        shown = page.evaluate(NODE_TEXT_JS, node).split("\n")
        for knob in EXPERT_KNOBS:
            assert knob in shown, knob
    finally:
        page.evaluate("async (k) => { await window.app.extensionManager.setting.set(k, false); }", VUE_SETTING)
        page.wait_for_timeout(300)
