"""MuseV's released base models as ComfyUI's MODEL / CLIP / VAE / CLIP_VISION, from MuseV's own
Hugging Face layout under ``models/musev/`` (nodes/model_table.py), with no renaming or conversion:

* ``t2i/sd1.5/<name>/``                 diffusers SD1.5 pipeline folder  -> MuseVCheckpointLoader
* ``vae/sd-vae-ft-mse/``                diffusers AutoencoderKL folder   -> MuseVVAELoader
* ``IP-Adapter/models/image_encoder/``  transformers CLIP vision folder  -> MuseVCLIPVisionLoader

Thin: every file is read by ``comfy.utils.load_torch_file(safe_load=True)`` and built by ComfyUI's
own classes (``comfy.sd.load_diffusion_model_state_dict``, ``comfy.sd.load_clip``, ``comfy.sd.VAE``,
``comfy.clip_vision.load_clipvision_from_sd``), as ``comfy.diffusers_load.load_diffusers`` does
(same in ComfyUI 0.3.64 and 0.28).  One step differs: the pipeline's UNet keys are renamed to
ComfyUI's with ComfyUI's own map (``comfy.utils.unet_to_diffusers``) *before* the model is built,
so that ComfyUI sizes the model from the weights rather than from its table of diffusers configs.
Single files (``models/checkpoints``, ``models/vae``, ``models/clip_vision``) are listed too and go
to ComfyUI's own loader nodes unchanged, so civitai files keep working in the same node.

A choice ending in ``/`` is a folder under ``models/musev``; anything else is a file of the usual
ComfyUI folder.
"""
import json
import os

import folder_paths

import comfy.clip_vision
import comfy.model_detection
import comfy.sd
import comfy.utils

from . import compat, model_table, paths
from .host import MuseVInputError

CATEGORY = "MuseV"
CKPT_NODE, VAE_NODE, CLIPV_NODE = "MuseVCheckpointLoader", "MuseVVAELoader", "MuseVCLIPVisionLoader"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
KIND_WORDS = {
    "pipeline": "a diffusers pipeline folder (model_index.json, unet/, text_encoder/, vae/)",
    "vae": "a diffusers VAE folder (config.json with AutoencoderKL + diffusion_pytorch_model.*)",
    "clip_vision": "a transformers CLIP vision folder (config.json + model.safetensors or pytorch_model.bin)",
    "motion": "a MuseV motion UNet folder (load it with LoadMuseVMotion)",
    "referencenet": "a MuseV ReferenceNet folder (load it with MuseVReferenceNet)",
    None: "not a model folder this pack knows",
}
TABLE_KEYS = {"pipeline": "t2i_majicmix", "vae": "vae", "clip_vision": "clip_vision"}


# ------------------------------------------------------------------------------------------------
# what is in models/musev

def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def folder_kind(path, files=None):
    """What a folder under models/musev holds: "pipeline", "vae", "clip_vision", "motion",
    "referencenet" or None (from its file names and config.json, never from the folder name)."""
    files = set(os.listdir(path)) if files is None else set(files)
    if "model_index.json" in files:
        return "pipeline"
    if "config.json" in files:
        cfg = _read_json(os.path.join(path, "config.json"))
        cls = str(cfg.get("_class_name", ""))
        archs = [str(a) for a in cfg.get("architectures") or []]
        if cls.startswith("AutoencoderKL"):
            return "vae"
        if cfg.get("model_type") == "clip_vision_model" or any(a.startswith("CLIPVision") for a in archs):
            return "clip_vision"
        if cls == "ReferenceNet2D":
            return "referencenet"
        if cls.startswith("UNet"):
            return "motion"
    if os.path.isfile(os.path.join(path, "unet", "config.json")):
        return "motion"
    return None


def scan_musev():
    """``{relative folder with a trailing "/": kind}`` of every known model folder under every
    ``models/musev`` path; folders inside a pipeline folder (its unet/, vae/, ...) are not listed."""
    paths.register()
    found = {}
    for root in folder_paths.get_folder_paths(paths.FOLDER):
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
            if rel == ".":
                continue
            kind = folder_kind(dirpath, filenames)
            if kind is not None:
                found.setdefault(rel + "/", kind)
            if kind == "pipeline":
                dirnames[:] = []
    return found


def folder_choices(kind):
    return sorted(rel for rel, k in scan_musev().items() if k == kind)


def choices(kind, comfy_folder):
    """The widget list: models/musev folders of ``kind``, then files of ``comfy_folder``."""
    try:
        files = list(folder_paths.get_filename_list(comfy_folder))
    except KeyError:
        files = []
    return folder_choices(kind) + sorted(files)


