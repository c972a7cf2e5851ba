"""Parity of MuseV's UNet3D inside ComfyUI's own SD1.5 UNetModel against MuseV's outputs.

For every case of ``manifest.json → unet_cases``: a ComfyUI UNetModel is built from the fixture's
config, its 2D weights converted from the fixture with ComfyUI's own key map (they stand for the
T2I base), and the motion weights are loaded by LoadMuseVMotion from the released folder layout.
"""
import os

import pytest
import torch

from conftest import parity_root
from musev_testlib import (comfy_unet_config, list_arg, load_tensors, make_sd15_model, place_in_layout,
                           read_json)

TOL = 1e-4


def _unet_cases():
    manifest = os.path.join(parity_root(), "manifest.json")
    if not os.path.isfile(manifest):
        return [pytest.param("missing", "missing", id="fixtures-missing")]
    cases = read_json(manifest)["unet_cases"]
    return [pytest.param(folder, name, id=f"{folder}-{name}") for folder in sorted(cases) for name in sorted(cases[folder])]


def run_case(host, parity_dir, folder, name, tmp_tag=""):
    """Run one fixture UNet case through the patched ComfyUI UNet; returns (output, expected)."""
    import comfy.model_management
    import folder_paths
    patch = host.pack("nodes.patch")
    motion_nodes = host.pack("nodes.motion_nodes")
    layout = host.pack("musev_core.layout")

    case = read_json(os.path.join(parity_dir, "manifest.json"))["unet_cases"][folder][name]
    scalars = case.get("scalar_args", {})
    weights_dir = os.path.join(parity_dir, os.path.dirname(case["weights"]))
    cfg = read_json(os.path.join(weights_dir, "config.json"))
    full_sd = load_tensors(os.path.join(parity_dir, case["weights"]))
    base = make_sd15_model(comfy_unet_config(cfg), full_sd)

    musev_root = folder_paths.get_folder_paths("musev")[0]
    rel = f"parity{tmp_tag}/motion/{case['variant']}_{os.path.basename(weights_dir)}/unet"
    place_in_layout(weights_dir, os.path.join(musev_root, rel))
    rate = float(scalars.get("sample_frame_rate", 8.0))
    temporal = not bool(scalars.get("skip_temporal_layers", False))
    (patched,) = motion_nodes.LoadMuseVMotion().load(base, rel + "/", frame_rate=rate, temporal_layers=temporal)

    inputs = load_tensors(os.path.join(parity_dir, case["inputs"]))
    expected = load_tensors(os.path.join(parity_dir, case["outputs"]))["sample"]
    sample = inputs["sample"]
    b, c, frames, h, w = sample.shape
    x = sample.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w)
    t = inputs["timestep"].reshape(1).expand(b * frames).clone()
    context = inputs["encoder_hidden_states"].repeat_interleave(frames, dim=0)
    n_vis = 0
    if "vision_conditon_frames_sample_index" in inputs:
        vis = inputs["vision_conditon_frames_sample_index"].tolist()
        n_vis = len(vis)
        assert vis == list(range(n_vis)), "fixture vision frames are expected to lead"
        assert inputs["sample_index"].tolist() == list(range(n_vis, frames))
    roles = [layout.UNCOND, layout.COND]       # fixture CFG batch is [uncond; cond]
    state = patch.get_state(patched)
    refer = list_arg(inputs, "down_block_refer_embs")
    if refer:
        refer.append(inputs["mid_block_refer_emb"])
        state = state.replace(reference=patch.StaticReference(
            {role: [f[i:i + 1] for f in refer] for i, role in enumerate(roles)}))
    if "vision_clip_emb" in inputs:
        ip = inputs["vision_clip_emb"]
        state = state.replace(ip=patch.StaticIP({role: ip[i:i + 1] for i, role in enumerate(roles)},
                                                scale=scalars.get("ip_adapter_scale", 1.0)))
    patch.set_state(patched, state)
    control = None
    residuals = list_arg(inputs, "down_block_additional_residuals")
    if residuals:
        control = {"output": residuals, "middle": [inputs["mid_block_additional_residual"]]}

    comfy.model_management.load_models_gpu([patched])
    try:
        to = patch.unet_transformer_options(patched, {
            "cond_or_uncond": [1, 0], patch.WINDOW_KEY: {"n_vis": n_vis}})
        with torch.no_grad():
            eps = patched.model.diffusion_model(x, t, context=context, control=control, transformer_options=to)
    finally:
        patched.eject_model()
    out = eps.reshape(b, frames, c, h, w).permute(0, 2, 1, 3, 4)
    return out, expected, patched


@pytest.mark.parametrize("folder,name", _unet_cases())
def test_unet3d_parity(comfy_host, parity_dir, folder, name):
    out, expected, _ = run_case(comfy_host, parity_dir, folder, name)
    err = (out.float() - expected).abs().max().item()
    assert out.shape == expected.shape
    assert err <= TOL, f"{folder}/{name}: max abs error {err:.3g} > {TOL}"
