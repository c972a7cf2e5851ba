"""The ``models/musev`` folder: released files load unchanged from their HF layout, e.g.

    models/musev/motion/musev/unet/{config.json, diffusion_pytorch_model.safetensors}
    models/musev/motion/musev_referencenet/{unet,referencenet}/...
    models/musev/motion/musev_referencenet/ip_adapter_image_proj.bin
    models/musev/motion/musev_referencenet_pose/{unet/..., ip_adapter_image_proj.bin}

A choice is either a weight file or a folder (shown with a trailing "/") holding a diffusers
model (``config.json`` + ``diffusion_pytorch_model.*``, directly or in ``unet/``/``referencenet/``).

Names are resolved as ComfyUI's own loaders resolve theirs (``folder_paths.get_folder_paths`` /
``get_full_path``: relative to every registered ``musev`` folder, extra_model_paths.yaml included)
and, beyond that, refused unless the file or folder -- and every file read from it -- really
lies inside one of those folders: no ``..``, no absolute path, no symlink out of the folder.
Widget values can arrive through links (any-typed string nodes), so nothing here trusts them.
Every refusal is the same sentence, whether or not something exists at the name.

Dropdowns list one entry per model, filtered by kind (:func:`list_choices`): motion UNets as their
variant folder (``motion/musev/``, not also its ``unet/`` and the weight file), ReferenceNets as their
folder, image projections as files.  The kind comes from the safetensors header / the torch pickle
(keys only, tensors memory-mapped, never read), cached per file identity.
"""
import logging
import os
import re
import struct
import threading
import zipfile

import folder_paths

log = logging.getLogger("comfyui-musev")

FOLDER = "musev"
WEIGHT_EXTS = {".safetensors", ".sft", ".bin", ".pth", ".pt", ".ckpt"}
MODEL_FILE_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

KIND_MOTION = "motion"
KIND_REFERENCENET = "referencenet"
KIND_IMAGE_PROJ = "image_proj"
KINDS = (KIND_MOTION, KIND_REFERENCENET, KIND_IMAGE_PROJ)
_KIND_ALIASES = {"unet": KIND_MOTION}
# the sub-folder a pick of each kind may point one level above (released layout)
SUBFOLDERS = {KIND_MOTION: ("unet",), KIND_REFERENCENET: ("referencenet",), KIND_IMAGE_PROJ: ()}
IMAGE_PROJ_FILES = ("ip_adapter_image_proj.bin", "ip_adapter_image_proj.safetensors")

MAX_NAME = 1024
MAX_DEPTH = 8
MAX_ENTRIES = 20000          # files + folders visited per listing (a models folder is small)


def register_folder(name, extensions):
    """Register ``models/<name>`` (idempotent; keeps paths and extensions others added)."""
    path = os.path.join(folder_paths.models_dir, name)
    if name in folder_paths.folder_names_and_paths:
        paths, exts = folder_paths.folder_names_and_paths[name]
        if path not in paths:
            paths.append(path)
        folder_paths.folder_names_and_paths[name] = (paths, set(exts) | set(extensions))
    else:
        folder_paths.folder_names_and_paths[name] = ([path], set(extensions))


def register():
    register_folder(FOLDER, WEIGHT_EXTS)


def roots():
    """``[(registered folder, its real path)]`` of every ``musev`` folder that exists."""
    register()
    out = []
    for root in folder_paths.get_folder_paths(FOLDER):
        if os.path.isdir(root):
            out.append((root, os.path.realpath(root)))
    return out


def _inside(real, real_roots):
    return any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in real_roots)


def is_inside(path):
    """True when ``path`` (after following every symlink) lies in a registered ``musev`` folder."""
    return _inside(os.path.realpath(path), [r for _, r in roots()])


# ------------------------------------------------------------------------------------------------
# Resolving a name

def not_found_message(choice, node, input_name):
    """THE refusal: one sentence for a missing name, ``..``, an absolute path or a link out of the
    folder (it says nothing about what exists where)."""
    shown = choice if isinstance(choice, str) else type(choice).__name__
    shown = shown if len(shown) <= 200 else shown[:197] + "..."
    return (f"{node}: '{input_name}' = {shown!r} is not a model in ComfyUI's models/{FOLDER}/ folder: pick one "
            "from the list (refresh the page after adding files; see the README's model table)")


def _refuse(choice, node, input_name):
    from .host import MuseVInputError
    return MuseVInputError(not_found_message(choice, node, input_name))


def normalise(choice):
    """``(relative parts, is_folder)`` of a widget value, or None when it cannot name something inside
    the folder (empty, absolute, ``..``, control characters, too long)."""
    if not isinstance(choice, str) or not choice.strip() or len(choice) > MAX_NAME:
        return None
    if any(ord(c) < 32 for c in choice):
        return None
    text = choice.replace("\\", "/")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text) or text.startswith("~"):
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        return None
    return parts, text.endswith("/")


