"""Loading a MuseV motion checkpoint into a ModelPatcher (cached by file identity and dtype)."""
import logging
import os

import torch

import comfy.model_patcher

from ..musev_core import checkpoints as C
from ..musev_core import keys as K
from ..musev_core.attention import AttentionShapeError
from ..musev_core.motion import MotionCheckpointError, MuseVMotionModel
from . import compat
from .host import (FileModelCache, MuseVInputError, checkpoint_files, host_ops, load_device, offload_device,
                   read_checkpoint)

log = logging.getLogger("comfyui-musev")

_CACHE = FileModelCache(2)


class MotionModule(torch.nn.Module):
    """The nn.Module a motion ModelPatcher holds (ComfyUI reads ``.device``/``get_dtype``)."""

    def __init__(self, motion):
        super().__init__()
        self.motion = motion
        self.device = torch.device("cpu")

    def get_dtype(self):
        return next(self.motion.parameters()).dtype


def read_motion_checkpoint(path, node="LoadMuseVMotion", input_name="motion_model", files=None):
    """``(state_dict, config or None, weights_path)`` with errors that name the input."""
    return read_checkpoint(path, ("unet",), node, input_name, files=files, used=K.is_motion_key)


def heads_from(config, unet, label="config.json"):
    """Head count(s) from config.json (checked: a clear error naming the file and key), else the base's."""
    heads = C.config_int_or_list(config, "attention_head_dim", None, label)
    return int(unet.num_heads) if heads is None else heads


def layers_in_keys(sd):
    """Layers per down block as the weights show them (temporal convs of the first down block), or None."""
    idx = {int(k.split(".")[3]) for k in sd if k.startswith("down_blocks.0.temp_convs.") and k.split(".")[3].isdigit()}
    return max(idx) + 1 if idx else None


def load_motion_patcher(path, unet, weight_dtype, compute_dtype, node="LoadMuseVMotion", input_name="motion_model",
                        files=None):
    """A ModelPatcher holding the MuseV motion model for ``path``, built in the base model's dtype; cached
    on the files actually read (weights + config.json), so editing a file inside a picked folder rebuilds."""
    files = files or checkpoint_files(path, ("unet",), node, input_name)
    return _CACHE.get_or_build(FileModelCache.key(files, weight_dtype, compute_dtype, unet.num_heads),
                               lambda: _build_motion_patcher(path, unet, weight_dtype, compute_dtype, node, input_name,
                                                             files))


def _build_motion_patcher(path, unet, weight_dtype, compute_dtype, node, input_name, files=None):
    sd, config, weights_path = read_motion_checkpoint(path, node, input_name, files)
    label = C.short_name(files[1]) if files and files[1] else "config.json"
    try:
        layers = C.config_int(config, "layers_per_block", None, label, lo=1, hi=16)
        heads = heads_from(config, unet, label)
    except C.CheckpointError as e:
        raise MuseVInputError(f"{node}: '{input_name}': {e}") from None
    counted = layers_in_keys(sd)
    if layers is not None and counted is not None and layers != counted:
        raise MuseVInputError(f"{node}: '{input_name}': {label}: 'layers_per_block' is {layers} but "
                              f"{os.path.basename(weights_path)} has {counted} layers per block: fix the value or "
                              "delete the key (MuseV's released config.json has 2)")
    layers = layers or counted or 2
    try:
        motion = MuseVMotionModel.from_state_dict(
            sd, heads=heads, layers=layers,
            ops=host_ops(weight_dtype, compute_dtype, load_device()), dtype=weight_dtype, device="cpu")
    except AttentionShapeError as e:
        raise MuseVInputError(f"{node}: '{input_name}': {label}: 'attention_head_dim' = {heads} does not fit the "
                              f"checkpoint's layers ({e}): fix the value or delete the key") from None
    except (MotionCheckpointError, K.CheckpointKindError) as e:
        where = f"{label} / {os.path.basename(weights_path)}" if "attention_head_dim" in str(e) else \
            os.path.basename(weights_path)
        raise MuseVInputError(f"{node}: '{input_name}' ({where}): {e}") from None
    motion.eval().requires_grad_(False)
    report = motion.coverage_report(sd)
    log.info("MuseV motion %s: variant %s, %d motion keys loaded, %d 2D keys ignored (the base model supplies them)",
             os.path.basename(weights_path), motion.variant, report["motion"], report["ignored_2d"])
    if report["ignored_face"]:
        log.warning("MuseV motion %s: %d IP-Adapter-FaceID keys ignored (MuseV reads FaceID from "
                    "ip-adapter-faceid_sd15.bin: use the MuseVFaceID node)",
                    os.path.basename(weights_path), report["ignored_face"])
    patcher = comfy.model_patcher.ModelPatcher(MotionModule(motion), load_device=load_device(),
                                               offload_device=offload_device())
    patcher.musev_report = report
    # MultiGPU deep clones rebuild it from the file, with their own weights on their own device
    return compat.set_reload_factory(patcher, rebuild_motion_patcher,
                                     (path, int(unet.num_heads), weight_dtype, compute_dtype, node, input_name))


class _Heads:
    """Stands for the base UNet when only its head count is needed (rebuilding a motion patcher)."""

    def __init__(self, num_heads):
        self.num_heads = num_heads


def rebuild_motion_patcher(path, num_heads, weight_dtype, compute_dtype, node, input_name, **_host_flags):
    """A fresh (uncached) motion patcher: the reload factory ComfyUI calls for deep clones."""
    return _build_motion_patcher(path, _Heads(num_heads), weight_dtype, compute_dtype, node, input_name)
