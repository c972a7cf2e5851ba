"""Every difference between the ComfyUI versions this pack supports, in one place.

Supported: ComfyUI 0.3.64 (October 2025) to 0.28.x (July 2026) and, as far as the features below
stay, later releases.  Differences are found by *feature detection* (signatures, attributes), never
by comparing version numbers, so that a release in between or after costs at most one new branch
here.  Nothing else in the pack looks at the host's version.

What differs, and where it is handled:

* ``IndexListContextWindow`` gained ``total_frames`` / ``context_overlap`` (0.28 divides by
  ``total_frames``): :func:`context_window`.
* ``execution.PromptExecutor`` reads ``cache_args["ram"]`` for its RAM-pressure cache (0.28):
  :func:`prompt_executor` (in-process runs: tests and ``scripts/demo.py``).
* Multi-GPU work units (0.28, ``comfy/multigpu.py``): :func:`has_multigpu`.
* Per-input ``advanced`` flag for V1 nodes (0.28 frontend folds them away): :func:`advanced`.
* ``ModelPatcher.cached_patcher_init`` (0.28: how deep clones rebuild a model on another device):
  :func:`set_reload_factory`.
* Free memory for batching: ``ModelPatcher.get_free_memory`` (0.28) or
  ``model_management.get_free_memory``: :func:`free_memory`.
* ``comfy.utils.load_torch_file`` unpickles ``.ckpt``/``.bin``/``.pth`` with ``weights_only`` always on
  0.28; 0.3.64 only when torch has ``add_safe_globals`` (``ALWAYS_SAFE_LOAD``): :func:`torch_files_load_safely`.
  (``comfy.diffusers_load``, ``comfy.sd.load_clip``/``load_diffusion_model_state_dict``/``VAE`` and
  ``comfy.clip_vision.load_clipvision_from_sd``, which the MuseV loaders use, are the same on both.)
* Extra schedulers for KSampler / BasicScheduler: :func:`register_scheduler`.  (Both supported hosts
  keep them in ``comfy.samplers.SCHEDULER_HANDLERS`` + ``SCHEDULER_NAMES`` = ``KSampler.SCHEDULERS``;
  older trees had only a names list, which the function detects and reports.)
"""
import inspect
import logging

MIN_COMFYUI = "0.3.64"
log = logging.getLogger("comfyui-musev")


def comfyui_version():
    """The host's version string (``comfyui_version.__version__``), or ``"unknown"``."""
    try:
        import comfyui_version
        return str(comfyui_version.__version__)
    except Exception:  # noqa: BLE001  (very old trees have no version module)
        return "unknown"


def host_problems():
    """What the pack needs from ComfyUI and this host lacks (empty = supported)."""
    problems = []
    try:
        import comfy.patcher_extension as pe
    except Exception as e:  # noqa: BLE001
        return [f"comfy.patcher_extension cannot be imported ({e})"]
    for name in ("DIFFUSION_MODEL", "APPLY_MODEL", "OUTER_SAMPLE", "CALC_COND_BATCH", "PREPARE_SAMPLING"):
        if not hasattr(getattr(pe, "WrappersMP", None), name):
            problems.append(f"model wrapper {name}")
    if not hasattr(pe, "PatcherInjection"):
        problems.append("PatcherInjection")
    try:
        import comfy.model_patcher as mp
        for name in ("set_injections", "set_model_forward_timestep_embed_patch", "add_wrapper_with_key",
                     "set_additional_models", "set_model_emb_patch"):
            if not hasattr(mp.ModelPatcher, name):
                problems.append(f"ModelPatcher.{name}")
    except Exception as e:  # noqa: BLE001
        problems.append(f"comfy.model_patcher ({e})")
    try:
        import comfy.context_windows as cw
        if not hasattr(cw, "ContextHandlerABC"):
            problems.append("comfy.context_windows.ContextHandlerABC")
    except Exception:  # noqa: BLE001
        problems.append("comfy.context_windows")
    return problems


# ------------------------------------------------------------------------------------------------
# context windows

def _accepts(fn, name):
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def context_window(index_list, total_frames, context_overlap=0):
    """ComfyUI's ``IndexListContextWindow`` for ``index_list`` (dim 0), with ``total_frames`` and
    ``context_overlap`` where the host's class takes them."""
    from comfy.context_windows import IndexListContextWindow
    kw = {"dim": 0}
    init = IndexListContextWindow.__init__
    if _accepts(init, "total_frames"):
        kw["total_frames"] = max(1, int(total_frames))
    if _accepts(init, "context_overlap"):
        kw["context_overlap"] = int(context_overlap)
    return IndexListContextWindow(list(index_list), **kw)


# ------------------------------------------------------------------------------------------------
# memory

def free_memory(model, device):
    """Free memory on ``device`` as ComfyUI's own cond batching (``samplers._calc_cond_batch``) sees
    it: 0.28 asks the model's patcher (``ModelPatcher.get_free_memory``, which also counts memory its
    dynamic offloading can give back), older hosts ``model_management.get_free_memory``."""
    import comfy.model_management
    patcher = getattr(model, "current_patcher", None) or (model if hasattr(model, "model_options") else None)
    fn = getattr(patcher, "get_free_memory", None)
    if callable(fn):
        return fn(device)
    return comfy.model_management.get_free_memory(device)