def full_path(choice, input_name, node):
    """Real path of a choice (a file or a folder) inside a registered ``musev`` folder, or THE
    refusal (:func:`not_found_message`)."""
    norm = normalise(choice)
    if norm is None:
        raise _refuse(choice, node, input_name)
    parts, _ = norm
    listed = roots()
    real_roots = [r for _, r in listed]
    rel = os.path.join(*parts)
    for root, _real_root in listed:
        cand = os.path.join(root, rel)
        if not os.path.exists(cand):
            continue
        real = os.path.realpath(cand)
        if _inside(real, real_roots):
            return real
        log.warning("[MuseV] %s: '%s' = %r leads out of the models/%s folders and is refused; to use models kept "
                    "elsewhere, add their folder under '%s:' in extra_model_paths.yaml", node, input_name, choice,
                    FOLDER, FOLDER)
    raise _refuse(choice, node, input_name)


def checked(path, choice, node, input_name):
    """``path`` (a file found inside a picked folder) if it stays inside the folders, else THE refusal."""
    if path is None:
        return None
    real = os.path.realpath(path)
    if not _inside(real, [r for _, r in roots()]):
        log.warning("[MuseV] %s: a file of '%s' = %r links out of the models/%s folders and is refused; to use "
                    "models kept elsewhere, add their folder under '%s:' in extra_model_paths.yaml", node, input_name,
                    choice, FOLDER, FOLDER)
        raise _refuse(choice, node, input_name)
    return real


def model_files(choice, input_name, node, kind):
    """``(weights file, config.json or None)``, both real paths inside the folders, of a pick of
    ``kind`` (a weight file, a model folder, or the variant folder above it)."""
    from .host import checkpoint_files
    kind = _KIND_ALIASES.get(kind, kind)
    path = full_path(choice, input_name, node)
    weights, config = checkpoint_files(path, SUBFOLDERS.get(kind, ()), node, input_name)
    return checked(weights, choice, node, input_name), checked(config, choice, node, input_name)


def image_proj_file(choice, input_name, node):
    """The image-projection weight file of a pick (the file, or a folder holding
    ``ip_adapter_image_proj.bin``), inside the folders."""
    from .host import MuseVInputError
    path = full_path(choice, input_name, node)
    if os.path.isdir(path):
        found = [os.path.join(path, n) for n in IMAGE_PROJ_FILES if os.path.isfile(os.path.join(path, n))]
        if not found:
            raise MuseVInputError(f"{node}: '{input_name}' is a folder without ip_adapter_image_proj.bin: pick "
                                  "motion/musev_referencenet/ip_adapter_image_proj.bin (or the pose model's)")
        path = found[0]
    return checked(path, choice, node, input_name)


def validate_choice(choice, input_name, node, kind=None):
    """For ``VALIDATE_INPUTS``: True, or THE refusal as a string (widget values only: a linked value
    is checked when the node runs).  Old workflow values stay valid (a variant folder, its ``unet/``,
    the weight file) as long as they name something inside the folders."""
    if choice is None:
        return True
    kind = _KIND_ALIASES.get(kind, kind)
    try:
        if kind == KIND_IMAGE_PROJ:
            image_proj_file(choice, input_name, node)
        elif kind in KINDS:
            model_files(choice, input_name, node, kind)      # the files a folder pick reads: inside too
        else:
            full_path(choice, input_name, node)
    except ValueError as e:
        return str(e)
    return True


# ------------------------------------------------------------------------------------------------
# Listing by kind

_KIND_CACHE = {}             # file identity -> kind (or None)
_KIND_LOCK = threading.Lock()


def _file_identity(path):
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns)


def _safetensors_keys(path):
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        if n < 2 or n > 100 * 1024 * 1024:
            return None
        import json
        header = json.loads(f.read(n).decode("utf-8"))
    return [k for k in header if k != "__metadata__"]


def _torch_keys(path):
    if not zipfile.is_zipfile(path):
        return None           # legacy pickle: cannot be read without reading the tensors
    import torch
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    keys = []

    def walk(prefix, value, depth=0):
        if isinstance(value, dict) and depth < 8:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v, depth + 1)
        elif isinstance(value, torch.Tensor):
            keys.append(prefix)
    walk("", obj.get("state_dict", obj) if isinstance(obj, dict) else obj)
    del obj
    return keys


def _kind_from_keys(keys):
    from ..musev_core import keys as K
    from ..musev_core.keys import strip_common_prefix
    kind = K.describe_keys(strip_common_prefix(dict.fromkeys(keys)).keys())
    if kind in (K.VARIANT_MUSEV, K.VARIANT_REFERENCENET_FAMILY):
        return KIND_MOTION
    if kind == K.KIND_REFERENCENET:
        return KIND_REFERENCENET
    if kind == K.KIND_IMAGE_PROJ:
        return KIND_IMAGE_PROJ
    return None


