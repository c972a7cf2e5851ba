"""MuseV installed into a ComfyUI MODEL (DESIGN.md §2).

Everything lives on a ``model.clone()``:
* structural modules (temporal convs/transformers, ``transformer_in``, 13 ReferenceNet fusions)
  are *injected* into the UNet's ``TimestepEmbedSequential`` blocks as parameter-free stand-ins
  (``set_injections``), run by one ``forward_timestep_embed_patch`` handler; their weights live in
  their own ModelPatcher (``set_additional_models``) so ComfyUI loads and offloads them;
* ReferenceOnly attn1 = ``attn1_patch``; IP-Adapter = 16 ``attn2`` replace patches;
* zero timestep embedding of vision frames = ``emb_patch``;
* a DIFFUSION_MODEL wrapper builds the per-call layout, frame embedding and reference inputs;
* an OUTER_SAMPLE wrapper holds per-run caches and ejects the modules afterwards, so the shared
  ``nn.Module`` of the base MODEL is exactly as before after success, error or interrupt.
"""
import dataclasses
import functools
import logging
import math
import weakref

import torch

import comfy.model_sampling
import comfy.patcher_extension as pe
from comfy.patcher_extension import PatcherInjection, WrappersMP

from ..musev_core import keys as K
from ..musev_core.layout import COND, UNCOND, CallLayout
from ..musev_core import sigmas as S
from ..musev_core.motion import CallContext
from . import interop
from . import checks
from .host import (MuseVInputError, block_channels, host_attention, is_resblock, is_spatial_transformer,
                   restore_attention, upcast_attention)

log = logging.getLogger("comfyui-musev")

STATE_KEY = "musev"            # model_options["transformer_options"][STATE_KEY] -> MuseVState
CALL_KEY = "musev_call"        # per UNet call CallContext
RUN_KEY = "musev_run"          # per sampling run cache (MuseVRun)
WINDOW_KEY = "musev_window"    # per window layout announced by whoever prepends vision frames
ROLE_COND_KEY = "musev_role"   # optional model-cond tagging each chunk's guidance role
SCALED_KEY = "musev_scaled_input"   # the UNet input scaled as MuseV's scheduler scales it (APPLY_MODEL -> DIFFUSION_MODEL)
INPUT_KEY = "musev_input"      # while providers resolve: {"x_shape", "context", "layout"} of this UNet call
CONSTANTS_KEY = "musev_run_constants"   # False: per-call constants only (benchmarks compare; default on)


class MuseVRuntimeError(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class MuseVState:
    """Immutable description of the MuseV patch on one MODEL clone (copy-on-write via replace)."""
    motion_patcher: object            # ModelPatcher around musev_core.motion.MuseVMotionModel
    source: str = ""
    frame_rate: float = 8.0
    temporal: bool = True
    ip: object = None                 # provider: .resolve(run, device, dtype, to) -> {"tokens": {role: t}, "scale": s}
    reference: object = None          # provider: .resolve(run, device, dtype, to, ip) -> {role: [13 features]}
    face: object = None               # provider: .resolve(run, device, dtype, to) -> faceid.FaceCall or None
    vision: object = None             # raw (VAE-space) LATENT samples of the condition frame(s), (n_vis, C, h, w)
    noise: object = None              # NoiseSettings: replace the sampler's noise with MuseV's video noise

    @property
    def motion(self):
        return self.motion_patcher.model.motion

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)

    def __deepcopy__(self, memo):     # ModelPatcher.clone deep-copies model_options
        return self


@dataclasses.dataclass(frozen=True)
class NoiseSettings:
    kind: str = "video_fusion"        # "video_fusion" | "random"
    w_ind_noise: float = 0.5
    img_weight: float = 1e-3
    diffusers_init: bool = True       # initial latent = noise * sigma_max as diffusers (ComfyUI: sqrt(1+sigma^2))


