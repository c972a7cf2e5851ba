"""Identity from a reference image: MuseVIPAdapter and MuseVReferenceNet (spec §3, §4, §5.7).

Both nodes put a *provider* on a clone of a MuseV MODEL (``MuseVState.ip`` / ``.reference``); the
DIFFUSION_MODEL wrapper resolves them once per UNet call and they cache their work:

* IP-Adapter: ComfyUI's CLIP vision ``image_embeds`` -> MuseV's ``ImageProjModel`` -> 4 tokens per
  image (several images: concatenated); unconditional tokens = projection of ZEROS (MuseV).  The
  CLIP call happens when the node runs, for the image as given; if the video turns out to have
  another aspect ratio, the image is re-cropped the MuseV way at sampling time (logged).
* ReferenceNet: the reference image is prepared at the video's size (known from the UNet input; a
  different size is centre-cropped and LANCZOS-resized as MuseV does, logged), VAE-encoded
  (posterior mean × latent scale), and run through the ReferenceNet at timestep 0 ONCE per sampling
  run, with the IP tokens of each guidance role as context (MuseV) or, without MuseVIPAdapter, the
  text conditioning of each role.

CLIP preprocessing follows ``CLIPImageProcessor()`` (musev_core.image_prep.clip_preprocess; the
differences to ComfyUI's ``clip_preprocess`` are listed there).  MuseV also resizes the IP image to
the generation size (LANCZOS, then BICUBIC again inside its pipeline) before CLIP sees it; here an
image that already has the video's aspect goes to CLIP directly (one resampling instead of three:
sub-level differences), and MMCM's one-pixel crop quirk is not applied to images already at the
video's size.
"""
import collections
import logging
import os
import threading

import torch

import comfy.model_management

from ..musev_core import image_prep
from ..musev_core import keys as K
from ..musev_core.checkpoints import CheckpointError, check_finite
from ..musev_core.ip_adapter import ImageProjError, ImageProjModel, describe_image_proj, image_proj_weights
from ..musev_core.layout import COND, UNCOND
from . import compat, patch, paths
from .host import MuseVInputError, load_weights, widget_problem
from .referencenet_runner import N_FEATURES, load_referencenet_patcher, run_referencenet

log = logging.getLogger("comfyui-musev")

CATEGORY = "MuseV"
IP_NODE = "MuseVIPAdapter"
REF_NODE = "MuseVReferenceNet"
LATENT_RATIO = 8                    # SD1.5 latent grid: 1/8 of the pixels
VIT_H_HINT = ("MuseV's released image projections take the 1024-d image_embeds of OpenCLIP ViT-H/14 "
              "(IP-Adapter's models/image_encoder, e.g. CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors in "
              "models/clip_vision, loaded with Load CLIP Vision)")


# ------------------------------------------------------------------------------------------------
# CLIP vision (the one seam tests may replace: everything else is the real path)

def clip_image_embeds(clip_vision, pixel_values):
    """Pooled, projected ``image_embeds`` (n, d) of ComfyUI's CLIP vision model for preprocessed
    pixels (n, 3, s, s), on the intermediate device, float32."""
    comfy.model_management.load_model_gpu(clip_vision.patcher)
    out = clip_vision.model(pixel_values=pixel_values.to(clip_vision.load_device).float(), intermediate_output=-2)
    return out[2].to(comfy.model_management.intermediate_device()).float()


def clip_embed_dim(clip_vision):
    """Width of the CLIP vision model's ``image_embeds``, or None if it cannot be read up front."""
    proj = getattr(getattr(clip_vision, "model", None), "visual_projection", None)
    return getattr(proj, "out_features", None)


def encode_images(clip_vision, images):
    size = int(getattr(clip_vision, "image_size", image_prep.CLIP_SIZE))
    mean = getattr(clip_vision, "image_mean", image_prep.CLIP_MEAN)
    std = getattr(clip_vision, "image_std", image_prep.CLIP_STD)
    dev = getattr(clip_vision, "load_device", None) or "cpu"
    pixels = image_prep.clip_preprocess(images.to(dev), size, mean, std)
    return clip_image_embeds(clip_vision, pixels)