# ------------------------------------------------------------------------------------------------
# names -> checked paths

def _where_to_get(kind, name):
    entry = model_table.by_name("musev", name) or model_table.get(TABLE_KEYS[kind])
    return f"{entry.url} (into models/musev/{entry.name})"


def _refuse_unsafe_name(name, node, input_name):
    parts = name.replace("\\", "/").split("/") if isinstance(name, str) else [".."]
    if not name or os.path.isabs(name) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        if hasattr(paths, "not_found_message"):      # the pack's one refusal sentence
            raise MuseVInputError(paths.not_found_message(name, node, input_name))
        raise MuseVInputError(f"{node}: '{input_name}' = {name!r} is not a name inside a models folder: pick one "
                              "from the list (paths outside ComfyUI's model folders are refused)")


def _inside_folders(path, name, node, input_name):
    """A file found inside a picked folder, refused if it links out of the models folders."""
    return paths.checked(path, name, node, input_name) if hasattr(paths, "checked") else path


def resolve_folder(name, kind, node, input_name):
    """Absolute path of a models/musev folder of ``kind`` whose needed files are all there."""
    _refuse_unsafe_name(name, node, input_name)
    path = paths.full_path(name, input_name, node)
    if not os.path.isdir(path):
        raise MuseVInputError(f"{node}: '{input_name}' = {name!r} is a file, not a folder; pick "
                              f"{KIND_WORDS[kind]}")
    actual = folder_kind(path)
    if actual != kind:
        raise MuseVInputError(
            f"{node}: '{input_name}' = {name!r} is {KIND_WORDS[actual]}, but this input takes {KIND_WORDS[kind]}. "
            f"MuseV's is {model_table.get(TABLE_KEYS[kind]).name}")
    found = model_table.folder_problems(path, model_table.FOLDER_NEEDS[kind])
    if found:
        detail = "; ".join(f"{f}: {why}" for f, why in found)
        raise MuseVInputError(
            f"{node}: '{input_name}' = {name!r} is incomplete ({path}): {detail}. Download the missing files "
            f"from {_where_to_get(kind, name)}")
    return path


def first_file(folder, names):
    for n in names:
        p = os.path.join(folder, n)
        if model_table.file_problem(p) is None:
            return p
    return None


def resolve_file(comfy_folder, name, node, input_name, kind):
    """Absolute path of a file of a ComfyUI models folder (ComfyUI's own lookup), or a clear error."""
    _refuse_unsafe_name(name, node, input_name)
    path = folder_paths.get_full_path(comfy_folder, name)
    if path is None:
        raise MuseVInputError(
            f"{node}: '{input_name}' = {name!r} is neither a file in models/{comfy_folder}/ nor a folder in "
            f"models/musev/ (folders end with '/'). MuseV's: {model_table.get(TABLE_KEYS[kind]).name} from "
            f"{_where_to_get(kind, model_table.get(TABLE_KEYS[kind]).name)}; then refresh")
    if not path.lower().endswith((".safetensors", ".sft")) and not compat.torch_files_load_safely():
        raise MuseVInputError(
            f"{node}: '{input_name}' = {name!r} is a pickle file and this ComfyUI/torch would unpickle it unsafely; "
            "use a .safetensors file or torch >= 2.4")
    return path


def _load(path, node, input_name):
    try:
        return comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as e:  # noqa: BLE001  (corrupt/truncated file: say which)
        raise MuseVInputError(f"{node}: '{input_name}': cannot read {path} ({type(e).__name__}: {e}); "
                              "download it again") from None


def _comfy_node(name):
    import nodes as comfy_nodes   # ComfyUI's nodes.py (the pack is never on sys.path)
    return comfy_nodes.NODE_CLASS_MAPPINGS[name]()


# ------------------------------------------------------------------------------------------------
# diffusers pipeline folder -> MODEL, CLIP, VAE

