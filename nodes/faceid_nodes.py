"""IP-Adapter-FaceID, MuseV's fourth identity technique (spec §3, last paragraph): MuseVFaceID and
MuseVFaceEmbed.

MuseVFaceID puts a *provider* on a clone of a MuseV MODEL (``MuseVState.face``) and, where the
motion model has none (the plain ``musev`` family), MuseV's attn2 replace patches on the 16 spatial
cross-attentions; the DIFFUSION_MODEL wrapper resolves the provider once per UNet call into a
``musev_core.faceid.FaceCall`` that adds ``ip_adapter_face_scale · Attn(q, face_k, face_v)`` after
the text and IP terms.  The face ``to_k_ip``/``to_v_ip`` weights live in their own ModelPatcher
(``set_additional_models``), so ComfyUI loads and offloads them with the UNet; the MLP projection
runs once per image in float32 on the CPU, as the IP-Adapter's projection does here.

Face embeddings: InsightFace ``buffalo_l`` through onnxruntime (``nodes/face_analysis.py``), or any
512-d embedding connected to ``face_embeds`` (type ``FACE_EMBEDS``: a ``(n, d)`` tensor).  MuseV
crops and resizes the face image to the video's size (centre crop to its aspect, LANCZOS) before
detection; a face image of another size is prepared that way at sampling time, as the IP image is.
"""
import collections
import logging
import os
import threading

import torch

import comfy.model_patcher
import folder_paths

from ..musev_core import faceid as F
from ..musev_core import image_prep
from ..musev_core import keys as K
from ..musev_core.checkpoints import CheckpointError, load_state_dict
from ..musev_core.layout import COND, UNCOND
from . import compat, interop, patch, paths
from . import face_analysis as FA
from .host import (FileModelCache, MuseVInputError, host_ops, is_spatial_transformer, load_device, offload_device,
                   sd15_unet)

log = logging.getLogger("comfyui-musev")

CATEGORY = "MuseV"
FACE_NODE = "MuseVFaceID"
EMBED_NODE = "MuseVFaceEmbed"
FACE_KEY = "musev_faceid"             # additional-models key of the face K/V patcher
FACE_EMBEDS = "FACE_EMBEDS"
DEFAULT_FILE = "IP-Adapter/models/ip-adapter-faceid_sd15.bin"
LATENT_RATIO = 8
FILE_HINT = (f"pick IP-Adapter/models/{F.RELEASED_NAME} (h94/IP-Adapter-FaceID, also in MuseV's repo) from "
             "models/musev/")

_CACHE = FileModelCache(2)


# ------------------------------------------------------------------------------------------------
# Weights

class FaceIDModule(torch.nn.Module):
    """The nn.Module a FaceID ModelPatcher holds (ComfyUI reads ``.device``/``get_dtype``)."""

    def __init__(self, layers):
        super().__init__()
        self.layers = layers
        self.device = torch.device("cpu")

    def get_dtype(self):
        return next(self.layers.parameters()).dtype


_WRONG = {
    K.VARIANT_MUSEV: "a MuseV motion UNet: connect it to LoadMuseVMotion",
    K.VARIANT_REFERENCENET_FAMILY: "a MuseV motion UNet: connect it to LoadMuseVMotion",
    "inconsistent": "a MuseV motion UNet: connect it to LoadMuseVMotion",
    K.KIND_REFERENCENET: "the MuseV ReferenceNet: load it with MuseVReferenceNet",
    K.KIND_IMAGE_PROJ: "an IP-Adapter image projection (CLIP image embeds): load it with MuseVIPAdapter",
    "diffusers_unet2d": "a diffusers UNet",
    "ldm_checkpoint": "a full Stable Diffusion checkpoint",
    "animatediff": "an AnimateDiff motion module",
}


def read_faceid(path, node=FACE_NODE, input_name="faceid_model"):
    """``(MLPProjModel (CPU, float32), {prefix: (k, v)}, file name)`` of an IP-Adapter-FaceID file."""
    if os.path.isdir(path):
        raise MuseVInputError(f"{node}: '{input_name}' is a folder; {FILE_HINT}")
    name = os.path.basename(path)
    try:
        sd = K.strip_common_prefix(load_state_dict(path))
    except CheckpointError as e:
        raise MuseVInputError(f"{node}: '{input_name}': {e}") from None
    kind = K.describe_keys(sd.keys())
    wrong = _WRONG.get(kind)
    if wrong:
        raise MuseVInputError(f"{node}: '{input_name}' ({name}) is {wrong}; {FILE_HINT} here")
    try:
        proj_sd, kv, n_lora = F.faceid_weights(sd)
        proj = F.MLPProjModel.from_state_dict({k: v.float() for k, v in proj_sd.items()})
    except (F.FaceIDError, RuntimeError) as e:
        raise MuseVInputError(f"{node}: '{input_name}' ({name}): {e}; {FILE_HINT}") from None
    if n_lora:
        log.info("%s: %s: %d LoRA weights ignored, as MuseV ignores them", node, name, n_lora)
    return proj.eval().requires_grad_(False), kv, name


