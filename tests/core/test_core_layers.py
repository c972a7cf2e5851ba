"""Pure-torch tests of musev_core's layers, layout, keys and checkpoint reading (no ComfyUI)."""
import os

import pytest
import torch
from safetensors.torch import save_file

from conftest import pack_module

layout_m = pack_module("musev_core.layout")
temporal = pack_module("musev_core.temporal")
keys = pack_module("musev_core.keys")
motion_m = pack_module("musev_core.motion")
ckpt = pack_module("musev_core.checkpoints")
refonly = pack_module("musev_core.reference_only")
ipa = pack_module("musev_core.ip_adapter")
attention = pack_module("musev_core.attention")


def test_layout_rows_roles_and_groups():
    lay = layout_m.CallLayout.build(14, [layout_m.UNCOND, layout_m.COND], [(1, 4), (1, 3)])
    assert [(s.start, s.frames, s.n_vis, s.role) for s in lay.segments] == [
        (0, 4, 1, 1), (4, 3, 1, 1), (7, 4, 1, 0), (11, 3, 1, 0)]
    assert lay.row_index("role", "cpu").tolist() == [1] * 7 + [0] * 7
    assert lay.row_index("is_vision", "cpu").nonzero().flatten().tolist() == [0, 4, 7, 11]
    assert lay.row_index("vision_rows", "cpu")[5].tolist() == [4]
    groups = lay.frame_groups()
    assert sorted((f, n) for f, n, _ in groups) == [(3, 2), (4, 2)]
    with pytest.raises(ValueError, match="frames"):
        layout_m.CallLayout.build(13, [0, 1], [(1, 4), (1, 3)])


def test_per_segment_equals_separate_calls():
    """Several segments (ragged) in one call = each segment alone (batched windows rely on it)."""
    torch.manual_seed(0)
    tc = temporal.TemporalConvLayer(32)
    for p in tc.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randn(9, 32, 3, 5)
    lay = layout_m.CallLayout.build(9, [0], [(1, 5), (1, 4)])
    together = temporal.per_segment(lay, x, lambda s, f: tc(s))
    first = tc(x[:5].unsqueeze(0))[0]
    second = tc(x[5:].unsqueeze(0))[0]
    assert torch.allclose(together, torch.cat([first, second]), atol=1e-6)


def test_temporal_weight_uses_absolute_value():
    tt = temporal.TemporalTransformer(32, 4, 16)
    for p in tt.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 3, 32, 2, 2)
    femb = torch.randn(3, 16)
    with torch.no_grad():
        tt.temporal_weight.fill_(0.5)
        a = tt(x, femb)
        tt.temporal_weight.fill_(-0.5)
        b = tt(x, femb)
        tt.temporal_weight.fill_(0.0)
        c = tt(x, femb)
    assert torch.equal(a, b) and torch.equal(c, x) and not torch.allclose(a, x)


def test_temporal_attention_mixes_frames_only_within_a_sample():
    tt = temporal.TemporalTransformer(32, 4, 16)
    for p in tt.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 4, 32, 2, 2)
    femb = torch.randn(4, 16)
    with torch.no_grad():
        y = tt(x, femb)
        x2 = x.clone()
        x2[1, 3] += 1.0
        y2 = tt(x2, femb)
    assert torch.equal(y[0], y2[0])                 # the other sample is untouched
    assert not torch.allclose(y[1, 0], y2[1, 0])    # frame 0 of the same sample sees frame 3


