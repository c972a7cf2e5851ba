"""Visual-condition parallel denoising inside ComfyUI's sampling (spec §5.5-5.6, DESIGN.md §2).

* ``MuseVContextHandler`` (``model_options["context_handler"]``): splits the frames into MuseV's
  fixed windows, runs ``calc_cond_batch`` on groups of ``context_batch_size`` windows and averages
  the overlapping predictions with equal weight (MuseV's plain mean).  Averaging ComfyUI's
  "denoised" outputs equals averaging ε for a shared σ, and CFG is applied afterwards, exactly as
  MuseV does.
* ``calc_cond_batch_wrapper`` (CALC_COND_BATCH): for every window of the call, prepends the clean
  vision-condition latent(s) pre-multiplied by sqrt(σ²+1) so that after the model's input scaling
  they are the clean latent for the UNet *and* any ControlNet, swaps ControlNet hints to
  ``[vision-frame hint(s); the window's hints]``, announces the segments to the UNet patch and
  strips the vision rows from the outputs.  It runs with or without windows, under any sampler.
"""
import logging
import threading

import torch

import comfy.model_management
from comfy.context_windows import ContextHandlerABC

from ..musev_core import windows as W
from . import compat
from .host import MuseVInputError
from .patch import RUN_KEY, STATE_KEY, WINDOW_KEY

log = logging.getLogger("comfyui-musev")

PROGRESS_KEY = "musev_progress"   # optional callable(n) in transformer_options: advanced by the windows done

AUTO_BATCH = 0          # context_batch_size 0: as many windows per UNet call as the device's free memory allows
MAX_BATCH = 64          # the input's maximum; auto never takes more windows per call
# MuseV's layers on top of ComfyUI's SD1.5 activation estimate (``BaseModel.memory_required``): the
# temporal transformers and convs, attn1 K/V doubled by ReferenceOnly, the 13 fusions' K/V.  A
# margin, not a measurement: bench/gpu.py prints the measured peak next to this estimate.
MUSEV_MEMORY_FACTOR = 1.5
BATCH_MARGIN = 1.5      # ComfyUI's own margin when it batches conds (samplers._calc_cond_batch)
AUTO_KEY = "musev_auto_batch"


