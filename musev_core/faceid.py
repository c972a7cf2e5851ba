"""IP-Adapter-FaceID as MuseV runs it (spec §3, last paragraph; TMElyralab/MuseV
``musev/models/ip_adapter_face_loader.py``, ``attention_processor.py``
``T2IReferencenetIPAdapterXFormersAttnProcessor``, ``pipelines/pipeline_controlnet.py``
``get_ip_adapter_face_emb``).  Pure torch.

Order of operations, as MuseV:

1. one 512-d ``normed_embedding`` per face image (InsightFace ``buffalo_l``, first face found);
2. ``MLPProjModel`` (tencent-ailab IP-Adapter ``ip_adapter_faceid.py``): ``LayerNorm(reshape(
   Linear(GELU(Linear(e)))), (-1, tokens, C))``, the tokens of several images concatenated;
   unconditional tokens = the projection of ZEROS (not zero tokens), stacked ``[uncond; cond]``;
3. in every one of the 16 spatial ``attn2`` of the UNet, with the layer's own query and ``to_out``::

       out = Attn(q, to_k(text), to_v(text))
       out = out + ip_adapter_scale      * Attn(q, to_k_ip(ip),        to_v_ip(ip))     # if IP tokens
       out = out + ip_adapter_face_scale * Attn(q, face_to_k_ip(face), face_to_v_ip(face)) # if scale > 0
       out = to_out(out)

   (the face term is added last; a term with scale <= 0 is skipped, as MuseV's ``> 0`` test);
4. weights: ``image_proj`` of ``ip-adapter-faceid_sd15.bin`` and the ``{odd}.to_k_ip`` /
   ``{odd}.to_v_ip`` entries of its ``ip_adapter`` dict, index ``2i + 1`` going to the ``i``-th
   attn2 of :data:`FACE_ATTN2_PREFIXES` (MuseV's ``unet_keys_list``).  The file's LoRA weights
   (``*_lora.*``, every even index) are ignored, as MuseV ignores them.

Both model families take the face term: MuseV installs this attn2 processor on ``musev`` too
when a face model is requested (``hack_t2i_sd_layer_attn_with_ip``), there without an IP term.
"""
import re

import torch

from .attention import DEFAULT_OPS, sdpa_attention
from .ip_adapter import IPKeyValue

# MuseV's ``unet_keys_list``: the order in which the odd entries 1, 3, ..., 31 of the file's
# ``ip_adapter`` dict map onto the UNet (diffusers' attn_processors order: down, up, mid).
FACE_ATTN2_BLOCKS = (
    "down_blocks.0.attentions.0", "down_blocks.0.attentions.1",
    "down_blocks.1.attentions.0", "down_blocks.1.attentions.1",
    "down_blocks.2.attentions.0", "down_blocks.2.attentions.1",
    "up_blocks.1.attentions.0", "up_blocks.1.attentions.1", "up_blocks.1.attentions.2",
    "up_blocks.2.attentions.0", "up_blocks.2.attentions.1", "up_blocks.2.attentions.2",
    "up_blocks.3.attentions.0", "up_blocks.3.attentions.1", "up_blocks.3.attentions.2",
    "mid_block.attentions.0",
)
FACE_ATTN2_PREFIXES = tuple(b + ".transformer_blocks.0.attn2" for b in FACE_ATTN2_BLOCKS)
PROJ_KEYS = ("proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias", "norm.weight", "norm.bias")
RELEASED_NAME = "ip-adapter-faceid_sd15.bin"


class FaceIDError(ValueError):
    """A file that is not (or not a usable) SD1.5 IP-Adapter-FaceID; the message says what it is."""


def file_index(prefix):
    """Index of ``prefix``'s ``to_k_ip`` / ``to_v_ip`` in the file's ``ip_adapter`` dict."""
    return 2 * FACE_ATTN2_PREFIXES.index(prefix) + 1