def faceid_path(choice, node=FACE_NODE, input_name="faceid_model"):
    """The file of a ``faceid_model`` choice; the released file, when missing, says where to get it."""
    try:
        return paths.full_path(choice, input_name, node)
    except MuseVInputError:
        if os.path.basename(choice.rstrip("/")) != F.RELEASED_NAME:
            raise
    from . import model_table
    entry = model_table.get("faceid")
    roots = ", ".join(os.path.join(r, os.path.dirname(entry.name)) for r in folder_paths.get_folder_paths(paths.FOLDER))
    raise MuseVInputError(
        f"{node}: '{input_name}' = {choice!r} is not there: download {F.RELEASED_NAME} ({entry.url}; the same file "
        f"as h94/IP-Adapter-FaceID) into {roots}{os.sep} and refresh")


def load_faceid(path, weight_dtype, compute_dtype, node=FACE_NODE, input_name="faceid_model"):
    """``(projection, ModelPatcher of the face K/V layers, name)``, cached by file identity and dtype."""
    return _CACHE.get_or_build(FileModelCache.key(path, weight_dtype, compute_dtype),
                               lambda: _build(path, weight_dtype, compute_dtype, node, input_name))


def _build(path, weight_dtype, compute_dtype, node, input_name):
    proj, kv, name = read_faceid(path, node, input_name)
    layers = F.FaceIDLayers.from_weights({p: (k.to(weight_dtype), v.to(weight_dtype)) for p, (k, v) in kv.items()},
                                         ops=host_ops(weight_dtype, compute_dtype, load_device()), dtype=weight_dtype,
                                         device="cpu")
    layers.eval().requires_grad_(False)
    patcher = comfy.model_patcher.ModelPatcher(FaceIDModule(layers), load_device=load_device(),
                                               offload_device=offload_device())
    compat.set_reload_factory(patcher, rebuild_faceid_patcher, (path, weight_dtype, compute_dtype, node, input_name))
    return proj, patcher, name


def rebuild_faceid_patcher(path, weight_dtype, compute_dtype, node, input_name, **_host_flags):
    """A fresh (uncached) face K/V patcher: the reload factory ComfyUI calls for deep clones."""
    return _build(path, weight_dtype, compute_dtype, node, input_name)[1]


def check_fits(unet, layers, proj, name, motion_layers=2, node=FACE_NODE):
    """Every face K/V pair must fit the attn2 it goes to (channels and token width)."""
    for prefix in layers.prefixes:
        where = K.ip_attn2_key(prefix, motion_layers)
        block = patch._block(unet, where[:2])
        sts = [c for c in block if is_spatial_transformer(c)]
        if not sts or where[2] >= len(sts[0].transformer_blocks):
            raise MuseVInputError(f"{node}: the base UNet has no cross-attention at {where} for the face layer "
                                  f"{prefix}: use an SD1.5 base model")
        attn2 = sts[0].transformer_blocks[where[2]].attn2
        kv = layers.layer(prefix)
        if kv.to_k_ip.out_features != attn2.to_k.out_features:
            raise MuseVInputError(
                f"{node}: 'faceid_model' ({name}) does not fit the base model: its face layer {prefix} (ip_adapter."
                f"{F.file_index(prefix)}) has {kv.to_k_ip.out_features} channels, the base UNet "
                f"{attn2.to_k.out_features} at {where}. Use the SD1.5 {F.RELEASED_NAME} with an SD1.5 base")
        if kv.to_k_ip.in_features != proj.cross_dim:
            raise MuseVInputError(f"{node}: 'faceid_model' ({name}) is inconsistent: its projection makes "
                                  f"{proj.cross_dim}-d tokens, its layer {prefix} takes {kv.to_k_ip.in_features}-d")


# ------------------------------------------------------------------------------------------------
# Providers

def _twin(owner, original):
    """Under MultiGPU the face patcher of the UNet that calls (its own device's copy)."""
    fn = getattr(compat, "device_twin", None)
    return original if fn is None or owner is None else fn(owner, FACE_KEY, original)


