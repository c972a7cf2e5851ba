"""Half precision (issue 13, class 2): every attention of ours is safe in float16 and bfloat16 under
every attention backend ComfyUI offers on this host, with activations whose q·k scores exceed
float16's range (65504) unless they are accumulated in float32 -- what MuseV's released fp16 weights
produce in the ReferenceNet fusion.

* layer level: ReferenceNet fusion, temporal transformer, IP-Adapter decoupled attention and the
  ReferenceNet itself (ComfyUI's UNet code with MuseV weights), run through ``host.host_attention``
  with each backend (``comfy.ldm.modules.attention.optimized_attention`` swapped in-process, as the
  CLI flags pick it at start-up).  A control call of the bare backend on the same tensors gives
  non-finite values for the backends that materialise the scores (basic, split, sub-quadratic):
  these tests fail without the fix.
* end to end: image->video (IP-Adapter + ReferenceNet through the nodes) sampled in float16 with
  fusion weights scaled so that the fusion scores overflow: finite under every backend, and the
  sampler's own check turns a NaN run (the bare backend) into an error naming the likely cause.
* the figures: max |fp16 - fp32| and |bf16 - fp32| of the sampled latents for text->video and
  image->video on the tiny parity fixtures (printed with ``-s``; written to
  test-artifacts/precision.json).
"""
import json
import os

import pytest
import torch

from conftest import ARTIFACTS_DIR
from musev_testlib import comfy_unet_config, list_arg, load_tensors, make_sd15_model, place_in_layout, read_json
from reference_fixtures import ClipSeam, fixture_vae, musev_root, pipeline_spec, place_image_proj, \
    place_referencenet, variant_of

HALF = (torch.float16, torch.bfloat16)
FIGURES = {}


def _backends():
    import comfy.ldm.modules.attention as A
    names = ("attention_basic", "attention_sub_quad", "attention_split", "attention_pytorch")
    return [n for n in names if hasattr(A, n)]


@pytest.fixture(params=["attention_basic", "attention_sub_quad", "attention_split", "attention_pytorch"])
def backend(request, comfy_host, monkeypatch):
    """One of ComfyUI's attention backends as THE optimized attention (what --use-split-cross-attention,
    --use-quad-cross-attention, --use-pytorch-cross-attention... select at start-up)."""
    import comfy.ldm.modules.attention as A
    if request.param not in _backends():
        pytest.skip(f"{request.param} is not in this ComfyUI")
    monkeypatch.setattr(A, "optimized_attention", getattr(A, request.param))
    return request.param


SCORE_BACKENDS = ("attention_basic", "attention_sub_quad", "attention_split")


def _hostile(shape, gen, scale=120.0):
    """Activations whose self-scores q·k/sqrt(d) reach ~1e5 with identity projections (fp16 max 65504)."""
    sign = torch.randint(0, 2, shape, generator=gen).float() * 2 - 1
    return sign * scale + torch.randn(shape, generator=gen)


def _identity_projections(attn, gen, v_scale=0.05):
    with torch.no_grad():
        dim = attn.to_q.weight.shape[0]
        attn.to_q.weight.copy_(torch.eye(dim))
        attn.to_k.weight.copy_(torch.eye(dim))
        attn.to_v.weight.copy_(torch.randn(dim, dim, generator=gen) * v_scale)
        attn.to_out[0].weight.copy_(torch.randn(dim, dim, generator=gen) * v_scale)
        attn.to_out[0].bias.zero_()


