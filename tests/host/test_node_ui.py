"""What the node UI offers: output tooltips on every node, the sampler's expert knobs flagged as
advanced inputs, ``musev_linspace`` as a ComfyUI scheduler (KSampler, KSamplerAdvanced,
BasicScheduler) that reproduces ``musev_core.sigmas.euler_sigmas`` exactly, and the ``zh`` locale
(ComfyUI's ``locales/<lang>/nodeDefs.json``) covering every node, input and output."""
import json
import os

import pytest
import torch

from conftest import PACK_DIR
from musev_testlib import comfy_unet_config, make_sd15_model

EXPERT_KNOBS = ("context_batch_size", "noise_type", "w_ind_noise", "img_weight")
TINY_UNET = {"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32, "attention_head_dim": 2,
             "layers_per_block": 1}


def _pack_nodes(host):
    return host.pack().NODE_CLASS_MAPPINGS


def _inputs(cls):
    spec = cls.INPUT_TYPES()
    out = {}
    for section in ("required", "optional"):
        out.update(spec.get(section, {}))
    return out


# --------------------------------------------------------------------------------------------- tooltips

def test_every_node_has_output_and_input_tooltips(comfy_host):
    nodes = _pack_nodes(comfy_host)
    assert len(nodes) >= 8
    for name, cls in nodes.items():
        tips = getattr(cls, "OUTPUT_TOOLTIPS", None)
        assert tips is not None, f"{name} has no OUTPUT_TOOLTIPS"
        assert len(tips) == len(cls.RETURN_TYPES), name
        assert all(isinstance(t, str) and len(t) > 10 for t in tips), name
        for inp, spec in _inputs(cls).items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"{name}.{inp} has no tooltip"


def test_expert_knobs_are_advanced_inputs(comfy_host):
    nodes = _pack_nodes(comfy_host)
    for name in ("ParallelDenoiseSampler", "MuseVContextWindows"):
        inputs = _inputs(nodes[name])
        for knob in EXPERT_KNOBS:
            assert inputs[knob][1].get("advanced") is True, f"{name}.{knob}"
        for plain in ("model", "context_frames", "context_overlap", "context_schedule"):
            assert not inputs[plain][1].get("advanced"), f"{name}.{plain} should stay visible"
    assert not _inputs(nodes["ParallelDenoiseSampler"])["seed"][1].get("advanced")


# --------------------------------------------------------------------------------------------- scheduler

def test_musev_linspace_is_offered_by_the_stock_nodes(comfy_host):
    import comfy.samplers
    import nodes
    name = "musev_linspace"
    assert name in comfy.samplers.SCHEDULER_NAMES and name in comfy.samplers.KSampler.SCHEDULERS
    assert comfy.samplers.SCHEDULER_NAMES.count(name) == 1
    for node in ("KSampler", "KSamplerAdvanced", "BasicScheduler"):
        spec = _inputs(nodes.NODE_CLASS_MAPPINGS[node])["scheduler"]
        options = spec[1]["options"] if spec[0] == "COMBO" else spec[0]      # V3 schema (0.28) / V1 list
        assert name in options, node
    ours = _inputs(_pack_nodes(comfy_host)["ParallelDenoiseSampler"])["scheduler"][0]
    assert ours[0] == name and ours.count(name) == 1
    compat = comfy_host.pack("nodes.compat")
    sampler_nodes = comfy_host.pack("nodes.sampler_nodes")
    assert compat.register_scheduler(name, sampler_nodes.musev_linspace_sigmas)      # idempotent
    assert comfy.samplers.SCHEDULER_NAMES.count(name) == 1


@pytest.fixture(scope="module")
def tiny_sd15(comfy_host):
    model = make_sd15_model(comfy_unet_config(TINY_UNET))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                              # ComfyUI's layers are created uninitialised
        for p in model.model.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    cond = [[torch.randn(1, 4, 32) * 0.1, {}]]
    uncond = [[torch.zeros(1, 4, 32), {}]]
    return model, cond, uncond


