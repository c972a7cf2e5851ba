"""The ``models/musev`` folder: released files load unchanged from their HF layout, e.g.

    models/musev/motion/musev/unet/{config.json, diffusion_pytorch_model.safetensors}
    models/musev/motion/musev_referencenet/{unet,referencenet}/...
    models/musev/motion/musev_referencenet/ip_adapter_image_proj.bin
    models/musev/motion/musev_referencenet_pose/{unet/..., ip_adapter_image_proj.bin}

A choice is either a weight file or a folder (shown with a trailing "/") holding a diffusers
model (``config.json`` + ``diffusion_pytorch_model.*``, directly or in ``unet/``/``referencenet/``).
"""
import os

import folder_paths

FOLDER = "musev"
WEIGHT_EXTS = {".safetensors", ".sft", ".bin", ".pth", ".pt", ".ckpt"}
MODEL_FILE_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


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


def _is_model_dir(d):
    return any(os.path.isfile(os.path.join(d, n)) for n in MODEL_FILE_NAMES)


def list_choices(kind=None):
    """Weight files and model folders under every ``musev`` path, sorted.  ``kind`` filters by
    name hints ("unet", "referencenet", "image_proj") while keeping anything else that might fit."""
    register()
    files = set()
    for root in folder_paths.get_folder_paths(FOLDER):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            if rel_dir and _is_model_dir(dirpath):
                files.add(rel_dir)
            if rel_dir and any(_is_model_dir(os.path.join(dirpath, s)) for s in ("unet", "referencenet")):
                files.add(rel_dir)
            for fn in filenames:
                if os.path.splitext(fn)[1].lower() in WEIGHT_EXTS:
                    files.add(rel_dir + fn)
    out = sorted(files)
    if kind == "image_proj":
        out = [f for f in out if not f.endswith("/")]
    return out


def full_path(choice, input_name, node):
    """Absolute path of a choice, or a clear error."""
    register()
    rel = choice.rstrip("/")
    for root in folder_paths.get_folder_paths(FOLDER):
        cand = os.path.join(root, rel)
        if os.path.exists(cand):
            return cand
    if os.path.isabs(choice) and os.path.exists(choice):
        return choice
    from .host import MuseVInputError
    raise MuseVInputError(
        f"{node}: '{input_name}' = {choice!r} was not found under models/{FOLDER}/ "
        f"({', '.join(folder_paths.get_folder_paths(FOLDER))}): put the released MuseV files there "
        "(see the README's model table) and refresh")