# ------------------------------------------------------------------------------------------------
# execution

def prompt_executor(server, cache_type=None):
    """``execution.PromptExecutor`` as ``main.py`` builds it on this host (classic cache by default)."""
    import execution
    if cache_type is None:
        cache_type = execution.CacheType.CLASSIC
    kw = {"cache_type": cache_type}
    if _accepts(execution.PromptExecutor.__init__, "cache_args"):
        # 0.28 reads these keys unconditionally after each prompt (RAM-pressure bookkeeping)
        kw["cache_args"] = {"lru": 0, "ram": 0, "ram_inactive": 0}
    return execution.PromptExecutor(server, **kw)


# ------------------------------------------------------------------------------------------------
# multi-GPU work units

def has_multigpu():
    """True when the host has ComfyUI's MultiGPU work units (``comfy.multigpu``)."""
    try:
        import comfy.multigpu  # noqa: F401
        import comfy.model_patcher as mp
    except Exception:  # noqa: BLE001
        return False
    return hasattr(mp.ModelPatcher, "deepclone_multigpu")


def device_twin(owner, key, original):
    """``original`` (a ModelPatcher kept in ``owner``'s additional models under ``key``) as ``owner``
    carries it: under MultiGPU a deep clone on another device holds its own copy, recognised by the
    shared ``clone_base_uuid``.  ``original`` itself where there is no such copy (single device, or a
    host without MultiGPU)."""
    uuid = getattr(original, "clone_base_uuid", None)
    if owner is None or uuid is None:
        return original
    for m in owner.get_additional_models_with_key(key):
        if getattr(m, "clone_base_uuid", None) == uuid:
            return m
    return original


def set_reload_factory(patcher, factory, args):
    """Tell the host how to build this patcher again from scratch (0.28's ``cached_patcher_init``,
    used by MultiGPU deep clones and dynamic-VRAM delegates).  A no-op on hosts without it."""
    if hasattr(patcher, "cached_patcher_init"):
        patcher.cached_patcher_init = (factory, tuple(args))
    return patcher


# ------------------------------------------------------------------------------------------------
# node schemas

def advanced(options):
    """Input options marked as advanced.  A V1 node's options dict goes to ``/object_info`` as it is,
    which is exactly how core V3 inputs declared with ``advanced=True`` arrive there.  The frontend
    ComfyUI 0.28 ships (1.45) validates ``advanced`` as a boolean input option and puts it in the
    widget's options: its Vue-nodes renderer hides such inputs behind "Show advanced inputs" and its
    side panel lists them apart; its classic canvas (1.45) still draws them, for core nodes too.
    Values are saved and queued either way.  Older frontends ignore the key."""
    out = dict(options)
    out["advanced"] = True
    return out


# ------------------------------------------------------------------------------------------------
# schedulers

def register_scheduler(name, sigmas_fn):
    """Offer ``name`` as a scheduler in KSampler, KSamplerAdvanced and BasicScheduler.

    ``sigmas_fn(model_sampling, steps)`` returns the ``steps + 1`` sigmas (ending with 0).  The host's
    handler table gets a ``SchedulerHandler`` and the name list the nodes read (``SCHEDULER_NAMES``,
    the same list as ``KSampler.SCHEDULERS``) is extended in place, so node definitions that already
    hold the list see it.  Idempotent.  Returns True when registered; False (logged) on a host
    without a handler table."""
    import comfy.samplers as cs
    handlers = getattr(cs, "SCHEDULER_HANDLERS", None)
    handler_cls = getattr(cs, "SchedulerHandler", None)
    if not isinstance(handlers, dict) or handler_cls is None:
        log.warning("[comfyui-musev] this ComfyUI has no scheduler table (comfy.samplers.SCHEDULER_HANDLERS): "
                    "scheduler %r is available only in MuseV's own sampler", name)
        return False
    fields = getattr(handler_cls, "_fields", ())
    handlers[name] = handler_cls(sigmas_fn, use_ms=True) if "use_ms" in fields else handler_cls(sigmas_fn)
    lists = [getattr(cs, "SCHEDULER_NAMES", None), getattr(getattr(cs, "KSampler", None), "SCHEDULERS", None)]
    seen = set()
    for names in lists:
        if isinstance(names, list) and id(names) not in seen:
            seen.add(id(names))
            if name not in names:
                names.append(name)
    return True


# ------------------------------------------------------------------------------------------------
# checkpoint files

def torch_files_load_safely():
    """True when ComfyUI's own loaders (Load Checkpoint, Load VAE, ...) read pickle files with
    ``weights_only=True``: always on hosts without the ``ALWAYS_SAFE_LOAD`` switch (0.28 removed the
    unsafe path), else the switch (0.3.64 sets it when torch >= 2.4)."""
    import comfy.utils
    return bool(getattr(comfy.utils, "ALWAYS_SAFE_LOAD", True))