def _recording(model):
    """A clone whose UNet calls record the sigma they get (ComfyUI passes sigma as 'timestep')."""
    seen = []
    m = model.clone()

    def wrapper(apply, args):
        t = args["timestep"]
        seen.append(t.detach().float().cpu().reshape(-1)[0].clone())
        return apply(args["input"], t, **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return m, seen


@pytest.mark.parametrize("steps,denoise", [(10, 1.0), (7, 1.0), (6, 0.6)])
def test_ksampler_runs_musevs_exact_sigmas(comfy_host, tiny_sd15, steps, denoise):
    """The stock KSampler node with scheduler musev_linspace calls the UNet at exactly MuseV's
    Euler sigmas (bit for bit), including a partial denoise (the tail of the longer schedule)."""
    import nodes
    S = comfy_host.pack("musev_core.sigmas")
    model, cond, uncond = tiny_sd15
    m, seen = _recording(model)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (out,) = nodes.KSampler().sample(m, 3, steps, 2.0, "euler", "musev_linspace", cond, uncond, latent,
                                     denoise=denoise)
    assert torch.isfinite(out["samples"]).all()
    total = steps if denoise >= 1.0 else int(steps / denoise)
    expected = S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, total)[0][-(steps + 1):]
    got = torch.stack(seen)
    assert got.shape[0] == steps                      # euler: one UNet call (cond+uncond batched) per step
    assert torch.equal(got, expected[:-1].float())


def test_basic_scheduler_and_calculate_sigmas_equal_euler_sigmas(comfy_host, tiny_sd15):
    import comfy.samplers
    import nodes
    S = comfy_host.pack("musev_core.sigmas")
    model, _, _ = tiny_sd15
    ms = model.get_model_object("model_sampling")
    for steps in (1, 10, 30):
        ref = S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, steps)[0]
        assert torch.equal(comfy.samplers.calculate_sigmas(ms, "musev_linspace", steps).cpu(), ref)
        ks = comfy.samplers.KSampler(model, steps, "cpu", "euler", "musev_linspace", denoise=1.0)
        assert torch.equal(ks.sigmas.cpu(), ref)
    cls = nodes.NODE_CLASS_MAPPINGS["BasicScheduler"]
    out = cls().get_sigmas(model, "musev_linspace", 4, 0.5)
    sigmas = out[0] if isinstance(out, tuple) else out.args[0]      # V1 tuple (0.3.64) / V3 NodeOutput (0.28)
    assert torch.equal(sigmas, S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, 8)[0][-5:])


# --------------------------------------------------------------------------------------------- locales

def _zh():
    with open(os.path.join(PACK_DIR, "locales", "zh", "nodeDefs.json"), encoding="utf-8") as f:
        return json.load(f)


def _has_cjk(text):
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def test_zh_locale_covers_every_node_input_and_output(comfy_host):
    zh = _zh()
    nodes = _pack_nodes(comfy_host)
    assert set(zh) == set(nodes), f"missing: {set(nodes) - set(zh)}, stale: {set(zh) - set(nodes)}"
    for name, cls in nodes.items():
        entry = zh[name]
        assert _has_cjk(entry["display_name"]) or entry["display_name"].startswith("MuseV"), name
        if getattr(cls, "DESCRIPTION", ""):
            assert _has_cjk(entry.get("description", "")), f"{name}: description"
        inputs = _inputs(cls)
        assert set(entry["inputs"]) == set(inputs), (
            f"{name} inputs: missing {set(inputs) - set(entry['inputs'])}, stale {set(entry['inputs']) - set(inputs)}")
        for inp, spec in inputs.items():
            assert entry["inputs"][inp].get("name"), f"{name}.{inp}: name"
            if len(spec) > 1 and spec[1].get("tooltip"):
                assert _has_cjk(entry["inputs"][inp].get("tooltip", "")), f"{name}.{inp}: tooltip"
        outs = entry["outputs"]
        assert set(outs) == {str(i) for i in range(len(cls.RETURN_TYPES))}, f"{name} outputs"
        for i in range(len(cls.RETURN_TYPES)):
            assert outs[str(i)].get("name") and _has_cjk(outs[str(i)].get("tooltip", "")), f"{name} output {i}"


def test_comfyui_serves_the_zh_locale(comfy_host, tmp_path):
    """ComfyUI's own loader (what /i18n serves to the frontend) picks the file up under 'nodeDefs'."""
    import folder_paths
    from app.custom_node_manager import CustomNodeManager
    (tmp_path / "comfyui-musev").symlink_to(PACK_DIR, target_is_directory=True)
    old = folder_paths.folder_names_and_paths["custom_nodes"]
    folder_paths.folder_names_and_paths["custom_nodes"] = ([str(tmp_path)], set())
    try:
        translations = CustomNodeManager().build_translations()
    finally:
        folder_paths.folder_names_and_paths["custom_nodes"] = old
    defs = translations["zh"]["nodeDefs"]
    assert defs["ParallelDenoiseSampler"]["display_name"] == _zh()["ParallelDenoiseSampler"]["display_name"]
    assert defs["PoseVideoCondition"]["outputs"]["3"]["tooltip"]
