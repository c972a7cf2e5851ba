"""IP-Adapter-FaceID pieces (musev_core.faceid, spec §3 last paragraph) against values computed by
hand from random weights: the MLP projection, the unconditional tokens, the key mapping of
ip-adapter-faceid_sd15.bin, the face attention term (alone, after the IP term, per guidance role),
scale 0, and what a wrong file is called."""
import math
import types

import pytest
import torch

from conftest import pack_module

F = pack_module("musev_core.faceid")
CK = pack_module("musev_core.checkpoints")
K = pack_module("musev_core.keys")
L = pack_module("musev_core.layout")
M = pack_module("musev_core.motion")
IPA = pack_module("musev_core.ip_adapter")
ATT = pack_module("musev_core.attention")


def _proj_sd(id_dim=6, hidden=10, cross=8, tokens=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"proj.0.weight": torch.randn(hidden, id_dim, generator=g), "proj.0.bias": torch.randn(hidden, generator=g),
            "proj.2.weight": torch.randn(cross * tokens, hidden, generator=g) / 3,
            "proj.2.bias": torch.randn(cross * tokens, generator=g),
            "norm.weight": 1 + 0.1 * torch.randn(cross, generator=g), "norm.bias": 0.1 * torch.randn(cross, generator=g)}


def _by_hand(sd, e, tokens, cross):
    """LayerNorm(reshape(W2 · gelu(W1 e + b1) + b2)) written out (erf GELU, eps 1e-5)."""
    h = e.double() @ sd["proj.0.weight"].double().T + sd["proj.0.bias"].double()
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2.0)))
    x = h @ sd["proj.2.weight"].double().T + sd["proj.2.bias"].double()
    x = x.reshape(-1, tokens, cross)
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * sd["norm.weight"].double() + sd["norm.bias"].double()


def test_mlp_projection_matches_the_formula_and_reads_its_dims():
    sd = _proj_sd()
    proj = F.MLPProjModel.from_state_dict(sd)
    assert (proj.id_dim, proj.hidden_dim, proj.cross_dim, proj.tokens) == (6, 10, 8, 3)
    e = torch.randn(2, 6, generator=torch.Generator().manual_seed(1))
    got = proj(e)
    assert got.shape == (2, 3, 8)
    assert (got.double() - _by_hand(sd, e, 3, 8)).abs().max() < 1e-5


def test_tokens_concatenate_images_and_uncond_is_the_projection_of_zeros():
    sd = _proj_sd(id_dim=5, hidden=7, cross=4, tokens=2, seed=3)
    proj = F.MLPProjModel.from_state_dict(sd)
    e = torch.randn(3, 5, generator=torch.Generator().manual_seed(4))
    cond, uncond = proj.tokens_for(e)
    assert cond.shape == uncond.shape == (1, 3 * 2, 4)
    hand = _by_hand(sd, e, 2, 4)                              # (3 images, 2 tokens, 4)
    assert (cond[0].double() - hand.reshape(6, 4)).abs().max() < 1e-5      # image 0's tokens first
    zero = _by_hand(sd, torch.zeros(1, 5), 2, 4)[0]           # LN(reshape(W2 gelu(b1) + b2))
    assert (uncond[0].double() - zero.repeat(3, 1)).abs().max() < 1e-5
    assert uncond.abs().max() > 0.1                           # not zero tokens


def _released_file(tmp_path, cross=8, channels=(4, 6, 10, 10), lora=True, seed=5):
    """A tiny ip-adapter-faceid_sd15.bin in the released layout: {"image_proj", "ip_adapter"} with
    to_k_ip/to_v_ip at the odd indices and LoRA weights everywhere."""
    g = torch.Generator().manual_seed(seed)
    ch = {"down_blocks.0": channels[0], "down_blocks.1": channels[1], "down_blocks.2": channels[2],
          "up_blocks.1": channels[2], "up_blocks.2": channels[1], "up_blocks.3": channels[0], "mid_block": channels[3]}
    ip = {}
    for i, prefix in enumerate(F.FACE_ATTN2_PREFIXES):
        c = ch[".".join(prefix.split(".")[:2]) if not prefix.startswith("mid") else "mid_block"]
        ip[f"{2 * i + 1}.to_k_ip.weight"] = torch.randn(c, cross, generator=g)
        ip[f"{2 * i + 1}.to_v_ip.weight"] = torch.randn(c, cross, generator=g)
        if lora:
            for j in (2 * i, 2 * i + 1):
                ip[f"{j}.to_q_lora.down.weight"] = torch.randn(2, c, generator=g)
                ip[f"{j}.to_q_lora.up.weight"] = torch.randn(c, 2, generator=g)
    path = tmp_path / "ip-adapter-faceid_sd15.bin"
    torch.save({"image_proj": _proj_sd(cross=cross, tokens=4), "ip_adapter": ip}, path)
    return path, ip