def _compare(out, ref):
    assert torch.isfinite(out).all(), "non-finite output"
    return ((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()


def _layers(comfy_host, gen, dim=64, heads=2):
    """MuseV's attention layers with projections that pass hostile activations through, and inputs."""
    R = comfy_host.pack("musev_core.referencenet")
    T = comfy_host.pack("musev_core.temporal")
    fuse = R.ReferEmbFuseAttention(dim, heads)
    _identity_projections(fuse, gen)
    tt = T.TemporalTransformer(dim, heads, 32)
    with torch.no_grad():
        for p in tt.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        tt.norm.weight.fill_(1.0)
        tt.temporal_weight.fill_(1.0)
        blk = tt.transformer_blocks[0]
        for n in (blk.norm1, blk.norm2, blk.norm3):
            n.weight.fill_(120.0)     # LayerNorm gains as large as trained fp16 weights can have
            n.bias.zero_()
    for attn in (blk.attn1, blk.attn2):
        _identity_projections(attn, gen)
    inputs = {"x": _hostile((2, dim, 4, 4), gen), "ref": _hostile((1, 16, dim), gen),
              "xt": torch.randn(1, 6, dim, 2, 2, generator=gen), "femb": torch.randn(6, 32, generator=gen) * 0.1,
              "q": _hostile((2, 16, dim), gen), "k": _hostile((2, 8, dim), gen), "k_ip": _hostile((2, 4, dim), gen),
              "v": torch.randn(2, 8, dim, generator=gen), "v_ip": torch.randn(2, 4, dim, generator=gen)}
    # keys that match the queries (a token attending to itself): score = |q|²/sqrt(d), ~1e5
    inputs["k"], inputs["k_ip"] = inputs["q"][:, :8].clone(), inputs["q"][:, 8:12].clone()
    return fuse, tt, inputs


def _fuse(fuse, x, ref, attn_fn):
    """ReferEmbFuseAttention.fuse with the reference tokens of one sample for every row."""
    if hasattr(fuse, "project_reference"):
        k, v = fuse.project_reference(ref)
        return fuse.fuse(x, [(0, x.shape[0], k[0], v[0])], attn_fn=attn_fn)
    return fuse.fuse(x, lambda lin: lin(ref).expand(x.shape[0], -1, -1), attn_fn=attn_fn)


def _run_layers(comfy_host, fuse, tt, inp, dtype, attn_fn, heads=2):
    IP = comfy_host.pack("musev_core.ip_adapter")
    fuse, tt = fuse.to(dtype), tt.to(dtype)
    t = {k: v.to(dtype) for k, v in inp.items()}
    with torch.no_grad():
        return {
            "fusion": _fuse(fuse, t["x"], t["ref"], attn_fn),
            "temporal": tt(t["xt"], t["femb"], attn_fn=attn_fn),
            "ip": IP.decoupled_cross_attention(t["q"], t["k"], t["v"], t["k_ip"], t["v_ip"], heads, 1.0, attn_fn),
        }


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_fusion_temporal_and_ip_attention_in_half_precision(comfy_host, backend, dtype):
    """Each layer in half precision against float32 on the same (rounded) weights and inputs; the bare
    backend on the same layers overflows (fp16, score backends): the test fails without the fix."""
    import comfy.ldm.modules.attention as A
    host = comfy_host.pack("nodes.host")
    fuse, tt, inp = _layers(comfy_host, torch.Generator().manual_seed(3))
    rounded = {k: v.to(dtype).float() for k, v in inp.items()}
    fuse.to(dtype), tt.to(dtype)                      # weights rounded once, compared in float32
    ref = _run_layers(comfy_host, fuse, tt, rounded, torch.float32, host.host_attention)
    out = _run_layers(comfy_host, fuse, tt, inp, dtype, host.host_attention)
    results = {name: _compare(out[name], ref[name]) for name in ref}
    assert all(torch.isfinite(r).all() for r in ref.values())
    tol = 2e-3 if dtype == torch.float16 else 2e-2
    FIGURES.setdefault("layers", {})[f"{backend}/{str(dtype)[6:]}"] = results
    assert all(r <= tol for r in results.values()), (backend, dtype, results)
    if dtype == torch.float16 and backend in SCORE_BACKENDS:
        bare = _run_layers(comfy_host, fuse, tt, inp, dtype, lambda q, k, v, heads: A.optimized_attention(q, k, v, heads))
        broken = sorted(name for name, o in bare.items() if not bool(torch.isfinite(o).all()))
        assert broken == ["fusion", "ip", "temporal"], f"control: the bare {backend} should overflow, got {broken}"


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_base_unet_attention_upcast_during_musev_calls(comfy_host, backend, dtype):
    """ComfyUI's own CrossAttention (the base UNet's, attending over MuseV's vision-frame tokens too):
    upcast for the duration of a MuseV call (host.upcast_attention), restored after."""
    import comfy.ldm.modules.attention as A
    import comfy.ops
    host = comfy_host.pack("nodes.host")
    gen = torch.Generator().manual_seed(5)
    attn = A.CrossAttention(64, heads=2, dim_head=32, operations=comfy.ops.manual_cast)
    _identity_projections(attn, gen)
    x = _hostile((1, 16, 64), gen)
    attn.to(dtype)
    with torch.no_grad():
        ref = attn.float()(x.to(dtype).float())
        attn.to(dtype)
        saved = host.upcast_attention(attn, dtype)
        try:
            out = attn(x.to(dtype))
        finally:
            host.restore_attention(saved)
        assert attn.attn_precision is None, "restored after the call"
        rel = _compare(out, ref)
        assert rel <= (2e-3 if dtype == torch.float16 else 2e-2), rel
        if dtype == torch.float16 and backend in SCORE_BACKENDS:
            assert not bool(torch.isfinite(attn(x.to(dtype))).all()), "control: without the upcast it overflows"


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_referencenet_in_half_precision(comfy_host, parity_dir, backend, dtype):
    """The ReferenceNet (ComfyUI's UNet code with MuseV's weights) built in half precision asks its
    attention for float32 scores; its 13 features stay finite and close to float32's."""
    import comfy.ldm.modules.attention as A
    paths = comfy_host.pack("nodes.paths")
    runner = comfy_host.pack("nodes.referencenet_runner")
    layout = comfy_host.pack("musev_core.layout")
    inputs = load_tensors(os.path.join(parity_dir, "referencenet", "inputs.safetensors"))
    choice = place_referencenet(parity_dir, "precision_rn")
    path = paths.full_path(choice, "referencenet", "test")
    order = [layout.UNCOND, layout.COND]
    ehs = inputs["encoder_hidden_states"]
    feats = {}
    for dt in (torch.float32, dtype):
        patcher = runner.load_referencenet_patcher(path, dt, None)
        attns = [m for m in patcher.model.modules() if isinstance(m, A.CrossAttention)]
        assert attns and all(m.attn_precision is torch.float32 for m in attns)
        feats[dt] = runner.run_referencenet(patcher, inputs["sample"][:1], {r: ehs[b:b + 1] for b, r in enumerate(order)})
    worst = 0.0
    for role in order:
        for g, e in zip(feats[dtype][role], feats[torch.float32][role]):
            assert torch.isfinite(g).all()
            worst = max(worst, ((g.float() - e).abs().max() / e.abs().max().clamp_min(1e-6)).item())
    FIGURES.setdefault("referencenet", {})[f"{backend}/{str(dtype)[6:]}"] = worst
    assert worst <= (1e-2 if dtype == torch.float16 else 5e-2), worst


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
def test_core_default_attention_in_half_precision(comfy_host, dtype):
    """musev_core's own default (PyTorch's fused SDPA, used without a host): float32 accumulation."""
    A = comfy_host.pack("musev_core.attention")
    gen = torch.Generator().manual_seed(11)
    q = _hostile((2, 16, 64), gen)
    v = torch.randn(2, 16, 64, generator=gen)
    ref = A.sdpa_attention(q.to(dtype).float(), q.to(dtype).float(), v.to(dtype).float(), 2)
    out = A.sdpa_attention(q.to(dtype), q.to(dtype), v.to(dtype), 2)
    assert _compare(out, ref) <= (2e-3 if dtype == torch.float16 else 2e-2)


def test_host_attention_upcasts_itself_when_the_host_drops_attn_precision(comfy_host, monkeypatch):
    """--dont-upcast-attention makes ComfyUI ignore attn_precision: ours still gets float32 scores."""
    import comfy.ldm.modules.attention as A
    from comfy.cli_args import args
    host = comfy_host.pack("nodes.host")
    monkeypatch.setattr(A, "optimized_attention", A.attention_split)
    monkeypatch.setattr(args, "dont_upcast_attention", True)
    gen = torch.Generator().manual_seed(9)
    q = _hostile((1, 16, 64), gen).half()
    v = torch.randn(1, 16, 64, generator=gen).half()
    assert not bool(torch.isfinite(A.optimized_attention(q, q, v, 2, attn_precision=torch.float32)).all())
    out = host.host_attention(q, q, v, 2)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------
# End to end on the tiny parity fixtures

_MODELS = {}


def _i2v_model(comfy_host, parity_dir, monkeypatch, dtype, tag, fusion_scale=1.0):
    """image->video MODEL (musev_referencenet + MuseVIPAdapter + MuseVReferenceNet through the nodes)
    with the base and MuseV weights in ``dtype``; ``fusion_scale`` multiplies the fusion layers' to_q and
    to_k (the scores by its square) in the motion file.  Built once per module (the backend is picked
    at call time)."""
    key = ("i2v", dtype, tag, fusion_scale)
    if key not in _MODELS:
        _MODELS[key] = _build_i2v_model(comfy_host, parity_dir, monkeypatch, dtype, tag, fusion_scale)
    return _MODELS[key]


def _build_i2v_model(comfy_host, parity_dir, monkeypatch, dtype, tag, fusion_scale):
    nodes = comfy_host.pack("nodes.reference_nodes")
    motion_nodes = comfy_host.pack("nodes.motion_nodes")
    spec = pipeline_spec(parity_dir)
    args = spec["call_args"]
    inputs = load_tensors(os.path.join(parity_dir, "pipeline", "inputs.safetensors"))
    unet_folder = os.path.dirname(spec["unet_weights"])
    weights_dir = os.path.join(parity_dir, unet_folder)
    cfg = read_json(os.path.join(weights_dir, "config.json"))
    base = make_sd15_model(comfy_unet_config(cfg, dtype=dtype), load_tensors(os.path.join(weights_dir,
                                                                                          "weights.safetensors")))
    rel = f"precision_{tag}/motion/{variant_of(parity_dir, unet_folder)}/unet"
    dest = os.path.join(musev_root(), rel)
    if not os.path.isdir(dest):
        place_in_layout(weights_dir, dest)
        if fusion_scale != 1.0:
            from safetensors.torch import save_file
            path = os.path.join(dest, "diffusion_pytorch_model.safetensors")
            sd = load_tensors(path)
            for key in sd:
                if "refer_emb_attns" in key and (key.endswith("to_q.weight") or key.endswith("to_k.weight")):
                    sd[key] = sd[key] * fusion_scale
            save_file(sd, path)
    (model,) = motion_nodes.LoadMuseVMotion().load(base, rel + "/", frame_rate=float(args["motion_speed"]))
    refer = inputs["refer_image"]
    images = (refer[0].permute(1, 2, 3, 0) / 255.0).contiguous()
    monkeypatch.setattr(nodes, "clip_image_embeds", ClipSeam(inputs["clip_image_embeds"]))
    ip_folder = os.path.dirname(spec["ip_adapter_weights"])
    (m,) = nodes.MuseVIPAdapter().apply(model, object(), images, place_image_proj(parity_dir, ip_folder, tag, "bin"),
                                        scale=float(args["ip_adapter_scale"]))
    vae, _ = fixture_vae(parity_dir)
    rn = place_referencenet(parity_dir, tag, released_config=True, folder=os.path.dirname(spec["referencenet_weights"]))
    (m,) = nodes.MuseVReferenceNet().apply(m, rn, vae, images)
    pos = [[inputs["prompt_embeds"], {}]]
    neg = [[inputs["negative_prompt_embeds"], {}]]
    vision = inputs["condition_latents"][0].permute(1, 0, 2, 3) / m.model.latent_format.scale_factor
    return m, pos, neg, vision


def _t2v_model(comfy_host, parity_dir, dtype, tag):
    motion_nodes = comfy_host.pack("nodes.motion_nodes")
    spec = read_json(os.path.join(parity_dir, "manifest.json"))["pipelines"]["pipeline_musev"]
    weights_dir = os.path.join(parity_dir, os.path.dirname(spec["unet_weights"]))
    cfg = read_json(os.path.join(weights_dir, "config.json"))
    base = make_sd15_model(comfy_unet_config(cfg, dtype=dtype), load_tensors(os.path.join(parity_dir,
                                                                                          spec["unet_weights"])))
    rel = f"precision_t2v_{tag}/unet"
    dest = os.path.join(musev_root(), rel)
    if not os.path.isdir(dest):
        place_in_layout(weights_dir, dest)
    (model,) = motion_nodes.LoadMuseVMotion().load(base, rel + "/", frame_rate=float(spec["call_args"]["motion_speed"]))
    inputs = load_tensors(os.path.join(parity_dir, "pipeline_musev", "inputs.safetensors"))
    cond = inputs["condition_latents"][0].permute(1, 0, 2, 3)
    return model, [[inputs["prompt_embeds"], {}]], [[inputs["negative_prompt_embeds"], {}]], cond


def _sample(comfy_host, model, pos, neg, shape, frames, vision=None, steps=2):
    nodes = comfy_host.pack("nodes.sampler_nodes")
    h, w = shape
    kw = dict(frames=frames, width=w * 8, height=h * 8, context_frames=4, context_overlap=2,
              context_schedule="uniform_v2", context_batch_size=1, noise_type="video_fusion", w_ind_noise=0.5,
              img_weight=1e-3, seed=13, steps=steps, cfg=3.5, sampler_name="euler", scheduler="musev_linspace",
              include_condition_frames=False)
    if vision is not None:
        kw["vision_latent"] = {"samples": vision}
    return nodes.ParallelDenoiseSampler().sample(model, pos, neg, **kw)[0]["samples"]


def test_image_to_video_half_precision_with_overflowing_fusion_scores(comfy_host, parity_dir, backend, monkeypatch):
    """The probe's case: fp16 weights, no fp32 upcast anywhere, IP + ReferenceNet, fusion scores past
    65504.  Finite under every backend; with the bare backend in our attention the sampler refuses
    the NaN video with an error that names the causes instead of returning it."""
    patch = comfy_host.pack("nodes.patch")
    host = comfy_host.pack("nodes.host")
    m, pos, neg, vision = _i2v_model(comfy_host, parity_dir, monkeypatch, torch.float16, "hostile", fusion_scale=1500.0)
    shape = tuple(vision.shape[-2:])
    out = _sample(comfy_host, m, pos, neg, shape, 3, vision, steps=1)
    assert torch.isfinite(out).all()
    if backend in SCORE_BACKENDS:
        import comfy.ldm.modules.attention as A
        monkeypatch.setattr(patch, "host_attention", lambda q, k, v, heads: A.optimized_attention(q, k, v, heads))
        with pytest.raises(host.MuseVInputError) as info:
            _sample(comfy_host, m, pos, neg, shape, 3, vision, steps=1)
        text = str(info.value)
        assert text.startswith("ParallelDenoiseSampler:") and "NaN" in text, text
        assert "float16" in text and backend in text and "input" in text, text


def test_half_precision_against_float32(comfy_host, parity_dir, monkeypatch):
    """Max |half - fp32| of the sampled latents, text->video and image->video (2 steps, 5 frames, 2
    windows of 4 frames, CFG 3.5), on ComfyUI's default CPU attention backend.  Bounded relative to the
    latents' size; the figures go to the report."""
    import comfy.ldm.modules.attention as A
    host = comfy_host.pack("nodes.host")
    figures = {"backend": host.attention_backend_name()}
    for what in ("text->video", "image->video"):
        outs = {}
        for dtype in (torch.float32,) + HALF:
            tag = f"{what[:1]}_{str(dtype)[6:]}"
            if what == "text->video":
                m, pos, neg, cond = _t2v_model(comfy_host, parity_dir, dtype, tag)
                outs[dtype] = _sample(comfy_host, m, pos, neg, tuple(cond.shape[-2:]), 5)
            else:
                m, pos, neg, vision = _i2v_model(comfy_host, parity_dir, monkeypatch, dtype, tag)
                outs[dtype] = _sample(comfy_host, m, pos, neg, tuple(vision.shape[-2:]), 5, vision)
        ref = outs[torch.float32]
        scale = ref.abs().max().item()
        for dtype in HALF:
            err = (outs[dtype] - ref).abs().max().item()
            figures[f"{what} {str(dtype)[6:]}"] = {"max_abs": err, "max_rel": err / scale, "latent_max": scale}
            assert torch.isfinite(outs[dtype]).all()
            assert err <= (0.02 if dtype == torch.float16 else 0.1) * scale, (what, dtype, err, scale)
    FIGURES["end_to_end"] = figures
    print("\nhalf vs float32 (" + figures["backend"] + "): " + "; ".join(
        f"{k}: max|diff| {v['max_abs']:.3g} ({v['max_rel']:.2%} of max|latent| {v['latent_max']:.3g})"
        for k, v in figures.items() if isinstance(v, dict)))
    del A


def teardown_module(module):
    _MODELS.clear()
    if FIGURES:
        os.makedirs(ARTIFACTS_DIR, exist_ok=True)
        with open(os.path.join(ARTIFACTS_DIR, "precision.json"), "w") as f:
            json.dump(FIGURES, f, indent=1, default=str)
