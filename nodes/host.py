"""Small adapters between musev_core and ComfyUI: ops, attention kernel, base-model checks."""
import os
import types
import weakref

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
import comfy.model_management
import comfy.ops


class MuseVInputError(ValueError):
    """Bad user input; the message names the input and the fix (shown by ComfyUI as is)."""


# ComfyUI backends that materialise the q·k scores in the input dtype unless told otherwise
# (``attn_precision``): MuseV's fusion and temporal scores exceed float16's range (65504) with the
# released weights, and lose all precision in bfloat16.  The fused kernels (PyTorch SDPA, xformers,
# flash, sage) accumulate in float32 by construction.
SCORE_BACKENDS = ("attention_basic", "attention_split", "attention_sub_quad")


def _unwrapped(fn):
    for _ in range(8):            # ComfyUI 0.28 decorates every backend (functools.wraps)
        inner = getattr(fn, "__wrapped__", None)
        if inner is None:
            break
        fn = inner
    return fn


def attention_backend():
    """The attention function ComfyUI uses now (picked at start-up from the CLI flags and device)."""
    return comfy_attention.optimized_attention


def attention_backend_name(fn=None):
    return getattr(_unwrapped(fn or attention_backend()), "__name__", type(fn).__name__)


def _materialises_scores(fn):
    inner = _unwrapped(fn)
    return any(inner is _unwrapped(getattr(comfy_attention, name, None)) for name in SCORE_BACKENDS)


def _host_upcasts(dtype):
    """True when ComfyUI honours ``attn_precision=float32`` for ``dtype`` (not with
    ``--dont-upcast-attention``, which drops every requested upcast)."""
    get = getattr(comfy_attention, "get_attn_precision", None)
    if get is None:
        return False
    try:
        return get(torch.float32, dtype) == torch.float32
    except Exception:  # noqa: BLE001  (an unexpected signature: upcast ourselves)
        return False


def host_attention(q, k, v, heads):
    """ComfyUI's optimized attention (backend picked at start-up: xformers, SDPA, split, sub-quadratic,
    basic), safe in half precision: half/bfloat16 inputs get float32 scores, through ComfyUI's own
    ``attn_precision`` where the backend honours it (as ComfyUI does for models that need it), else by
    running the score-materialising backends on float32 copies.  float32 inputs are passed through
    unchanged (parity)."""
    fn = attention_backend()
    if q.dtype not in (torch.float16, torch.bfloat16):
        return fn(q, k, v, heads)
    if _materialises_scores(fn) and not _host_upcasts(q.dtype):
        return fn(q.float(), k.float(), v.float(), heads).to(q.dtype)
    return fn(q, k, v, heads, attn_precision=torch.float32)


_CROSS_ATTENTIONS = weakref.WeakKeyDictionary()


def upcast_attention(root, dtype):
    """Ask every ComfyUI ``CrossAttention`` under ``root`` for float32 scores while ``dtype`` is half
    precision (MuseV runs the base UNet's self-attention over its own vision-frame tokens).  Returns
    the ``[(module, previous)]`` list for :func:`restore_attention`; empty (nothing changed) in float32."""
    if dtype not in (torch.float16, torch.bfloat16):
        return []
    modules = _CROSS_ATTENTIONS.get(root)
    if modules is None:
        modules = [m for m in root.modules() if isinstance(m, comfy_attention.CrossAttention)]
        _CROSS_ATTENTIONS[root] = modules
    saved = []
    for m in modules:
        if getattr(m, "attn_precision", None) is not torch.float32:
            saved.append((m, m.attn_precision))
            m.attn_precision = torch.float32
    return saved


def restore_attention(saved):
    for m, previous in saved:
        m.attn_precision = previous