def test_key_mapping_follows_museVs_list(tmp_path):
    path, ip = _released_file(tmp_path)
    sd = CK.load_state_dict(str(path))                        # weights_only torch.load, flattened
    assert K.describe_keys(sd) == K.KIND_FACEID
    proj_sd, kv, n_lora = F.faceid_weights(sd)
    assert set(proj_sd) == set(F.PROJ_KEYS)
    assert n_lora == 2 * 32                                  # to_q_lora down+up of all 32 processors
    expected = {                                              # MuseV's unet_keys_list, written out
        "down_blocks.0.attentions.0": 1, "down_blocks.0.attentions.1": 3, "down_blocks.1.attentions.0": 5,
        "down_blocks.1.attentions.1": 7, "down_blocks.2.attentions.0": 9, "down_blocks.2.attentions.1": 11,
        "up_blocks.1.attentions.0": 13, "up_blocks.1.attentions.1": 15, "up_blocks.1.attentions.2": 17,
        "up_blocks.2.attentions.0": 19, "up_blocks.2.attentions.1": 21, "up_blocks.2.attentions.2": 23,
        "up_blocks.3.attentions.0": 25, "up_blocks.3.attentions.1": 27, "up_blocks.3.attentions.2": 29,
        "mid_block.attentions.0": 31}
    assert len(kv) == 16
    for block, idx in expected.items():
        k, v = kv[block + ".transformer_blocks.0.attn2"]
        assert torch.equal(k, ip[f"{idx}.to_k_ip.weight"]) and torch.equal(v, ip[f"{idx}.to_v_ip.weight"])
    layers = F.FaceIDLayers.from_weights(kv)
    assert len(layers.state_dict()) == 32
    mid = layers.layer("mid_block.attentions.0.transformer_blocks.0.attn2")
    assert torch.equal(mid.to_k_ip.weight, ip["31.to_k_ip.weight"])
    assert (mid.to_k_ip.in_features, mid.to_k_ip.out_features) == (8, 10)
    # the ComfyUI attn2 slots these prefixes patch (SD1.5 block map)
    slots = [K.ip_attn2_key(p) for p in F.FACE_ATTN2_PREFIXES]
    assert slots[:6] == [("input", 1, 0), ("input", 2, 0), ("input", 4, 0), ("input", 5, 0), ("input", 7, 0),
                         ("input", 8, 0)]
    assert slots[6:15] == [("output", i, 0) for i in range(3, 12)] and slots[15] == ("middle", 0, 0)


def test_file_without_lora_and_as_safetensors(tmp_path):
    from safetensors.torch import save_file
    path, ip = _released_file(tmp_path, lora=False)
    flat = CK.load_state_dict(str(path))
    st = tmp_path / "faceid.safetensors"
    save_file({k: v.contiguous() for k, v in flat.items()}, str(st))
    proj_sd, kv, n_lora = F.faceid_weights(CK.load_state_dict(str(st)))
    assert n_lora == 0 and len(kv) == 16


def _flat(proj=None, ip=None):
    out = {}
    for k, v in (proj or {}).items():
        out["image_proj." + k] = v
    for k, v in (ip or {}).items():
        out["ip_adapter." + k] = v
    return out


