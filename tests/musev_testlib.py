"""Helpers shared by the host tests: tiny SD1.5 MODELs built with ComfyUI's own classes, fixture
loading, and placing fixture checkpoints in the released folder layout."""
import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file


def read_json(path):
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


def load_tensors(path):
    return load_file(path)


def list_arg(tensors, name):
    """``name.0 .. name.N`` -> list (fixture convention for list arguments)."""
    out = []
    i = 0
    while f"{name}.{i}" in tensors:
        out.append(tensors[f"{name}.{i}"])
        i += 1
    return out


def comfy_unet_config(cfg, dtype=torch.float32):
    """ComfyUI/LDM ``unet_config`` of an SD1.5-topology diffusers config (tiny or full size)."""
    boc = list(cfg["block_out_channels"])
    mc = boc[0]
    if any(c % mc for c in boc):
        raise ValueError(f"block_out_channels {boc} are not multiples of {mc}")
    layers = int(cfg.get("layers_per_block", 2))
    down = cfg.get("down_block_types") or ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    up = cfg.get("up_block_types") or ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    heads = cfg.get("attention_head_dim", 8)
    if not isinstance(heads, int):
        heads = heads[0]
    td = []
    for t in down:
        td += [1 if "CrossAttn" in t else 0] * layers
    tdo = []
    for t in reversed(up):          # listed low level first, popped from the end
        tdo += [1 if "CrossAttn" in t else 0] * (layers + 1)
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": cfg.get("out_channels", 4),
        "use_spatial_transformer": True, "legacy": False, "adm_in_channels": None, "dtype": dtype,
        "in_channels": cfg.get("in_channels", 4), "model_channels": mc, "num_res_blocks": [layers] * len(boc),
        "transformer_depth": td, "channel_mult": [c // mc for c in boc], "transformer_depth_middle": 1,
        "use_linear_in_transformer": False, "context_dim": cfg["cross_attention_dim"], "num_heads": heads,
        "num_head_channels": -1, "transformer_depth_output": tdo,
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def make_sd15_model(unet_config, diffusers_sd=None):
    """A ComfyUI MODEL (ModelPatcher around model_base.BaseModel/SD15) with the given 2D weights
    (diffusers names, converted with ComfyUI's own ``unet_to_diffusers`` map)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    model_config = comfy.supported_models.SD15(unet_config)
    for k in ("num_heads", "num_head_channels", "context_dim", "model_channels"):   # SD15 defaults overridden
        model_config.unet_config[k] = unet_config[k]
    model_config.set_inference_dtype(unet_config.get("dtype", torch.float32), None)
    model = model_config.get_model({})
    if diffusers_sd is not None:
        mapping = comfy.utils.unet_to_diffusers(model_config.unet_config)
        wanted = set(model.diffusion_model.state_dict().keys())
        ldm = {lk: diffusers_sd[dk] for dk, lk in mapping.items() if lk in wanted and dk in diffusers_sd}
        missing = sorted(wanted - set(ldm))
        assert not missing, f"2D weights missing for ComfyUI keys {missing[:5]}"
        model.diffusion_model.load_state_dict(ldm, strict=True)
    model.diffusion_model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def place_in_layout(src_dir, dest_dir, weights="weights.safetensors", config="config.json", as_bin=False):
    """Copy a fixture model folder into a diffusers folder (config.json + diffusion_pytorch_model.*)."""
    os.makedirs(dest_dir, exist_ok=True)
    if os.path.isfile(os.path.join(src_dir, config)):
        shutil.copy(os.path.join(src_dir, config), os.path.join(dest_dir, "config.json"))
    if as_bin:
        torch.save(load_file(os.path.join(src_dir, weights)), os.path.join(dest_dir, "diffusion_pytorch_model.bin"))
    else:
        shutil.copy(os.path.join(src_dir, weights), os.path.join(dest_dir, "diffusion_pytorch_model.safetensors"))
    return dest_dir


def save_tensors(path, tensors):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)


def fixture_musev_model(host, parity_dir, pipeline="pipeline", tag="m", with_reference=True):
    """The MuseV MODEL of a fixture pipeline (tiny ComfyUI UNet + motion loaded by LoadMuseVMotion,
    ReferenceNet features / IP tokens from the pipeline inputs when ``with_reference``), its
    CONDITIONING pair, the raw condition latents and the manifest entry."""
    import folder_paths
    patch = host.pack("nodes.patch")
    motion_nodes = host.pack("nodes.motion_nodes")
    layout = host.pack("musev_core.layout")
    spec = read_json(os.path.join(parity_dir, "manifest.json"))["pipelines"][pipeline]
    weights_dir = os.path.join(parity_dir, os.path.dirname(spec["unet_weights"]))
    cfg = read_json(os.path.join(weights_dir, "config.json"))
    base = make_sd15_model(comfy_unet_config(cfg), load_tensors(os.path.join(parity_dir, spec["unet_weights"])))
    rel = f"testmodels_{tag}/{pipeline}/unet"
    place_in_layout(weights_dir, os.path.join(folder_paths.get_folder_paths("musev")[0], rel))
    (model,) = motion_nodes.LoadMuseVMotion().load(base, rel + "/", frame_rate=float(spec["call_args"]["motion_speed"]))
    inputs = load_tensors(os.path.join(parity_dir, pipeline, "inputs.safetensors"))
    roles = [layout.UNCOND, layout.COND]
    if with_reference:
        state = patch.get_state(model)
        if spec.get("referencenet_weights"):
            feats = list_arg(inputs, "down_block_refer_embs") + [inputs["mid_block_refer_emb"]]
            state = state.replace(reference=patch.StaticReference(
                {r: [f[i:i + 1] for f in feats] for i, r in enumerate(roles)}))
        if spec.get("ip_adapter_weights"):
            ip = inputs["ip_adapter_image_emb"]
            state = state.replace(ip=patch.StaticIP({r: ip[i:i + 1] for i, r in enumerate(roles)},
                                                    scale=spec["call_args"]["ip_adapter_scale"]))
        patch.set_state(model, state)
    cond = inputs["condition_latents"]
    vision = cond[0].permute(1, 0, 2, 3) / model.model.latent_format.scale_factor
    positive = [[inputs["prompt_embeds"], {}]]
    negative = [[inputs["negative_prompt_embeds"], {}]]
    return model, positive, negative, vision, spec, inputs