class MuseVRun:
    """Per sampling-run state: caches (ReferenceNet features, IP tokens...), the vision latents in
    model space, counters."""

    def __init__(self):
        self.cache = {}
        self.counters = {}
        self.vision = None
        self.timesteps = None         # MuseVTimesteps of the model being sampled (or None)

    def count(self, name):
        self.counters[name] = self.counters.get(name, 0) + 1

    def constants(self, device):
        """The store of values that are the same for every UNet call of this run on ``device``
        (``CallContext.constants``: layouts and their index tensors, frame embeddings, ReferenceNet
        and IP-Adapter K/V).  One store per device: MultiGPU clones each keep their own."""
        key = ("musev_constants", str(device))
        store = self.cache.get(key)
        return store if store is not None else self.cache.setdefault(key, {})

    def __deepcopy__(self, memo):
        return self


def get_state(model, node="", input_name="model", required=True):
    state = model.model_options.get("transformer_options", {}).get(STATE_KEY)
    if state is None and required:
        raise MuseVInputError(
            f"{node}: the '{input_name}' input has no MuseV motion model: connect LoadMuseVMotion first")
    if state is not None and required:
        interop.check_model(model, node, input_name)   # e.g. AnimateDiff applied after LoadMuseVMotion
    return state


def set_state(model, state):
    model.model_options.setdefault("transformer_options", {})[STATE_KEY] = state


# ------------------------------------------------------------------------------------------------
# Injection

class MuseVInjected(torch.nn.Module):
    """Parameter-free stand-in inside a UNet block; the real module is held, not registered, so the
    UNet's parameters and state dict never include MuseV weights."""

    def __init__(self, module):
        super().__init__()
        object.__setattr__(self, "musev_module", module)
        self._warned = False

    def forward(self, x, *args, **kwargs):
        # Only reached if a UNet runs without the MuseV handler (should never happen: modules are
        # ejected after each run).  Behave as the original UNet.
        if not self._warned:
            log.warning("MuseV layer reached outside a MuseV model; passing through (%s)", self.musev_module.musev_key)
            self._warned = True
        return x

    def extra_repr(self):
        return f"{self.musev_module.musev_key} ({self.musev_module.musev_kind})"


def _block(unet, where):
    kind, idx = where
    if kind == "input":
        return unet.input_blocks[idx]
    if kind == "middle":
        return unet.middle_block
    return unet.output_blocks[idx]


def _rebuild(block, children):
    block._modules.clear()
    for i, child in enumerate(children):
        block._modules[str(i)] = child


def inject_into(unet, motion):
    """Insert stand-ins for every placed MuseV module (MuseV's order inside each block)."""
    eject_from(unet)   # stale stand-ins (a previous patcher that never ejected) are dropped
    by_block = {}
    for place, module in motion.injected_modules():
        by_block.setdefault(place.block, []).append((place, module))
    for where, items in by_block.items():
        block = _block(unet, where)
        out = []
        n_res = n_st = 0
        for child in list(block):
            out.append(child)
            if is_resblock(child):
                out += [MuseVInjected(m) for p, m in items if p.anchor == ("after_res", n_res)]
                n_res += 1
            elif is_spatial_transformer(child):
                out += [MuseVInjected(m) for p, m in items if p.anchor == ("after_st", n_st)]
                n_st += 1
        order = {"temp_attn": 0, "refer_fuse": 1}
        out += [MuseVInjected(m) for p, m in sorted((it for it in items if it[0].anchor == ("end",)),
                                                     key=lambda it: order.get(it[0].kind, 2))]
        placed = sum(isinstance(c, MuseVInjected) for c in out)
        if placed != len(items):
            raise MuseVRuntimeError(f"MuseV: could not place {len(items) - placed} module(s) in block {where}")
        _rebuild(block, out)


def eject_from(unet):
    for blocks in (unet.input_blocks, [unet.middle_block], unet.output_blocks):
        for block in blocks:
            if any(isinstance(c, MuseVInjected) for c in block):
                _rebuild(block, [c for c in block if not isinstance(c, MuseVInjected)])


def count_injected(unet):
    return sum(isinstance(m, MuseVInjected) for m in unet.modules())