def check_image(image, node, input_name="image"):
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] < 1 or min(image.shape[1:3]) < 1:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise MuseVInputError(f"{node}: '{input_name}' must be an IMAGE batch (n, height, width, 3), got {shape}")
    if image.shape[-1] < 3:
        raise MuseVInputError(f"{node}: '{input_name}' has {image.shape[-1]} colour channel(s); MuseV needs RGB images "
                              "(3 channels): convert it to RGB first")
    if not torch.isfinite(image).all():
        raise MuseVInputError(f"{node}: '{input_name}' contains NaN/inf pixel values, which would make every frame "
                              "NaN: fix the node that makes the image (or re-load it)")
    return image[..., :3].float().cpu()


def same_content_after_crop(width, height, target_width, target_height):
    """True when MuseV's crop to the target aspect keeps the whole image (up to its one-pixel quirk)."""
    x1, y1, x2, y2 = image_prep.crop_box_to_aspect(width, height, target_width, target_height)
    return (x2 - x1) >= width - 1 and (y2 - y1) >= height - 1


def prepare_on_device(images, height, width):
    """MuseV's centre crop + LANCZOS resize, computed on the torch device, returned on the CPU."""
    dev = comfy.model_management.get_torch_device()
    return image_prep.crop_resize_to(images.to(dev), height, width).cpu()


def video_size(transformer_options, ratio=LATENT_RATIO):
    """(height, width) in pixels of the video of this UNet call, or None if unknown."""
    inp = transformer_options.get(patch.INPUT_KEY) if transformer_options else None
    if not inp or "x_shape" not in inp:
        return None
    h, w = inp["x_shape"][-2:]
    return int(h) * ratio, int(w) * ratio


# ------------------------------------------------------------------------------------------------
# IP-Adapter

def read_image_proj(path, node=IP_NODE, input_name="image_proj"):
    """ImageProjModel (CPU, float32) of a released ``ip_adapter_image_proj.bin`` / safetensors file
    (a picked folder is resolved to its file by ``paths.image_proj_file``)."""
    name = os.path.basename(path)
    try:
        sd = check_finite(K.strip_common_prefix(load_weights(path)), name)
    except CheckpointError as e:
        raise MuseVInputError(f"{node}: '{input_name}': {e}") from None
    kind = K.describe_keys(sd.keys())
    wrong = {
        K.VARIANT_MUSEV: "a MuseV motion UNet: connect it to LoadMuseVMotion",
        K.VARIANT_REFERENCENET_FAMILY: "a MuseV motion UNet: connect it to LoadMuseVMotion",
        "inconsistent": "a MuseV motion UNet: connect it to LoadMuseVMotion",
        K.KIND_REFERENCENET: "the MuseV ReferenceNet: load it with MuseVReferenceNet",
        "diffusers_unet2d": "a diffusers UNet",
        "ldm_checkpoint": "a full Stable Diffusion checkpoint",
        "animatediff": "an AnimateDiff motion module",
    }.get(kind)
    if wrong:
        raise MuseVInputError(f"{node}: '{input_name}' ({name}) is {wrong}; pick "
                              "motion/musev_referencenet/ip_adapter_image_proj.bin (or the pose model's) here")
    try:
        proj = ImageProjModel.from_state_dict({k: v.float() for k, v in image_proj_weights(sd).items()})
    except (ImageProjError, KeyError, ValueError, RuntimeError) as e:
        raise MuseVInputError(f"{node}: '{input_name}' ({name}): {e}; pick "
                              "motion/musev_referencenet/ip_adapter_image_proj.bin (or the pose model's)") from None
    if any(k.startswith("ip_adapter.") for k in sd):
        log.info("%s: %s also holds 'ip_adapter' attention weights; MuseV uses the motion UNet's to_k_ip/to_v_ip "
                 "instead (as MuseV's loader does)", node, name)
    return proj.eval().requires_grad_(False), name


