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


def _pack_module(name):
    """A module of the pack: conftest's loader under pytest; outside pytest (scripts/demo.py), the
    pack as ComfyUI loaded it."""
    try:
        from conftest import pack_module
    except ImportError:
        import importlib
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__))).replace(".", "_x_")
        return importlib.import_module(f"{root}.{name}")
    return pack_module(name)


def _motion_weights(variant, seed):
    pack_module = _pack_module
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
            # models/musev: hard links (a copy across file systems), since the pack refuses symlinks that
            # lead out of its models folder, as a server must (nodes/paths.py); elsewhere symlinks
            in_musev = rel == "musev" or rel.startswith("musev" + os.sep)
            if in_musev and os.path.islink(dest):
                os.remove(dest)
            if not os.path.lexists(dest):
                if not in_musev:
                    os.symlink(os.path.join(dirpath, fn), dest)
                    continue
                try:
                    os.link(os.path.join(dirpath, fn), dest)
                except OSError:
                    shutil.copy2(os.path.join(dirpath, fn), dest)
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


# ------------------------------------------------------------------------------------------------
# MuseV's released formats: its Hugging Face layout (diffusers / transformers folders, .bin and
# safetensors), as a user who clones TMElyralab/MuseV into models/musev/ has it.  The functions that
# write the formats are shape-agnostic: bench/released_weights.py uses them at full size.

RELEASED_VERSION = "1"
SD15_UNET_DIFFUSERS = {   # diffusers UNet2DConditionModel config of SD1.5; block_out_channels filled in
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.24.0", "act_fn": "silu",
    "attention_head_dim": 8, "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}
SD_VAE_DIFFUSERS = {
    "_class_name": "AutoencoderKL", "_diffusers_version": "0.24.0", "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4, "layers_per_block": 2,
    "norm_num_groups": 32, "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4}
PIPELINE_INDEX = {
    "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.24.0",
    "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"]}
SD15_SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.24.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None}


def save_weights(path, sd):
    """Write a state dict as the released files do: safetensors, or torch.save for .bin."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if path.endswith(".bin"):
        torch.save(sd, path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, path)


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def unet_to_diffusers_keys(ldm, unet_config):
    """ComfyUI-keyed SD UNet weights (no prefix) -> diffusers UNet2DConditionModel keys, with
    ComfyUI's own key map (every weight must find a name)."""
    import comfy.utils
    from_comfy = {v: k for k, v in comfy.utils.unet_to_diffusers(unet_config).items()}
    lost = sorted(set(ldm) - set(from_comfy))
    if lost:
        raise RuntimeError(f"no diffusers name for {len(lost)} UNet keys, e.g. {lost[:3]}")
    return {from_comfy[k]: v for k, v in ldm.items()}


