"""Other node packs on a MuseV MODEL: what they leave on a MODEL or in the conditioning, recognised
by the keys and classes they use (never by importing them), and what MuseV does with each.

* AnimateDiff-Evolved (ADE): a second motion model (``additional_models["ADE"]``, injections,
  ``VanillaTemporalModule`` timestep-embed patch) or its evolved sampling (wrappers keyed ``"ADE"``,
  ``ADE_params`` / ``ADE_sample_settings`` attachments: its noise, context windows, iterations).
  MuseV is a video model with its own motion layers, windows and noise: refused in either order, at
  LoadMuseVMotion (ADE first), at every MuseV node that takes a MuseV MODEL, and at the start of
  sampling (ADE applied after the last MuseV node, e.g. straight into a KSampler).
* attn2 replace patches keyed ``(block, id)`` (IPAdapter_plus on SD1.5): ComfyUI looks MuseV's
  ``(block, id, index)`` keys up first, so the other patch would be skipped silently where MuseV's
  referencenet variants have their own IP-Adapter.  MuseV's attention adds the other patch's
  contribution ``other(q, k, v) - Attn(q, k, v)`` to its own (text + MuseV IP term), so both
  adapters act, whichever node came first; with the other adapter's weight 0 the added term is
  exactly 0 (the output is MuseV's alone).
* an attn2 replace at one of MuseV's own ``(block, id, index)`` keys set by another node: refused
  (one of the two would be lost), at LoadMuseVMotion or at the start of sampling.
* ComfyUI's own context windows replacing MuseV's (after MuseVContextWindows): refused at sampling.
* Advanced-ControlNet: ControlNetAdvanced / T2IAdapterAdvanced rebuild their hint from
  ``cond_hint_original`` as core ControlNets do, so MuseV's per-window hint slicing applies to them
  (same result as core's ControlNet).  Where MuseV's windows / condition frames run (a
  CALC_COND_BATCH wrapper of ours), features indexing the frames of the whole batch (per-frame
  masks, latent keyframes, per-frame weight masks) and the ControlNets that run their own UNet
  passes or need an AnimateDiff motion model (Reference ControlNet, SparseCtrl) are refused at the
  start of sampling: they would silently see the window's rows as the video's first frames.
"""
import torch

from comfy.patcher_extension import WrappersMP

from .host import MuseVInputError, host_attention

STATE_KEY = "musev"                 # = patch.STATE_KEY (not imported: patch imports this module)
FOREIGN_ATTN2_KEY = "musev_foreign_attn2"   # per UNet call: {(block, id): other pack's attn2 replace}
ADE_NODES = ("Load AnimateDiff Model / Apply AnimateDiff Model / Use Evolved Sampling / AnimateDiff Loader")
_ADE_REFUSAL = ("MuseV is itself a video model with its own motion layers, context windows and video noise; an "
                "AnimateDiff motion model or AnimateDiff-Evolved's sampling cannot be combined with it on one MODEL. "
                "Take the AnimateDiff-Evolved nodes ({nodes}) out of this MODEL's path")


# ------------------------------------------------------------------------------------------------
# AnimateDiff-Evolved

def ade_patches(model):
    """What AnimateDiff-Evolved put on a ModelPatcher (list of short descriptions, empty if nothing)."""
    found = []
    additional = getattr(model, "additional_models", None) or {}
    injections = getattr(model, "injections", None) or {}
    if any(k.startswith("ADE") and v for k, v in additional.items()) or any(k.startswith("ADE") for k in injections):
        found.append("an AnimateDiff motion model (AnimateDiff-Evolved)")
    wrappers = getattr(model, "wrappers", None) or {}
    attachments = getattr(model, "attachments", None) or {}
    if (any(k.startswith("ADE") for by_key in wrappers.values() for k in by_key)
            or any(k.startswith("ADE") for k in attachments)):
        found.append("AnimateDiff-Evolved's sampling (Use Evolved Sampling / AnimateDiff Loader)")
    patches = (getattr(model, "model_options", None) or {}).get("transformer_options", {}).get("patches", {})
    if not found and any(isinstance(p, (tuple, list)) and p and getattr(p[0], "__name__", "") == "VanillaTemporalModule"
                         for p in patches.get("forward_timestep_embed_patch", [])):
        found.append("AnimateDiff temporal layers (VanillaTemporalModule)")
    return found