class IPAdapterProvider:
    """``resolve`` -> ``{"tokens": {COND: proj(clip), UNCOND: proj(0)}, "scale": s}``.

    Embeddings are computed when the node runs for the image as given; a video of another aspect
    ratio gets MuseV's crop (centre crop to its aspect, LANCZOS to its size) lazily, cached here."""

    def __init__(self, proj, images, clip_vision, embeds, scale, sigma_start, sigma_end, source=""):
        self.proj = proj
        self.images = images
        self.clip_vision = clip_vision
        self.scale = float(scale)
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        self.source = source
        self._embeds = collections.OrderedDict({None: embeds})
        self._tokens = collections.OrderedDict()
        self.encodes = 0                              # CLIP passes at sampling time (tests, logging)
        self._lock = threading.RLock()                # UNet calls may come from MultiGPU worker threads

    def __deepcopy__(self, memo):
        return self

    def _key_for(self, size):
        if size is None:
            return None
        h, w = self.images.shape[1:3]
        return None if same_content_after_crop(w, h, size[1], size[0]) else tuple(size)

    def embeds_for(self, size):
        key = self._key_for(size)
        if key not in self._embeds:
            th, tw = key
            h, w = self.images.shape[1:3]
            log.info("%s: the IP image is %dx%d but the video is %dx%d: cropping it to the video's aspect and "
                     "resizing (LANCZOS) before CLIP vision, as MuseV does", IP_NODE, w, h, tw, th)
            images = prepare_on_device(self.images, th, tw)
            self._embeds[key] = encode_images(self.clip_vision, images).float().cpu()
            self.encodes += 1
            while len(self._embeds) > 4:
                self._embeds.popitem(last=False)
        return key, self._embeds[key]

    def prepare(self, run, noise_shape):
        """Before sampling (main thread): the embedding for the video's aspect (CLIP runs here)."""
        if len(noise_shape) == 4:
            self.embeds_for((int(noise_shape[-2]) * LATENT_RATIO, int(noise_shape[-1]) * LATENT_RATIO))

    def tokens(self, size, device, dtype):
        with self._lock:
            return self._tokens_locked(size, device, dtype)

    def _tokens_locked(self, size, device, dtype):
        key, embeds = self.embeds_for(size)
        tkey = (key, str(device), dtype)
        if tkey not in self._tokens:
            with torch.no_grad():
                cond, uncond = self.proj.tokens_for(embeds)
            self._tokens[tkey] = {COND: cond.to(device=device, dtype=dtype), UNCOND: uncond.to(device=device, dtype=dtype)}
            while len(self._tokens) > 8:
                self._tokens.popitem(last=False)
        return self._tokens[tkey]

    def active(self, transformer_options):
        if self.sigma_start is None and self.sigma_end is None:
            return True
        sigmas = (transformer_options or {}).get("sigmas")
        if sigmas is None:
            return True
        sigma = float(sigmas.detach().flatten()[0])
        return self.sigma_end <= sigma <= self.sigma_start

    def resolve(self, run, device, dtype, transformer_options):
        tokens = self.tokens(video_size(transformer_options), device, dtype)
        return {"tokens": tokens, "scale": self.scale if self.active(transformer_options) else 0.0}