def test_wrong_files_are_named(tmp_path):
    path, ip = _released_file(tmp_path)
    proj = _proj_sd(cross=8, tokens=4)
    plain = {"proj.weight": torch.zeros(16, 5), "proj.bias": torch.zeros(16), "norm.weight": torch.ones(4),
             "norm.bias": torch.zeros(4)}
    with pytest.raises(F.FaceIDError, match="MuseVIPAdapter"):
        F.faceid_weights(_flat(plain, {"1.to_k_ip.weight": torch.zeros(4, 4)}))
    plus = dict(proj, **{"perceiver_resampler.proj_in.weight": torch.zeros(8, 8)})
    with pytest.raises(F.FaceIDError, match="Plus"):
        F.faceid_weights(_flat(plus, ip))
    with pytest.raises(F.FaceIDError, match="no face attention weights"):
        F.faceid_weights(_flat(proj, {"0.to_q_lora.down.weight": torch.zeros(2, 4)}))
    sdxl = {f"{i}.to_k_ip.weight": torch.zeros(640, 8) for i in range(1, 140, 2)}
    sdxl.update({f"{i}.to_v_ip.weight": torch.zeros(640, 8) for i in range(1, 140, 2)})
    with pytest.raises(F.FaceIDError, match="SDXL"):
        F.faceid_weights(_flat(proj, sdxl))
    partial = {k: v for k, v in ip.items() if not k.startswith("31.")}
    with pytest.raises(F.FaceIDError, match="lacks 2 of the 32.*ip_adapter.31.to_k_ip"):
        F.faceid_weights(_flat(proj, partial))
    odd = dict(ip, **{"1.to_k_ip.weight": torch.zeros(4, 5), "1.to_v_ip.weight": torch.zeros(4, 5)})
    with pytest.raises(F.FaceIDError, match="inconsistent"):
        F.faceid_weights(_flat(proj, odd))
    with pytest.raises(F.FaceIDError, match="no FaceID projection"):
        F.faceid_weights({"conv_in.weight": torch.zeros(1)})
    # the other readers name it too
    assert K.describe_keys(_flat(proj, ip)) == K.KIND_FACEID
    with pytest.raises(IPA.ImageProjError, match="MuseVFaceID"):
        IPA.image_proj_weights(_flat(proj, ip))
    with pytest.raises(M.MotionCheckpointError, match="MuseVFaceID"):
        M.MuseVMotionModel.from_state_dict(_flat(proj, ip))


# ------------------------------------------------------------------------------------------------
# The attention term

def _attn_by_hand(q, k, v, heads):
    """softmax(q_h k_h^T / sqrt(d)) v_h per head, concatenated (float64)."""
    b, lq, c = q.shape
    d = c // heads
    qh = q.double().reshape(b, lq, heads, d).transpose(1, 2)
    kh = k.double().reshape(b, k.shape[1], heads, d).transpose(1, 2)
    vh = v.double().reshape(b, v.shape[1], heads, d).transpose(1, 2)
    w = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (w @ vh).transpose(1, 2).reshape(b, lq, c)


def _layers(channels=8, cross=6, seed=7):
    g = torch.Generator().manual_seed(seed)
    prefix = F.FACE_ATTN2_PREFIXES[4]
    kv = {prefix: (torch.randn(channels, cross, generator=g) / 2, torch.randn(channels, cross, generator=g) / 2)}
    return prefix, kv, F.FaceIDLayers.from_weights(kv)


def test_face_term_per_guidance_role_against_direct_computation():
    prefix, kv, layers = _layers()
    g = torch.Generator().manual_seed(8)
    cond, uncond = torch.randn(1, 4, 6, generator=g), torch.randn(1, 4, 6, generator=g)
    frames, heads = 3, 2
    layout = L.CallLayout.build(2 * frames, [L.UNCOND, L.COND], [(1, frames)])   # [uncond; cond] chunks
    q = torch.randn(2 * frames, 5, 8, generator=g)
    out = torch.randn(2 * frames, 5, 8, generator=g)
    call = F.FaceCall({L.COND: cond, L.UNCOND: uncond}, 0.7, layers)
    got = call.add(prefix, q, out, heads, layout)
    wk, wv = kv[prefix]
    for row in range(2 * frames):
        tok = uncond if row < frames else cond
        exp = out[row].double() + 0.7 * _attn_by_hand(q[row:row + 1], tok @ wk.T, tok @ wv.T, heads)[0]
        assert (got[row].double() - exp).abs().max() < 1e-5, row
    # K/V are computed once per layer, device and dtype
    assert len(call.cache) == 1
    call.add(prefix, q, out, heads, layout)
    assert len(call.cache) == 1


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_scale_zero_or_below_is_no_faceid(scale):
    prefix, kv, layers = _layers()
    layout = L.CallLayout.build(2, [L.COND], [(0, 2)])
    q, out = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    call = F.FaceCall({L.COND: torch.randn(1, 4, 6), L.UNCOND: torch.randn(1, 4, 6)}, scale, layers)
    assert not call.active and call.add(prefix, q, out, 2, layout) is out
    ctx = M.CallContext(motion=None, layout=layout, face=call, attn_fn=ATT.sdpa_attention)
    assert ctx.face_attention(prefix, q, out, 2) is out
    assert M.CallContext(motion=None, layout=layout).face_attention(prefix, q, out, 2) is out


