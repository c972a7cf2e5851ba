"""Loading a MuseV motion checkpoint into a ModelPatcher (cached by file identity and dtype)."""
import logging
import os

import torch

import comfy.model_patcher

from ..musev_core import keys as K
from ..musev_core.motion import MotionCheckpointError, MuseVMotionModel
from . import compat
from .host import FileModelCache, MuseVInputError, host_ops, load_device, offload_device, read_checkpoint

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


def read_motion_checkpoint(path, node="LoadMuseVMotion", input_name="motion_model"):
    """``(state_dict, config or None, weights_path)`` with errors that name the input."""
    return read_checkpoint(path, ("unet",), node, input_name)


def heads_from(config, unet):
    if config and "attention_head_dim" in config:
        heads = config["attention_head_dim"]
        return int(heads) if isinstance(heads, (int, float)) else [int(h) for h in heads]
    return int(unet.num_heads)


def load_motion_patcher(path, unet, weight_dtype, compute_dtype, node="LoadMuseVMotion", input_name="motion_model"):
    """A ModelPatcher holding the MuseV motion model for ``path``, built in the base model's dtype."""
    return _CACHE.get_or_build(FileModelCache.key(path, weight_dtype, compute_dtype, unet.num_heads),
                               lambda: _build_motion_patcher(path, unet, weight_dtype, compute_dtype, node, input_name))


def _build_motion_patcher(path, unet, weight_dtype, compute_dtype, node, input_name):
    sd, config, weights_path = read_motion_checkpoint(path, node, input_name)
    layers = int((config or {}).get("layers_per_block", 2))
    try:
        motion = MuseVMotionModel.from_state_dict(
            sd, heads=heads_from(config, unet), layers=layers,
            ops=host_ops(weight_dtype, compute_dtype, load_device()), dtype=weight_dtype, device="cpu")
    except (MotionCheckpointError, K.CheckpointKindError) as e:
        raise MuseVInputError(f"{node}: '{input_name}' ({os.path.basename(weights_path)}): {e}") from None
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