def _unet_patcher(path, node=CKPT_NODE, input_name="ckpt_name"):
    """ComfyUI MODEL of a diffusers SD UNet file: keys renamed with ComfyUI's map, then built by
    ``comfy.sd.load_diffusion_model_state_dict`` (which detects the model from the weights)."""
    sd = _load(path, node, input_name)
    if any(".temp_convs." in k or ".temp_attentions." in k for k in sd):
        raise MuseVInputError(f"{node}: '{input_name}': {path} is a MuseV motion UNet, not an SD1.5 base: load it "
                              "with LoadMuseVMotion and pick t2i/sd1.5/majicmixRealv6Fp16/ here")
    cfg = comfy.model_detection.unet_config_from_diffusers_unet(sd)
    if cfg is None:
        raise MuseVInputError(f"{node}: '{input_name}': {path} is not a Stable Diffusion UNet ComfyUI recognises; "
                              "MuseV needs an SD1.5 model")
    if cfg.get("context_dim") != 768 or cfg.get("adm_in_channels"):
        raise MuseVInputError(
            f"{node}: '{input_name}': {path} is not SD1.5 (text context {cfg.get('context_dim')}, SD1.5 has 768): "
            "MuseV's temporal layers only fit SD1.5 bases such as t2i/sd1.5/majicmixRealv6Fp16/")
    to_comfy = comfy.utils.unet_to_diffusers(cfg)     # diffusers key -> ComfyUI key (a superset)
    ldm = {v: sd[k] for k, v in to_comfy.items() if k in sd}
    given = set(ldm)
    model = comfy.sd.load_diffusion_model_state_dict(ldm)
    if model is None:
        raise MuseVInputError(f"{node}: '{input_name}': ComfyUI could not build a model from {path}")
    missing = sorted(set(model.model.diffusion_model.state_dict().keys()) - given)
    if missing:
        raise MuseVInputError(f"{node}: '{input_name}': {path} lacks {len(missing)} UNet weights (e.g. {missing[0]}): "
                              "the file is incomplete or not a diffusers SD1.5 UNet; download it again")
    return compat.set_reload_factory(model, _unet_patcher, (path,))


def load_pipeline(path, node=CKPT_NODE, input_name="ckpt_name"):
    if os.path.isdir(os.path.join(path, "text_encoder_2")):
        raise MuseVInputError(f"{node}: '{input_name}': {path} is an SDXL pipeline (it has text_encoder_2/); "
                              "MuseV needs an SD1.5 base such as t2i/sd1.5/majicmixRealv6Fp16/")
    name = os.path.basename(path.rstrip(os.sep)) + "/"
    unet = _inside_folders(first_file(os.path.join(path, "unet"), DIFFUSERS_WEIGHTS), name, node, input_name)
    text = _inside_folders(first_file(os.path.join(path, "text_encoder"), TRANSFORMERS_WEIGHTS), name, node,
                           input_name)
    vae_file = _inside_folders(first_file(os.path.join(path, "vae"), DIFFUSERS_WEIGHTS), name, node, input_name)
    model = _unet_patcher(unet, node, input_name)
    try:
        clip = comfy.sd.load_clip([text], embedding_directory=folder_paths.get_folder_paths("embeddings"))
    except Exception as e:  # noqa: BLE001
        raise MuseVInputError(f"{node}: '{input_name}': the text encoder {text} did not load "
                              f"({type(e).__name__}: {e}); download it again") from None
    vae = load_vae_file(vae_file, node, input_name)
    return model, clip, vae


# ------------------------------------------------------------------------------------------------
# VAE and CLIP vision files

def _vae_patcher(path):
    return load_vae_file(path).patcher


def load_vae_file(path, node=VAE_NODE, input_name="vae_name"):
    vae = comfy.sd.VAE(sd=_load(path, node, input_name))
    try:
        vae.throw_exception_if_invalid()
    except Exception:  # noqa: BLE001
        raise MuseVInputError(f"{node}: '{input_name}': {path} holds no VAE ComfyUI recognises; pick "
                              f"{model_table.get('vae').name} or a VAE file of models/vae") from None
    compat.set_reload_factory(vae.patcher, _vae_patcher, (path,))
    return vae


def load_clip_vision_file(path, node=CLIPV_NODE, input_name="clip_name"):
    sd = _load(path, node, input_name)
    if "visual.transformer.resblocks.0.attn.in_proj_weight" in sd:     # open_clip layout, as comfy.clip_vision.load
        clip = comfy.clip_vision.load_clipvision_from_sd(sd, prefix="visual.", convert_keys=True)
    else:
        clip = comfy.clip_vision.load_clipvision_from_sd(sd)
    if clip is None:
        raise MuseVInputError(f"{node}: '{input_name}': {path} is not a CLIP vision model ComfyUI knows; MuseV's is "
                              f"{model_table.get('clip_vision').name} (OpenCLIP ViT-H/14)")
    return clip


# ------------------------------------------------------------------------------------------------
# nodes