class FaceIDProvider:
    """``resolve`` -> a ``FaceCall`` with ``{COND: proj(e), UNCOND: proj(0)}`` tokens, or None when
    ``scale`` is 0.  Embeddings come from the node (the image as given, or ``face_embeds``); a face
    image whose size is not the video's is centre-cropped and resized to it (MuseV) and analysed
    again before sampling (``prepare``), cached per size."""

    def __init__(self, proj, patcher, embeds, scale, images=None, analysis=None, channel_order=None,
                 input_name="image", source=""):
        self.proj = proj
        self.patcher = patcher
        self.scale = float(scale)
        self.images = images
        self.analysis = analysis
        self.channel_order = channel_order
        self.input_name = input_name
        self.source = source
        self._embeds = collections.OrderedDict({None: embeds})
        self._tokens = collections.OrderedDict()
        self.analyses = 0                              # face analyses at sampling time (tests, logging)
        self._lock = threading.RLock()                 # UNet calls may come from MultiGPU worker threads

    def __deepcopy__(self, memo):
        return self

    def _key_for(self, size):
        if size is None or self.images is None or not image_prep.needs_resize(self.images, *size):
            return None
        return tuple(size)

    def embeds_for(self, size):
        key = self._key_for(size)
        with self._lock:
            if key not in self._embeds:
                th, tw = key
                h, w = self.images.shape[1:3]
                log.info("%s: the face image is %dx%d but the video is %dx%d: centre-cropping it to the video's "
                         "aspect and resizing (LANCZOS) before face detection, as MuseV does", FACE_NODE, w, h, tw, th)
                from .reference_nodes import prepare_on_device
                images = prepare_on_device(self.images, th, tw)
                self._embeds[key] = FA.face_embeddings(
                    self.analysis, images, self.channel_order, FACE_NODE, self.input_name,
                    note=f" after cropping and resizing it to the video's {tw}x{th}, as MuseV does")
                self.analyses += 1
                while len(self._embeds) > 4:
                    self._embeds.popitem(last=False)
            return key, self._embeds[key]

    def prepare(self, run, noise_shape):
        """Before sampling (main thread): the face embedding at the video's size (ONNX runs here)."""
        if len(noise_shape) == 4:
            self.embeds_for((int(noise_shape[-2]) * LATENT_RATIO, int(noise_shape[-1]) * LATENT_RATIO))

    def tokens(self, size):
        """``(key, {COND: (1, n·tokens, C), UNCOND: proj(zeros)}, K/V cache)`` in float32 on the CPU."""
        key, embeds = self.embeds_for(size)
        with self._lock:
            if key not in self._tokens:
                with torch.no_grad():
                    cond, uncond = self.proj.tokens_for(embeds.float())
                self._tokens[key] = ({COND: cond, UNCOND: uncond}, {})
                while len(self._tokens) > 4:
                    self._tokens.popitem(last=False)
            return self._tokens[key]

    def resolve(self, run, device, dtype, transformer_options):
        if not self.scale > 0:
            return None
        from .reference_nodes import video_size
        inp = (transformer_options or {}).get(patch.INPUT_KEY) or {}
        tokens, cache = self.tokens(video_size(transformer_options))
        layers = _twin(inp.get("patcher"), self.patcher).model.layers
        return F.FaceCall(tokens, self.scale, layers, cache)


class StaticFace:
    """FaceID tokens given as tensors ``{role: (1, n_tok, C)}`` with a FaceIDLayers module (tests,
    parity fixtures that give MuseV's ``ip_adapter_face_emb``)."""

    def __init__(self, tokens, layers, scale=1.0):
        self.tokens = tokens
        self.layers = layers
        self.scale = float(scale)

    def resolve(self, run, device, dtype, transformer_options):
        if not self.scale > 0:
            return None
        return F.FaceCall({r: t.to(device=device, dtype=dtype) for r, t in self.tokens.items()}, self.scale,
                          self.layers)

    def __deepcopy__(self, memo):
        return self


def install_face(model, provider, patcher=None, prefixes=F.FACE_ATTN2_PREFIXES, node=FACE_NODE):
    """A clone of ``model`` with ``provider`` as its FaceID and MuseV's attn2 patch on every face
    position (the referencenet family already has them; ``musev`` gets them here)."""
    state = patch.get_state(model, node, "model")
    layers = state.motion.layers
    m = model.clone()
    to = m.model_options.setdefault("transformer_options", {})
    replaced = to.get("patches_replace", {}).get("attn2", {})
    for prefix in prefixes:
        key = K.ip_attn2_key(prefix, layers)
        current = replaced.get(key)
        if isinstance(current, patch.IPAttn2) and current.prefix == prefix:
            continue
        # another pack's patch on exactly this slot would be lost: refused; one on the block
        # (IPAdapter_plus' (block, id) keys) is composed by IPAttn2, as for MuseVIPAdapter
        interop.check_attn2_slots(m.model_options, [key], node)
        m.set_model_attn2_replace(patch.IPAttn2(prefix), key[0], key[1], key[2])
    if patcher is not None:
        m.set_additional_models(FACE_KEY, [patcher])
    patch.set_state(m, state.replace(face=provider))
    return m