class MuseVIPAdapter:
    DESCRIPTION = (
        "MuseV's IP-Adapter: the reference image's CLIP vision embedding, projected to 4 tokens per image, "
        "feeds the decoupled cross-attention of the musev_referencenet(_pose) motion model (and is the "
        "ReferenceNet's context). Unconditional tokens are the projection of zeros, as in MuseV.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A MODEL with a MuseV referencenet motion model (LoadMuseVMotion with "
                                               "motion/musev_referencenet or musev_referencenet_pose)."}),
                "clip_vision": ("CLIP_VISION", {"tooltip": "Load CLIP Vision with OpenCLIP ViT-H/14 (IP-Adapter's "
                                                           "image_encoder, 1024-d image_embeds), as MuseV."}),
                "image": ("IMAGE", {"tooltip": "The identity/reference image, ideally the condition frame at the "
                                               "video's size (MuseV crops it to the video's aspect; CLIP sees its "
                                               "centre square). Several images: their tokens are concatenated."}),
                "image_proj": (paths.list_choices(paths.KIND_IMAGE_PROJ), {
                    "tooltip": "MuseV image projection from models/musev/: motion/musev_referencenet/"
                               "ip_adapter_image_proj.bin (or the pose model's), or a .safetensors with plain keys."}),
                "scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 5.0, "step": 0.05,
                                    "tooltip": "ip_adapter_scale: weight of the image tokens' attention (MuseV: 1.0)."}),
                "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                            "tooltip": "Sampling progress at which the image tokens start acting."}),
                "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001,
                                          "tooltip": "Sampling progress after which the image tokens stop acting "
                                                     "(the ReferenceNet keeps them as its context)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, image_proj=None, start_percent=None, end_percent=None):
        # before any model loads; replaces ComfyUI's list/range checks of these inputs (older workflow values stay valid)
        problem = widget_problem(cls, IP_NODE, start_percent=start_percent, end_percent=end_percent)
        if problem:
            return problem
        if start_percent is not None and end_percent is not None and start_percent > end_percent:
            return (f"{IP_NODE}: 'start_percent' ({start_percent}) is after 'end_percent' ({end_percent}): set "
                    "start_percent <= end_percent")
        return paths.validate_choice(image_proj, "image_proj", IP_NODE, paths.KIND_IMAGE_PROJ)

    @classmethod
    def IS_CHANGED(cls, image_proj=None, **_):
        return paths.fingerprint(image_proj, paths.KIND_IMAGE_PROJ, IP_NODE, "image_proj")

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The MODEL with MuseV's image prompt (a clone; the input MODEL is untouched).",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, model, clip_vision, image, image_proj, scale=1.0, start_percent=0.0, end_percent=1.0):
        state = patch.get_state(model, IP_NODE, "model")
        motion = state.motion
        if not motion.flags.ip_cross_attn or not motion.ip_prefixes:
            log.warning(
                "%s: the MODEL's MuseV motion model (%s) has no IP-Adapter layers, so the image prompt is not used "
                "and the MODEL passes through unchanged. Load motion/musev_referencenet or musev_referencenet_pose "
                "in LoadMuseVMotion for identity from an image.", IP_NODE, motion.variant)
            return (model,)
        if start_percent > end_percent:
            raise MuseVInputError(f"{IP_NODE}: 'start_percent' ({start_percent}) is after 'end_percent' "
                                  f"({end_percent}): set start_percent <= end_percent")
        images = check_image(image, IP_NODE)
        proj, name = read_image_proj(paths.image_proj_file(image_proj, "image_proj", IP_NODE))
        want = motion.module_at(motion.ip_prefixes[0]).to_k_ip.in_features
        if proj.cross_dim != want:
            hint = (" (an SDXL IP-Adapter: its tokens are 2048-d)" if proj.cross_dim == 2048 else "")
            raise MuseVInputError(
                f"{IP_NODE}: 'image_proj' ({name}) makes {proj.cross_dim}-d tokens{hint} but the motion model's "
                f"IP-Adapter layers take {want}-d (SD1.5): pick motion/musev_referencenet/ip_adapter_image_proj.bin "
                "(or motion/musev_referencenet_pose/ip_adapter_image_proj.bin for the pose model)")
        encoder = type(getattr(clip_vision, "model", None)).__name__
        if hasattr(clip_vision, "model") and encoder != "CLIPVisionModelProjection":
            raise MuseVInputError(f"{IP_NODE}: 'clip_vision' is a {encoder} image encoder, not CLIP vision. {VIT_H_HINT}.")
        got = clip_embed_dim(clip_vision)
        if got is not None and got != proj.clip_dim:
            raise MuseVInputError(self._width_message(got, proj, name))
        embeds = encode_images(clip_vision, images)
        if not isinstance(embeds, torch.Tensor) or embeds.ndim != 2:
            raise MuseVInputError(f"{IP_NODE}: 'clip_vision' gives no pooled, projected image_embeds (a SigLIP "
                                  f"model?). {VIT_H_HINT}.")
        embeds = embeds.float().cpu()
        if embeds.shape[-1] != proj.clip_dim:
            raise MuseVInputError(self._width_message(embeds.shape[-1], proj, name))
        if state.ip is not None:
            log.warning("%s: the MODEL already had an image prompt (%s); it is replaced", IP_NODE,
                        getattr(state.ip, "source", "?"))
        sigma_start = sigma_end = None
        if start_percent > 0.0 or end_percent < 1.0:
            ms = model.get_model_object("model_sampling")
            sigma_start, sigma_end = ms.percent_to_sigma(start_percent), ms.percent_to_sigma(end_percent)
        provider = IPAdapterProvider(proj, images, clip_vision, embeds, scale, sigma_start, sigma_end, source=name)
        log.info("%s: %s (%s), %d image(s), scale %.3g", IP_NODE, name, describe_image_proj(proj), images.shape[0], scale)
        m = model.clone()
        patch.set_state(m, state.replace(ip=provider))
        return (m,)

    @staticmethod
    def _width_message(got, proj, name):
        return (f"{IP_NODE}: 'clip_vision' gives {got}-d image_embeds but the image projection '{name}' expects "
                f"{proj.clip_dim}-d: connect the matching CLIP vision model. {VIT_H_HINT}.")


