"""A tiny random LoRA (kohya ``lora_unet_*`` keys, as the LCM-LoRA release uses them after ComfyUI's
key mapping) for a given SD1.5-layout UNet: a stand-in for lcm-lora-sdv1-5 in tests.

ComfyUI's own key map (``comfy.utils.unet_to_diffusers``) names every UNet weight the way LoRA files
do; the attention projections of the spatial transformers get a rank-``rank`` update, so that
``LoraLoaderModelOnly`` really patches the model (and the tests can check it did).
"""
import torch
from safetensors.torch import save_file

ATTENTION = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
             "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")


def unet_lora_targets(unet_config, shapes, prefix="model.diffusion_model."):
    """{lora key: (out, in)} for the attention projections of a UNet with ``unet_config`` (ComfyUI's
    UNetModel arguments) whose weights have ``shapes`` ({ComfyUI key: shape}, keys with ``prefix``)."""
    import comfy.utils
    out = {}
    for diffusers_key, comfy_key in comfy.utils.unet_to_diffusers(unet_config).items():
        if not diffusers_key.endswith(".weight") or not any(a in diffusers_key for a in ATTENTION):
            continue
        shape = shapes.get(prefix + comfy_key)
        if shape is None or len(shape) != 2:
            continue
        out["lora_unet_" + diffusers_key[:-len(".weight")].replace(".", "_")] = tuple(shape)
    return out


def write_random_lora(path, targets, rank=4, seed=0, scale=0.05):
    """Write a LoRA with ``lora_down``/``lora_up``/``alpha`` for every ``targets`` key; returns the
    number of patched weights."""
    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for key, (n_out, n_in) in sorted(targets.items()):
        sd[f"{key}.lora_down.weight"] = (torch.randn(rank, n_in, generator=gen) * scale).half()
        sd[f"{key}.lora_up.weight"] = (torch.randn(n_out, rank, generator=gen) * scale).half()
        sd[f"{key}.alpha"] = torch.tensor(float(rank))
    if not sd:
        raise ValueError("no LoRA targets: the UNet config does not match the weights")
    save_file(sd, path)
    return len(targets)