def as_embeddings(value, node=FACE_NODE, input_name="face_embeds"):
    """A FACE_EMBEDS value (tensor / array ``(d,)``, ``(n, d)`` or ``(n, 1, d)``) as ``(n, d)`` float32."""
    if isinstance(value, dict):
        for k in ("embeds", "face_embeds", "normed_embedding", "embedding"):
            if k in value:
                value = value[k]
                break
    if not isinstance(value, torch.Tensor):
        try:
            import numpy as np
            value = torch.from_numpy(np.asarray(value, dtype=np.float32))
        except (TypeError, ValueError):
            raise MuseVInputError(f"{node}: '{input_name}' must be a face embedding tensor (n, 512), got "
                                  f"{type(value).__name__}") from None
    x = value.detach().float().cpu()
    if x.ndim == 1:
        x = x[None]
    elif x.ndim == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 2 or x.shape[0] < 1:
        raise MuseVInputError(f"{node}: '{input_name}' must be (n, 512) face embeddings, got {tuple(value.shape)}")
    if not torch.isfinite(x).all():
        raise MuseVInputError(f"{node}: '{input_name}' holds NaN or infinite values")
    return x


# ------------------------------------------------------------------------------------------------
# Nodes

def _face_analysis_input():
    return (FA.choices(), {
        "default": FA.AUTO,
        "tooltip": "Where the InsightFace buffalo_l files (det_10g.onnx + w600k_r50.onnx) are: models/musev/"
                   "IP-Adapter/models/image_encoder/models/buffalo_l/ (MuseV's place) or models/insightface/"
                   "models/buffalo_l/ (IPAdapter_plus' place); auto = the first that has both. Run with "
                   "onnxruntime; the insightface package is not needed."})


def _channel_input():
    return (list(FA.CHANNEL_CHOICES), {
        "default": FA.CHANNEL_MUSEV,
        "tooltip": "Channel order handed to InsightFace. MuseV passes RGB where InsightFace expects BGR, so its "
                   "face embeddings are computed on channel-swapped pixels: 'RGB (as MuseV)' reproduces MuseV. "
                   "'BGR (as InsightFace)' is InsightFace's own convention (how IP-Adapter-FaceID was trained and "
                   "how other FaceID nodes call it)."})


def _faceid_choices():
    """The released name first (listed even when missing: saved workflows validate and the node then
    says where to get it), then every other weight file under models/musev/ named like a FaceID file."""
    found = [e for e in paths.list_choices() if not e.endswith("/") and "faceid" in os.path.basename(e).lower()]
    return [DEFAULT_FILE] + [e for e in found if e != DEFAULT_FILE]