# ------------------------------------------------------------------------------------------------
# ReferenceNet

def _same(a, b):
    return a is b or (a.shape == b.shape and a.device == b.device and a.dtype == b.dtype and torch.equal(a, b))


def role_text(inp):
    """{role: (1, L, D)} text context of each guidance role in this call (first row of its segment)."""
    context, layout = inp.get("context"), inp.get("layout")
    if context is None or layout is None:
        return {}
    out = {}
    for seg in layout.segments:
        if seg.role not in out:
            out[seg.role] = context[seg.start:seg.start + 1]
    return out


class ReferenceNetProvider:
    """``resolve`` -> ``{role: [13 features (1, C, n_ref, h, w)]}``: VAE latent of the reference image
    at the video's size (cached here per size), ReferenceNet features once per sampling run per
    context (cached in ``run.cache``)."""

    MAX_ENTRIES = 8

    def __init__(self, patcher, vae, images, latent_format, source=""):
        self.patcher = patcher
        self.vae = vae
        self.images = images
        self.latent_format = latent_format
        self.source = source
        self.geometry = patcher.model.geometry
        self._latents = collections.OrderedDict()
        self._lock = threading.RLock()                # UNet calls may come from MultiGPU worker threads

    def prepare(self, run, noise_shape):
        """Before sampling (main thread): the reference latent at the video's size (the VAE runs here)."""
        if len(noise_shape) == 4:
            self.latent_for(int(noise_shape[-2]), int(noise_shape[-1]))

    def patcher_for(self, unet_patcher):
        """This ReferenceNet on the device of the UNet that calls: the MODEL's own, or the copy a
        MultiGPU deep clone carries (same ``clone_base_uuid``)."""
        return compat.device_twin(unet_patcher, "musev_referencenet", self.patcher)

    def __deepcopy__(self, memo):
        return self

    def latent_for(self, h, w):
        """Model-space latent (n_ref, C, h, w) of the reference image prepared at the video's size."""
        key = (h, w)
        if key not in self._latents:
            ratio = int(self.vae.spacial_compression_encode()) if hasattr(self.vae, "spacial_compression_encode") else LATENT_RATIO
            th, tw = h * ratio, w * ratio
            images = self.images
            if image_prep.needs_resize(images, th, tw):
                log.info("%s: the reference image is %dx%d, the video %dx%d: centre-cropping it to the video's "
                         "aspect and resizing (LANCZOS), as MuseV does", REF_NODE, images.shape[2], images.shape[1], tw, th)
                images = prepare_on_device(images, th, tw)
            comfy.model_management.throw_exception_if_processing_interrupted()
            latent = self.vae.encode(images)
            if tuple(latent.shape[-2:]) != (h, w):
                raise MuseVInputError(
                    f"{REF_NODE}: the 'vae' encodes {tw}x{th} pixels to a {latent.shape[-1]}x{latent.shape[-2]} "
                    f"latent, but the video latent is {w}x{h}: use an SD1.5 VAE (8x downscale)")
            self._latents[key] = self.latent_format.process_in(latent.float())
            while len(self._latents) > 4:
                self._latents.popitem(last=False)
        return self._latents[key]

    def contexts(self, inp, ip):
        if ip is not None and ip.get("tokens"):
            contexts, what = dict(ip["tokens"]), "the IP-Adapter tokens"
        else:
            contexts, what = role_text(inp), "the text conditioning"
        if not contexts:
            raise patch.MuseVRuntimeError(f"{REF_NODE}: no cross-attention context for the ReferenceNet in this call")
        for role, ctx in contexts.items():
            if ctx.shape[-1] != self.geometry.context_dim:
                raise MuseVInputError(
                    f"{REF_NODE}: the ReferenceNet's cross-attention takes {self.geometry.context_dim}-d context but "
                    f"{what} are {ctx.shape[-1]}-d: use the ReferenceNet of the same (SD1.5) MuseV release as the "
                    "motion model and image projection")
        return contexts

    def resolve(self, run, device, dtype, transformer_options, ip):
        inp = transformer_options.get(patch.INPUT_KEY)
        if not inp:
            raise patch.MuseVRuntimeError(f"{REF_NODE}: the UNet call carries no '{patch.INPUT_KEY}' (MuseV patch too old)")
        with self._lock:
            return self._resolve_locked(run, device, dtype, inp, ip)

    def _resolve_locked(self, run, device, dtype, inp, ip):
        h, w = (int(v) for v in inp["x_shape"][-2:])
        contexts = self.contexts(inp, ip)
        rn = self.patcher_for(inp.get("patcher"))
        cache = (run.cache.setdefault(("musev_referencenet", id(self), str(rn.load_device)), [])
                 if run is not None else [])
        found, todo = {}, {}
        for role, ctx in contexts.items():
            hit = next((f for (hw, c, f) in cache if hw == (h, w) and _same(c, ctx)), None)
            if hit is None:
                todo[role] = ctx
            else:
                found[role] = hit
        if todo:
            latent = self.latent_for(h, w)
            count = (lambda: run.count("referencenet")) if run is not None else None
            feats = run_referencenet(rn, latent, todo, count=count)
            for role, ctx in todo.items():
                cache.append(((h, w), ctx, feats[role]))
                found[role] = feats[role]
            del cache[:-self.MAX_ENTRIES]
        return {role: features_on(run, feats, device, dtype) for role, feats in found.items()}