_VAE_ATTN = {"new": {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"},
             "old": {"norm": "group_norm", "q": "query", "k": "key", "v": "value", "proj_out": "proj_attn"}}


def vae_to_diffusers_keys(ldm, attention_names="new"):
    """ComfyUI/LDM VAE weights -> diffusers AutoencoderKL keys; ``attention_names`` "old" gives the
    pre-0.14 diffusers names (query/key/value/proj_attn) that 2022 uploads such as sd-vae-ft-mse
    use.  Checked by converting back with ComfyUI's own ``convert_vae_state_dict``."""
    import comfy.diffusers_convert as dc
    out = {}
    for key, value in ldm.items():
        new = key
        for sd_part, hf_part in dc.vae_conversion_map:
            new = new.replace(sd_part, hf_part)
        if ".attentions.0." in new:
            head, tail = new.split(".attentions.0.", 1)
            name, leaf = tail.rsplit(".", 1)
            new = f"{head}.attentions.0.{_VAE_ATTN[attention_names][name]}.{leaf}"
            if name != "norm" and value.ndim == 4:
                value = value[:, :, 0, 0]
        out[new] = value
    back = dc.convert_vae_state_dict(dict(out))
    if set(back) != set(ldm) or any(tuple(back[k].shape) != tuple(ldm[k].shape) for k in ldm):
        raise RuntimeError("diffusers VAE keys do not convert back to ComfyUI's")
    return out


def text_encoder_to_transformers(ckpt_sd, prefix="cond_stage_model.transformer."):
    """The CLIP-L text encoder of a ComfyUI-format SD1.5 checkpoint as transformers'
    CLIPTextModel ``pytorch_model.bin`` holds it (no text_projection; position_ids kept)."""
    return {k[len(prefix):]: v for k, v in ckpt_sd.items()
            if k.startswith(prefix) and "text_projection" not in k and "logit_scale" not in k}


def write_pipeline(dest, unet_diffusers, block_out_channels, text_encoder, vae_diffusers, fmt="bin"):
    """A diffusers StableDiffusionPipeline folder (model_index.json, unet/, text_encoder/,
    tokenizer/, scheduler/, vae/), weights as ``fmt`` ("bin", as MuseV's t2i folders, or
    "safetensors")."""
    import comfy.sd1_clip
    diffusers_name = f"diffusion_pytorch_model.{fmt}"
    write_json(os.path.join(dest, "model_index.json"), PIPELINE_INDEX)
    write_json(os.path.join(dest, "unet", "config.json"),
               dict(SD15_UNET_DIFFUSERS, block_out_channels=list(block_out_channels)))
    save_weights(os.path.join(dest, "unet", diffusers_name), unet_diffusers)
    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        write_json(os.path.join(dest, "text_encoder", "config.json"), json.load(f))
    save_weights(os.path.join(dest, "text_encoder", "pytorch_model.bin" if fmt == "bin" else "model.safetensors"),
                 text_encoder)
    tok = os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_tokenizer")
    os.makedirs(os.path.join(dest, "tokenizer"), exist_ok=True)
    for fn in os.listdir(tok):
        shutil.copyfile(os.path.join(tok, fn), os.path.join(dest, "tokenizer", fn))
    write_json(os.path.join(dest, "scheduler", "scheduler_config.json"), SD15_SCHEDULER)
    write_diffusers_vae(os.path.join(dest, "vae"), vae_diffusers, fmt)


def write_diffusers_vae(dest, vae_diffusers, fmt="safetensors"):
    write_json(os.path.join(dest, "config.json"), SD_VAE_DIFFUSERS)
    save_weights(os.path.join(dest, f"diffusion_pytorch_model.{fmt}"), vae_diffusers)


def clip_vision_config(name="vitl"):
    """transformers' config.json of a CLIPVisionModelWithProjection (ComfyUI's own config of it)."""
    import comfy.clip_vision
    with open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), f"clip_vision_config_{name}.json")) as f:
        cfg = json.load(f)
    return dict(cfg, architectures=["CLIPVisionModelWithProjection"])


def write_clip_vision(dest, sd, config, files=("model.safetensors", "pytorch_model.bin")):
    """IP-Adapter's ``models/image_encoder`` folder: config.json + the weights in ``files``."""
    write_json(os.path.join(dest, "config.json"), config)
    for fn in files:
        save_weights(os.path.join(dest, fn), sd)


def write_motion(dest, unet_sd, unet_config, fmt):
    write_json(os.path.join(dest, "unet", "config.json"), unet_config)
    save_weights(os.path.join(dest, "unet", f"diffusion_pytorch_model.{fmt}"), unet_sd)


@dataclasses.dataclass
class Dropin:
    """A drop-in tree: MuseV's HF layout under ``models/musev`` with stand-in weights; ``names``
    maps model_table keys to widget values (= the table's names)."""
    root: str                  # models/musev
    names: dict
    formats: dict              # model_table key -> what format the stand-in uses there
    clip_dim: int = 768


def _model_table():
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "musev_model_table", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "nodes",
                                          "model_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RELEASED_FORMATS = {
    "t2i_majicmix": "diffusers pipeline, .bin (unet, text_encoder, vae with diffusers >= 0.14 attention names)",
    "t2i_fantasticmix": "diffusers pipeline, safetensors",
    "vae": "diffusers VAE, safetensors with pre-0.14 attention names (query/key/value/proj_attn)",
    "clip_vision": "transformers CLIPVisionModelWithProjection, pytorch_model.bin only",
    "motion_musev": "unet/ safetensors",
    "motion_referencenet": "unet/ .bin",
    "motion_pose": "unet/ safetensors",
    "referencenet": "safetensors",
    "image_proj_referencenet": ".bin (torch.save'd dict, key image_proj)",
    "image_proj_pose": ".bin (torch.save'd dict, key image_proj)",
}