class MLPProjModel(torch.nn.Module):
    """tencent-ailab ``MLPProjModel``: ``proj = Linear(id, hidden), GELU, Linear(hidden, tokens·C)``,
    then ``reshape(-1, tokens, C)`` and ``LayerNorm(C)``.  Keys ``proj.0.*``, ``proj.2.*``, ``norm.*``."""

    def __init__(self, id_dim, hidden_dim, cross_dim, tokens, ops=DEFAULT_OPS, dtype=None, device=None):
        super().__init__()
        self.id_dim, self.hidden_dim, self.cross_dim, self.tokens = id_dim, hidden_dim, cross_dim, tokens
        self.proj = torch.nn.Sequential(
            ops.Linear(id_dim, hidden_dim, dtype=dtype, device=device),
            torch.nn.GELU(),
            ops.Linear(hidden_dim, cross_dim * tokens, dtype=dtype, device=device),
        )
        self.norm = ops.LayerNorm(cross_dim, dtype=dtype, device=device)

    @classmethod
    def from_state_dict(cls, sd, ops=DEFAULT_OPS, dtype=None, device=None):
        """Built with the shapes found in the weights (nothing hard-coded)."""
        missing = [k for k in PROJ_KEYS if k not in sd]
        if missing:
            raise FaceIDError(f"the FaceID projection lacks {missing}")
        w0, w2, nw = sd["proj.0.weight"], sd["proj.2.weight"], sd["norm.weight"]
        if w0.ndim != 2 or w2.ndim != 2 or nw.ndim != 1:
            raise FaceIDError(f"the FaceID projection has unexpected shapes {tuple(w0.shape)}, {tuple(w2.shape)}, "
                              f"{tuple(nw.shape)}")
        hidden, id_dim = w0.shape
        out_dim, hidden2 = w2.shape
        cross = nw.shape[0]
        if hidden2 != hidden or out_dim % cross:
            raise FaceIDError(f"the FaceID projection's layers do not chain: {id_dim}->{hidden}, {hidden2}->{out_dim}, "
                              f"LayerNorm {cross}")
        extra = sorted(set(sd) - set(PROJ_KEYS))
        if extra:
            raise FaceIDError(f"unexpected FaceID projection keys {extra[:4]}: not a plain MLPProjModel")
        model = cls(id_dim, hidden, cross, out_dim // cross, ops, dtype=dtype, device=device)
        model.load_state_dict(sd, strict=True)
        return model

    def forward(self, id_embeds):
        """(n, id_dim) -> (n, tokens, C)."""
        x = self.proj(id_embeds)
        x = x.reshape(-1, self.tokens, self.cross_dim)
        return self.norm(x)

    def tokens_for(self, id_embeds):
        """MuseV's pair for n face images: ``cond = proj(e)`` and ``uncond = proj(zeros_like(e))``,
        each ``(1, n·tokens, C)`` (``"(b t) n q -> b (t n) q"``)."""
        cond = self(id_embeds).reshape(1, -1, self.cross_dim)
        uncond = self(torch.zeros_like(id_embeds)).reshape(1, -1, self.cross_dim)
        return cond, uncond

    def describe(self):
        return f"{self.id_dim}-d face embedding -> {self.tokens} tokens x {self.cross_dim}"


class FaceIDLayers(torch.nn.Module):
    """``to_k_ip`` / ``to_v_ip`` (no bias) of the face term, one pair per spatial attn2, under the
    UNet's diffusers prefixes (``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k_ip``)."""

    def __init__(self, shapes, ops=DEFAULT_OPS, dtype=None, device=None):
        """``shapes``: ``{prefix: (channels, cross_dim)}``."""
        super().__init__()
        self.prefixes = tuple(p for p in FACE_ATTN2_PREFIXES if p in shapes)
        for prefix in self.prefixes:
            channels, cross = shapes[prefix]
            parent = self
            for part in prefix.split("."):
                child = parent._modules.get(part)
                if child is None:
                    child = IPKeyValue(channels, cross, ops, dtype, device) if part == "attn2" else torch.nn.Module()
                    parent.add_module(part, child)
                parent = child

    def layer(self, prefix):
        mod = self
        for part in prefix.split("."):
            mod = mod._modules[part]
        return mod

    @classmethod
    def from_weights(cls, kv, ops=DEFAULT_OPS, dtype=None, device=None):
        """From ``{prefix: (to_k_ip weight, to_v_ip weight)}`` (see :func:`faceid_weights`)."""
        shapes = {p: tuple(k.shape) for p, (k, v) in kv.items()}
        model = cls(shapes, ops, dtype=dtype, device=device)
        sd = {}
        for p, (k, v) in kv.items():
            sd[f"{p}.to_k_ip.weight"] = k
            sd[f"{p}.to_v_ip.weight"] = v
        model.load_state_dict(sd, strict=True)
        return model


# ------------------------------------------------------------------------------------------------
# Reading ip-adapter-faceid_sd15.bin

_IP_KEY = re.compile(r"^(\d+)\.(to_[kv]_ip)\.weight$")


def _strip(sd, prefix):
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def faceid_weights(sd):
    """``(projection state dict, {prefix: (to_k_ip, to_v_ip)}, n_ignored_lora_keys)`` of a FaceID
    checkpoint flattened as ``image_proj.*`` / ``ip_adapter.*`` (``torch.save({"image_proj": ...,
    "ip_adapter": ...})``, or a safetensors with those prefixes).  Raises :class:`FaceIDError`
    saying what the file is otherwise."""
    keys = set(sd)
    proj = _strip(sd, "image_proj.")
    ip = _strip(sd, "ip_adapter.")
    pk = set(proj)
    if any(k.startswith(("perceiver_resampler.", "proj_in.", "layers.")) or k == "latents" for k in pk):
        raise FaceIDError("this is an IP-Adapter FaceID Plus / Plus v2 (or Plus) projection, which also needs "
                          f"CLIP vision and is not what MuseV uses: pick {RELEASED_NAME}")
    if {"proj.weight", "norm.weight"} <= pk:
        raise FaceIDError("this is a plain IP-Adapter image projection (CLIP image embeds), not FaceID: load it "
                          f"with MuseVIPAdapter, and pick {RELEASED_NAME} here")
    if not proj:
        raise FaceIDError(f"no FaceID projection ('image_proj' with proj.0 / proj.2 / norm) among {len(keys)} keys "
                          f"(e.g. {sorted(keys)[:3]})")
    if not {"proj.0.weight", "proj.2.weight", "norm.weight"} <= pk:
        raise FaceIDError(f"the 'image_proj' weights are not an MLPProjModel (keys {sorted(pk)[:5]})")
    found = {}
    lora = 0
    for k, v in ip.items():
        m = _IP_KEY.match(k)
        if m:
            found[(int(m.group(1)), m.group(2))] = v
        elif "_lora." in k:
            lora += 1
    if not found:
        raise FaceIDError("the file holds no face attention weights (ip_adapter.1.to_k_ip.weight, ...): a FaceID "
                          f"projection alone is not enough; pick the complete {RELEASED_NAME}")
    indices = sorted({i for i, _ in found})
    cross = proj["norm.weight"].shape[0]
    if max(indices) > 2 * len(FACE_ATTN2_PREFIXES) - 1:
        n_attn2 = len(indices)
        raise FaceIDError(f"this FaceID file has {n_attn2} cross-attention layers and {cross}-d tokens: it is not "
                          f"for SD1.5 (an SDXL FaceID?); MuseV needs {RELEASED_NAME}")
    kv, missing = {}, []
    for prefix in FACE_ATTN2_PREFIXES:
        i = file_index(prefix)
        k, v = found.get((i, "to_k_ip")), found.get((i, "to_v_ip"))
        if k is None or v is None:
            missing += [f"ip_adapter.{i}.{n}.weight" for n, w in (("to_k_ip", k), ("to_v_ip", v)) if w is None]
            continue
        if k.ndim != 2 or k.shape != v.shape:
            raise FaceIDError(f"ip_adapter.{i}.to_k_ip / to_v_ip have shapes {tuple(k.shape)} / {tuple(v.shape)}")
        if k.shape[1] != cross:
            raise FaceIDError(f"ip_adapter.{i}.to_k_ip takes {k.shape[1]}-d tokens but the projection makes "
                              f"{cross}-d ones: the file is inconsistent")
        kv[prefix] = (k, v)
    if missing:
        raise FaceIDError(f"the FaceID file lacks {len(missing)} of the 32 face attention weights ({missing[:3]}...): "
                          f"download {RELEASED_NAME} again")
    return proj, kv, lora


# ------------------------------------------------------------------------------------------------
# The face term in one UNet call

def role_key_values(layer, tokens, roles, device, dtype):
    """``(K, V)`` of shape ``(max_role + 1, L, C)``: ``layer.to_k_ip`` / ``to_v_ip`` of each guidance
    role's tokens (``tokens[role]``: ``(1, L, C_tok)``), to be gathered per row by role."""
    kk, vv = {}, {}
    for role in roles:
        tok = tokens.get(role)
        if tok is None:
            raise ValueError(f"IP-Adapter-FaceID tokens are missing for guidance role {role}")
        tok = tok.to(device=device, dtype=dtype)
        kk[role], vv[role] = layer.to_k_ip(tok)[0], layer.to_v_ip(tok)[0]
    first = next(iter(kk))
    n = max(kk) + 1
    return (torch.stack([kk.get(r, kk[first]) for r in range(n)]),
            torch.stack([vv.get(r, vv[first]) for r in range(n)]))


class FaceCall:
    """What the face term needs during UNet calls: tokens per guidance role, ``ip_adapter_face_scale``
    and the face ``to_k_ip``/``to_v_ip`` layers.  ``cache`` (shared by the calls of a run) keeps each
    layer's K/V per device and dtype: they depend only on the tokens and the weights."""

    def __init__(self, tokens, scale, layers, cache=None):
        self.tokens = tokens
        self.scale = float(scale)
        self.layers = layers
        self.cache = {} if cache is None else cache

    @property
    def active(self):
        return bool(self.tokens) and self.scale > 0        # MuseV: ``if ip_adapter_face_scale > 0``

    def key_values(self, prefix, roles, device, dtype):
        key = (id(self.layers), prefix, tuple(roles), str(device), dtype)
        hit = self.cache.get(key)
        if hit is None:
            hit = role_key_values(self.layers.layer(prefix), self.tokens, roles, device, dtype)
            self.cache[key] = hit
        return hit

    def add(self, prefix, q, out, heads, layout, attn_fn=sdpa_attention):
        """``out + scale · Attn(q, face_k, face_v)`` with each row's role tokens (``out`` = the text
        (+ IP) attention of the same query, before ``to_out``)."""
        if not self.active or prefix not in self.layers.prefixes:
            return out
        role_rows = layout.row_index("role", q.device)
        if q.shape[0] != role_rows.shape[0]:
            raise ValueError(f"FaceID attention got {q.shape[0]} rows for a {role_rows.shape[0]}-row layout")
        k_all, v_all = self.key_values(prefix, layout.roles(), q.device, q.dtype)
        return out + self.scale * attn_fn(q, k_all[role_rows], v_all[role_rows], heads)