def features_on(run, feats, device, dtype):
    """``feats`` on the UNet's device/dtype, converted once per run: every call gets the very same
    tensors, so the fusions' reference K/V (computed once per run, ``CallContext.constant``) are reused."""
    if run is None:
        return [f.to(device=device, dtype=dtype) for f in feats]
    key = ("musev_referencenet_on", id(feats), str(device), dtype)
    hit = run.cache.get(key)
    if hit is None or hit[0] is not feats:
        hit = run.cache[key] = (feats, [f.to(device=device, dtype=dtype) for f in feats])
    return hit[1]


def check_fits(state, geo, name):
    channels = geo.feature_channels()
    if len(channels) != N_FEATURES:
        raise MuseVInputError(
            f"{REF_NODE}: 'referencenet' ({name}) yields {len(channels)} features ({geo.describe()}) but MuseV's "
            f"fusion takes {N_FEATURES}: use MuseV's motion/musev_referencenet/referencenet (an SD1.5 encoder)")
    motion = state.motion
    for p in motion.placements:
        if p.kind != "refer_fuse":
            continue
        want = motion.module_at(p.key).to_q.in_features
        have = channels[p.ref_index]
        if have != want:
            raise MuseVInputError(
                f"{REF_NODE}: 'referencenet' ({name}, {geo.describe()}) does not fit the motion model: its feature "
                f"{p.ref_index % N_FEATURES} has {have} channels where the fusion layer {p.key} takes {want}. Use "
                "MuseV's motion/musev_referencenet/referencenet with a musev_referencenet(_pose) motion model")


