"""Tiny stand-in model files in the real formats, for running the shipped workflows through
ComfyUI's own loaders (CheckpointLoaderSimple, VAELoader, CLIPVisionLoader, ControlNetLoader and
our MuseV loaders) without the real weights.

What ComfyUI's loaders accept fixes some sizes: the checkpoint must be detected as SD1.5
(model_channels 320, context 768, CLIP-L text encoder), the VAE is the SD VAE layout, the smallest
detectable CLIP vision is ViT-L/14 (projection 768, where MuseV's ViT-H gives 1024).  Everything
else is shrunk: the UNet uses 320 channels at every level.  Weights are random, small and
deterministic (seeded), stored in float16; files are generated once per version into a cache
directory and linked into a models folder.

    files = make_standins(models_dir)   # -> Standins with the names to put in workflows
"""
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile

import torch
from safetensors.torch import save_file

VERSION = "1"
UNET_CHANNELS = [320, 320, 320, 320]
CONTEXT_DIM = 768
HEADS = 8


@dataclasses.dataclass
class Standins:
    checkpoint: str            # models/checkpoints
    vae: str                   # models/vae
    clip_vision: str           # models/clip_vision
    controlnet: str            # models/controlnet (name contains "openpose")
    motion: dict               # variant -> models/musev folder choice ("standin/motion/<variant>/")
    referencenet: str          # models/musev folder choice
    image_proj: dict           # variant -> models/musev file choice
    clip_dim: int = 768


