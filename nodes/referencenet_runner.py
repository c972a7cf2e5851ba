"""MuseV's ReferenceNet (spec §4.1-4.2) on ComfyUI's own SD1.5 UNet code.

The ReferenceNet is an SD1.5 encoder + middle block with its own weights.  It is built as a ComfyUI
``openaimodel.UNetModel`` (config from the weight shapes; diffusers keys converted with
``comfy.utils.unet_to_diffusers``) of which only ``time_embed``, ``input_blocks`` and
``middle_block`` are kept: the up path is constructed on the ``meta`` device and dropped, so it is
never allocated.  It runs those blocks with ComfyUI's ``forward_timestep_embed`` at timestep 0, so
attention backends, ``comfy.ops`` casting and lowvram offloading are the host's.  MuseV's
BasicTransformerBlocks use LayerNorm eps 0 for norm1/norm3 (spec §2.5): set on this instance.
"""
import logging
import math
import os

import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.utils

from ..musev_core import checkpoints as C
from ..musev_core import keys as K
from ..musev_core.referencenet import ReferenceNetCheckpointError, ReferenceNetGeometry
from . import compat
from .host import FileModelCache, MuseVInputError, checkpoint_files, load_device, offload_device, read_checkpoint

log = logging.getLogger("comfyui-musev")

_CACHE = FileModelCache(2)

N_FEATURES = 13


