"""Small adapters between musev_core and ComfyUI: ops, attention kernel, base-model checks."""
import types

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
import comfy.model_management
import comfy.ops


class MuseVInputError(ValueError):
    """Bad user input; the message names the input and the fix (shown by ComfyUI as is)."""


def host_attention(q, k, v, heads):
    """ComfyUI's optimized attention (backend picked at start-up: xformers, SDPA, split, ...)."""
    return comfy_attention.optimized_attention(q, k, v, heads)


def host_ops(weight_dtype, compute_dtype=None, load_device=None):
    ops = comfy.ops.pick_operations(weight_dtype, compute_dtype, load_device=load_device)
    return types.SimpleNamespace(Linear=ops.Linear, Conv3d=ops.Conv3d, GroupNorm=ops.GroupNorm, LayerNorm=ops.LayerNorm)


def sd15_unet(model, node="LoadMuseVMotion", input_name="model"):
    """The ComfyUI ``UNetModel`` of an SD1.5-family MODEL, or a clear error."""
    base = getattr(model, "model", None)
    unet = getattr(base, "diffusion_model", None)
    family = type(base).__name__ if base is not None else type(model).__name__
    if not isinstance(unet, openaimodel.UNetModel):
        raise MuseVInputError(
            f"{node}: the '{input_name}' input is a {family} model; MuseV needs an SD1.5 checkpoint "
            "(Load Checkpoint with an SD1.5 model such as majicmixRealv6 or fantasticmix)")
    cfg = getattr(getattr(base, "model_config", None), "unet_config", {}) or {}
    problems = []
    if unet.num_classes is not None or cfg.get("adm_in_channels"):
        problems.append("it is SDXL-like (class/ADM conditioning)")
    if cfg.get("use_linear_in_transformer"):
        problems.append("it is SD2-like (linear transformer projections)")
    if unet.num_heads == -1:
        problems.append("it uses per-channel attention heads (SD2/SDXL)")
    if len(unet.input_blocks) != 12 or len(unet.output_blocks) != 12:
        problems.append(f"it has {len(unet.input_blocks)} input blocks instead of SD1.5's 12")
    if getattr(unet, "in_channels", 4) != 4:
        problems.append(f"it has {unet.in_channels} input channels (inpainting/instruct models are not MuseV bases)")
    if problems:
        raise MuseVInputError(
            f"{node}: the '{input_name}' input ({family}) is not an SD1.5 model: {'; '.join(problems)}. "
            "MuseV's temporal layers only fit SD1.5 checkpoints: load an SD1.5 model")
    return unet


def load_device():
    return comfy.model_management.get_torch_device()


def offload_device():
    return comfy.model_management.unet_offload_device()


def is_resblock(m):
    return isinstance(m, openaimodel.ResBlock)


def is_spatial_transformer(m):
    return isinstance(m, comfy_attention.SpatialTransformer)


def block_channels(block):
    """Channels coming out of a TimestepEmbedSequential of the host UNet."""
    ch = None
    for child in block:
        if isinstance(child, openaimodel.ResBlock):
            ch = child.out_channels
        elif isinstance(child, comfy_attention.SpatialTransformer):
            ch = child.in_channels
        elif isinstance(child, (openaimodel.Downsample, openaimodel.Upsample)):
            ch = child.out_channels
        elif isinstance(child, torch.nn.Conv2d):
            ch = child.out_channels
    return ch


class FileModelCache:
    """A small LRU of models built from files, keyed by the file's identity (real path, mtime,
    size) plus extra keys (dtypes): re-running a graph or using one file with two base models
    does not rebuild the model."""

    def __init__(self, size=2):
        import collections
        import threading
        self.size = size
        self._items = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(path, *extra):
        import os
        st = os.stat(path)
        return (os.path.realpath(path), st.st_mtime_ns, st.st_size) + tuple(str(e) for e in extra)

    def get_or_build(self, key, build):
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value = build()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


def read_checkpoint(path, subfolders, node, input_name):
    """``(state_dict without wrapper prefix, config or None, weights path)`` of a file or diffusers
    folder; unreadable files become a MuseVInputError naming the node and input."""
    from ..musev_core import keys as K
    from ..musev_core.checkpoints import CheckpointError, load_state_dict, resolve_weights_path
    try:
        weights, config = resolve_weights_path(path, subfolders=subfolders)
        sd = load_state_dict(weights)
    except CheckpointError as e:
        raise MuseVInputError(f"{node}: '{input_name}': {e}") from None
    return K.strip_common_prefix(sd), config, weights