def _kind_by_name(path):
    name = os.path.basename(path).lower()
    parent = os.path.basename(os.path.dirname(path)).lower()
    if name.startswith("ip_adapter_image_proj"):
        return KIND_IMAGE_PROJ
    if name in MODEL_FILE_NAMES and parent == "referencenet":
        return KIND_REFERENCENET
    if name in MODEL_FILE_NAMES and parent == "unet":
        return KIND_MOTION
    return None


def file_kind(path):
    """The kind of a weight file from its keys (header only), cached per file identity; by its
    name when the keys cannot be read cheaply (a legacy pickle)."""
    try:
        ident = _file_identity(path)
    except OSError:
        return None
    with _KIND_LOCK:
        if ident in _KIND_CACHE:
            return _KIND_CACHE[ident]
    kind = None
    try:
        keys = _safetensors_keys(path)
        if keys is None:
            keys = _torch_keys(path)
        kind = _kind_from_keys(keys) if keys else _kind_by_name(path)
    except Exception:  # noqa: BLE001  (an unreadable file is simply not listed)
        kind = None
    with _KIND_LOCK:
        if len(_KIND_CACHE) > 4096:
            _KIND_CACHE.clear()
        _KIND_CACHE[ident] = kind
    return kind


def _model_file(folder):
    for n in MODEL_FILE_NAMES:
        p = os.path.join(folder, n)
        if os.path.isfile(p):
            return p
    return None


def _walk(root, real_roots):
    """``(dirpath, rel_dir, filenames)`` under ``root``, following links that stay inside the folders,
    each real folder once, bounded in depth and size."""
    seen = set()
    budget = [MAX_ENTRIES]

    def visit(path, rel, depth):
        real = os.path.realpath(path)
        if real in seen or not _inside(real, real_roots) or depth > MAX_DEPTH or budget[0] <= 0:
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return
        budget[0] -= len(entries)
        files = [e.name for e in entries if not e.name.startswith(".") and e.is_file()]
        dirs = [e.name for e in entries if not e.name.startswith(".") and e.is_dir()]
        yield path, rel, files
        for d in dirs:
            yield from visit(os.path.join(path, d), rel + d + "/", depth + 1)

    yield from visit(root, "", 0)


def scan():
    """``{entry: kind}`` over every ``musev`` folder: one entry per model (kind None = a weight file
    of no MuseV kind)."""
    listed = roots()
    real_roots = [r for _, r in listed]
    out = {}
    for root, _ in listed:
        for dirpath, rel, files in _walk(root, real_roots):
            model = _model_file(dirpath) if rel else None
            if model is not None:
                if os.path.basename(rel.rstrip("/")) in ("unet", "referencenet") and rel.count("/") >= 2:
                    continue          # listed as its variant folder (motion) or below (referencenet)
                out.setdefault(rel, file_kind(model))
                continue              # a model folder: its weight files are the model, not entries
            if rel:
                unet = _model_file(os.path.join(dirpath, "unet"))
                if unet is not None:
                    out.setdefault(rel, file_kind(unet))
                refnet = _model_file(os.path.join(dirpath, "referencenet"))
                if refnet is not None:
                    out.setdefault(rel + "referencenet/", file_kind(refnet))
            for fn in files:
                if os.path.splitext(fn)[1].lower() in WEIGHT_EXTS:
                    out.setdefault(rel + fn, file_kind(os.path.join(dirpath, fn)))
    return out


def list_choices(kind=None):
    """Dropdown values: the models of ``kind`` (``"motion"`` -- alias ``"unet"`` --, ``"referencenet"``,
    ``"image_proj"``), one entry per model, sorted; ``None``: every entry."""
    kind = _KIND_ALIASES.get(kind, kind)
    entries = scan()
    if kind is None:
        return sorted(entries)
    return sorted(e for e, k in entries.items() if k == kind)


def fingerprint(choice, kind, node="", input_name=""):
    """For ``IS_CHANGED``: the identity of the files a pick reads (path, size, mtime of the weights and
    config.json), so ComfyUI re-runs the loader when a file inside a picked folder changes.  A linked
    value (not known before the run) or an unresolvable one: NaN (= always re-run; the loaders' own
    file-keyed caches keep that cheap, and the node reports the error)."""
    if choice is None:
        return float("nan")
    try:
        from .host import FileModelCache
        kind = _KIND_ALIASES.get(kind, kind)
        if kind == KIND_IMAGE_PROJ:
            files = (image_proj_file(choice, input_name, node),)
        else:
            files = model_files(choice, input_name, node, kind)
        return repr(FileModelCache.key(files))
    except Exception:  # noqa: BLE001
        return float("nan")
