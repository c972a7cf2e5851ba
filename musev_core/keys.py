"""MuseV's diffusers key names, what kind of checkpoint a key set is, and where every MuseV module
goes in an SD1.5 UNet laid out as ComfyUI/LDM ``input_blocks`` / ``middle_block`` / ``output_blocks``.

Block map (diffusers -> LDM, ``layers`` = resnets per down level, SD1.5: 2):
conv_in = input[0]; down level i layer j = input[1 + i(layers+1) + j], its downsampler =
input[1 + i(layers+1) + layers]; mid = middle[0..2]; up level i layer j = output[i(layers+1) + j].
"""
import re
from dataclasses import dataclass

MOTION_MARKERS = ("temp_convs.", "temp_attentions.", "transformer_in.", "frame_embedding.",
                  "to_k_ip.", "to_v_ip.", "refer_emb_attns.")

VARIANT_MUSEV = "musev"
VARIANT_REFERENCENET_FAMILY = "musev_referencenet"   # musev_referencenet and musev_referencenet_pose
KIND_REFERENCENET = "referencenet"
KIND_IMAGE_PROJ = "image_proj"
KIND_FACEID = "faceid"               # IP-Adapter-FaceID (ip-adapter-faceid_sd15.bin: MLP image_proj + ip_adapter)


class CheckpointKindError(ValueError):
    pass