# UNet -> (weak) ModelPatcher whose injection put MuseV's modules into it.  A MODEL and its
# MultiGPU deep clones each own a UNet and a motion patcher on their own device: every UNet call
# finds its own motion model, ReferenceNet, ... through the patcher that injected its UNet.
_INJECTED = weakref.WeakKeyDictionary()


def motion_patcher_of(patcher):
    """The motion ModelPatcher carried by ``patcher`` (its own device's copy under MultiGPU)."""
    models = patcher.get_additional_models_with_key(STATE_KEY)
    if not models:
        raise MuseVRuntimeError("MuseV: the MODEL carries no motion model (LoadMuseVMotion's patch was removed)")
    return models[0]


def injecting_patcher(unet):
    """The ModelPatcher whose MuseV injection is in ``unet`` (None outside a run)."""
    ref = _INJECTED.get(unet)
    return ref() if ref is not None else None


def _make_injection():
    def inject(patcher):
        unet = patcher.model.diffusion_model
        inject_into(unet, motion_patcher_of(patcher).model.motion)
        _INJECTED[unet] = weakref.ref(patcher)

    def eject(patcher):
        unet = patcher.model.diffusion_model
        eject_from(unet)
        _INJECTED.pop(unet, None)

    return PatcherInjection(inject=inject, eject=eject)


# ------------------------------------------------------------------------------------------------
# Patches (module-level functions: deep-copied atomically by ModelPatcher.clone)

def forward_timestep_embed_handler(layer, x, emb, context, transformer_options, *args, **kwargs):
    call = transformer_options.get(CALL_KEY)
    if call is None:
        raise MuseVRuntimeError("MuseV layers ran without the MuseV call context (DIFFUSION_MODEL wrapper missing)")
    return call.run_injected(layer.musev_module, x)


def emb_patch(emb, model_channels, transformer_options):
    call = transformer_options.get(CALL_KEY)
    return emb if call is None else call.zero_vision_time_embedding(emb)


def attn1_patch(n, context_attn1, value_attn1, extra_options):
    call = extra_options.get(CALL_KEY)
    if call is None or not call.layout.uses_vision:
        return n, context_attn1, value_attn1
    extended = call.reference_only_context(n)
    if context_attn1 is not n:   # another patch already changed K/V: append the vision tokens to it
        extended = torch.cat([context_attn1, extended[:, n.shape[1]:]], dim=1)
    return n, extended, extended


def attn2_patch(n, context_attn2, value_attn2, extra_options):
    """One text-context row per guidance chunk into the K/V projections of attn2 where MuseV's own
    attn2 (:class:`IPAttn2`) expands it again (``CallContext.reduce_text_context``): the host projects
    ``chunks`` rows instead of ``rows`` identical ones."""
    call = extra_options.get(CALL_KEY)
    if call is None or not call.text_fold:
        return n, context_attn2, value_attn2
    block = extra_options.get("block")
    if block is None:
        return n, context_attn2, value_attn2
    key = (block[0], block[1], extra_options.get("block_index", 0))
    context_attn2, value_attn2 = call.reduce_text_context(key, context_attn2, value_attn2)
    return n, context_attn2, value_attn2


def _fold_blocks(transformer_options):
    """attn2 blocks whose replace is MuseV's own (which expands one text row per chunk) with no other
    pack's attn2 shadowed there, while MuseV's attn2 patch is the last one: where the text context
    may be reduced to one row per guidance chunk."""
    patches = transformer_options.get("patches", {}).get("attn2_patch") or []
    if not patches or patches[-1] is not attn2_patch:
        return frozenset()
    attn2 = transformer_options.get("patches_replace", {}).get("attn2", {})
    shadowed = {k for k in attn2 if len(k) == 2}       # another pack's (block, id) patch, run by ours with full K/V
    return frozenset(k for k, p in attn2.items() if len(k) == 3 and isinstance(p, IPAttn2) and (k[0], k[1]) not in shadowed)