def sd15_unet_config():
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": UNET_CHANNELS[0],
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "channel_mult": [c // UNET_CHANNELS[0] for c in UNET_CHANNELS], "transformer_depth_middle": 1,
        "use_linear_in_transformer": False, "context_dim": CONTEXT_DIM, "num_heads": HEADS,
        "num_head_channels": -1, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


def _shapes(module):
    return {k: (tuple(v.shape), v.dtype) for k, v in module.state_dict().items()}


def _random(shapes, seed, prefix="", scale=1.0):
    """Seeded random weights: norms 1/0, biases small, matrices ~N(0, 1/fan_in)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape, dtype = shapes[key]
        if not dtype.is_floating_point:
            continue
        name = key.rsplit(".", 1)[-1]
        if len(shape) <= 1:
            if any(n in key for n in ("norm", "ln_", "layer_norm")) and name == "weight":
                t = torch.ones(shape)
            else:
                t = torch.randn(shape, generator=gen) * 0.02
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = torch.randn(shape, generator=gen) * (scale / max(1, fan_in) ** 0.5)
        out[prefix + key] = t.to(torch.float16)
    return out


def _meta(builder):
    with torch.device("meta"):
        return builder()


def _unet_weights():
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    model = _meta(lambda: UNetModel(**sd15_unet_config(), operations=comfy.ops.disable_weight_init))
    return _random(_shapes(model), 1, "model.diffusion_model.")


def _clip_text_weights():
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip
    cfg_path = os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    model = _meta(lambda: comfy.clip_model.CLIPTextModel(cfg, torch.float32, "meta", comfy.ops.disable_weight_init))
    sd = _random(_shapes(model), 2, "cond_stage_model.transformer.")
    sd["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
    return sd


def _vae_weights():
    from comfy.ldm.models.autoencoder import AutoencoderKL
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    model = _meta(lambda: AutoencoderKL(ddconfig=ddconfig, embed_dim=4))
    return _random(_shapes(model), 3)


def _clip_vision_weights():
    import comfy.clip_vision
    path = os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_vitl.json")
    import comfy.clip_model
    import comfy.ops
    with open(path) as f:
        cfg = json.load(f)
    model = _meta(lambda: comfy.clip_model.CLIPVisionModelProjection(cfg, torch.float32, "meta",
                                                                     comfy.ops.disable_weight_init))
    sd = _random(_shapes(model), 4)
    return sd, cfg.get("projection_dim", 768)


def _controlnet_weights():
    import comfy.cldm.cldm
    import comfy.ops
    cfg = sd15_unet_config()
    cfg.pop("out_channels")
    model = _meta(lambda: comfy.cldm.cldm.ControlNet(hint_channels=3, operations=comfy.ops.disable_weight_init, **cfg))
    return _random(_shapes(model), 5, "control_model.", scale=0.5)


def _motion_weights(variant, seed):
    from conftest import pack_module
    K = pack_module("musev_core.keys")
    M = pack_module("musev_core.motion")
    layout = K.sd_layout(variant, UNET_CHANNELS, 4 * UNET_CHANNELS[0], CONTEXT_DIM)
    model = _meta(lambda: M.MuseVMotionModel(variant, layout, HEADS))
    sd = _random(_shapes(model), seed)
    gen = torch.Generator().manual_seed(seed + 100)
    for k in sd:
        if k.endswith("temporal_weight"):   # MuseV multiplies by |w|: make the layers matter
            sd[k] = (torch.rand(1, generator=gen) * 0.5 + 0.25).to(torch.float16)
    config = {"_class_name": "UNet3DConditionModel", "block_out_channels": UNET_CHANNELS, "attention_head_dim": HEADS,
              "cross_attention_dim": CONTEXT_DIM, "layers_per_block": 2, "in_channels": 4, "out_channels": 4}
    return sd, config


def _referencenet_weights():
    import comfy.utils
    ldm = _unet_weights()
    ldm = {k[len("model.diffusion_model."):]: v for k, v in ldm.items()}
    cfg = sd15_unet_config()
    mapping = comfy.utils.unet_to_diffusers(cfg)
    sd = {}
    for dk, lk in mapping.items():
        if lk in ldm and (lk.startswith(("input_blocks.", "middle_block.", "time_embed.")) or dk.startswith("conv_in")):
            sd[dk] = ldm[lk]
    config = {"_class_name": "ReferenceNet2D", "block_out_channels": [320, 640, 1280, 1280],
              "cross_attention_dim": 1280, "attention_head_dim": HEADS}   # released-style (wrong) defaults
    return sd, config


def _image_proj(clip_dim, seed):
    gen = torch.Generator().manual_seed(seed)
    return {"proj.weight": (torch.randn(4 * CONTEXT_DIM, clip_dim, generator=gen) / clip_dim ** 0.5).half(),
            "proj.bias": (torch.randn(4 * CONTEXT_DIM, generator=gen) * 0.02).half(),
            "norm.weight": torch.ones(CONTEXT_DIM).half(), "norm.bias": torch.zeros(CONTEXT_DIM).half()}


def _cache_dir():
    root = os.environ.get("MUSEV_STANDIN_CACHE") or os.path.join(tempfile.gettempdir(), "musev-standins")
    import comfy.model_base  # the shapes depend on the ComfyUI version: key the cache on it
    tag = hashlib.sha1((VERSION + os.path.dirname(comfy.model_base.__file__)).encode()).hexdigest()[:10]
    return os.path.join(root, f"v{VERSION}-{tag}")


def _generate(cache):
    tmp = f"{cache}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)

    def put(rel, sd):
        path = os.path.join(tmp, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file({k: v.contiguous() for k, v in sd.items()}, path)

    def put_json(rel, obj):
        with open(os.path.join(tmp, rel), "w") as f:
            json.dump(obj, f, indent=1)

    ckpt = _unet_weights()
    ckpt.update(_clip_text_weights())
    put("checkpoints/musev_standin_sd15.safetensors", ckpt)
    del ckpt
    put("vae/musev_standin_vae.safetensors", _vae_weights())
    cv, clip_dim = _clip_vision_weights()
    put("clip_vision/musev_standin_clip_vision_vitl.safetensors", cv)
    del cv
    put("controlnet/musev_standin_control_sd15_openpose.safetensors", _controlnet_weights())
    for seed, variant, folder in ((10, "musev", "musev"), (11, "musev_referencenet", "musev_referencenet"),
                                  (12, "musev_referencenet", "musev_referencenet_pose")):
        sd, config = _motion_weights(variant, seed)
        put(f"musev/standin/motion/{folder}/unet/diffusion_pytorch_model.safetensors", sd)
        put_json(f"musev/standin/motion/{folder}/unet/config.json", config)
        if variant != "musev":
            torch.save({"image_proj": _image_proj(clip_dim, seed + 50)},
                       os.path.join(tmp, f"musev/standin/motion/{folder}/ip_adapter_image_proj.bin"))
    sd, config = _referencenet_weights()
    put("musev/standin/motion/musev_referencenet/referencenet/diffusion_pytorch_model.safetensors", sd)
    put_json("musev/standin/motion/musev_referencenet/referencenet/config.json", config)
    put_json("standins.json", {"clip_dim": clip_dim, "version": VERSION})
    os.replace(tmp, cache)


def make_standins(models_dir):
    """Generate (once, cached) and link the stand-ins into ``models_dir`` (ComfyUI's models folder)."""
    cache = _cache_dir()
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with open(cache + ".lock", "w") as lock:      # several test processes may ask at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not os.path.isfile(os.path.join(cache, "standins.json")):
                shutil.rmtree(cache, ignore_errors=True)
                _generate(cache)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    for dirpath, _, filenames in os.walk(cache):
        rel = os.path.relpath(dirpath, cache)
        for fn in filenames:
            if rel == "." and fn == "standins.json":
                continue
            dest_dir = os.path.join(models_dir, rel)
            os.makedirs(dest_dir, exist_ok=True)
            dest = os.path.join(dest_dir, fn)
            if not os.path.exists(dest):
                os.symlink(os.path.join(dirpath, fn), dest)
    with open(os.path.join(cache, "standins.json")) as f:
        meta = json.load(f)
    return Standins(
        checkpoint="musev_standin_sd15.safetensors",
        vae="musev_standin_vae.safetensors",
        clip_vision="musev_standin_clip_vision_vitl.safetensors",
        controlnet="musev_standin_control_sd15_openpose.safetensors",
        motion={v: f"standin/motion/{v}/" for v in ("musev", "musev_referencenet", "musev_referencenet_pose")},
        referencenet="standin/motion/musev_referencenet/referencenet/",
        image_proj={v: f"standin/motion/{v}/ip_adapter_image_proj.bin"
                    for v in ("musev_referencenet", "musev_referencenet_pose")},
        clip_dim=meta["clip_dim"],
    )