def strip_common_prefix(sd):
    """Drop a wrapper prefix shared by every key (``unet.``, ``module.``, ``model.``)."""
    for prefix in ("unet.", "module.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def is_face_key(key):
    return "ip_adapter_face_" in key or "facein" in key


def is_motion_key(key):
    """True for what MuseV adds to the SD1.5 UNet (the rest are 2D keys the base model supplies)."""
    if is_face_key(key):
        return False
    return any(m in key for m in MOTION_MARKERS) or key.startswith(("first_refer_emb_attns.", "mid_block_refer_emb_attns."))


def describe_keys(keys):
    """Classify a state dict's key set: ``musev`` / ``musev_referencenet`` / ``referencenet`` /
    ``faceid`` / ``image_proj`` / ``sd_checkpoint`` / ``sdxl_or_other`` / ``unknown``."""
    keys = list(keys)
    ks = set(keys)
    if not ks:
        return "unknown"
    if any(k.startswith("transformer_in.") for k in ks) and not any("refer_emb_attns" in k for k in ks):
        return VARIANT_MUSEV
    if any(".to_k_ip." in k and "ip_adapter_face" not in k for k in ks) and any("refer_emb_attns" in k for k in ks):
        return VARIANT_REFERENCENET_FAMILY
    if any(k.startswith("transformer_in.") for k in ks):
        return "inconsistent"
    if any(k.startswith("image_proj.proj.0.") for k in ks) or {"proj.0.weight", "proj.2.weight", "norm.weight"} <= ks:
        return KIND_FACEID
    if {"proj.weight", "norm.weight"} <= ks or any(k.startswith("image_proj.") for k in ks):
        return KIND_IMAGE_PROJ
    if any(k.startswith("model.diffusion_model.") or k.startswith("diffusion_model.") for k in ks):
        return "ldm_checkpoint"
    if "conv_in.weight" in ks and any(k.startswith("down_blocks.") for k in ks) and not any(
            k.startswith("up_blocks.") for k in ks) and not any(is_motion_key(k) for k in ks):
        return KIND_REFERENCENET
    if "conv_in.weight" in ks and any(k.startswith("up_blocks.") for k in ks) and not any(is_motion_key(k) for k in ks):
        return "diffusers_unet2d"
    if any(k.startswith(("motion_modules.", "down_blocks.0.motion_modules")) or ".motion_modules." in k for k in ks):
        return "animatediff"
    return "unknown"


# --------------------------------------------------------------------------------------------
# Placement of MuseV modules in the LDM block structure

@dataclass(frozen=True)
class Placement:
    key: str            # MuseV module prefix (diffusers name), e.g. "down_blocks.1.temp_convs.0"
    kind: str           # "temp_conv" | "temp_attn" | "refer_fuse"
    block: tuple        # ("input", id) | ("middle", 0) | ("output", id)
    anchor: tuple       # ("after_res", n) | ("after_st", n) | ("end",)
    ref_index: int = -1 # reference feature index for refer_fuse (0..12, 12 = mid)


_DOWN = re.compile(r"^down_blocks\.(\d+)\.(temp_convs|temp_attentions|refer_emb_attns)\.(\d+)$")
_UP = re.compile(r"^up_blocks\.(\d+)\.(temp_convs|temp_attentions)\.(\d+)$")
_MID = re.compile(r"^mid_block\.(temp_convs|temp_attentions)\.(\d+)$")
_IP = re.compile(r"^(down_blocks\.(\d+)\.attentions\.(\d+)|mid_block\.attentions\.0|up_blocks\.(\d+)\.attentions\.(\d+))"
                 r"\.transformer_blocks\.(\d+)\.attn2$")


def module_prefixes(keys):
    """MuseV module prefixes present in a key set, e.g. ``down_blocks.0.temp_convs.0``."""
    out = set()
    for k in keys:
        if not is_motion_key(k):
            continue
        if k.startswith(("transformer_in.", "first_refer_emb_attns.", "mid_block_refer_emb_attns.", "frame_embedding.")):
            out.add(k.split(".")[0])
            continue
        m = re.match(r"^((?:down_blocks|up_blocks)\.\d+\.(?:temp_convs|temp_attentions|refer_emb_attns)\.\d+|"
                     r"mid_block\.(?:temp_convs|temp_attentions)\.\d+)\.", k)
        if m:
            out.add(m.group(1))
            continue
        m = re.match(r"^(.*\.attn2)\.to_[kv]_ip\.weight$", k)
        if m:
            out.add(m.group(1))
            continue
        raise CheckpointKindError(f"unrecognised MuseV key {k!r}")
    return out


def placement(prefix, layers=2, n_levels=4):
    """Where the module with diffusers prefix ``prefix`` goes (``None`` for non-injected ones).

    Reference-feature index of a down-block fusion: MuseV slices ``down_block_refer_embs`` from
    ``1 + n·i`` with ``n = layers + 1`` for blocks with a downsampler and ``n = layers`` for the
    last one (``int(not is_final_block * 1)``), so the last down level reads features
    ``1 + layers·i ...`` (7 and 8 in SD1.5: the level-2 skips), not 10 and 11.  Reproduced as is:
    released weights were trained that way."""
    step = layers + 1
    if prefix == "transformer_in":
        return Placement(prefix, "temp_attn", ("input", 0), ("end",))
    if prefix == "first_refer_emb_attns":
        return Placement(prefix, "refer_fuse", ("input", 0), ("end",), 0)
    if prefix == "mid_block_refer_emb_attns":
        return Placement(prefix, "refer_fuse", ("middle", 0), ("end",), -1)    # the last feature: mid block
    m = _DOWN.match(prefix)
    if m:
        i, what, j = int(m.group(1)), m.group(2), int(m.group(3))
        block = 1 + i * step + j
        if what == "temp_convs":
            return Placement(prefix, "temp_conv", ("input", block), ("after_res", 0))
        if what == "temp_attentions":
            return Placement(prefix, "temp_attn", ("input", block), ("after_st", 0))
        final = i == n_levels - 1
        ref = (1 + layers * i + j) if final else (1 + i * step + j)
        return Placement(prefix, "refer_fuse", ("input", block), ("end",), ref)
    m = _MID.match(prefix)
    if m:
        what, j = m.group(1), int(m.group(2))
        if what == "temp_convs":
            return Placement(prefix, "temp_conv", ("middle", 0), ("after_res", j))
        return Placement(prefix, "temp_attn", ("middle", 0), ("after_st", j))
    m = _UP.match(prefix)
    if m:
        i, what, j = int(m.group(1)), m.group(2), int(m.group(3))
        block = i * step + j
        if what == "temp_convs":
            return Placement(prefix, "temp_conv", ("output", block), ("after_res", 0))
        return Placement(prefix, "temp_attn", ("output", block), ("after_st", 0))
    return None


def ip_attn2_key(prefix, layers=2):
    """ComfyUI ``attn2`` replace key ``(block_name, block_id, transformer_index)`` of the spatial
    attn2 ``prefix`` (``down_blocks.i.attentions.j.transformer_blocks.t.attn2``)."""
    step = layers + 1
    m = _IP.match(prefix)
    if not m:
        raise CheckpointKindError(f"not a spatial attn2 prefix: {prefix!r}")
    t = int(m.group(6))
    if m.group(2) is not None:
        return ("input", 1 + int(m.group(2)) * step + int(m.group(3)), t)
    if m.group(4) is not None:
        return ("output", int(m.group(4)) * step + int(m.group(5)), t)
    return ("middle", 0, t)


def sd_layout(variant, channels, temb_dim, cross_dim, layers=2, attention_levels=None):
    """``{module prefix: shape info}`` of every MuseV module for an SD1.5-topology UNet with
    ``channels`` per level (SD1.5: 320/640/1280/1280), as ``MuseVMotionModel`` expects it (the same
    form ``MuseVMotionModel.inspect`` reads from a checkpoint).  Used to build full-size layouts
    (key-coverage checks against the released key lists) and stand-in checkpoints."""
    n = len(channels)
    attention_levels = set(range(n - 1) if attention_levels is None else attention_levels)
    refer = variant == VARIANT_REFERENCENET_FAMILY
    out = {"frame_embedding": (channels[0], temb_dim)}
    if variant == VARIANT_MUSEV:
        out["transformer_in"] = (channels[0], temb_dim)
    if refer:
        out["first_refer_emb_attns"] = (channels[0],)
        out["mid_block_refer_emb_attns"] = (channels[-1],)
    for i, ch in enumerate(channels):
        for j in range(layers):
            out[f"down_blocks.{i}.temp_convs.{j}"] = (ch,)
            if i in attention_levels:
                out[f"down_blocks.{i}.temp_attentions.{j}"] = (ch, temb_dim)
                if refer:
                    out[f"down_blocks.{i}.attentions.{j}.transformer_blocks.0.attn2"] = (ch, cross_dim)
            if refer:
                out[f"down_blocks.{i}.refer_emb_attns.{j}"] = (ch,)
        if refer and i < n - 1:
            out[f"down_blocks.{i}.refer_emb_attns.{layers}"] = (ch,)
    for j in range(2):
        out[f"mid_block.temp_convs.{j}"] = (channels[-1],)
    out["mid_block.temp_attentions.0"] = (channels[-1], temb_dim)
    if refer:
        out["mid_block.attentions.0.transformer_blocks.0.attn2"] = (channels[-1], cross_dim)
    for i in range(n):
        ch = channels[n - 1 - i]
        level = n - 1 - i
        for j in range(layers + 1):
            out[f"up_blocks.{i}.temp_convs.{j}"] = (ch,)
            if level in attention_levels:
                out[f"up_blocks.{i}.temp_attentions.{j}"] = (ch, temb_dim)
                if refer:
                    out[f"up_blocks.{i}.attentions.{j}.transformer_blocks.0.attn2"] = (ch, cross_dim)
    return out
