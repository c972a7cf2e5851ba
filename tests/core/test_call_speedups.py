"""Pure-torch tests of what makes the patched UNet call leaner (issue 15): the time convolution as a
2-D convolution, the fusion writing the reference K/V straight into its buffers, per-run constants
(computed once while their sources are the same tensors), one text/IP attention per guidance chunk
(rows folded into the query sequence), and the per-run layout with its chunk indices."""
import torch
import torch.nn.functional as F

from conftest import pack_module

layout_m = pack_module("musev_core.layout")
temporal = pack_module("musev_core.temporal")
referencenet = pack_module("musev_core.referencenet")
motion_m = pack_module("musev_core.motion")
attention = pack_module("musev_core.attention")
keys = pack_module("musev_core.keys")


def _init(module, seed=0, std=0.2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return module


def test_time_conv_is_the_conv3d_it_replaces():
    layer = _init(temporal.TemporalConvLayer(32))
    conv = layer.conv1[2]
    assert isinstance(conv, torch.nn.Conv3d) and tuple(conv.weight.shape) == (32, 32, 3, 1, 1)
    assert "conv1.2.weight" in layer.state_dict()                 # MuseV's key names, 5-D weights
    x = torch.randn(2, 32, 7, 5, 3)
    ref = F.conv3d(x, conv.weight, conv.bias, padding=(1, 0, 0))
    got = conv(x)
    assert got.shape == ref.shape
    assert (got - ref).abs().max().item() < 1e-5
    # not a (k, 1, 1) kernel: the ordinary Conv3d path
    other = temporal.time_conv_class(torch.nn.Conv3d)(4, 4, (3, 3, 1), padding=(1, 1, 0))
    y = torch.randn(1, 4, 5, 6, 2)
    assert torch.equal(other(y), F.conv3d(y, other.weight, other.bias, padding=(1, 1, 0)))


def test_fusion_with_buffers_equals_concatenation():
    torch.manual_seed(0)
    fuse = _init(referencenet.ReferEmbFuseAttention(32, 4))
    x = torch.randn(6, 32, 4, 3)
    ref_tokens = {0: torch.randn(1, 10, 32), 1: torch.randn(1, 10, 32)}
    roles = [1, 1, 1, 0, 0, 0]
    kv = {r: fuse.project_reference(t) for r, t in ref_tokens.items()}
    got = fuse.fuse(x, [(0, 3, kv[1][0][0], kv[1][1][0]), (3, 6, kv[0][0][0], kv[0][1][0])])
    tokens = x.reshape(6, 32, 12).transpose(1, 2)
    rk = torch.cat([fuse.to_k(ref_tokens[r]) for r in roles])
    rv = torch.cat([fuse.to_v(ref_tokens[r]) for r in roles])
    k = torch.cat([rk, fuse.to_k(tokens)], dim=1)
    v = torch.cat([rv, fuse.to_v(tokens)], dim=1)
    out = fuse.to_out[0](attention.sdpa_attention(fuse.to_q(tokens), k, v, 4))
    expected = x + out.transpose(1, 2).reshape(6, 32, 4, 3)
    assert (got - expected).abs().max().item() < 1e-5


def _motion(variant="musev_referencenet"):
    layout = keys.sd_layout(variant, [32, 32, 64, 64], 128, 48)
    return motion_m.MuseVMotionModel(variant, layout, 4)


def test_constants_reused_while_sources_are_the_same():
    lay = layout_m.CallLayout.build(4, [0, 1], [(0, 2)])
    store = {}
    built = []
    a, b = torch.ones(2), torch.ones(2)
    for src in (a, a, b, b, a):
        call = motion_m.CallContext(motion=None, layout=lay, constants=store)
        call.constant("k", (src,), lambda: built.append(1) or len(built))
    assert len(built) == 3                     # a, then b (a new object), then a again
    call = motion_m.CallContext(motion=None, layout=lay)           # no run: per call only
    call.constant("k", (a,), lambda: built.append(1))
    assert len(built) == 4 and len(store) == 1


def test_folded_text_and_ip_attention_equal_per_row():
    torch.manual_seed(1)
    motion = _init(_motion(), std=0.05)
    prefix = motion.ip_prefixes[0]
    ch = motion.module_at(prefix).to_k_ip.out_features
    lay = layout_m.CallLayout.build(6, [1, 0], [(1, 3)])
    q = torch.randn(6, 5, ch)
    ctx = {0: torch.randn(1, 7, ch), 1: torch.randn(1, 7, ch)}
    k = torch.cat([ctx[r].expand(3, -1, -1) for r in (1, 0)])     # chunk rows share their text context
    v = torch.cat([(2 * ctx[r]).expand(3, -1, -1) for r in (1, 0)])
    tokens = {0: torch.randn(1, 4, 48), 1: torch.randn(1, 4, 48)}
    plain = motion_m.CallContext(motion=motion, layout=lay, ip_tokens=tokens, ip_scale=0.7)
    folded = motion_m.CallContext(motion=motion, layout=lay, ip_tokens=tokens, ip_scale=0.7, text_fold=True,
                                  fold_blocks=frozenset({("input", 1, 0)}))
    with torch.no_grad():
        ref = plain.ip_attention(prefix, q, k, v, 4)
        got = folded.ip_attention(prefix, q, k, v, 4)
        ck, cv = folded.reduce_text_context(("input", 1, 0), k, v)
        assert ck.shape[0] == 2 and torch.equal(ck[0], k[0]) and torch.equal(ck[1], k[3])
        assert folded.reduce_text_context(("input", 2, 0), k, v)[0] is k      # not MuseV's attn2 there
        got_reduced = folded.ip_attention(prefix, q, ck, cv, 4)
        text_ref = plain.text_attention(q, k, v, 4)
        text_got = folded.text_attention(q, ck, cv, 4)
    assert (got - ref).abs().max().item() < 1e-5
    assert (got_reduced - ref).abs().max().item() < 1e-5
    assert (text_got - text_ref).abs().max().item() < 1e-5


def test_layout_reuse_and_chunk_indices():
    store = {}
    a = layout_m.CallLayout.reuse(store, 8, [1, 0], [(1, 2), (1, 2)])
    b = layout_m.CallLayout.reuse(store, 8, [1, 0], [(1, 2), (1, 2)])
    c = layout_m.CallLayout.reuse(store, 8, [0, 1], [(1, 2), (1, 2)])
    assert a is b and a is not c
    assert a.row_index("role", "cpu") is b.row_index("role", "cpu")            # uploaded once per run
    assert a.chunks == 2 and a.chunk_starts("cpu").tolist() == [0, 4] and a.chunk_roles("cpu").tolist() == [1, 0]
    assert a.role_runs() == [(0, 4, 1), (4, 8, 0)]
    assert layout_m.CallLayout.reuse(None, 8, [1, 0], [(1, 2), (1, 2)]) is not a
