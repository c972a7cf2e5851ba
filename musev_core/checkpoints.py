"""Reading MuseV checkpoints: ``.safetensors``, ``.bin``/``.pth``/``.pt`` (tensors only, never
unpickling code), diffusers folders (``config.json`` + ``diffusion_pytorch_model.*``), released
folder layouts (``motion/<variant>/unet``, ``.../referencenet``, ``ip_adapter_image_proj.bin``),
and the few ``config.json`` values the loaders use, checked.

The reader is picked by the file's CONTENT (magic bytes), not its extension: a safetensors file
renamed ``.pth`` is read as safetensors, a torch zip named ``.safetensors`` as a torch file.
Messages name files by their last two path components (``unet/config.json``), never a full path.
"""
import json
import math
import os
import pickle
import struct
import zipfile

import torch

WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "model.safetensors", "pytorch_model.bin")
PICKLE_EXTS = (".bin", ".pth", ".pt", ".ckpt")
SAFE_EXTS = (".safetensors", ".sft")

FORMAT_SAFETENSORS = "safetensors"
FORMAT_TORCH_ZIP = "torch_zip"          # torch.save since 1.6
FORMAT_TORCH_LEGACY = "torch_legacy"    # pickle protocol 2 stream (torch < 1.6)

_MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024   # the safetensors library refuses larger headers too


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


class ConfigValueError(CheckpointError):
    """A ``config.json`` value that cannot be used; the message names the file and the key."""


def short_name(path):
    """``unet/config.json``: enough to recognise a file, without the server's folder layout."""
    parent = os.path.basename(os.path.dirname(path))
    return f"{parent}/{os.path.basename(path)}" if parent else os.path.basename(path)


# ------------------------------------------------------------------------------------------------
# Folders

def resolve_weights_path(path, subfolders=("unet",)):
    """A file, or a diffusers folder (optionally one level down, e.g. ``motion/musev`` -> ``unet``):
    ``(weights file, parsed config.json beside it or None)``."""
    weights, config_path = find_weights(path, subfolders)
    return weights, read_config(config_path) if config_path else None