def _generate_released(cache, out):
    """MuseV's HF layout re-packed from the ComfyUI-format stand-ins of ``cache`` (same weights)."""
    from safetensors.torch import load_file
    mt = _model_table()
    tmp = f"{out}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    musev = os.path.join(tmp, "musev")

    def at(key):
        return os.path.join(musev, mt.get(key).name)

    ckpt = load_file(os.path.join(cache, "checkpoints", "musev_standin_sd15.safetensors"))
    prefix = "model.diffusion_model."
    unet = unet_to_diffusers_keys({k[len(prefix):]: v for k, v in ckpt.items() if k.startswith(prefix)},
                                  sd15_unet_config())
    text = text_encoder_to_transformers(ckpt)
    del ckpt
    vae_ldm = load_file(os.path.join(cache, "vae", "musev_standin_vae.safetensors"))
    write_pipeline(at("t2i_majicmix"), unet, UNET_CHANNELS, text, vae_to_diffusers_keys(vae_ldm, "new"), "bin")
    write_pipeline(at("t2i_fantasticmix"), unet, UNET_CHANNELS, text, vae_to_diffusers_keys(vae_ldm, "new"),
                   "safetensors")
    del unet, text
    write_diffusers_vae(at("vae"), vae_to_diffusers_keys(vae_ldm, "old"), "safetensors")
    del vae_ldm
    cv = load_file(os.path.join(cache, "clip_vision", "musev_standin_clip_vision_vitl.safetensors"))
    write_clip_vision(at("clip_vision"), cv, clip_vision_config("vitl"), files=("pytorch_model.bin",))
    del cv
    std = os.path.join(cache, "musev", "standin", "motion")
    for key, variant, fmt in (("motion_musev", "musev", "safetensors"),
                              ("motion_referencenet", "musev_referencenet", "bin"),
                              ("motion_pose", "musev_referencenet_pose", "safetensors")):
        with open(os.path.join(std, variant, "unet", "config.json")) as f:
            config = json.load(f)
        write_motion(at(key), load_file(os.path.join(std, variant, "unet", "diffusion_pytorch_model.safetensors")),
                     config, fmt)
    for key, variant in (("image_proj_referencenet", "musev_referencenet"),
                         ("image_proj_pose", "musev_referencenet_pose")):
        os.makedirs(os.path.dirname(at(key)), exist_ok=True)
        shutil.copyfile(os.path.join(std, variant, "ip_adapter_image_proj.bin"), at(key))
    ref = os.path.join(std, "musev_referencenet", "referencenet")
    os.makedirs(at("referencenet"), exist_ok=True)
    for fn in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copyfile(os.path.join(ref, fn), os.path.join(at("referencenet"), fn))
    write_json(os.path.join(tmp, "released.json"), {"version": RELEASED_VERSION})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def link_tree(src, dest):
    """Hard-link (else copy) every file under ``src`` into ``dest``: real files inside the models
    folder, as a user's download is."""
    for dirpath, _, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        for fn in filenames:
            target = os.path.join(dest, rel, fn)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if os.path.lexists(target):
                continue
            try:
                os.link(os.path.join(dirpath, fn), target)
            except OSError:
                shutil.copy2(os.path.join(dirpath, fn), target)


def _remove_stale_partials(*prefixes):
    """Half-written caches of runs that died (``<prefix>.partial-<pid>`` of a pid that is gone)."""
    import glob
    for prefix in prefixes:
        for path in glob.glob(prefix + ".partial-*"):
            try:
                os.kill(int(path.rsplit("-", 1)[1]), 0)
            except ProcessLookupError:
                shutil.rmtree(path, ignore_errors=True)
            except (ValueError, PermissionError):
                pass


def released_root():
    """The cached folder that holds MuseV's HF layout with stand-in weights (what a clone of
    TMElyralab/MuseV holds; generated once beside the ComfyUI-format stand-ins)."""
    cache = _cache_dir()
    os.makedirs(os.path.dirname(cache), exist_ok=True)
    with tempfile.TemporaryDirectory(dir=os.path.dirname(cache)) as scratch:   # same file system: links
        make_standins(scratch)        # makes sure the ComfyUI-format cache exists (links are dropped)
    out = os.path.join(cache, "released")
    with open(cache + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _remove_stale_partials(cache, out)
            marker = os.path.join(out, "released.json")
            ok = os.path.isfile(marker)
            if ok:
                with open(marker) as f:
                    ok = json.load(f).get("version") == RELEASED_VERSION
            if not ok:
                _generate_released(cache, out)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return os.path.join(out, "musev")


def dropin_names(root):
    mt = _model_table()
    with open(os.path.join(_cache_dir(), "standins.json")) as f:
        meta = json.load(f)
    return Dropin(root=root, names={k: mt.get(k).name for k in RELEASED_FORMATS}, formats=dict(RELEASED_FORMATS),
                  clip_dim=meta["clip_dim"])


def make_dropin(models_dir):
    """MuseV's HF layout with stand-in weights under ``models_dir/musev`` (real files: hard links
    into the cache, or copies); returns a :class:`Dropin`."""
    link_tree(released_root(), os.path.join(models_dir, "musev"))
    return dropin_names(os.path.join(models_dir, "musev"))