class IPAttn2:
    """attn2 replace: text attention + ip_scale · attention to the IP tokens (decoupled) + the
    IP-Adapter-FaceID term (added last, as MuseV).  Another pack's attn2 patch at the same block
    (IPAdapter_plus), which this one shadows, adds its own terms (interop.add_foreign_attn2)."""
    musev_ip_attn2 = True

    def __init__(self, prefix):
        self.prefix = prefix

    def __call__(self, q, k, v, extra_options):
        call = extra_options.get(CALL_KEY)
        heads = extra_options["n_heads"]
        if call is None:
            return interop.add_foreign_attn2(host_attention(q, k, v, heads), q, k, v, extra_options)
        out = interop.add_foreign_attn2(call.ip_attention(self.prefix, q, k, v, heads), q, k, v, extra_options)
        return call.face_attention(self.prefix, q, out, heads)

    def __deepcopy__(self, memo):
        return self


# ------------------------------------------------------------------------------------------------
# Wrappers

def _chunk_roles(rows, transformer_options, kwargs):
    roles = kwargs.get(ROLE_COND_KEY)
    cou = transformer_options.get("cond_or_uncond")
    k = len(cou) if cou else 1
    if isinstance(roles, torch.Tensor) and roles.shape[0] == rows:
        per_row = roles.reshape(rows, -1)[:, 0].round().long().tolist()
        return [per_row[(rows // k) * j] for j in range(k)]
    if cou:
        return [COND if c == 0 else UNCOND for c in cou]
    return [COND]


def build_layout(x, transformer_options, kwargs, store=None):
    rows = x.shape[0]
    roles = _chunk_roles(rows, transformer_options, kwargs)
    window = transformer_options.get(WINDOW_KEY) or {}
    segments = window.get("segments")
    if segments is None:
        n_vis = int(window.get("n_vis", 0))
        segments = [(n_vis, rows // max(1, len(roles)))]
    return CallLayout.reuse(store, rows, roles, segments)


def apply_model_wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={},
                        **kwargs):
    """MuseV's scheduler scales the UNet input by ``1 / float32(sqrt(sigma² + 1))`` with the root
    taken in double precision; ComfyUI's ``calculate_input`` takes it in float32, one ulp away for
    many sigmas.  The input scaled MuseV's way goes to the DIFFUSION_MODEL wrapper, which uses it
    when it is that same input to within rounding (EPS / v-prediction models)."""
    ms = getattr(executor.class_obj, "model_sampling", None)
    if (transformer_options.get(STATE_KEY) is not None and c_concat is None and isinstance(ms, comfy.model_sampling.EPS)
            and type(ms).calculate_input is comfy.model_sampling.EPS.calculate_input
            and isinstance(t, torch.Tensor) and t.ndim == 1 and t.shape[0] == x.shape[0] and x.is_floating_point()):
        scale = torch.sqrt(t.detach().to(torch.float64) ** 2 + float(ms.sigma_data) ** 2).to(x.dtype)
        transformer_options[SCALED_KEY] = x / scale.to(x.device).reshape(-1, *([1] * (x.ndim - 1)))
    try:
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
    finally:
        transformer_options.pop(SCALED_KEY, None)


def _musev_scaled_input(x, transformer_options):
    xs = transformer_options.pop(SCALED_KEY, None)
    if xs is None or xs.shape != x.shape or xs.dtype != x.dtype or xs.device != x.device:
        return x
    # ComfyUI's float32 root is at most an ulp or two off: anything else is not this input
    if not torch.allclose(xs, x, rtol=1e-6, atol=0):
        return x
    return xs


def diffusion_model_wrapper(executor, x, timesteps, context, y, control, transformer_options, **kwargs):
    state = transformer_options.get(STATE_KEY)
    if state is None:
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
    x = _musev_scaled_input(x, transformer_options)
    run = transformer_options.get(RUN_KEY)
    constants = None
    if run is not None and transformer_options.get(CONSTANTS_KEY, True):
        constants = run.constants(x.device)
    layout = build_layout(x, transformer_options, kwargs, constants)
    window = transformer_options.get(WINDOW_KEY) or {}
    vis_latents = window.get("vision_latents")
    if vis_latents is not None and layout.n_vis > 0:
        # Exact clean latents in the vision rows (the caller pre-scaled them by sqrt(sigma^2+1)).
        x = x.clone()
        for seg in layout.segments:
            x[seg.start:seg.start + seg.n_vis] = vis_latents.to(device=x.device, dtype=x.dtype)
    timesteps = musev_timesteps(run, timesteps, transformer_options.get("sigmas"))
    ip = refer = face = None
    # What providers may read about this call: the latent size (reference images are prepared at the
    # video's size) and the per-row text context with its layout (the ReferenceNet's context without IP).
    # ``patcher``: the ModelPatcher whose UNet runs this call (the MODEL, or its MultiGPU deep clone
    # on another device, with its own copies of the motion model and the ReferenceNet).
    patcher = injecting_patcher(executor.class_obj)
    transformer_options[INPUT_KEY] = {"x_shape": tuple(x.shape), "context": context, "layout": layout,
                                      "patcher": patcher}
    try:
        if state.ip is not None:
            ip = state.ip.resolve(run, x.device, x.dtype, transformer_options)
        if state.reference is not None:
            refer = state.reference.resolve(run, x.device, x.dtype, transformer_options, ip)
        if state.face is not None:
            face = state.face.resolve(run, x.device, x.dtype, transformer_options)
    finally:
        transformer_options.pop(INPUT_KEY, None)
    call = CallContext(
        motion=state.motion if patcher is None else motion_patcher_of(patcher).model.motion,
        layout=layout,
        frame_rate=float(transformer_options.get("musev_frame_rate", state.frame_rate)),
        temporal=bool(transformer_options.get("musev_temporal", state.temporal)),
        refer=refer,
        ip_tokens=ip["tokens"] if ip else None,
        ip_scale=float(ip["scale"]) if ip else 0.0,
        face=face,
        attn_fn=host_attention,
        constants=constants,
    )
    transformer_options[CALL_KEY] = call
    transformer_options[interop.FOREIGN_ATTN2_KEY] = interop.shadowed_attn2(transformer_options)
    if (window.get("shared_context") and transformer_options.get(CONSTANTS_KEY, True) and layout.chunks
            and isinstance(context, torch.Tensor) and context.shape[0] == layout.rows):
        # every chunk's rows carry one text context (calc_cond_batch_wrapper checked the conds)
        call.text_fold = True
        call.fold_blocks = _fold_blocks(transformer_options)
    norms = _spatial_outer_norms(executor.class_obj)
    saved = [n.eps for n in norms]
    for n in norms:
        n.eps = 0.0
    # half precision: the base UNet's attention (over MuseV's vision-frame tokens too) gets float32
    # scores for this call, as MuseV's own kernels had (restored right after)
    upcast = upcast_attention(executor.class_obj, x.dtype)
    try:
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
    finally:
        restore_attention(upcast)
        for n, e in zip(norms, saved):
            n.eps = e
        transformer_options.pop(CALL_KEY, None)
        transformer_options.pop(interop.FOREIGN_ATTN2_KEY, None)


_NORMS = weakref.WeakKeyDictionary()


def _spatial_outer_norms(unet):
    """norm1/norm3 of the spatial transformer blocks: MuseV runs them with eps 0 (a positional-
    argument slip in its BasicTransformerBlock, spec §2.5); worth 1e-5 at the output, so MuseV
    calls use eps 0 and restore ComfyUI's 1e-5 right after."""
    norms = _NORMS.get(unet)
    if norms is None:
        norms = []
        for m in unet.modules():
            if is_spatial_transformer(m):
                for tb in m.transformer_blocks:
                    norms += [tb.norm1, tb.norm3]
        _NORMS[unet] = norms
    return norms


class MuseVTimesteps:
    """sigma -> UNet timestep as MuseV's diffusers Euler pairs them (continuous, linear in sigma),
    for a discrete-time model.  ComfyUI's ``ModelSamplingDiscrete.timestep`` snaps a sigma to the
    nearest training step, which changes the UNet input whenever the schedule has fractional
    timesteps (MuseV's default 30 linspace steps: 999·k/29).  Used only where it agrees with
    ComfyUI's own snapping, i.e. exactly what ComfyUI would pass, made continuous."""

    def __init__(self, model_sampling):
        self.model_sampling = model_sampling
        table = model_sampling.sigmas.detach().to("cpu", torch.float32)
        musev = _diffusers_table(table.shape[0])
        # SD1.5's schedule (ComfyUI computes it in float64, diffusers in float32: up to ~1e-4 apart at
        # small sigmas): use diffusers' float32 table, whose interpolation made MuseV's sigmas, so
        # its timesteps come back exactly.  Any other schedule (cosine, zsnr...) keeps ComfyUI's.
        sd15 = (not getattr(model_sampling, "zsnr", False) and musev.shape == table.shape
                and torch.allclose(table, musev, rtol=1e-3, atol=0))
        self.table = musev if sd15 else table

    @staticmethod
    def for_model(patcher):
        try:
            ms = patcher.get_model_object("model_sampling")
        except Exception:  # noqa: BLE001  (no model_sampling: nothing to do)
            return None
        discrete = comfy.model_sampling.ModelSamplingDiscrete
        if not isinstance(ms, discrete) or type(ms).timestep is not discrete.timestep:
            return None
        sig = getattr(ms, "sigmas", None)
        if not isinstance(sig, torch.Tensor) or sig.ndim != 1 or sig.shape[0] < 2:
            return None
        return MuseVTimesteps(ms)

    def __call__(self, sigma, snapped):
        """Continuous timesteps for ``sigma`` (repeated over CFG chunks to ``snapped``'s length), or
        ``snapped`` unchanged when it is not ComfyUI's own snapping of these sigmas."""
        if sigma is None or not isinstance(sigma, torch.Tensor) or snapped.ndim != 1 or sigma.ndim != 1:
            return snapped
        n, m = snapped.shape[0], sigma.shape[0]
        if m == 0 or n % m:
            return snapped
        sig = sigma.repeat(n // m) if n != m else sigma
        if not torch.equal(self.model_sampling.timestep(sig).to(snapped.device, snapped.dtype), snapped):
            return snapped
        return self.continuous(sig).to(device=snapped.device, dtype=snapped.dtype)

    def continuous(self, sigma):
        """MuseV's timesteps for ``sigma`` (float32, on ``sigma``'s device)."""
        return S.sigma_to_timestep(sigma, self.table).to(sigma.device)


@functools.lru_cache(maxsize=None)
def _diffusers_table(n):
    return S.training_sigmas(dict(S.SD15_SCHEDULER_CONFIG, num_train_timesteps=n))


def musev_timesteps(run, timesteps, sigma):
    fn = getattr(run, "timesteps", None)
    return timesteps if fn is None else fn(sigma, timesteps)


def outer_sample_wrapper(executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
    guider = executor.class_obj
    to = guider.model_options.setdefault("transformer_options", {})
    state = to.get(STATE_KEY)
    previous = to.get(RUN_KEY)
    run = to[RUN_KEY] = MuseVRun()
    try:
        interop.check_sampling(guider)   # AnimateDiff-Evolved & co. applied after our nodes
        if state is not None:
            checks.before_sampling(guider, noise, latent_image, state)
        if state is not None:
            run.timesteps = MuseVTimesteps.for_model(guider.model_patcher)
        if state is not None and state.vision is not None:
            run.vision = prepare_vision(guider.model_patcher, state.vision, noise)
        if state is not None and state.noise is not None and bool(torch.count_nonzero(noise)):
            seed = args[3] if len(args) > 3 else kwargs.get("seed")
            noise = video_noise_for(guider.model_patcher, state.noise, noise, sigmas, seed, run.vision)
        if state is not None:
            # Work that needs the VAE / CLIP vision (reference latent, IP embedding at the video's
            # aspect) is done here, on the main thread, before any UNet call (which may run on
            # MultiGPU worker threads).
            for provider in (state.ip, state.reference, state.face):
                prepare = getattr(provider, "prepare", None)
                if prepare is not None:
                    prepare(run, tuple(noise.shape))
        out = executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
        return checks.after_sampling(guider, out) if state is not None else out
    finally:
        if previous is None:
            to.pop(RUN_KEY, None)
        else:
            to[RUN_KEY] = previous
        # The injected stand-ins sit in the nn.Module shared with the base MODEL: take them out now
        # (the next load of this clone puts them back), so the base is untouched after any exit.
        guider.model_patcher.eject_model()
        for clone in (guider.model_options.get("multigpu_clones") or {}).values():
            clone.eject_model()


def prepare_vision(patcher, raw, noise):
    """Condition latents in model space (``process_latent_in``), checked against the video latent."""
    vis = raw.float()
    if vis.ndim != 4:
        raise MuseVInputError(f"vision condition latent must be (frames, channels, h, w), got {tuple(vis.shape)}")
    # (ParallelDenoiseSampler checks its own inputs earlier: what reaches here came from MuseVContextWindows)
    if noise.ndim == 4 and vis.shape[1] != noise.shape[1]:
        raise MuseVInputError(
            f"MuseVContextWindows: 'vision_latent' has {vis.shape[1]} latent channels but the sampler's latent_image "
            f"has {noise.shape[1]}: encode the condition image with the same (SD1.5) VAE as the video")
    if tuple(vis.shape[1:]) != tuple(noise.shape[1:]):
        raise MuseVInputError(
            f"MuseVContextWindows: 'vision_latent' is {vis.shape[3] * 8}x{vis.shape[2] * 8} but the sampler's "
            f"latent_image is {noise.shape[-1] * 8}x{noise.shape[-2] * 8}: encode the condition image at the "
            "video's width/height (or size the empty latent to it)")
    return patcher.model.process_latent_in(vis)


def video_noise_for(patcher, settings, noise, sigmas, seed, vision):
    """MuseV's initial noise (video_fusion or random, image-based mix), replacing the sampler's."""
    from ..musev_core import noise as N
    n, c, h, w = noise.shape
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed or 0))
    out = N.video_noise(settings.kind, n, c, h, w, generator=gen, w_ind_noise=settings.w_ind_noise)
    if vision is not None and settings.img_weight > 0:
        out = N.image_based_mix(out, vision.to(out.dtype), settings.img_weight)
    if settings.diffusers_init:
        ms = patcher.model.model_sampling
        s0 = float(sigmas[0])
        if math.isclose(float(ms.sigma_max), s0, rel_tol=1e-5) or s0 > float(ms.sigma_max):
            # ComfyUI scales max-denoise noise by sqrt(1+sigma^2); diffusers' Euler by sigma_max.
            out = out * (s0 / math.sqrt(1.0 + s0 * s0))
    return out.to(device=noise.device, dtype=noise.dtype)


# ------------------------------------------------------------------------------------------------
# Installation

def check_fits(unet, motion, node="LoadMuseVMotion"):
    """Every MuseV module must match the channels of the host UNet where it goes."""
    for place, module in motion.injected_modules():
        where = place.block
        try:
            block = _block(unet, where)
        except IndexError:
            raise MuseVInputError(f"{node}: the motion checkpoint needs UNet block {where}, which this base model lacks")
        host_ch = block_channels(block)
        ours = getattr(module, "channels", None) or module.to_q.in_features
        if host_ch != ours:
            raise MuseVInputError(
                f"{node}: the motion checkpoint does not fit the base model: {place.key} has {ours} channels "
                f"but the base UNet has {host_ch} at {where[0]} block {where[1]}. Use an SD1.5 base checkpoint "
                "with the released MuseV motion file (both must be SD1.5-sized)")
    if motion.femb_dim is not None and motion.femb_dim != unet.time_embed[0].out_features:
        raise MuseVInputError(
            f"{node}: the motion checkpoint's frame embedding is {motion.femb_dim}-d but the base model's time "
            f"embedding is {unet.time_embed[0].out_features}-d: not an SD1.5 pairing")
    for prefix in motion.ip_prefixes:
        key = K.ip_attn2_key(prefix, motion.layers)
        block = _block(unet, key[:2])
        sts = [c for c in block if is_spatial_transformer(c)]
        if not sts:
            raise MuseVInputError(f"{node}: the motion checkpoint has IP-Adapter layers at {prefix} but the base UNet has no attention there")
        attn2 = sts[0].transformer_blocks[key[2]].attn2
        mod = motion.module_at(prefix)
        if mod.to_k_ip.out_features != attn2.to_k.out_features:
            raise MuseVInputError(f"{node}: IP-Adapter layer {prefix} has {mod.to_k_ip.out_features} channels, the base UNet {attn2.to_k.out_features}")


def install(model, motion_patcher, source="", frame_rate=8.0, temporal=True, node="LoadMuseVMotion"):
    """Return a clone of ``model`` with MuseV installed."""
    from .host import sd15_unet
    unet = sd15_unet(model, node)
    if get_state(model, required=False) is not None:
        raise MuseVInputError(
            f"{node}: the 'model' input already carries a MuseV motion model; connect the plain base MODEL")
    interop.refuse_ade(model, node, "the 'model' input")
    motion = motion_patcher.model.motion
    check_fits(unet, motion, node)
    # (block, id) attn2 patches (IPAdapter_plus) are kept and composed with MuseV's IP-Adapter
    interop.check_attn2_slots(model.model_options, [K.ip_attn2_key(p, motion.layers) for p in motion.ip_prefixes], node)
    m = model.clone()
    m.set_additional_models(STATE_KEY, [motion_patcher])
    m.set_injections(STATE_KEY, [_make_injection()])
    m.set_model_forward_timestep_embed_patch((MuseVInjected, forward_timestep_embed_handler))
    if motion.flags.keep_vision_condition:
        m.set_model_emb_patch(emb_patch)
    m.set_model_attn1_patch(attn1_patch)
    m.set_model_attn2_patch(attn2_patch)
    for prefix in motion.ip_prefixes:
        key = K.ip_attn2_key(prefix, motion.layers)
        m.set_model_attn2_replace(IPAttn2(prefix), key[0], key[1], key[2])
    m.add_wrapper_with_key(WrappersMP.APPLY_MODEL, STATE_KEY, apply_model_wrapper)
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, STATE_KEY, diffusion_model_wrapper)
    m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, STATE_KEY, outer_sample_wrapper)
    set_state(m, MuseVState(motion_patcher=motion_patcher, source=source, frame_rate=float(frame_rate),
                            temporal=bool(temporal)))
    return m


def unet_transformer_options(patcher, extra=None):
    """transformer_options as a sampler would pass them to the UNet (patches, wrappers, state) —
    for calling the patched UNet directly (tests, benchmarks)."""
    to = pe.copy_nested_dicts(patcher.model_options.get("transformer_options", {}))
    to["wrappers"] = pe.copy_nested_dicts(patcher.wrappers)
    to.update(extra or {})
    return to


# ------------------------------------------------------------------------------------------------
# Precomputed reference inputs (tests, benchmarks, or features computed elsewhere)

class StaticIP:
    """IP tokens given as tensors: ``{role: (1, n_tok, C)}``."""

    def __init__(self, tokens, scale=1.0):
        self.tokens = tokens
        self.scale = float(scale)

    def resolve(self, run, device, dtype, transformer_options):
        return {"tokens": {r: t.to(device=device, dtype=dtype) for r, t in self.tokens.items()}, "scale": self.scale}

    def __deepcopy__(self, memo):
        return self


class StaticReference:
    """ReferenceNet features given as tensors: ``{role: [13 features (1, C, n_ref, h, w)]}``."""

    def __init__(self, features):
        self.features = features

    def resolve(self, run, device, dtype, transformer_options, ip):
        return {r: [f.to(device=device, dtype=dtype) for f in feats] for r, feats in self.features.items()}

    def __deepcopy__(self, memo):
        return self
