"""Random weights at the RELEASED full shapes and dtypes of MuseV's files, written in MuseV's
Hugging Face layout (the names of nodes/model_table.py) into a folder of your choice -- a temp
folder, never the checkout.  For benchmarks at full size without the real files:

    import released_weights as rw            # bench/ on sys.path, ComfyUI importable (host started)
    musev_dir = rw.write_released(dest, rw.IMAGE_TO_VIDEO)   # -> dest/musev/..., a models/musev folder
    rw.describe(musev_dir)                                     # what was written: files, dtypes, sizes

Shapes: MuseV's UNet3D and ReferenceNet keys from the released key lists (MUSEV_RELEASED_KEYS, else
shared/fixtures/released_keys beside the checkout; made from MuseV's own classes), SD1.5 from
ComfyUI's own model classes (UNet, CLIP-L text, VAE, CLIP vision ViT-H/14) converted to the
diffusers/transformers names with tests/standins.py's writers (ComfyUI's key maps).  Values: seeded
random, norms 1, matrices ~N(0, 1/fan_in) (the speed of a call does not depend on them, but sane
activations keep CPU kernels off denormals).

Storage, per file (:data:`FILES`): where MuseV's release is known, as released (the t2i folder is
``majicmixRealv6Fp16``: fp16, diffusers ``.bin`` as MuseV's overlay code requires; sd-vae-ft-mse:
fp32 safetensors, as stabilityai ships it; IP-Adapter's image_encoder: fp32 ``model.safetensors``,
2.5 GB as h94 ships it).  The motion UNet, ReferenceNet and image projection are stored as fp16
``.bin`` (MuseV loads them with ``torch_dtype=float16``; the exact format of these files was not
observable, spec §9): change :data:`FILES` if the real files say otherwise.  Motion files hold
all 1625 keys of the UNet3D (2D keys included, the larger case).
"""
import dataclasses
import json
import os
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PACK_DIR = os.path.dirname(BENCH_DIR)
sys.path.insert(0, os.path.join(PACK_DIR, "tests"))

SD15_CHANNEL_MULT = [1, 2, 4, 4]


@dataclasses.dataclass(frozen=True)
class Released:
    key: str          # nodes/model_table.py key
    fmt: str          # "bin" or "safetensors"
    dtype: str        # "float16" / "float32"
    source: str       # why this format and dtype


FILES = {
    "t2i_majicmix": Released("t2i_majicmix", "bin", "float16",
                             "MuseV's t2i folder majicmixRealv6Fp16 (fp16 by name); unet/ must be .bin for MuseV"),
    "vae": Released("vae", "safetensors", "float32", "stabilityai/sd-vae-ft-mse (fp32, 335 MB)"),
    "clip_vision": Released("clip_vision", "safetensors", "float32",
                            "h94/IP-Adapter models/image_encoder (fp32 model.safetensors, 2.5 GB)"),
    "motion_referencenet": Released("motion_referencenet", "bin", "float16", "MuseV loads it as fp16 (assumed)"),
    "motion_musev": Released("motion_musev", "bin", "float16", "MuseV loads it as fp16 (assumed)"),
    "motion_pose": Released("motion_pose", "bin", "float16", "MuseV loads it as fp16 (assumed)"),
    "referencenet": Released("referencenet", "bin", "float16", "MuseV loads it as fp16 (assumed)"),
    "image_proj_referencenet": Released("image_proj_referencenet", "bin", "float16",
                                        "torch.save'd {'image_proj': ...}"),
    "image_proj_pose": Released("image_proj_pose", "bin", "float16", "torch.save'd {'image_proj': ...}"),
}
IMAGE_TO_VIDEO = ("t2i_majicmix", "vae", "clip_vision", "motion_referencenet", "referencenet",
                  "image_proj_referencenet")


