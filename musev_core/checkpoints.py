"""Reading MuseV checkpoints: ``.safetensors``, ``.bin``/``.pth``/``.pt`` (tensors only, never
unpickling code), diffusers folders (``config.json`` + ``diffusion_pytorch_model.*``), released
folder layouts (``motion/<variant>/unet``, ``.../referencenet``, ``ip_adapter_image_proj.bin``).
"""
import json
import os
import pickle
import zipfile

import torch

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "model.safetensors", "pytorch_model.bin")
PICKLE_EXTS = (".bin", ".pth", ".pt", ".ckpt")
SAFE_EXTS = (".safetensors", ".sft")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def resolve_weights_path(path, subfolders=("unet",)):
    """A file, or a diffusers folder (optionally one level up, e.g. ``motion/musev`` -> ``unet``)."""
    if os.path.isfile(path):
        return path, _config_beside(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    for folder in (path,) + tuple(os.path.join(path, s) for s in subfolders):
        for name in WEIGHT_NAMES:
            cand = os.path.join(folder, name)
            if os.path.isfile(cand):
                return cand, _config_beside(cand)
    raise CheckpointError(
        f"folder {path!r} holds no diffusion_pytorch_model.safetensors/.bin (looked in {', '.join(subfolders)} too): "
        "pick the variant folder (e.g. motion/musev_referencenet/unet) or the weight file itself")


def _config_beside(weights_path):
    cfg = os.path.join(os.path.dirname(weights_path), "config.json")
    if os.path.isfile(cfg):
        try:
            with open(cfg, "r", encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{cfg!r} is not valid JSON ({e}); fix or delete it") from e
    return None


def load_state_dict(path, device="cpu"):
    """Tensors of a weight file as a flat ``{key: tensor}`` dict."""
    name = os.path.basename(path)
    lower = name.lower()
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path!r}: {e}") from e
    if size == 0:
        raise CheckpointError(f"checkpoint {name!r} is empty (0 bytes): the download did not finish; fetch it again")
    if lower.endswith(SAFE_EXTS):
        return _load_safetensors(path, device)
    if lower.endswith(PICKLE_EXTS):
        return _load_torch(path, device)
    # Unknown extension: sniff the content.
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:2] == b"PK":
        return _load_torch(path, device)
    try:
        return _load_safetensors(path, device)
    except CheckpointError:
        raise CheckpointError(f"{name!r} is neither a .safetensors nor a torch (.bin/.pth) checkpoint") from None


def _load_safetensors(path, device):
    import safetensors.torch
    name = os.path.basename(path)
    try:
        return safetensors.torch.load_file(path, device=str(device))
    except Exception as e:  # safetensors raises SafetensorError / OSError with terse texts
        raise CheckpointError(
            f"{name!r} is not a readable .safetensors file ({type(e).__name__}: {e}); it is probably truncated "
            "or not a safetensors file: download it again") from e


def _load_torch(path, device):
    name = os.path.basename(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] != b"\x80":   # not a legacy pickle either
            raise CheckpointError(f"{name!r} is not a torch checkpoint (truncated or wrong file): download it again")
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {name!r}: it needs to unpickle Python objects, which can run arbitrary code "
            f"({str(e).splitlines()[0][:160]}). Use the .safetensors release or convert a file you trust") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CheckpointError(f"{name!r} could not be read ({type(e).__name__}: {str(e)[:200]}); "
                              "the file is probably truncated: download it again") from e
    return flatten_state_dict(obj, name)


def flatten_state_dict(obj, name="checkpoint"):
    """Accept ``{key: tensor}``, ``{"state_dict": ...}`` and nested dicts (``{"image_proj": {...}}``
    becomes ``image_proj.*``)."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name!r} does not hold a dict of tensors (found {type(obj).__name__})")
    out = {}

    def walk(prefix, value):
        if isinstance(value, torch.Tensor):
            out[prefix] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        # scalars / metadata are ignored
    walk("", obj)
    if not out:
        raise CheckpointError(f"{name!r} holds no tensors")
    return out
