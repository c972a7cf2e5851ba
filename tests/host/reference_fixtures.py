"""Helpers of the reference-image tests (MuseVIPAdapter / MuseVReferenceNet): fixture files placed in
the released ``models/musev`` layout, MuseV MODELs built from fixture weights, a tiny real ComfyUI
CLIP vision model, the fixture's tiny VAE through ``comfy.sd.VAE``, the CLIP seam and a log catcher.
Every dimension is read from the fixture files."""
import contextlib
import json
import logging
import os
import shutil

import torch
from safetensors.torch import save_file

from musev_testlib import comfy_unet_config, load_tensors, make_sd15_model, place_in_layout, read_json

REFERENCENET_DEFAULTS = {          # what MuseV's ReferenceNet2D records in a released config.json
    "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 1280,
}


def musev_root():
    import folder_paths
    return folder_paths.get_folder_paths("musev")[0]


def manifest(parity_dir):
    return read_json(os.path.join(parity_dir, "manifest.json"))


def pipeline_spec(parity_dir, name="pipeline"):
    return manifest(parity_dir)["pipelines"][name]


def variant_of(parity_dir, unet_folder):
    """MuseV variant name of a ``unet3d_*`` fixture folder (from the manifest's UNet cases)."""
    for folder, cases in manifest(parity_dir)["unet_cases"].items():
        for case in cases.values():
            if os.path.dirname(case["weights"]) == unet_folder:
                return case["variant"]
    raise KeyError(unet_folder)


def build_musev_model(host, parity_dir, unet_folder, tag, frame_rate=8.0):
    """(base MODEL with the fixture's 2D weights, MODEL after LoadMuseVMotion from the released layout)."""
    motion_nodes = host.pack("nodes.motion_nodes")
    weights_dir = os.path.join(parity_dir, unet_folder)
    cfg = read_json(os.path.join(weights_dir, "config.json"))
    base = make_sd15_model(comfy_unet_config(cfg), load_tensors(os.path.join(weights_dir, "weights.safetensors")))
    rel = f"reftests_{tag}/motion/{variant_of(parity_dir, unet_folder)}/unet"
    dest = os.path.join(musev_root(), rel)
    if not os.path.isdir(dest):
        place_in_layout(weights_dir, dest)
    (patched,) = motion_nodes.LoadMuseVMotion().load(base, rel + "/", frame_rate=frame_rate)
    return base, patched