def refuse_ade(model, node, where):
    found = ade_patches(model)
    if found:
        raise MuseVInputError(f"{node}: {where} carries {' and '.join(found)}. " + _ADE_REFUSAL.format(nodes=ADE_NODES))


# ------------------------------------------------------------------------------------------------
# attn2 replace patches (IPAdapter_plus and the like)

def _attn2(model_options):
    return (model_options or {}).get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def check_attn2_slots(model_options, keys, node):
    """Before MuseV's own IP attn2 patches go in: a patch of another node at exactly one of
    MuseV's keys would be overwritten silently: refuse.  ``(block, id)`` keys are composed."""
    replaced = _attn2(model_options)
    taken = [k for k in keys if k in replaced]
    if taken:
        raise MuseVInputError(
            f"{node}: another node already replaced the cross-attention of transformer {taken[0]} "
            f"({type(replaced[taken[0]]).__name__}); MuseV's own IP-Adapter layers need that slot and one of the two "
            "would be lost. Remove that node from this MODEL's path")


def _ours(patch):
    return getattr(patch, "musev_ip_attn2", False)


def shadowed_attn2(transformer_options):
    """``{(block, id): patch}`` of other packs' attn2 patches that MuseV's ``(block, id, 0)`` keys
    shadow in this UNet call (ComfyUI looks up the 3-tuple key first)."""
    attn2 = transformer_options.get("patches_replace", {}).get("attn2")
    if not attn2:
        return None
    out = {k: p for k, p in attn2.items() if len(k) == 2 and _ours(attn2.get((k[0], k[1], 0)))}
    return out or None


def add_foreign_attn2(out, q, k, v, extra_options):
    """MuseV's attn2 output plus what another pack's shadowed patch at this block adds to plain
    attention (its adapter terms): ``out + other(q, k, v) - Attn(q, k, v)``."""
    other = (extra_options.get(FOREIGN_ATTN2_KEY) or {}).get(extra_options.get("block"))
    if other is None:
        return out
    delta = other(q, k, v, extra_options) - host_attention(q, k, v, extra_options["n_heads"])
    return out + delta.to(out.dtype)


# ------------------------------------------------------------------------------------------------
# Advanced-ControlNet (and any ControlNet object in the conditioning)

_REFUSED_CONTROLS = {
    "ReferenceAdvanced": "Advanced-ControlNet's Reference ControlNet (its own UNet pass on the reference latent; MuseV "
                         "already attends to the condition frame, and MuseVReferenceNet gives reference identity)",
    "SparseCtrlAdvanced": "Advanced-ControlNet's SparseCtrl (made for AnimateDiff motion models, with its own frame "
                          "indexing)",
}


def _frames(t):
    return int(t.shape[0]) if isinstance(t, torch.Tensor) and t.ndim >= 3 else 1


def _has_keyframes(group):
    return bool(getattr(group, "keyframes", None))


def _per_frame_features(control):
    """Advanced-ControlNet features that address frames of the whole batch."""
    found = []
    if _frames(getattr(control, "mask_cond_hint_original", None)) > 1:
        found.append("a mask with one frame per latent (mask_optional)")
    if _has_keyframes(getattr(control, "latent_keyframe_override", None)):
        found.append("latent keyframes")
    weights = [getattr(control, "weights_override", None)]
    tks = getattr(getattr(control, "timestep_keyframes", None), "keyframes", None) or []
    for tk in tks:
        if _has_keyframes(getattr(tk, "latent_keyframes", None)) and "latent keyframes" not in found:
            found.append("latent keyframes")
        if _frames(getattr(tk, "mask_hint_orig", None)) > 1:
            found.append("a timestep keyframe mask with one frame per latent")
        weights.append(getattr(tk, "control_weights", None))
    if any(_frames(getattr(w, "weight_mask", None)) > 1 for w in weights if w is not None):
        found.append("a per-frame weight mask")
    return found