def find_weights(path, subfolders=("unet",)):
    """``(weights file, config.json path or None)`` of a file or diffusers folder, without reading
    either: what a cache keys on (the files actually read, not the folder that was picked)."""
    if os.path.isfile(path):
        return path, _config_path_beside(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {os.path.basename(path.rstrip(os.sep))!r} does not exist")
    for folder in (path,) + tuple(os.path.join(path, s) for s in subfolders):
        for name in WEIGHT_NAMES:
            cand = os.path.join(folder, name)
            if os.path.isfile(cand):
                return cand, _config_path_beside(cand)
    raise CheckpointError(
        f"the folder holds no diffusion_pytorch_model.safetensors/.bin (looked in {', '.join(subfolders)} too): "
        "pick the variant folder (e.g. motion/musev_referencenet/) or the weight file itself")


def _config_path_beside(weights_path):
    cfg = os.path.join(os.path.dirname(weights_path), "config.json")
    return cfg if os.path.isfile(cfg) else None


def read_config(path):
    """A ``config.json`` as a dict; anything else is a :class:`CheckpointError` naming the file."""
    label = short_name(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read(4 * 1024 * 1024 + 1)
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{label} cannot be read ({type(e).__name__}); fix or delete it") from None
    if len(text) > 4 * 1024 * 1024:
        raise CheckpointError(f"{label} is larger than 4 MB, not a model config: fix or delete it")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{label} is not valid JSON ({str(e)[:120]}); fix or delete it") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{label} holds a JSON {type(value).__name__}, not an object of settings: "
                              "fix or delete it")
    return value


# ------------------------------------------------------------------------------------------------
# config.json values (every key a loader reads goes through one of these)

def _bad(label, key, value, want, fix=""):
    shown = repr(value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return ConfigValueError(f"{label}: '{key}' is {shown}, expected {want}; "
                            f"{fix or 'fix the value or delete the key'} (MuseV's released config.json has it right)")


def _as_int(value):
    """An int from a JSON value (ints and integral floats; not bools, strings, NaN or inf)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def config_int(config, key, default, label, lo=1, hi=1 << 16):
    """``config[key]`` as an int in ``[lo, hi]`` (``default`` when absent or null)."""
    value = (config or {}).get(key)
    if value is None:
        return default
    n = _as_int(value)
    if n is None or not lo <= n <= hi:
        raise _bad(label, key, value, f"a whole number from {lo} to {hi}")
    return n


def config_int_or_list(config, key, default, label, lo=1, hi=1 << 16, max_len=16):
    """``config[key]`` as an int or a non-empty list of ints in ``[lo, hi]`` (diffusers'
    ``attention_head_dim``)."""
    value = (config or {}).get(key)
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        items = [_as_int(v) for v in value]
        if not items or len(items) > max_len or any(n is None or not lo <= n <= hi for n in items):
            raise _bad(label, key, value, f"a whole number from {lo} to {hi} or a list of up to {max_len} of them")
        return items
    n = _as_int(value)
    if n is None or not lo <= n <= hi:
        raise _bad(label, key, value, f"a whole number from {lo} to {hi} or a list of them")
    return n


def config_bool(config, key, default, label):
    value = (config or {}).get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(label, key, value, "true or false")
    return value


def config_number(config, key, default, label, lo=-1e6, hi=1e6):
    value = (config or {}).get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise _bad(label, key, value, f"a finite number from {lo:g} to {hi:g}")
    return float(value)


def check_heads_fit(heads, widths, label, key="attention_head_dim"):
    """Every attention width must split into ``heads`` equal heads (per level when a list)."""
    per_level = heads if isinstance(heads, list) else [heads] * len(widths)
    if len(per_level) < len(widths):
        raise _bad(label, key, heads, f"one head count per level ({len(widths)} levels)")
    for level, (h, width) in enumerate(zip(per_level, widths)):
        if width % h:
            raise _bad(label, key, heads, f"a head count that divides the layer width ({width} at level {level})")


# ------------------------------------------------------------------------------------------------
# Weight files

def sniff_format(path):
    """The format of a weight file from its first bytes: ``FORMAT_SAFETENSORS``, ``FORMAT_TORCH_ZIP``
    or ``FORMAT_TORCH_LEGACY``; a :class:`CheckpointError` for an empty, truncated or foreign file."""
    name = os.path.basename(path)
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {name!r} ({type(e).__name__}): check the file's permissions") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {name!r} is empty (0 bytes): the download did not finish; fetch it again")
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return FORMAT_TORCH_ZIP
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if head[8:9] == b"{" and 2 <= n <= _MAX_SAFETENSORS_HEADER:
            if 8 + n > size:
                raise CheckpointError(f"{name!r} is a safetensors file cut short ({size} bytes, its header alone "
                                      f"needs {8 + n}): the download did not finish; download it again")
            return FORMAT_SAFETENSORS
    if head[:2] == b"\x80\x02":
        return FORMAT_TORCH_LEGACY
    if head[:1] == b"{" or head[:4] in (b"vers", b"<!DO", b"<htm", b"<?xm"):
        raise CheckpointError(f"{name!r} is a text file (a Git LFS pointer or an HTML error page?), not weights: "
                              "download the real file (git lfs pull, or the 'download' link of the model page)")
    raise CheckpointError(f"{name!r} is not a torch checkpoint (.bin/.pth) nor a safetensors file: it is "
                          "truncated or not a weight file; download it again")


def extension_matches(path, fmt):
    """True when the file's extension announces the format its content has."""
    safe_ext = path.lower().endswith(SAFE_EXTS)
    return safe_ext == (fmt == FORMAT_SAFETENSORS)


def read_error(path, fmt, exc):
    """The :class:`CheckpointError` for a reader's exception on a file of format ``fmt``."""
    name = os.path.basename(path)
    if isinstance(exc, pickle.UnpicklingError):
        first = (str(exc).splitlines() or [""])[0][:160]
        return CheckpointError(
            f"refusing to load {name!r}: it needs to unpickle Python objects, which can run arbitrary code "
            f"({first}). Use the .safetensors release or convert a file you trust")
    what = "safetensors file" if fmt == FORMAT_SAFETENSORS else "torch checkpoint"
    return CheckpointError(f"{name!r} is a {what} that could not be read ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); the file is truncated or "
                           "damaged: download it again")


def load_state_dict(path, device="cpu"):
    """Tensors of a weight file as a flat ``{key: tensor}`` dict (reader picked by content)."""
    fmt = sniff_format(path)
    try:
        if fmt == FORMAT_SAFETENSORS:
            import safetensors.torch
            obj = safetensors.torch.load_file(path, device=str(device))
        else:
            # a file object: recent torch.load dispatches a *path* by its extension (".safetensors")
            with open(path, "rb") as f:
                obj = torch.load(f, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001  (every reader failure becomes one clear message)
        raise read_error(path, fmt, e) from None
    return flatten_state_dict(obj, os.path.basename(path))


def check_finite(sd, name="checkpoint"):
    """A :class:`CheckpointError` when float tensors hold NaN/inf (a damaged or badly converted file)."""
    bad = [k for k, v in sd.items() if isinstance(v, torch.Tensor) and v.is_floating_point()
           and v.numel() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{name!r} holds NaN/inf values in {len(bad)} tensor(s) (e.g. {bad[0]!r}): the file is "
                              "damaged or was converted badly; download it again")
    return sd


def flatten_state_dict(obj, name="checkpoint"):
    """Accept ``{key: tensor}``, ``{"state_dict": ...}`` and nested dicts (``{"image_proj": {...}}``
    becomes ``image_proj.*``)."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name!r} does not hold a dict of tensors (found {type(obj).__name__})")
    out = {}

    def walk(prefix, value, depth=0):
        if isinstance(value, torch.Tensor):
            out[prefix] = value
        elif isinstance(value, dict) and depth < 8:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)
        # scalars / metadata are ignored
    walk("", obj)
    if not out:
        raise CheckpointError(f"{name!r} holds no tensors")
    return out