def check_batch_size(value, node):
    """``context_batch_size``: 0 = auto, else 1..MAX_BATCH windows per UNet call; clear error otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MuseVInputError(f"{node}: 'context_batch_size' is {value!r}: use 0 (auto: as many windows per UNet call "
                              f"as free memory allows) or 1..{MAX_BATCH}")
    return value


def low_vram(model):
    """True where batching windows would compete with the weights for memory: ComfyUI runs in a
    low/no-VRAM mode, or the model is only partly loaded (lowvram offloading)."""
    mm = comfy.model_management
    if mm.vram_state in (mm.VRAMState.LOW_VRAM, mm.VRAMState.NO_VRAM):
        return True
    base = model.model if hasattr(model, "model_options") else model     # ModelPatcher or BaseModel
    return bool(getattr(base, "model_lowvram", False))


def batching_pays(device):
    """Whether several windows per UNet call can be faster on ``device``: on an accelerator, which a
    window alone leaves under-used; not on the CPU, whose cores one window already keeps busy (measured
    there: no gain at the reduced SD1.5 size, a loss under load; bench/bench_sampler.py)."""
    return torch.device(device).type != "cpu"


class MuseVContextHandler(ContextHandlerABC):
    def __init__(self, schedule="uniform_v2", context_frames=12, context_overlap=4, context_batch_size=AUTO_BATCH,
                 context_stride=1):
        super().__init__()
        self.schedule = schedule
        self.context_frames = int(context_frames)
        self.context_overlap = int(context_overlap)
        self.context_batch_size = int(context_batch_size)
        self.context_stride = int(context_stride)
        # what ComfyUI's own handler exposes and other code may read
        self.context_length = self.context_frames
        self.dim = 0
        self.last_auto = None       # (windows per call, details) of the latest auto decision: logs/benchmarks only

    def __deepcopy__(self, memo):
        return self

    def windows(self, n_frames):
        return W.get_windows(self.schedule, n_frames, self.context_frames, self.context_overlap, self.context_stride)

    def groups(self, n_frames, batch_size=None):
        """Window groups, one per UNet call: ``batch_size`` windows each (default: the handler's; auto
        before it is resolved counts as 1)."""
        k = self.context_batch_size if batch_size is None else int(batch_size)
        return W.batch_windows(self.windows(n_frames), max(1, k))

    def call_rows(self, n_frames, n_vis=0, batch_size=None):
        """Latent rows of the largest UNet call per guidance chunk: one window group, each window with
        the vision frame(s) in front.  The same for every video length once it exceeds one group."""
        return max(sum(len(w) + n_vis for w in group) for group in self.groups(max(1, int(n_frames)), batch_size))

    # auto batch size ------------------------------------------------------------------------------
    def memory_for(self, model, n_frames, n_vis, latent_shape, batch_size, n_conds=2):
        """Bytes one UNet call of ``batch_size`` windows needs by ComfyUI's estimate
        (``memory_required`` of its rows: ``n_conds`` guidance chunks of the largest window group,
        vision frames included) times MuseV's factor: the figure auto batching compares with free
        memory (with ComfyUI's margin)."""
        rows = n_conds * self.call_rows(n_frames, n_vis, batch_size)
        base = model.model if hasattr(model, "model_options") else model     # ModelPatcher or BaseModel
        return base.memory_required([rows] + list(latent_shape[1:])) * MUSEV_MEMORY_FACTOR

    def auto_batch_size(self, model, n_frames, n_vis, latent_shape, devices, n_conds=2):
        """``(k, details)``: the most windows per UNet call whose estimated memory (:meth:`memory_for`,
        times ComfyUI's batching margin) fits the free memory of every device in ``devices``; 1 under
        low VRAM and on the CPU (:func:`batching_pays`).  Under MultiGPU at most ceil(windows / devices), so every device keeps a group."""
        n_windows = len(self.windows(max(1, int(n_frames))))
        if low_vram(model):
            return 1, "low VRAM"
        if not any(batching_pays(d) for d in devices):
            return 1, "CPU: one window per call"
        k_max = min(MAX_BATCH, n_windows)
        if len(devices) > 1:
            k_max = min(k_max, -(-n_windows // len(devices)))
        free = min(compat.free_memory(model, d) for d in devices)
        k = 1
        for cand in range(k_max, 1, -1):
            if self.memory_for(model, n_frames, n_vis, latent_shape, cand, n_conds) * BATCH_MARGIN < free:
                k = cand
                break
        need = self.memory_for(model, n_frames, n_vis, latent_shape, k, n_conds)
        return k, f"{free / 2**30:.1f} GiB free, {need / 2**30:.2f} GiB estimated per call, {n_windows} windows"

    def resolve_batch_size(self, model, n_frames, n_vis, latent_shape, model_options, device, n_conds=2):
        """The windows per UNet call of this sampling run: the fixed ``context_batch_size``, or auto's
        choice, made once per run (at PREPARE_SAMPLING, right after ComfyUI loaded the models, or at the
        first step) and kept in the run so that every step batches alike."""
        if self.context_batch_size != AUTO_BATCH:
            return self.context_batch_size
        to = (model_options or {}).get("transformer_options", {})
        run = to.get(RUN_KEY)
        key = (AUTO_KEY, int(n_frames), int(n_vis), tuple(int(v) for v in latent_shape[1:]))
        cache = run.cache if run is not None else {}
        if key not in cache:
            devices = list((model_options or {}).get("multigpu_clones") or ()) or [device]
            k, details = self.auto_batch_size(model, n_frames, n_vis, latent_shape, devices, n_conds)
            cache[key] = k
            self.last_auto = (k, details)
            log.info("MuseV: context_batch_size auto: %d window(s) per UNet call (%s)", k, details)
        return cache[key]

    # ContextHandlerABC ------------------------------------------------------------------------
    def should_use_context(self, model, conds, x_in, timestep, model_options):
        # Always: one code path for every length (a single window when frames <= context_frames);
        # batching several windows per call also needs the handler.
        return True

    def get_resized_cond(self, cond_in, x_in, window, device=None):
        """Per-frame tensors (first dim = frames) are sliced to the window group; the rest as is.
        ControlNet hints are sliced by the CALC_COND_BATCH wrapper, not here."""
        if cond_in is None:
            return None
        n = x_in.shape[0]
        idx = window.index_list
        out = []
        for cond in cond_in:
            new = cond.copy()
            for key, value in cond.items():
                if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n and n > 1:
                    new[key] = value[idx]
                elif key == "model_conds" and isinstance(value, dict):
                    mc = dict(value)
                    for mk, mv in value.items():
                        c = getattr(mv, "cond", None)
                        if isinstance(c, torch.Tensor) and c.ndim > 0 and c.shape[0] == n and n > 1 and hasattr(mv, "_copy_with"):
                            mc[mk] = mv._copy_with(c[idx])
                    new[key] = mc
            out.append(new)
        return out

    def execute(self, calc_cond_batch, model, conds, x_in, timestep, model_options):
        n = x_in.shape[0]
        to = model_options.get("transformer_options", {})
        n_vis = _n_vis(to)
        groups = self.groups(n, self.resolve_batch_size(model, n, n_vis, tuple(x_in.shape), model_options, x_in.device,
                                                         n_conds=max(1, sum(c is not None for c in conds))))
        outs = [torch.zeros_like(x_in) for _ in conds]
        counts = torch.zeros(n, device=x_in.device, dtype=x_in.dtype)
        progress = to.get(PROGRESS_KEY)

        def run_group(group, options):
            comfy.model_management.throw_exception_if_processing_interrupted()
            flat = [f for w in group for f in w]
            window = compat.context_window(flat, total_frames=n, context_overlap=self.context_overlap)
            sub_options = options.copy()
            sub_to = dict(to)
            sub_to["context_window"] = window
            sub_to[WINDOW_KEY] = {"windows": group, "n_frames": n}
            sub_options["transformer_options"] = sub_to
            sub_conds = [self.get_resized_cond(c, x_in, window) for c in conds]
            results = calc_cond_batch(model, sub_conds, x_in[flat], timestep[flat] if timestep.shape[0] == n else timestep,
                                      sub_options)
            if progress is not None:
                progress(len(group))
            return results

        # Averaged in window order whatever ran where, so that MultiGPU lanes give the one-device sum.
        for group, results in zip(groups, evaluate_groups(groups, run_group, model_options)):
            offset = 0
            for w in group:
                rows = slice(offset, offset + len(w))
                for out, res in zip(outs, results):
                    out[w] += res[rows].to(out.device)
                counts[w] += 1
                offset += len(w)
        if bool((counts == 0).any()):
            raise RuntimeError(f"MuseV windows left frames uncovered: {torch.nonzero(counts == 0).flatten().tolist()}")
        shape = (n,) + (1,) * (x_in.ndim - 1)
        return [o / counts.view(shape) for o in outs]


# ------------------------------------------------------------------------------------------------
# MultiGPU: window groups spread over the devices of ComfyUI's work units

def multigpu_lanes(model_options, n_groups):
    """Device sets ("lanes") that each denoise their own window groups, or None for one lane.

    ComfyUI's MultiGPU work units (0.28, ``model_options["multigpu_clones"]``: device -> the MODEL's
    deep clone there) split the conds of one ``calc_cond_batch`` call, i.e. the CFG halves of one
    window group, over the devices.  With several window groups per step, each device (or each set
    of devices when there are more devices than groups) takes whole groups instead, so that a long
    video keeps every GPU busy; inside a lane of two or more devices the CFG halves are split as
    ComfyUI does."""
    clones = model_options.get("multigpu_clones") or {}
    if len(clones) < 2 or n_groups < 2:
        return None
    devices = list(clones)
    n_lanes = min(n_groups, len(devices))
    return [{d: clones[d] for d in devices[i::n_lanes]} for i in range(n_lanes)]


def evaluate_groups(groups, run_group, model_options):
    """Results of ``run_group(group, options)`` for every group, in order: one after another, or
    in MultiGPU lanes (one Python thread per lane; each lane's calls go to its own devices' workers)."""
    lanes = multigpu_lanes(model_options, len(groups))
    if lanes is None:
        for group in groups:
            yield run_group(group, model_options)
        return
    n_lanes = len(lanes)
    bounds = [len(groups) * i // n_lanes for i in range(n_lanes + 1)]
    results = [None] * len(groups)
    errors = []
    stop = threading.Event()

    def lane(i):
        options = dict(model_options)
        options["multigpu_clones"] = lanes[i]
        try:
            for gi in range(bounds[i], bounds[i + 1]):
                if stop.is_set():
                    return
                results[gi] = run_group(groups[gi], options)
        except BaseException as e:  # noqa: BLE001  (re-raised on the sampling thread below)
            errors.append(e)
            stop.set()

    threads = [threading.Thread(target=lane, args=(i,), name=f"musev-lane-{i}", daemon=True) for i in range(n_lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        interrupts = [e for e in errors if isinstance(e, comfy.model_management.InterruptProcessingException)]
        raise (interrupts or errors)[0]
    yield from results


# ------------------------------------------------------------------------------------------------
# PREPARE_SAMPLING: memory for one window group, not the whole video

def _n_vis(transformer_options):
    """Vision-condition frames in front of every window of this run (0 without a condition)."""
    run = transformer_options.get(RUN_KEY)
    vision = getattr(run, "vision", None)
    if vision is None:
        vision = getattr(transformer_options.get(STATE_KEY), "vision", None)
    return 0 if vision is None else int(vision.shape[0])


def prepare_sampling_wrapper(executor, model, noise_shape, conds, *args, **kwargs):
    """ComfyUI sizes the memory it frees before sampling from the noise shape; with MuseV's windows
    one UNet call only ever sees one window group (plus the vision frame(s) of every window), so
    the estimate is for that many rows whatever the video's length (as core's context windows do).

    ``context_batch_size`` auto: ComfyUI is asked for one window (the fallback auto may always take:
    never a partial load of the weights for batching's sake); right after it has loaded the models,
    auto picks the most windows per call whose estimate (the same ``memory_required`` of the same
    rows, :meth:`MuseVContextHandler.memory_for`) fits what is free, and keeps it for the run."""
    model_options = kwargs.get("model_options")
    handler = (model_options or {}).get("context_handler")
    if not (isinstance(handler, MuseVContextHandler) and len(noise_shape) == 4):
        return executor(model, noise_shape, conds, *args, **kwargs)
    to = model_options.get("transformer_options", {})
    n_vis = _n_vis(to)
    n_frames = int(noise_shape[0])
    rows = handler.call_rows(n_frames, n_vis, 1 if handler.context_batch_size == AUTO_BATCH else None)
    out = executor(model, [rows] + list(noise_shape[1:]), conds, *args, **kwargs)
    if handler.context_batch_size == AUTO_BATCH:
        n_conds = max(1, sum(1 for c in (conds or {}).values() if c)) if isinstance(conds, dict) else 2
        handler.resolve_batch_size(model, n_frames, n_vis, tuple(noise_shape), model_options, model.load_device,
                                   n_conds=min(2, n_conds))
    return out


# ------------------------------------------------------------------------------------------------
# CALC_COND_BATCH: vision frames in front of every window

def _control_chain(conds, devices=()):
    """Every ControlNet object of the conds' chains; under MultiGPU, each one's instances for
    ``devices`` (ComfyUI keeps a deep clone per device, each with its own hint)."""
    seen = {}
    for cond_list in conds:
        for c in cond_list or []:
            control = c.get("control")
            while control is not None:
                if devices and hasattr(control, "get_instance_for_device"):
                    instances = [control.get_instance_for_device(d) for d in devices]
                else:
                    instances = [control]
                for inst in instances:
                    seen.setdefault(id(inst), inst)
                control = getattr(control, "previous_controlnet", None)
    return list(seen.values())


def _hint_rows(total_hints, n_vis, n_frames, windows):
    """Rows of a ControlNet hint batch for ``[vision hint(s); window hints]`` of every window."""
    if total_hints == n_vis + n_frames:
        vis = list(range(n_vis))
        return [r for w in windows for r in vis + [n_vis + f for f in w]]
    if total_hints == n_frames:
        vis = [0] * n_vis
        return [r for w in windows for r in vis + list(w)]
    return None


def shared_text_context(conds):
    """True when every cond's cross-attention context is one sequence (batch 1): ComfyUI repeats it
    over the rows of the cond's chunk, so every chunk of the UNet call has one text context (the
    patch then projects and attends it once per chunk).  Per-frame contexts (batch > 1) say False."""
    seen = False
    for cond_list in conds:
        for c in cond_list or []:
            ca = (c.get("model_conds") or {}).get("c_crossattn")
            t = getattr(ca, "cond", None)
            if not isinstance(t, torch.Tensor) or t.ndim != 3 or t.shape[0] != 1:
                return False
            seen = True
    return seen


class _ControlSampling:
    """A ControlNet's model_sampling for one MuseV call: ComfyUI's, with MuseV's timesteps."""

    def __init__(self, model_sampling, timesteps):
        self._ms = model_sampling
        self._timesteps = timesteps

    def timestep(self, sigma):
        # replaces ComfyUI's snapping itself, so no check against it is needed
        return self._timesteps.continuous(sigma)

    def __getattr__(self, name):
        return getattr(self._ms, name)


def calc_cond_batch_wrapper(executor, model, conds, x_in, timestep, model_options):
    to = model_options.get("transformer_options", {})
    run = to.get(RUN_KEY)
    vis = getattr(run, "vision", None)
    window = to.get(WINDOW_KEY) or {}
    windows = window.get("windows") or [list(range(x_in.shape[0]))]
    n_frames = window.get("n_frames", x_in.shape[0])
    n_vis = 0 if vis is None else vis.shape[0]
    lengths = [len(w) for w in windows]
    if sum(lengths) != x_in.shape[0]:
        raise RuntimeError(f"MuseV: window rows {lengths} do not add up to the {x_in.shape[0]} input frames")

    if n_vis:
        if vis.shape[1:] != x_in.shape[1:]:
            raise MuseVInputError(
                f"vision condition latent is {tuple(vis.shape[1:])} (channels, h, w) but the video latent is "
                f"{tuple(x_in.shape[1:])}: encode the condition image at the video's size")
        vis = vis.to(device=x_in.device, dtype=x_in.dtype)
        pieces, sig, offset = [], [], 0
        per_row_t = timestep.shape[0] == x_in.shape[0]
        for length in lengths:
            xw = x_in[offset:offset + length]
            tw = timestep[offset:offset + length] if per_row_t else timestep
            t0 = tw[:1] if per_row_t else tw.reshape(-1)[:1]
            # calculate_input(sigma, x) divides by sqrt(sigma^2 + sigma_data^2): pre-multiply so the
            # UNet and the ControlNet see the clean latent (the UNet patch then overwrites exactly).
            scale = 1.0 / model.model_sampling.calculate_input(t0, torch.ones_like(t0)).reshape(1, *([1] * (xw.ndim - 1)))
            pieces += [vis * scale, xw]
            if per_row_t:
                sig += [t0.expand(n_vis), tw]
            offset += length
        x_call = torch.cat(pieces)
        t_call = torch.cat(sig) if per_row_t else timestep
    else:
        x_call, t_call = x_in, timestep

    sub_options = model_options.copy()
    sub_to = dict(to)
    sub_to[WINDOW_KEY] = dict(window, segments=[(n_vis, n_vis + length) for length in lengths],
                              vision_latents=vis if n_vis else None, shared_context=shared_text_context(conds))
    sub_options["transformer_options"] = sub_to

    swapped, sampling = [], []
    try:
        timesteps = getattr(run, "timesteps", None)
        for control in _control_chain(conds, list(model_options.get("multigpu_clones") or ())):
            ms = getattr(control, "model_sampling_current", None)
            if timesteps is not None and ms is not None and not isinstance(ms, _ControlSampling):
                # the ControlNet gets the UNet's (MuseV's continuous) timestep too
                sampling.append((control, ms))
                control.model_sampling_current = _ControlSampling(ms, timesteps)
            hint = getattr(control, "cond_hint_original", None)
            if hint is None or not isinstance(hint, torch.Tensor) or hint.shape[0] == 1:
                continue
            rows = _hint_rows(hint.shape[0], n_vis, n_frames, windows)
            if rows is None:
                raise MuseVInputError(
                    f"ControlNet image batch has {hint.shape[0]} frames; MuseV needs 1 (static), {n_frames} (one per "
                    f"generated frame) or {n_vis + n_frames} (condition frame(s) first, then one per generated frame): "
                    "fix the frame count of the control images (PoseVideoCondition does this)")
            swapped.append((control, hint, control.cond_hint))
            control.cond_hint_original = hint[rows]
            control.cond_hint = None
        out = executor(model, conds, x_call, t_call, sub_options)
    finally:
        for control, hint, cached in swapped:
            control.cond_hint_original = hint
            control.cond_hint = None
        for control, ms in sampling:
            control.model_sampling_current = ms

    if not n_vis:
        return out
    return [o[_window_rows(run, lengths, n_vis, x_in.device)] if o is not None else o for o in out]


def _window_rows(run, lengths, n_vis, device):
    """Rows of the windows' own frames in a call of ``[vision; window]`` blocks (built once per run)."""
    key = ("musev_window_rows", tuple(lengths), n_vis, str(device))
    cache = run.cache if run is not None else {}
    rows = cache.get(key)
    if rows is None:
        keep, offset = [], 0
        for length in lengths:
            keep += list(range(offset + n_vis, offset + n_vis + length))
            offset += n_vis + length
        rows = cache[key] = torch.tensor(keep, device=device)
    return rows


# ------------------------------------------------------------------------------------------------
# Installation

def apply_parallel_denoise(model, *, vision=None, schedule="uniform_v2", context_frames=12, context_overlap=4,
                           context_batch_size=AUTO_BATCH, noise=None, node="MuseVContextWindows"):
    """Clone of a MuseV MODEL with the context handler, the vision-frame wrapper, the condition
    frame(s) (raw VAE-space latents, (n_vis, C, h, w)) and the noise settings."""
    from comfy.patcher_extension import WrappersMP
    from .patch import get_state, set_state

    state = get_state(model, node)
    context_batch_size = check_batch_size(context_batch_size, node)
    try:
        W.validate(1, int(context_frames), int(context_overlap), max(1, context_batch_size))
    except W.WindowError as e:
        raise MuseVInputError(f"{node}: {e}") from None
    if schedule not in W.SCHEDULES:
        raise MuseVInputError(f"{node}: 'context_schedule' must be one of {list(W.SCHEDULES)}, got {schedule!r}")
    handler = model.model_options.get("context_handler")
    if handler is not None and not isinstance(handler, MuseVContextHandler):
        raise MuseVInputError(
            f"{node}: the MODEL already has ComfyUI's context windows ({type(handler).__name__}); MuseV brings its "
            "own (vision frame in every window): remove the other context-window node")
    if vision is not None:
        if not isinstance(vision, torch.Tensor) or vision.ndim != 4 or vision.shape[0] < 1:
            shape = tuple(vision.shape) if isinstance(vision, torch.Tensor) else type(vision).__name__
            raise MuseVInputError(f"{node}: 'vision_latent' must be an image latent batch (frames, 4, h, w), got "
                                  f"{shape}")
        if not torch.isfinite(vision).all():
            raise MuseVInputError(f"{node}: 'vision_latent' contains NaN/inf values: re-encode the condition image")
    m = model.clone()
    m.model_options["context_handler"] = MuseVContextHandler(schedule, context_frames, context_overlap,
                                                             context_batch_size)
    m.add_wrapper_with_key(WrappersMP.CALC_COND_BATCH, STATE_KEY, calc_cond_batch_wrapper)
    m.add_wrapper_with_key(WrappersMP.PREPARE_SAMPLING, STATE_KEY, prepare_sampling_wrapper)
    set_state(m, state.replace(vision=None if vision is None else vision.detach().float().cpu(), noise=noise))
    return m