def place_referencenet(parity_dir, tag, released_config=True, folder="referencenet"):
    """Fixture ReferenceNet as ``motion/musev_referencenet/referencenet/`` (config.json +
    diffusion_pytorch_model.safetensors).  ``released_config``: the config records diffusers'
    defaults (as MuseV's released file does), keeping only the head count; the shapes must come
    from the weights.  Returns the choice for the node (the variant folder)."""
    src = os.path.join(parity_dir, folder)
    rel = f"reftests_{tag}/motion/musev_referencenet"
    dest = os.path.join(musev_root(), rel, "referencenet")
    os.makedirs(dest, exist_ok=True)
    shutil.copy(os.path.join(src, "weights.safetensors"), os.path.join(dest, "diffusion_pytorch_model.safetensors"))
    cfg = read_json(os.path.join(src, "config.json"))
    if released_config:
        cfg.update(REFERENCENET_DEFAULTS)
    with open(os.path.join(dest, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    return rel + "/"


def place_image_proj(parity_dir, folder, tag, fmt="bin"):
    """Fixture image projection as the released ``ip_adapter_image_proj.bin`` (the fixture's own file,
    ``torch.save({"image_proj": sd})``) or as a plain-key .safetensors.  Returns the node choice."""
    src = os.path.join(parity_dir, folder)
    rel_dir = f"reftests_{tag}/motion/{folder}"
    os.makedirs(os.path.join(musev_root(), rel_dir), exist_ok=True)
    if fmt == "bin":
        rel = rel_dir + "/ip_adapter_image_proj.bin"
        shutil.copy(os.path.join(src, "ip_adapter_image_proj.bin"), os.path.join(musev_root(), rel))
    else:
        rel = rel_dir + "/image_proj.safetensors"
        shutil.copy(os.path.join(src, "weights.safetensors"), os.path.join(musev_root(), rel))
    return rel


def save_bin(rel, obj):
    path = os.path.join(musev_root(), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path)
    return rel


def save_safetensors(rel, tensors):
    path = os.path.join(musev_root(), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path)
    return rel


class ClipSeam:
    """Replaces ONLY the CLIP vision call (``reference_nodes.clip_image_embeds``): returns the given
    embeddings (the fixture's stand-in for CLIP's output) after checking the preprocessed pixels."""

    def __init__(self, embeds, size=224):
        self.embeds = embeds
        self.size = size
        self.calls = []

    def __call__(self, clip_vision, pixel_values):
        self.calls.append(tuple(pixel_values.shape))
        assert pixel_values.ndim == 4 and pixel_values.shape[1:] == (3, self.size, self.size), pixel_values.shape
        assert pixel_values.shape[0] == self.embeds.shape[0], "one CLIP embedding per image"
        return self.embeds.clone()


def tiny_clip_vision(tmp_path, projection_dim, seed=0, image_size=28, patch_size=14):
    """A real ComfyUI ``ClipVisionModel`` (comfy.clip_vision) of a tiny config, random weights."""
    import comfy.clip_vision
    cfg = {
        "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu", "hidden_size": 32,
        "image_size": image_size, "initializer_factor": 1.0, "initializer_range": 0.02, "intermediate_size": 64,
        "layer_norm_eps": 1e-5, "model_type": "clip_vision_model", "num_attention_heads": 2, "num_channels": 3,
        "num_hidden_layers": 2, "patch_size": patch_size, "projection_dim": projection_dim,
    }
    path = os.path.join(str(tmp_path), f"clip_vision_{projection_dim}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(cfg, f)
    clip = comfy.clip_vision.ClipVisionModel(path)
    g = torch.Generator().manual_seed(seed)
    sd = {k: (torch.randn(v.shape, generator=g) * 0.05 + (1.0 if k.endswith("layer_norm1.weight") or
                                                            k.endswith("layer_norm2.weight") or "layrnorm.weight" in k
                                                            or "layernorm.weight" in k else 0.0)).to(v.dtype)
          for k, v in clip.get_sd().items()}
    missing, unexpected = clip.load_sd(sd)
    assert not missing and not unexpected, (missing, unexpected)
    return clip


def fixture_vae(parity_dir, folder="pipeline"):
    """The fixture's tiny diffusers AutoencoderKL through ComfyUI's own ``comfy.sd.VAE`` (config= for
    its non-standard size, diffusers keys converted by ComfyUI)."""
    import comfy.sd
    cfg = read_json(os.path.join(parity_dir, folder, "vae_config.json"))
    boc = cfg["block_out_channels"]
    ddconfig = {
        "double_z": True, "z_channels": cfg["latent_channels"], "resolution": cfg.get("sample_size", 256),
        "in_channels": cfg["in_channels"], "out_ch": cfg["out_channels"], "ch": boc[0],
        "ch_mult": [c // boc[0] for c in boc], "num_res_blocks": cfg["layers_per_block"],
        "attn_resolutions": [], "dropout": 0.0,
    }
    sd = load_tensors(os.path.join(parity_dir, folder, "vae.safetensors"))
    vae = comfy.sd.VAE(sd=sd, config={"params": {"embed_dim": cfg["latent_channels"], "ddconfig": ddconfig}},
                       dtype=torch.float32)
    return vae, cfg


@contextlib.contextmanager
def catch_log(name="comfyui-musev", level=logging.INFO):
    """Records of a logger (works with ``-p no:logging``)."""
    records = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(record)

    logger = logging.getLogger(name)
    handler = H(level)
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level, old) if old else level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)