def test_face_term_is_added_after_text_and_ip_terms_in_one_attn2():
    """CallContext: Attn(q, k, v) + s_ip·Attn(q, ip_k, ip_v) + s_face·Attn(q, face_k, face_v), shared q."""
    prefix, kv, layers = _layers(channels=8, cross=6)
    g = torch.Generator().manual_seed(9)
    ip_mod = IPA.IPKeyValue(8, 6)
    with torch.no_grad():
        ip_mod.to_k_ip.weight.copy_(torch.randn(8, 6, generator=g))
        ip_mod.to_v_ip.weight.copy_(torch.randn(8, 6, generator=g))
    motion = types.SimpleNamespace(module_at=lambda p: ip_mod)
    layout = L.CallLayout.build(4, [L.UNCOND, L.COND], [(0, 2)])
    ip_tok = {L.COND: torch.randn(1, 4, 6, generator=g), L.UNCOND: torch.randn(1, 4, 6, generator=g)}
    face_tok = {L.COND: torch.randn(1, 8, 6, generator=g), L.UNCOND: torch.randn(1, 8, 6, generator=g)}
    q, k, v = torch.randn(4, 5, 8, generator=g), torch.randn(4, 7, 8, generator=g), torch.randn(4, 7, 8, generator=g)
    heads = 4
    ctx = M.CallContext(motion=motion, layout=layout, ip_tokens=ip_tok, ip_scale=0.6,
                        face=F.FaceCall(face_tok, 1.3, layers), attn_fn=ATT.sdpa_attention)
    with torch.no_grad():
        got = ctx.face_attention(prefix, q, ctx.ip_attention(prefix, q, k, v, heads), heads)
        wk, wv = kv[prefix]
        for row in range(4):
            role = L.UNCOND if row < 2 else L.COND
            it, ft = ip_tok[role], face_tok[role]
            exp = (_attn_by_hand(q[row:row + 1], k[row:row + 1], v[row:row + 1], heads)
                   + 0.6 * _attn_by_hand(q[row:row + 1], ip_mod.to_k_ip(it), ip_mod.to_v_ip(it), heads)
                   + 1.3 * _attn_by_hand(q[row:row + 1], ft @ wk.T, ft @ wv.T, heads))
            assert (got[row].double() - exp[0]).abs().max() < 1e-5, row
        # without IP tokens (the musev family): text + face only
        ctx2 = M.CallContext(motion=motion, layout=layout, face=F.FaceCall(face_tok, 1.3, layers),
                             attn_fn=ATT.sdpa_attention)
        got2 = ctx2.face_attention(prefix, q, ctx2.ip_attention(prefix, q, k, v, heads), heads)
        exp2 = _attn_by_hand(q, k, v, heads) + 1.3 * torch.cat([
            _attn_by_hand(q[r:r + 1], face_tok[L.UNCOND if r < 2 else L.COND] @ wk.T,
                          face_tok[L.UNCOND if r < 2 else L.COND] @ wv.T, heads) for r in range(4)])
        assert (got2.double() - exp2).abs().max() < 1e-5


def test_missing_role_tokens_and_row_mismatch_are_errors():
    prefix, kv, layers = _layers()
    layout = L.CallLayout.build(4, [L.UNCOND, L.COND], [(0, 2)])
    call = F.FaceCall({L.COND: torch.randn(1, 4, 6)}, 1.0, layers)
    with pytest.raises(ValueError, match="role 1"):
        call.add(prefix, torch.randn(4, 5, 8), torch.randn(4, 5, 8), 2, layout)
    call = F.FaceCall({L.COND: torch.randn(1, 4, 6), L.UNCOND: torch.randn(1, 4, 6)}, 1.0, layers)
    with pytest.raises(ValueError, match="3 rows for a 4-row layout"):
        call.add(prefix, torch.randn(3, 5, 8), torch.randn(3, 5, 8), 2, layout)