def test_frame_embedding_indices():
    fe = temporal.FrameEmbedding(8, 16)
    assert fe.frame_indices(4).tolist() == [0, 1, 2, 3]
    assert fe.frame_indices(4, 8.0).tolist() == [0, 8, 16, 24]
    assert fe.frame_indices(3, 1.5).tolist() == [0, 1, 3]      # MuseV casts the product to long
    e = temporal.sinusoid(torch.tensor([0, 5]), 8)
    assert torch.allclose(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_reference_only_context():
    lay = layout_m.CallLayout.build(6, [1, 0], [(1, 3)])
    n = torch.arange(6 * 2 * 4, dtype=torch.float32).reshape(6, 2, 4)
    ctx = refonly.extend_self_attention_context(n, lay)
    assert ctx.shape == (6, 4, 4)
    assert torch.equal(ctx[:, :2], n)
    assert torch.equal(ctx[2, 2:], n[0]) and torch.equal(ctx[5, 2:], n[3])
    plain = layout_m.CallLayout.build(6, [1, 0], [(0, 3)])
    assert refonly.extend_self_attention_context(n, plain) is n


def test_image_proj_and_decoupled_attention():
    sd = {"proj.weight": torch.randn(3 * 8, 10), "proj.bias": torch.randn(24), "norm.weight": torch.ones(8),
          "norm.bias": torch.zeros(8)}
    proj = ipa.ImageProjModel.from_state_dict(sd)
    assert (proj.clip_dim, proj.cross_dim, proj.tokens) == (10, 8, 3)
    cond, uncond = proj.tokens_for(torch.randn(2, 10))
    assert cond.shape == (1, 6, 8) and uncond.shape == (1, 6, 8)
    assert torch.allclose(uncond[0, :3], proj(torch.zeros(1, 10))[0])
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    ik, iv = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    plain = attention.sdpa_attention(q, k, v, 2)
    both = ipa.decoupled_cross_attention(q, k, v, ik, iv, 2, 0.7)
    assert torch.allclose(both, plain + 0.7 * attention.sdpa_attention(q, ik, iv, 2), atol=1e-6)
    assert torch.equal(ipa.decoupled_cross_attention(q, k, v, ik, iv, 2, 0.0), plain)


def test_placement_table_sd15():
    p = keys.placement("down_blocks.3.refer_emb_attns.1")
    assert p.block == ("input", 11) and p.ref_index == 8     # MuseV's slice quirk (not 11)
    assert keys.placement("down_blocks.1.refer_emb_attns.2").block == ("input", 6)
    assert keys.placement("down_blocks.1.refer_emb_attns.2").ref_index == 6
    assert keys.placement("up_blocks.2.temp_attentions.1").block == ("output", 7)
    assert keys.placement("mid_block.temp_convs.1").anchor == ("after_res", 1)
    assert keys.ip_attn2_key("up_blocks.3.attentions.2.transformer_blocks.0.attn2") == ("output", 11, 0)
    assert keys.ip_attn2_key("mid_block.attentions.0.transformer_blocks.0.attn2") == ("middle", 0, 0)
    assert keys.ip_attn2_key("down_blocks.2.attentions.1.transformer_blocks.0.attn2") == ("input", 8, 0)


@pytest.mark.parametrize("variant,n_keys", [("musev", 871), ("musev_referencenet", 939)])
def test_sd15_layout_builds_full_size_motion_model(variant, n_keys):
    layout = keys.sd_layout(variant, [320, 640, 1280, 1280], 1280, 768)
    with torch.device("meta"):
        m = motion_m.MuseVMotionModel(variant, layout, 8)
    assert len(m.state_dict()) == n_keys
    assert keys.describe_keys(m.state_dict().keys()) == variant


def test_describe_keys_kinds():
    assert keys.describe_keys(["proj.weight", "proj.bias", "norm.weight", "norm.bias"]) == "image_proj"
    assert keys.describe_keys(["model.diffusion_model.input_blocks.0.0.weight"]) == "ldm_checkpoint"
    assert keys.describe_keys(["conv_in.weight", "down_blocks.0.resnets.0.conv1.weight"]) == "referencenet"
    assert keys.describe_keys(["x"]) == "unknown"
    with pytest.raises(motion_m.MotionCheckpointError, match="MuseVReferenceNet"):
        motion_m.MuseVMotionModel.from_state_dict({"conv_in.weight": torch.zeros(1),
                                                   "down_blocks.0.resnets.0.conv1.weight": torch.zeros(1)})


def test_incomplete_motion_checkpoint(tmp_path):
    layout = keys.sd_layout("musev", [32, 32, 32, 32], 128, 32)
    m = motion_m.MuseVMotionModel("musev", layout, 4)
    sd = dict(m.state_dict())
    sd.pop("down_blocks.0.temp_convs.0.conv2.3.weight")
    with pytest.raises(motion_m.MotionCheckpointError, match="missing"):
        motion_m.MuseVMotionModel.from_state_dict(sd, heads=4)
    sd = dict(m.state_dict())
    sd.pop("up_blocks.0.temp_convs.2.conv1.2.weight")
    with pytest.raises(motion_m.MotionCheckpointError, match="incomplete"):
        motion_m.MuseVMotionModel.from_state_dict(sd, heads=4)


class Evil:
    pass


def test_checkpoint_reading(tmp_path):
    sd = {"a.weight": torch.randn(2, 3), "b": torch.arange(4)}
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"image_proj": sd}, tmp_path / "w.bin")
    st = ckpt.load_state_dict(str(tmp_path / "w.safetensors"))
    bn = ckpt.load_state_dict(str(tmp_path / "w.bin"))
    assert set(st) == {"a.weight", "b"} and set(bn) == {"image_proj.a.weight", "image_proj.b"}
    assert torch.equal(st["a.weight"], bn["image_proj.a.weight"])
    torch.save({"x": Evil()}, tmp_path / "evil.bin")
    with pytest.raises(ckpt.CheckpointError, match="refusing to load"):
        ckpt.load_state_dict(str(tmp_path / "evil.bin"))
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="empty"):
        ckpt.load_state_dict(str(tmp_path / "empty.safetensors"))
    (tmp_path / "junk.bin").write_bytes(b"hello world")
    with pytest.raises(ckpt.CheckpointError, match="not a torch checkpoint"):
        ckpt.load_state_dict(str(tmp_path / "junk.bin"))
    os.makedirs(tmp_path / "model" / "unet")
    save_file(sd, str(tmp_path / "model" / "unet" / "diffusion_pytorch_model.safetensors"))
    (tmp_path / "model" / "unet" / "config.json").write_text('{"attention_head_dim": 8}')
    path, cfg = ckpt.resolve_weights_path(str(tmp_path / "model"))
    assert path.endswith("diffusion_pytorch_model.safetensors") and cfg == {"attention_head_dim": 8}
    with pytest.raises(ckpt.CheckpointError, match="holds no diffusion_pytorch_model"):
        ckpt.resolve_weights_path(str(tmp_path))