def comfy_unet_config(geo, dtype):
    """ComfyUI/LDM ``unet_config`` of a ReferenceNet geometry (the up path mirrors the down path;
    it is only needed to satisfy the constructor and the key map, never allocated)."""
    if len(set(geo.layers)) != 1:
        raise ReferenceNetCheckpointError(f"ReferenceNet levels have different layer counts {geo.layers}")
    layers = geo.layers[0]
    if geo.mid_depth <= 0:
        raise ReferenceNetCheckpointError("ReferenceNet mid block has no attention: not an SD-style ReferenceNet")
    depth = []
    for d in geo.attn_depth:
        depth += [d] * layers
    depth_out = []
    for d in geo.attn_depth:              # listed low level first, popped from the end
        depth_out += [d] * (layers + 1)
    heads = geo.heads_per_level()
    return {
        "image_size": 32, "in_channels": geo.in_channels, "out_channels": geo.in_channels,
        "model_channels": geo.model_channels, "num_res_blocks": [layers] * geo.levels,
        "channel_mult": [c // geo.model_channels for c in geo.block_out_channels],
        "transformer_depth": depth, "transformer_depth_output": depth_out,
        "transformer_depth_middle": geo.mid_depth,
        "context_dim": geo.context_dim, "num_heads": heads[0], "num_head_channels": -1,
        "use_spatial_transformer": True, "use_linear_in_transformer": geo.linear_projection,
        "legacy": False, "adm_in_channels": None, "use_checkpoint": False, "dtype": dtype,
        # float32 attention scores in half precision on every ComfyUI backend that honours it, as ComfyUI
        # does for models that need it (a no-op in float32)
        "attn_precision": torch.float32,
    }


class ReferenceNetModule(torch.nn.Module):
    """The encoder + middle of a ComfyUI ``UNetModel`` with ReferenceNet weights (what its
    ModelPatcher holds; ComfyUI reads ``.device`` / ``get_dtype``)."""

    def __init__(self, geo, unet_config, ops, weight_dtype, compute_dtype):
        super().__init__()
        cfg = dict(unet_config)
        cfg.pop("use_checkpoint", None)
        unet = openaimodel.UNetModel(**cfg, device="meta", operations=ops)
        self.time_embed = unet.time_embed
        self.input_blocks = unet.input_blocks
        self.middle_block = unet.middle_block
        del unet                              # output_blocks / out: meta tensors, dropped
        self.model_channels = geo.model_channels
        self.geometry = geo
        self.weight_dtype = weight_dtype
        self.compute_dtype = compute_dtype or weight_dtype
        self.device = torch.device("cpu")
        heads = geo.heads_per_level()
        for name, module in self.named_modules():
            if isinstance(module, comfy_attention.BasicTransformerBlock):
                module.norm1.eps = 0.0        # MuseV's positional-argument slip (spec §2.5)
                module.norm3.eps = 0.0
        if len(set(heads)) > 1:               # per-level head counts (not SD1.5, but cheap to honour)
            self._set_heads(heads)

    def _set_heads(self, heads):
        level_of_block = [0]
        for level, n in enumerate(self.geometry.layers):
            level_of_block += [level] * n
            if level < self.geometry.levels - 1:
                level_of_block.append(level)
        for i, block in enumerate(self.input_blocks):
            for m in block.modules():
                if isinstance(m, comfy_attention.CrossAttention):
                    m.heads = heads[level_of_block[i]]
                    m.dim_head = m.to_q.out_features // m.heads
        for m in self.middle_block.modules():
            if isinstance(m, comfy_attention.CrossAttention):
                m.heads = heads[-1]
                m.dim_head = m.to_q.out_features // m.heads

    def get_dtype(self):
        return self.weight_dtype

    def blocks(self):
        return list(self.input_blocks) + [self.middle_block]

    def forward(self, latent, context, progress=None):
        """``latent`` (N, C_in, h, w) clean reference latents (model space), ``context`` (N, L, D)
        -> 13 features (N, C_i, h_i, w_i): ``input_blocks`` outputs 0..11 then the middle block."""
        dev = latent.device
        x = latent.to(self.compute_dtype)
        context = context.to(device=dev, dtype=self.compute_dtype)
        t = torch.zeros(x.shape[0], device=dev)
        emb = self.time_embed(openaimodel.timestep_embedding(t, self.model_channels).to(x.dtype))
        transformer_options = {}
        feats = []
        h = x
        for i, block in enumerate(self.blocks()):
            comfy.model_management.throw_exception_if_processing_interrupted()
            transformer_options["block"] = ("middle", 0) if i == len(self.input_blocks) else ("input", i)
            h = openaimodel.forward_timestep_embed(block, h, emb, context, transformer_options)
            feats.append(h)
            if progress is not None:
                progress.update(1)
        return feats


def diffusers_to_comfy(sd, unet_config, module):
    """ReferenceNet diffusers keys -> the module's LDM keys with ComfyUI's own map."""
    mapping = comfy.utils.unet_to_diffusers(unet_config)
    wanted = set(module.state_dict().keys())
    out = {}
    for dk, lk in mapping.items():
        if lk in wanted and dk in sd:
            out[lk] = sd[dk]
    missing = sorted(wanted - set(out))
    return out, missing


def read_referencenet(path, node="MuseVReferenceNet", input_name="referencenet", files=None):
    """``(state_dict, config, weights_path)`` of a ReferenceNet file or folder, checked to BE one."""
    sd, config, weights = read_checkpoint(path, ("referencenet",), node, input_name, files=files)
    kind = K.describe_keys(sd.keys())
    name = os.path.basename(weights)
    if kind in (K.VARIANT_MUSEV, K.VARIANT_REFERENCENET_FAMILY, "inconsistent"):
        raise MuseVInputError(
            f"{node}: '{input_name}' ({name}) is a MuseV motion UNet, not the ReferenceNet: connect it to "
            "LoadMuseVMotion and pick motion/musev_referencenet/referencenet/ here")
    if kind == K.KIND_FACEID:
        raise MuseVInputError(
            f"{node}: '{input_name}' ({name}) is an IP-Adapter-FaceID file: load it with MuseVFaceID "
            "and pick motion/musev_referencenet/referencenet/ here")
    if kind == K.KIND_IMAGE_PROJ:
        raise MuseVInputError(
            f"{node}: '{input_name}' ({name}) is an IP-Adapter image projection: load it with MuseVIPAdapter "
            "and pick motion/musev_referencenet/referencenet/ here")
    if kind == "ldm_checkpoint":
        raise MuseVInputError(
            f"{node}: '{input_name}' ({name}) is a full Stable Diffusion checkpoint: pick MuseV's "
            "motion/musev_referencenet/referencenet/ here")
    if kind == "animatediff":
        raise MuseVInputError(f"{node}: '{input_name}' ({name}) is an AnimateDiff motion module: pick MuseV's "
                              "motion/musev_referencenet/referencenet/ here")
    if kind not in (K.KIND_REFERENCENET, "diffusers_unet2d"):
        raise MuseVInputError(
            f"{node}: '{input_name}' ({name}) holds no SD-style UNet encoder (conv_in / down_blocks keys): pick "
            "MuseV's motion/musev_referencenet/referencenet/ folder or its diffusion_pytorch_model file")
    return sd, config, weights


def heads_from_config(config, label="config.json"):
    heads = C.config_int_or_list(config, "attention_head_dim", 8, label)
    if isinstance(heads, (list, tuple)):
        heads = [int(h) for h in heads]
        return heads[0] if len(set(heads)) == 1 else heads
    return int(heads)


def build_referencenet(sd, config, weight_dtype, compute_dtype, name="referencenet", node="MuseVReferenceNet",
                       config_label="config.json"):
    """A :class:`ReferenceNetModule` with the weights of ``sd`` (CPU, ``weight_dtype``)."""
    cfg = config or {}
    try:
        flip = C.config_bool(cfg, "flip_sin_to_cos", True, config_label)
        shift = C.config_number(cfg, "freq_shift", 0.0, config_label)
        heads = heads_from_config(cfg, config_label)
    except C.CheckpointError as e:
        raise MuseVInputError(f"{node}: 'referencenet' ({name}): {e}") from None
    if flip is False or shift != 0:
        raise MuseVInputError(f"{node}: 'referencenet' ({name}): {config_label} asks for a non-SD1.5 timestep "
                              "embedding (flip_sin_to_cos false or freq_shift != 0), which this pack does not support: "
                              "use MuseV's released referencenet/config.json")
    try:
        geo = ReferenceNetGeometry(sd, heads=heads)
        C.check_heads_fit(heads, geo.block_out_channels, config_label)
        unet_config = comfy_unet_config(geo, weight_dtype)
    except (ReferenceNetCheckpointError, C.CheckpointError) as e:
        raise MuseVInputError(f"{node}: 'referencenet' ({name}): {e}") from None
    ops = comfy.ops.pick_operations(weight_dtype, compute_dtype, load_device=load_device())
    try:
        module = ReferenceNetModule(geo, unet_config, ops, weight_dtype, compute_dtype)
    except (AssertionError, ValueError, ZeroDivisionError) as e:
        raise MuseVInputError(f"{node}: 'referencenet' ({name}): ComfyUI's UNet cannot be built for "
                              f"{geo.describe()} ({e})") from None
    ldm, missing = diffusers_to_comfy(sd, unet_config, module)
    if missing:
        raise MuseVInputError(
            f"{node}: 'referencenet' ({name}) lacks {len(missing)} weights of its encoder ({missing[:3]}...): "
            "the file is incomplete: download motion/musev_referencenet/referencenet again")
    # copies: the reader's tensors may map the file (safetensors), and an in-place rewrite of the file must
    # not change (or crash) a model that is still in use; the rewrite gives a new cache key instead
    ldm = {k: v.to(dtype=weight_dtype, copy=True) for k, v in ldm.items()}
    try:
        module.load_state_dict(ldm, strict=True, assign=True)
    except RuntimeError as e:
        raise MuseVInputError(f"{node}: 'referencenet' ({name}): weight shapes do not fit "
                              f"{geo.describe()}: {str(e)[:300]}") from None
    module.eval().requires_grad_(False)
    if geo.has_up_path:
        log.info("MuseV ReferenceNet %s: the file also has an up path; it is not used (MuseV keeps only the "
                 "encoder and middle block)", name)
    return module


def load_referencenet_patcher(path, weight_dtype, compute_dtype, node="MuseVReferenceNet", input_name="referencenet",
                              files=None):
    """A ModelPatcher holding the ReferenceNet for ``path`` (cached by file identity and dtypes)."""
    files = files or checkpoint_files(path, ("referencenet",), node, input_name)
    return _CACHE.get_or_build(FileModelCache.key(files, weight_dtype, compute_dtype),
                               lambda: _build_referencenet_patcher(path, weight_dtype, compute_dtype, node, input_name,
                                                                   files))


def _build_referencenet_patcher(path, weight_dtype, compute_dtype, node, input_name, files=None):
    files = files or checkpoint_files(path, ("referencenet",), node, input_name)
    sd, config, weights = read_referencenet(path, node, input_name, files)
    module = build_referencenet(sd, config, weight_dtype, compute_dtype, os.path.basename(weights), node,
                                C.short_name(files[1]) if files[1] else "config.json")
    log.info("MuseV ReferenceNet %s: %s", os.path.basename(weights), module.geometry.describe())
    patcher = comfy.model_patcher.ModelPatcher(module, load_device=load_device(), offload_device=offload_device())
    # MultiGPU deep clones rebuild it from the file, with their own weights on their own device
    return compat.set_reload_factory(patcher, rebuild_referencenet_patcher,
                                     (path, weight_dtype, compute_dtype, node, input_name))


def rebuild_referencenet_patcher(path, weight_dtype, compute_dtype, node, input_name, **_host_flags):
    """A fresh (uncached) ReferenceNet patcher: the reload factory ComfyUI calls for deep clones."""
    return _build_referencenet_patcher(path, weight_dtype, compute_dtype, node, input_name)


def lcm_repeat(contexts):
    """Stack contexts of different token counts by repeating each to the LCM length (attention to
    a key/value set repeated k times is the same attention: ComfyUI batches conds the same way)."""
    lengths = [c.shape[1] for c in contexts]
    if len(set(lengths)) == 1:
        return torch.cat(contexts, dim=0)
    n = 1
    for length in lengths:
        n = n * length // math.gcd(n, length)
    return torch.cat([c.repeat(1, n // c.shape[1], 1) for c in contexts], dim=0)


def run_referencenet(patcher, latent, contexts, count=None):
    """Features for several contexts at once.

    ``latent`` (n_ref, C, h, w) clean reference latents; ``contexts`` ``{key: (1, L, D)}``.  Loads the
    ReferenceNet through ComfyUI's model management and returns ``{key: [13 × (1, C_i, n_ref, h_i, w_i)]}``
    on the ReferenceNet's device."""
    if getattr(patcher.model, "device", None) != patcher.load_device:
        # Normally loaded with the UNet before sampling (an additional model); model management is
        # not called from MultiGPU worker threads when it already is.
        comfy.model_management.load_models_gpu([patcher])
    module = patcher.model
    dev = patcher.load_device
    keys = list(contexts)
    n_ref = latent.shape[0]
    ctx = lcm_repeat([contexts[k].to(device=dev) for k in keys])               # (K, L, D)
    ctx = ctx.repeat_interleave(n_ref, dim=0)                                   # (K·n_ref, L, D)
    x = latent.to(dev).repeat(len(keys), 1, 1, 1)                              # (K·n_ref, C, h, w)
    pbar = comfy.utils.ProgressBar(len(module.blocks()))
    with torch.no_grad():
        feats = module(x, ctx, progress=pbar)
    if count is not None:
        count()
    out = {}
    for i, k in enumerate(keys):
        rows = slice(i * n_ref, (i + 1) * n_ref)
        # (n_ref, C, h, w) -> (1, C, n_ref, h, w): MuseV's return_ndim=5 layout
        out[k] = [f[rows].movedim(0, 1).unsqueeze(0) for f in feats]
    return out