class MuseVFaceID:
    DESCRIPTION = (
        "IP-Adapter-FaceID as in MuseV: a 512-d InsightFace face embedding (buffalo_l, or your own) is projected "
        "to 4 tokens (MLPProjModel of ip-adapter-faceid_sd15.bin) and adds ip_adapter_face_scale x an attention to "
        "them in every spatial cross-attention, after the text and IP-Adapter terms. Unconditional tokens are the "
        "projection of zeros. The file's LoRA is ignored, as MuseV does. Works on both MuseV families, with or "
        "without MuseVIPAdapter.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A MODEL with a MuseV motion model (LoadMuseVMotion), with or without "
                                               "MuseVIPAdapter / MuseVReferenceNet."}),
                "faceid_model": (_faceid_choices(), {
                    "default": DEFAULT_FILE,
                    "tooltip": "IP-Adapter-FaceID weights from models/musev/: IP-Adapter/models/"
                               "ip-adapter-faceid_sd15.bin (SD1.5; its image_proj and the to_k_ip/to_v_ip of "
                               "ip_adapter entries 1, 3, ..., 31 are used, its LoRA is not)."}),
                "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05,
                                    "tooltip": "ip_adapter_face_scale: weight of the face tokens' attention (MuseV: "
                                               "1.0). 0 = no FaceID."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "The face image (the first face found is used; several images: their "
                                               "tokens are concatenated). MuseV centre-crops and resizes it to the "
                                               "video's size before detection; this happens at sampling time when "
                                               "its size differs. Leave empty when 'face_embeds' is connected."}),
                "face_embeds": (FACE_EMBEDS, {"tooltip": "Your own face embedding(s), (n, 512) like InsightFace's "
                                                         "normed_embedding (e.g. from MuseVFaceEmbed), instead of "
                                                         "'image'."}),
                "face_analysis": _face_analysis_input(),
                "channel_order": _channel_input(),
            },
        }

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The MODEL with MuseV's FaceID term (a clone; the input MODEL is untouched).",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, model, faceid_model, scale=1.0, image=None, face_embeds=None, face_analysis=FA.AUTO,
              channel_order=FA.CHANNEL_MUSEV):
        state = patch.get_state(model, FACE_NODE, "model")
        unet = sd15_unet(model, FACE_NODE)
        if image is None and face_embeds is None:
            raise MuseVInputError(f"{FACE_NODE}: connect a face 'image' or your own 'face_embeds' (neither is "
                                  "connected)")
        if image is not None and face_embeds is not None:
            raise MuseVInputError(f"{FACE_NODE}: both 'image' and 'face_embeds' are connected: connect only one")
        path = faceid_path(faceid_model)
        base = model.model
        proj, patcher, name = load_faceid(path, base.get_dtype(), getattr(base, "manual_cast_dtype", None))
        check_fits(unet, patcher.model.layers, proj, name, state.motion.layers)
        images = analysis = None
        if face_embeds is not None:
            embeds = as_embeddings(face_embeds)
            input_name = "face_embeds"
            norms = embeds.norm(dim=-1)
            if (norms - 1).abs().max() > 1e-2:
                log.warning("%s: 'face_embeds' have L2 norms %s; MuseV uses InsightFace's normed_embedding (norm 1). "
                            "Used as given.", FACE_NODE, [round(float(n), 3) for n in norms])
        else:
            from .reference_nodes import check_image
            images = check_image(image, FACE_NODE)
            analysis = FA.load_face_analysis(face_analysis, FACE_NODE)
            embeds = FA.face_embeddings(analysis, images, channel_order, FACE_NODE, "image")
            input_name = "image"
        if embeds.shape[-1] != proj.id_dim:
            raise MuseVInputError(
                f"{FACE_NODE}: '{input_name}' gives {embeds.shape[-1]}-d face embeddings but '{faceid_model}' "
                f"({proj.describe()}) takes {proj.id_dim}-d: use buffalo_l's w600k_r50 (512-d) embeddings")
        if state.face is not None:
            log.warning("%s: the MODEL already had a FaceID (%s); it is replaced", FACE_NODE,
                        getattr(state.face, "source", "?"))
        provider = FaceIDProvider(proj, patcher, embeds, scale, images=images, analysis=analysis,
                                  channel_order=channel_order, input_name=input_name, source=name)
        log.info("%s: %s (%s), %d face(s), scale %.3g", FACE_NODE, name, proj.describe(), embeds.shape[0], scale)
        return (install_face(model, provider, patcher, patcher.model.layers.prefixes),)


class MuseVFaceEmbed:
    DESCRIPTION = (
        "The face embedding MuseV's FaceID uses: InsightFace buffalo_l (det_10g detector, 5-point alignment, "
        "w600k_r50 recognition) run with onnxruntime; the first face of each image, L2-normalised (512-d).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The face image(s); one embedding per image (its first face). For "
                                               "MuseV-exact embeddings give it at the video's size (MuseV crops and "
                                               "resizes the face image to the video before detection)."}),
                "face_analysis": _face_analysis_input(),
                "channel_order": _channel_input(),
            }
        }

    RETURN_TYPES = (FACE_EMBEDS,)
    RETURN_NAMES = ("face_embeds",)
    OUTPUT_TOOLTIPS = ("(n, 512) normalised face embeddings, for MuseVFaceID's 'face_embeds'.",)
    FUNCTION = "embed"
    CATEGORY = CATEGORY

    def embed(self, image, face_analysis=FA.AUTO, channel_order=FA.CHANNEL_MUSEV):
        from .reference_nodes import check_image
        images = check_image(image, EMBED_NODE)
        analysis = FA.load_face_analysis(face_analysis, EMBED_NODE)
        return (FA.face_embeddings(analysis, images, channel_order, EMBED_NODE, "image"),)


NODE_CLASS_MAPPINGS = {FACE_NODE: MuseVFaceID, EMBED_NODE: MuseVFaceEmbed}
NODE_DISPLAY_NAME_MAPPINGS = {FACE_NODE: "MuseV IP-Adapter-FaceID", EMBED_NODE: "MuseV Face Embedding (InsightFace)"}