def model_table():
    import importlib.util
    spec = importlib.util.spec_from_file_location("musev_model_table_rw", os.path.join(PACK_DIR, "nodes",
                                                                                      "model_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def released_keys_dir():
    cands = [os.environ.get("MUSEV_RELEASED_KEYS"),
             os.path.join(os.path.dirname(os.environ.get("MUSEV_PARITY_FIXTURES", "") or "/nonexistent"),
                          "released_keys"),
             os.path.join(os.path.dirname(PACK_DIR), "shared", "fixtures", "released_keys")]
    for c in cands:
        if c and os.path.isfile(os.path.join(c, "musev_keys_unet_musev.tsv")):
            return c
    raise SystemExit("released key lists not found: set MUSEV_RELEASED_KEYS to shared/fixtures/released_keys")


def read_keys(name):
    """{key: shape} of a released key list (``key<TAB>(d0, d1, ...)``)."""
    out = {}
    with open(os.path.join(released_keys_dir(), name)) as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            key, shape = line.rstrip("\n").split("\t")
            out[key] = tuple(int(x) for x in shape.strip("()[] ").split(",") if x.strip())
    return out


def random_weights(shapes, dtype, seed):
    """Seeded random tensors in ``dtype`` (built one at a time: the peak is one fp32 tensor)."""
    import torch
    dt = getattr(torch, dtype)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        leaf = key.rsplit(".", 1)[-1]
        if len(shape) <= 1:
            if leaf == "weight" and any(n in key for n in ("norm", "ln_", "layer_norm", "layrnorm")):
                t = torch.ones(shape, dtype=dt)
            else:
                t = (torch.randn(shape, generator=gen) * 0.02).to(dt)
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            t = torch.randn(shape, generator=gen).mul_(1.0 / max(1, fan_in) ** 0.5).to(dt)
        out[key] = t
    return out


def _meta_shapes(builder):
    import torch
    with torch.device("meta"):
        m = builder()
    return {k: tuple(v.shape) for k, v in m.state_dict().items() if v.dtype.is_floating_point}


def sd15_unet_config():
    import standins
    cfg = standins.sd15_unet_config()
    cfg["channel_mult"] = list(SD15_CHANNEL_MULT)
    return cfg


def sd15_unet_shapes():
    """ComfyUI-keyed SD1.5 UNet shapes (ComfyUI's own UNetModel, on the meta device)."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    return _meta_shapes(lambda: UNetModel(**sd15_unet_config(), operations=comfy.ops.disable_weight_init))


def clip_text_shapes():
    import torch
    import comfy.clip_model
    import comfy.ops
    import comfy.sd1_clip
    with open(os.path.join(os.path.dirname(comfy.sd1_clip.__file__), "sd1_clip_config.json")) as f:
        cfg = json.load(f)
    shapes = _meta_shapes(lambda: comfy.clip_model.CLIPTextModel(cfg, torch.float32, "meta",
                                                                 comfy.ops.disable_weight_init))
    return {k: v for k, v in shapes.items() if "text_projection" not in k and "logit_scale" not in k}


def vae_shapes():
    from comfy.ldm.models.autoencoder import AutoencoderKL
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    return _meta_shapes(lambda: AutoencoderKL(ddconfig=ddconfig, embed_dim=4))


def clip_vision_h_shapes():
    import torch
    import comfy.clip_model
    import comfy.clip_vision
    import comfy.ops
    with open(os.path.join(os.path.dirname(comfy.clip_vision.__file__), "clip_vision_config_h.json")) as f:
        cfg = json.load(f)
    return _meta_shapes(lambda: comfy.clip_model.CLIPVisionModelProjection(cfg, torch.float32, "meta",
                                                                           comfy.ops.disable_weight_init))


def _write_one(key, musev_dir, seed):
    import torch
    import standins
    mt = model_table()
    spec = FILES[key]
    dest = os.path.join(musev_dir, mt.get(key).name)
    if key in ("t2i_majicmix", "t2i_fantasticmix"):
        unet = standins.unet_to_diffusers_keys(random_weights(sd15_unet_shapes(), spec.dtype, seed), sd15_unet_config())
        text = random_weights(clip_text_shapes(), spec.dtype, seed + 1)
        text["text_model.embeddings.position_ids"] = torch.arange(77).unsqueeze(0)
        vae = standins.vae_to_diffusers_keys(random_weights(vae_shapes(), spec.dtype, seed + 2), "new")
        standins.write_pipeline(dest, unet, [320 * m for m in SD15_CHANNEL_MULT], text, vae, spec.fmt)
    elif key == "vae":
        vae = standins.vae_to_diffusers_keys(random_weights(vae_shapes(), spec.dtype, seed), "old")
        standins.write_diffusers_vae(dest, vae, spec.fmt)
    elif key == "clip_vision":
        files = ("model.safetensors",) if spec.fmt == "safetensors" else ("pytorch_model.bin",)
        standins.write_clip_vision(dest, random_weights(clip_vision_h_shapes(), spec.dtype, seed),
                                   standins.clip_vision_config("h"), files)
    elif key.startswith("motion_"):
        variant = "musev" if key == "motion_musev" else "musev_referencenet"
        sd = random_weights(read_keys(f"musev_keys_unet_{variant}.tsv"), spec.dtype, seed)
        for k in sd:
            if k.endswith("temporal_weight"):
                sd[k].fill_(0.5)
        config = dict(standins.SD15_UNET_DIFFUSERS, _class_name="UNet3DConditionModel",
                      block_out_channels=[320 * m for m in SD15_CHANNEL_MULT],
                      down_block_types=["CrossAttnDownBlock3D"] * 3 + ["DownBlock3D"],
                      up_block_types=["UpBlock3D"] + ["CrossAttnUpBlock3D"] * 3)
        standins.write_motion(dest, sd, config, spec.fmt)
    elif key == "referencenet":
        sd = random_weights(read_keys("musev_keys_referencenet.tsv"), spec.dtype, seed)
        standins.write_json(os.path.join(dest, "config.json"),
                            {"_class_name": "ReferenceNet2D", "cross_attention_dim": 768, "attention_head_dim": 8,
                             "block_out_channels": [320 * m for m in SD15_CHANNEL_MULT], "layers_per_block": 2})
        standins.save_weights(os.path.join(dest, f"diffusion_pytorch_model.{spec.fmt}"), sd)
    elif key.startswith("image_proj_"):
        sd = random_weights({"proj.weight": (3072, 1024), "proj.bias": (3072,), "norm.weight": (768,),
                             "norm.bias": (768,)}, spec.dtype, seed)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        torch.save({"image_proj": sd}, dest)
    else:
        raise KeyError(key)


def write_released(dest, keys=IMAGE_TO_VIDEO, seed=0, log=print):
    """Write ``keys`` (model_table keys) under ``dest/musev`` in MuseV's HF layout; returns that
    folder (give it to ComfyUI as a ``musev`` models path).  Files already there are kept."""
    mt = model_table()
    musev_dir = os.path.join(dest, "musev")
    for i, key in enumerate(keys):
        if not mt.problems(mt.get(key), musev_dir):
            continue
        t = time.perf_counter()
        _write_one(key, musev_dir, seed + 10 * i)
        if log:
            size = tree_size(os.path.join(musev_dir, mt.get(key).name)) / 1e9
            log(f"  wrote {mt.get(key).name} ({FILES[key].dtype} {FILES[key].fmt}, {size:.2f} GB) "
                f"in {time.perf_counter() - t:.0f} s")
    return musev_dir


def tree_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def describe(musev_dir, keys=IMAGE_TO_VIDEO):
    mt = model_table()
    out = []
    for k in keys:
        name = mt.get(k).name + ("unet/" if k.startswith("motion_") else "")   # the motion folder holds more
        out.append((name, FILES[k].dtype, FILES[k].fmt, tree_size(os.path.join(musev_dir, name))))
    return out