def control_chain(cond_lists):
    """Every ControlNet object (each once) of the conditioning lists ``cond_lists``, following each
    one's ``previous_controlnet`` chain."""
    seen = {}
    for cond_list in cond_lists:
        for c in cond_list or []:
            control = c.get("control") if isinstance(c, dict) else None
            while control is not None and id(control) not in seen:
                seen[id(control)] = control
                control = getattr(control, "previous_controlnet", None)
    return list(seen.values())


def check_controls(conds, where):
    """Refuse ControlNet features that would silently misread MuseV's window rows."""
    for control in control_chain((conds or {}).values()):
        name = type(control).__name__
        if name in _REFUSED_CONTROLS:
            raise MuseVInputError(
                f"{where}: {_REFUSED_CONTROLS[name]} is not supported with MuseV's context windows and condition "
                "frames: remove it from the conditioning (plain ControlNets, core or Advanced-ControlNet, work)")
        found = _per_frame_features(control)
        if found:
            raise MuseVInputError(
                f"{where}: the {name} in the conditioning has {' and '.join(found)}. MuseV denoises the video in "
                "windows with its condition frame(s) in front, and Advanced-ControlNet would apply these to the "
                "window's rows as if they were the video's first frames. Use a single-frame mask (or none) and no "
                "latent keyframes; strength, start/end percent, timestep keyframes and soft weights are supported")


# ------------------------------------------------------------------------------------------------
# Checks

def check_model(model, node, input_name="model"):
    """At a MuseV node taking a MuseV MODEL: refuse what cannot work on it."""
    refuse_ade(model, node, f"the '{input_name}' input")


def check_sampling(guider):
    """At the start of sampling a MuseV MODEL (OUTER_SAMPLE): what nodes after ours may have added."""
    where = "MuseV (start of sampling)"
    patcher = guider.model_patcher
    refuse_ade(patcher, where, "the MODEL being sampled (an AnimateDiff-Evolved node after LoadMuseVMotion)")
    options = guider.model_options
    replaced = _attn2(options)
    ours = [k for k, p in replaced.items() if len(k) == 3 and _ours(p)]
    state = options.get("transformer_options", {}).get(STATE_KEY)
    motion = getattr(state, "motion", None)
    if motion is not None:
        from ..musev_core import keys as K
        expected = [K.ip_attn2_key(prefix, motion.layers) for prefix in motion.ip_prefixes]
        lost = [k for k in expected if k not in ours]
        if lost:
            p = replaced.get(lost[0])
            raise MuseVInputError(
                f"{where}: a node applied after LoadMuseVMotion replaced the cross-attention of transformer {lost[0]} "
                f"({type(p).__name__ if p is not None else 'removed'}), where MuseV's own IP-Adapter layers are: they "
                "would be skipped silently. Remove that node from this MODEL's path")
    mine = bool((getattr(patcher, "wrappers", None) or {}).get(WrappersMP.CALC_COND_BATCH, {}).get(STATE_KEY))
    if mine:
        handler = options.get("context_handler")
        if handler is not None and type(handler).__name__ != "MuseVContextHandler":
            raise MuseVInputError(
                f"{where}: the MODEL's context windows were replaced by {type(handler).__name__} after "
                "MuseVContextWindows; MuseV brings its own (condition frame in every window): remove the other "
                "context-window node")
        check_controls(getattr(guider, "conds", None), where)