_FOLDER_NOTE = ("Folders (ending in '/') are MuseV's Hugging Face layout under models/musev/; plain names are "
                "files of models/{folder}/.")


class MuseVCheckpointLoader:
    DESCRIPTION = ("Loads an SD1.5 base as MODEL, CLIP and VAE: MuseV's diffusers folders "
                   "(t2i/sd1.5/majicmixRealv6Fp16/, fantasticmix_v10/) straight from models/musev/, or any "
                   "single-file checkpoint of models/checkpoints (same as Load Checkpoint).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"ckpt_name": (choices("pipeline", "checkpoints"), {
            "tooltip": "The SD1.5 base. " + _FOLDER_NOTE.format(folder="checkpoints")
                       + " MuseV used majicmixRealv6Fp16 (text/image-to-video) and fantasticmix_v10 "
                         "(video/pose-to-video)."})}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    RETURN_NAMES = ("model", "clip", "vae")
    OUTPUT_TOOLTIPS = ("The SD1.5 UNet (connect to LoadMuseVMotion).",
                       "The CLIP text encoder for the prompts.",
                       "The base's own VAE (MuseV decodes with sd-vae-ft-mse: MuseVVAELoader).")
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, ckpt_name):
        if ckpt_name.endswith("/"):
            return load_pipeline(resolve_folder(ckpt_name, "pipeline", CKPT_NODE, "ckpt_name"))
        resolve_file("checkpoints", ckpt_name, CKPT_NODE, "ckpt_name", "pipeline")
        return tuple(_comfy_node("CheckpointLoaderSimple").load_checkpoint(ckpt_name)[:3])


class MuseVVAELoader:
    DESCRIPTION = ("Loads a VAE: MuseV's diffusers folder vae/sd-vae-ft-mse/ straight from models/musev/, or any "
                   "VAE file of models/vae (same as Load VAE).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae_name": (choices("vae", "vae"), {
            "tooltip": "The VAE. " + _FOLDER_NOTE.format(folder="vae") + " MuseV used vae/sd-vae-ft-mse/."})}}

    RETURN_TYPES = ("VAE",)
    RETURN_NAMES = ("vae",)
    OUTPUT_TOOLTIPS = ("The VAE for encoding the condition image and decoding the video.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, vae_name):
        if vae_name.endswith("/"):
            path = resolve_folder(vae_name, "vae", VAE_NODE, "vae_name")
            found = _inside_folders(first_file(path, DIFFUSERS_WEIGHTS), vae_name, VAE_NODE, "vae_name")
            return (load_vae_file(found),)
        resolve_file("vae", vae_name, VAE_NODE, "vae_name", "vae")
        return tuple(_comfy_node("VAELoader").load_vae(vae_name))


class MuseVCLIPVisionLoader:
    DESCRIPTION = ("Loads a CLIP vision model: IP-Adapter's transformers folder IP-Adapter/models/image_encoder/ "
                   "(OpenCLIP ViT-H/14, as MuseV ships it) straight from models/musev/, or any file of "
                   "models/clip_vision (same as Load CLIP Vision).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (choices("clip_vision", "clip_vision"), {
            "tooltip": "The CLIP vision encoder for MuseVIPAdapter. " + _FOLDER_NOTE.format(folder="clip_vision")
                       + " MuseV's image projections need ViT-H/14 (IP-Adapter/models/image_encoder/)."})}}

    RETURN_TYPES = ("CLIP_VISION",)
    RETURN_NAMES = ("clip_vision",)
    OUTPUT_TOOLTIPS = ("The CLIP vision model (connect to MuseVIPAdapter).",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, clip_name):
        if clip_name.endswith("/"):
            path = resolve_folder(clip_name, "clip_vision", CLIPV_NODE, "clip_name")
            found = _inside_folders(first_file(path, TRANSFORMERS_WEIGHTS), clip_name, CLIPV_NODE, "clip_name")
            return (load_clip_vision_file(found),)
        resolve_file("clip_vision", clip_name, CLIPV_NODE, "clip_name", "clip_vision")
        return tuple(_comfy_node("CLIPVisionLoader").load_clip(clip_name))


NODE_CLASS_MAPPINGS = {
    CKPT_NODE: MuseVCheckpointLoader,
    VAE_NODE: MuseVVAELoader,
    CLIPV_NODE: MuseVCLIPVisionLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    CKPT_NODE: "Load Checkpoint (MuseV folders)",
    VAE_NODE: "Load VAE (MuseV folders)",
    CLIPV_NODE: "Load CLIP Vision (MuseV folders)",
}