class MuseVReferenceNet:
    DESCRIPTION = (
        "MuseV's ReferenceNet: an SD1.5 encoder with its own weights encodes the reference image (VAE latent "
        "at the video's size, timestep 0) once per sampling run; its 13 feature maps are fused into every frame "
        "by the referencenet motion model's fusion attentions. Context: the IP-Adapter tokens when "
        "MuseVIPAdapter is on the MODEL (as MuseV), else the prompt.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A MODEL with a MuseV referencenet motion model (LoadMuseVMotion with "
                                               "motion/musev_referencenet or musev_referencenet_pose)."}),
                "referencenet": (paths.list_choices(paths.KIND_REFERENCENET), {
                    "tooltip": "MuseV ReferenceNet from models/musev/: the motion/musev_referencenet/ (or its "
                               "referencenet/) folder, or the weight file. Also used by the pose model."}),
                "vae": ("VAE", {"tooltip": "The VAE that encodes the reference image (MuseV used sd-vae-ft-mse; use "
                                           "the same VAE as for the condition frame)."}),
                "image": ("IMAGE", {"tooltip": "The reference image, ideally the condition frame at the video's size. "
                                               "Another size is centre-cropped to the video's aspect and resized "
                                               "(LANCZOS) at sampling time, as MuseV does. Several images: several "
                                               "reference frames."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, referencenet=None):
        # before any model loads; older workflow values (motion/musev_referencenet/) stay valid
        return paths.validate_choice(referencenet, "referencenet", REF_NODE, paths.KIND_REFERENCENET)

    @classmethod
    def IS_CHANGED(cls, referencenet=None, **_):
        # the files inside a picked folder, not the folder: an edited referencenet/ file reloads
        return paths.fingerprint(referencenet, paths.KIND_REFERENCENET, REF_NODE, "referencenet")

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The MODEL with MuseV's ReferenceNet fusion (a clone; the input MODEL is untouched).",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, model, referencenet, vae, image):
        state = patch.get_state(model, REF_NODE, "model")
        motion = state.motion
        if not motion.flags.refer_fusion or not any(p.kind == "refer_fuse" for p in motion.placements):
            log.warning(
                "%s: the MODEL's MuseV motion model (%s) has no ReferenceNet fusion layers, so the reference image "
                "is not used and the MODEL passes through unchanged. Load motion/musev_referencenet or "
                "musev_referencenet_pose in LoadMuseVMotion for identity from an image.", REF_NODE, motion.variant)
            return (model,)
        images = check_image(image, REF_NODE)
        if getattr(vae, "first_stage_model", True) is None or not hasattr(vae, "encode"):
            raise MuseVInputError(f"{REF_NODE}: 'vae' holds no VAE model: load an SD1.5 VAE (e.g. vae-ft-mse-840000)")
        path = paths.full_path(referencenet, "referencenet", REF_NODE)
        files = paths.model_files(referencenet, "referencenet", REF_NODE, paths.KIND_REFERENCENET)
        base = model.model
        patcher = load_referencenet_patcher(path, base.get_dtype(), getattr(base, "manual_cast_dtype", None),
                                            files=files)
        geo = patcher.model.geometry
        name = referencenet.rstrip("/")
        check_fits(state, geo, name)
        vae_channels = getattr(vae, "latent_channels", geo.in_channels)
        if vae_channels != geo.in_channels:
            raise MuseVInputError(
                f"{REF_NODE}: 'vae' makes {vae_channels}-channel latents but the ReferenceNet takes {geo.in_channels}: "
                "use an SD1.5 VAE (e.g. vae-ft-mse-840000, as MuseV)")
        if state.reference is not None:
            log.warning("%s: the MODEL already had a ReferenceNet (%s); it is replaced", REF_NODE,
                        getattr(state.reference, "source", "?"))
        provider = ReferenceNetProvider(patcher, vae, images, base.latent_format, source=name)
        m = model.clone()
        # Loaded with the UNet before sampling (ComfyUI's memory budget), not in the middle of it.
        m.set_additional_models("musev_referencenet", [patcher] + ([vae.patcher] if hasattr(vae, "patcher") else []))
        patch.set_state(m, state.replace(reference=provider))
        return (m,)


NODE_CLASS_MAPPINGS = {IP_NODE: MuseVIPAdapter, REF_NODE: MuseVReferenceNet}
NODE_DISPLAY_NAME_MAPPINGS = {IP_NODE: "MuseV IP-Adapter (image prompt)", REF_NODE: "MuseV ReferenceNet"}