def non_finite_message(what, tensor, dtype=None):
    """Why a tensor holding NaN/inf most likely does (for errors raised after a run)."""
    bad = ~torch.isfinite(tensor)
    n = int(bad.reshape(tensor.shape[0], -1).any(dim=1).sum()) if tensor.ndim else int(bad.any())
    dtype = dtype or tensor.dtype
    backend = attention_backend_name()
    hints = []
    if dtype in (torch.float16, torch.bfloat16):
        hints.append(f"the model runs in {str(dtype).replace('torch.', '')}: start ComfyUI with --force-fp32 (or "
                     "--bf16-unet instead of fp16) to rule precision out")
    try:
        from comfy.cli_args import args
        if getattr(args, "dont_upcast_attention", False):
            hints.append("ComfyUI runs with --dont-upcast-attention, which lets half-precision attention scores "
                         "overflow: drop that flag")
    except ImportError:
        pass
    hints.append(f"the attention backend is {backend}: try --use-pytorch-cross-attention or --use-split-cross-attention")
    hints.append("extreme or damaged weights in the 'model' chain (motion model, LoRA, merged checkpoint)")
    hints.append("a NaN/inf input (latent, ControlNet image, conditioning)")
    return (f"{what} holds NaN/inf in {n} of {tensor.shape[0] if tensor.ndim else 1} frames, so the video would be "
            f"black. Likely causes: {'; '.join(hints)}")


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
    """A small LRU of models built from files, keyed by the identity of the files ACTUALLY read
    (weights and config.json: real path, device, inode, size, mtime, ctime) plus extra keys (dtypes).
    Re-running a graph or using one file with two base models does not rebuild the model; replacing
    or editing a file inside a picked folder does (a folder's own mtime does not change then)."""

    def __init__(self, size=2):
        import collections
        import threading
        self.size = size
        self._items = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def file_id(path):
        if path is None:
            return ("-",)
        st = os.stat(path)
        return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @classmethod
    def key(cls, files, *extra):
        """``files``: one path or a sequence of paths (``None`` = a file that is absent, e.g. no config)."""
        if isinstance(files, (str, bytes)) or hasattr(files, "__fspath__"):
            files = (files,)
        return tuple(cls.file_id(f) for f in files) + tuple(str(e) for e in extra)

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

    def clear(self):
        with self._lock:
            self._items.clear()


def checkpoint_files(path, subfolders, node, input_name):
    """``(weights file, config.json or None)`` that :func:`read_checkpoint` would read for ``path``:
    what a cache keys on."""
    from ..musev_core.checkpoints import CheckpointError, find_weights
    try:
        return find_weights(path, subfolders=subfolders)
    except CheckpointError as e:
        raise MuseVInputError(f"{node}: '{input_name}': {e}") from None


def load_weights(path):
    """A weight file's tensors, flat.  ComfyUI's own reader (``comfy.utils.load_torch_file(safe_load=
    True)``: the host's mmap / copy flags, tensors only) when the extension announces the format the
    content has; a file whose extension lies (a safetensors renamed ``.pth``, which ComfyUI's reader
    would hand to torch.load) is read by content with ``musev_core.checkpoints``, as are the core
    tests and MuseV parity fixtures.  Every failure is a ``CheckpointError`` naming the file."""
    import comfy.utils
    from ..musev_core import checkpoints as C
    fmt = C.sniff_format(path)
    if not C.extension_matches(path, fmt):
        return C.load_state_dict(path)
    try:
        obj = comfy.utils.load_torch_file(path, safe_load=True)
    except Exception as e:  # noqa: BLE001  (every reader failure becomes one clear message)
        raise C.read_error(path, fmt, e) from None
    return C.flatten_state_dict(obj, os.path.basename(path))


def read_checkpoint(path, subfolders, node, input_name, files=None, used=None):
    """``(state_dict without wrapper prefix, config or None, weights path)`` of a file or diffusers
    folder (``files``: the ``(weights, config)`` pair already found, so that what is read is what was
    keyed); unreadable or damaged files (NaN/inf in the tensors whose keys pass ``used``, default all)
    become a MuseVInputError naming the node and input."""
    from ..musev_core import keys as K
    from ..musev_core.checkpoints import CheckpointError, check_finite, read_config
    weights, config_path = files or checkpoint_files(path, subfolders, node, input_name)
    try:
        config = read_config(config_path) if config_path else None
        sd = K.strip_common_prefix(load_weights(weights))
        check_finite(sd if used is None else {k: v for k, v in sd.items() if used(k)}, os.path.basename(weights))
    except CheckpointError as e:
        raise MuseVInputError(f"{node}: '{input_name}': {e}") from None
    return sd, config, weights


def widget_problem(cls, node, **values):
    """ComfyUI's own min/max checks for inputs that a ``VALIDATE_INPUTS`` declares (declaring an input
    there turns ComfyUI's checks of it off): the first problem as a message, or None.  ``None`` values
    (linked inputs, unknown at validation) are skipped."""
    spec = cls.INPUT_TYPES()
    merged = dict(spec.get("required", {}))
    merged.update(spec.get("optional", {}))
    for name, value in values.items():
        if value is None or name not in merged:
            continue
        opts = merged[name][1] if len(merged[name]) > 1 and isinstance(merged[name][1], dict) else {}
        if "min" in opts and value < opts["min"]:
            return f"{node}: '{name}' is {value}, smaller than its minimum {opts['min']}"
        if "max" in opts and value > opts["max"]:
            return f"{node}: '{name}' is {value}, bigger than its maximum {opts['max']}"
    return None
