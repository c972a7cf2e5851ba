"""MuseVIPAdapter / MuseVReferenceNet as ComfyUI nodes: once per sampling run, context routing,
order independence, pass-through on the plain variant, and every bad input with a clear message."""
import os

import pytest
import torch

from musev_testlib import list_arg, load_tensors
from reference_fixtures import (ClipSeam, build_musev_model, catch_log, fixture_vae, manifest, pipeline_spec,
                                place_image_proj, place_referencenet, save_bin, save_safetensors,
                                tiny_clip_vision)

TOL = 1e-4


@pytest.fixture(scope="module")
def models(comfy_host, parity_dir):
    """(base SD1.5 MODEL, MuseV referencenet-variant MODEL) from the pipeline fixture's UNet."""
    spec = pipeline_spec(parity_dir)
    return build_musev_model(comfy_host, parity_dir, os.path.dirname(spec["unet_weights"]), "nodes",
                             frame_rate=float(spec["call_args"]["motion_speed"]))


@pytest.fixture(scope="module")
def pipe(parity_dir):
    spec = pipeline_spec(parity_dir)
    inputs = load_tensors(os.path.join(parity_dir, "pipeline", "inputs.safetensors"))
    images = (inputs["refer_image"][0].permute(1, 2, 3, 0) / 255.0).contiguous()
    return spec, inputs, images


@pytest.fixture(scope="module")
def choices(parity_dir):
    spec = pipeline_spec(parity_dir)
    ip_folder = os.path.dirname(spec["ip_adapter_weights"])
    return {
        "ip": place_image_proj(parity_dir, ip_folder, "nodes", "bin"),
        "rn": place_referencenet(parity_dir, "nodes", folder=os.path.dirname(spec["referencenet_weights"])),
        "ip_folder": ip_folder,
    }


def _with_ip(comfy_host, model, images, embeds, choice, monkeypatch, **kw):
    nodes = comfy_host.pack("nodes.reference_nodes")
    monkeypatch.setattr(nodes, "clip_image_embeds", ClipSeam(embeds))
    return nodes.MuseVIPAdapter().apply(model, object(), images, choice, **kw)[0]


def _with_rn(comfy_host, model, choice, vae, images):
    nodes = comfy_host.pack("nodes.reference_nodes")
    return nodes.MuseVReferenceNet().apply(model, choice, vae, images)[0]


def _refnet_counter(model):
    """Counts ReferenceNet passes (its conv_in runs once per pass)."""
    calls = []
    module = model.additional_models["musev_referencenet"][0].model
    return calls, module.input_blocks[0][0].register_forward_hook(lambda *a: calls.append(1))


def _unet_counter(model):
    calls = []
    return calls, model.model.diffusion_model.input_blocks[0][0].register_forward_hook(lambda *a: calls.append(1))


def _ksampler(model, text_pos, text_neg, frames, h, w, steps=3, seed=1):
    import nodes as comfy_nodes
    latent = {"samples": torch.zeros(frames, model.model.latent_format.latent_channels, h, w)}
    (out,) = comfy_nodes.KSampler().sample(model, seed, steps, 2.5, "euler", "normal", [[text_pos, {}]],
                                           [[text_neg, {}]], latent, denoise=1.0)
    return out["samples"]


# ------------------------------------------------------------------------------------------------
# Once per sampling run

def test_referencenet_runs_once_per_sampling_run(comfy_host, parity_dir, models, pipe, choices, monkeypatch):
    spec, inputs, images = pipe
    _, musev = models
    vae, _ = fixture_vae(parity_dir)
    m = _with_ip(comfy_host, musev, images, inputs["clip_image_embeds"], choices["ip"], monkeypatch)
    m = _with_rn(comfy_host, m, choices["rn"], vae, images)
    h, w = inputs["refer_latent_cfg"].shape[-2:]
    rn_calls, rn_hook = _refnet_counter(m)
    unet_calls, unet_hook = _unet_counter(m)
    try:
        steps = 3
        out = _ksampler(m, inputs["prompt_embeds"], inputs["negative_prompt_embeds"], 3, h, w, steps=steps)
        assert torch.isfinite(out).all() and out.shape == (3, m.model.latent_format.latent_channels, h, w)
        assert len(unet_calls) >= steps, "the UNet must have been called at every step"
        assert len(rn_calls) == 1, f"ReferenceNet ran {len(rn_calls)} times in one {steps}-step run"
        _ksampler(m, inputs["prompt_embeds"], inputs["negative_prompt_embeds"], 3, h, w, steps=steps, seed=2)
        assert len(rn_calls) == 2, "a new sampling run computes its features again (once)"
    finally:
        rn_hook.remove()
        unet_hook.remove()


def test_referencenet_text_context_once_per_role(comfy_host, parity_dir, models, pipe, choices):
    """Without MuseVIPAdapter the ReferenceNet's context is each role's prompt: at most one pass per
    role and run, never one per step."""
    spec, inputs, images = pipe
    _, musev = models
    vae, _ = fixture_vae(parity_dir)
    m = _with_rn(comfy_host, musev, choices["rn"], vae, images)
    h, w = inputs["refer_latent_cfg"].shape[-2:]
    rn_calls, rn_hook = _refnet_counter(m)
    try:
        _ksampler(m, inputs["prompt_embeds"], inputs["negative_prompt_embeds"], 2, h, w, steps=4)
    finally:
        rn_hook.remove()
    assert 1 <= len(rn_calls) <= 2, len(rn_calls)


def test_referencenet_text_context_parity_through_provider(comfy_host, parity_dir, models, choices, monkeypatch):
    """``referencenet/case_text_context`` via the provider: each role's text is taken from the UNet
    call's rows (uncond chunk first here), no IP tokens."""
    patch = comfy_host.pack("nodes.patch")
    layout = comfy_host.pack("musev_core.layout")
    _, musev = models
    folder = os.path.join(parity_dir, "referencenet")
    name = "case_text_context"
    if not os.path.isfile(os.path.join(folder, f"{name}_inputs.safetensors")):
        pytest.fail("fixture referencenet/case_text_context is missing")
    inputs = load_tensors(os.path.join(folder, f"{name}_inputs.safetensors"))
    outputs = load_tensors(os.path.join(folder, f"{name}_outputs.safetensors"))
    vae, _ = fixture_vae(parity_dir)
    h, w = inputs["sample"].shape[-2:]
    m = _with_rn(comfy_host, musev, choices["rn"], vae, torch.rand(1, h * 8, w * 8, 3))
    provider = patch.get_state(m).reference
    assert torch.equal(inputs["sample"][0], inputs["sample"][1]), "MuseV runs [ref; ref]"
    monkeypatch.setattr(provider, "latent_for", lambda hh, ww: inputs["sample"][:1])
    frames = 3
    ehs = inputs["encoder_hidden_states"]                         # [uncond; cond]
    context = ehs.repeat_interleave(frames, dim=0)                # per row, uncond chunk first
    lay = layout.CallLayout.build(2 * frames, [layout.UNCOND, layout.COND], [(0, frames)])
    run = patch.MuseVRun()
    to = {patch.INPUT_KEY: {"x_shape": (2 * frames, inputs["sample"].shape[1], h, w), "context": context,
                            "layout": lay}}
    feats = provider.resolve(run, torch.device("cpu"), torch.float32, to, None)
    exp = list_arg(outputs, "down_block_refer_embs") + [outputs["mid_block_refer_emb"]]
    worst = max((feats[role][k] - e[b:b + 1]).abs().max().item()
                for b, role in enumerate((layout.UNCOND, layout.COND)) for k, e in enumerate(exp))
    print(f"referencenet/{name} through the provider (text routing): max abs error {worst:.3g}")
    assert worst <= TOL
    assert run.counters["referencenet"] == 1


# ------------------------------------------------------------------------------------------------
# Composition

def test_both_orders_same_inputs_and_input_model_untouched(comfy_host, parity_dir, models, pipe, choices, monkeypatch):
    patch = comfy_host.pack("nodes.patch")
    layout = comfy_host.pack("musev_core.layout")
    spec, inputs, images = pipe
    _, musev = models
    before_state = patch.get_state(musev)
    before_models = {k: list(v) for k, v in musev.additional_models.items()}
    vae, _ = fixture_vae(parity_dir)
    embeds = inputs["clip_image_embeds"]
    a = _with_rn(comfy_host, _with_ip(comfy_host, musev, images, embeds, choices["ip"], monkeypatch), choices["rn"], vae, images)
    b = _with_ip(comfy_host, _with_rn(comfy_host, musev, choices["rn"], vae, images), images, embeds, choices["ip"], monkeypatch)
    assert patch.get_state(musev) is before_state and before_state.ip is None and before_state.reference is None
    assert {k: list(v) for k, v in musev.additional_models.items()} == before_models
    channels, h, w = inputs["refer_latent_cfg"].shape[1:]
    results = []
    for m in (a, b):
        st = patch.get_state(m)
        assert st.ip is not None and st.reference is not None
        run = patch.MuseVRun()
        lay = layout.CallLayout.build(2, [layout.UNCOND, layout.COND], [(0, 1)])
        to = {patch.INPUT_KEY: {"x_shape": (2, channels, h, w), "context": None, "layout": lay}}
        ip = st.ip.resolve(run, torch.device("cpu"), torch.float32, to)
        results.append(st.reference.resolve(run, torch.device("cpu"), torch.float32, to, ip))
    for role in results[0]:
        for x, y in zip(results[0][role], results[1][role]):
            assert torch.equal(x, y)


def test_plain_musev_variant_passes_through_with_warning(comfy_host, parity_dir, pipe, choices, monkeypatch):
    nodes = comfy_host.pack("nodes.reference_nodes")
    spec, inputs, images = pipe
    folder = next(os.path.dirname(c["weights"]) for c in manifest(parity_dir)["unet_cases"]["unet3d_musev"].values())
    _, plain = build_musev_model(comfy_host, parity_dir, folder, "plain")
    vae, _ = fixture_vae(parity_dir)
    monkeypatch.setattr(nodes, "clip_image_embeds", ClipSeam(inputs["clip_image_embeds"]))
    with catch_log() as records:
        (a,) = nodes.MuseVIPAdapter().apply(plain, object(), images, choices["ip"])
        (b,) = nodes.MuseVReferenceNet().apply(plain, choices["rn"], vae, images)
    assert a is plain and b is plain
    warnings = [r.getMessage() for r in records if r.levelname == "WARNING"]
    assert any("MuseVIPAdapter" in msg and "passes through" in msg for msg in warnings), warnings
    assert any("MuseVReferenceNet" in msg and "passes through" in msg for msg in warnings), warnings


def test_non_musev_model_is_rejected(comfy_host, parity_dir, models, pipe, choices):
    host = comfy_host.pack("nodes.host")
    nodes = comfy_host.pack("nodes.reference_nodes")
    base, _ = models
    spec, inputs, images = pipe
    vae, _ = fixture_vae(parity_dir)
    with pytest.raises(host.MuseVInputError, match="MuseVIPAdapter.*connect LoadMuseVMotion first"):
        nodes.MuseVIPAdapter().apply(base, object(), images, choices["ip"])
    with pytest.raises(host.MuseVInputError, match="MuseVReferenceNet.*connect LoadMuseVMotion first"):
        nodes.MuseVReferenceNet().apply(base, choices["rn"], vae, images)


# ------------------------------------------------------------------------------------------------
# Sizes, CLIP vision, schedules

def test_reference_image_of_other_size_is_resized_with_a_log_line(comfy_host, parity_dir, models, pipe, choices):
    patch = comfy_host.pack("nodes.patch")
    prep = comfy_host.pack("musev_core.image_prep")
    spec, inputs, _ = pipe
    _, musev = models
    vae, _ = fixture_vae(parity_dir)
    h, w = inputs["refer_latent_cfg"].shape[-2:]
    g = torch.Generator().manual_seed(3)
    odd = torch.rand(1, h * 8 + 37, w * 8 - 50, 3, generator=g)          # another size AND aspect
    m = _with_rn(comfy_host, musev, choices["rn"], vae, odd)
    provider = patch.get_state(m).reference
    with catch_log() as records:
        latent = provider.latent_for(h, w)
    assert tuple(latent.shape) == (1, 4, h, w)
    msgs = [r.getMessage() for r in records]
    assert any("MuseVReferenceNet" in s and "resiz" in s for s in msgs), msgs
    expected = m.model.latent_format.process_in(vae.encode(prep.crop_resize_to(odd, h * 8, w * 8)))
    assert (latent - expected).abs().max().item() <= 1e-6          # MuseV's crop + LANCZOS rule, not a plain resize


def test_ip_image_of_other_aspect_is_recropped_at_sampling(comfy_host, models, pipe, choices, monkeypatch):
    patch = comfy_host.pack("nodes.patch")
    nodes = comfy_host.pack("nodes.reference_nodes")
    spec, inputs, _ = pipe
    _, musev = models
    embeds = inputs["clip_image_embeds"]
    seam = ClipSeam(embeds)
    monkeypatch.setattr(nodes, "clip_image_embeds", seam)
    image = torch.rand(1, 64, 64, 3)                                   # square image
    (m,) = nodes.MuseVIPAdapter().apply(musev, object(), image, choices["ip"])
    provider = patch.get_state(m).ip
    assert len(seam.calls) == 1
    same = {patch.INPUT_KEY: {"x_shape": (2, 4, 16, 16), "context": None, "layout": None}}   # same aspect
    provider.resolve(None, torch.device("cpu"), torch.float32, same)
    assert len(seam.calls) == 1 and provider.encodes == 0
    wide = {patch.INPUT_KEY: {"x_shape": (2, 4, 8, 16), "context": None, "layout": None}}    # 2:1 video
    with catch_log() as records:
        provider.resolve(None, torch.device("cpu"), torch.float32, wide)
        provider.resolve(None, torch.device("cpu"), torch.float32, wide)
    assert provider.encodes == 1 and len(seam.calls) == 2, "re-encoded once for the new aspect, then cached"
    assert any("MuseVIPAdapter" in r.getMessage() and "aspect" in r.getMessage() for r in records)


def test_real_clip_vision_model_path(comfy_host, tmp_path, models, pipe, choices, parity_dir):
    """No seam: a (tiny, random) ComfyUI CLIP vision model of the projection's width feeds the node."""
    patch = comfy_host.pack("nodes.patch")
    nodes = comfy_host.pack("nodes.reference_nodes")
    prep = comfy_host.pack("musev_core.image_prep")
    ipmod = comfy_host.pack("musev_core.ip_adapter")
    ckpt = comfy_host.pack("musev_core.checkpoints")
    _, musev = models
    proj_sd = ipmod.image_proj_weights(ckpt.load_state_dict(os.path.join(parity_dir, choices["ip_folder"],
                                                                         "ip_adapter_image_proj.bin")))
    proj = ipmod.ImageProjModel.from_state_dict(proj_sd)
    clip = tiny_clip_vision(tmp_path, projection_dim=proj.clip_dim)
    images = torch.rand(2, 50, 70, 3, generator=torch.Generator().manual_seed(5))
    (m,) = nodes.MuseVIPAdapter().apply(musev, clip, images, choices["ip"], scale=0.5)
    out = patch.get_state(m).ip.resolve(None, torch.device("cpu"), torch.float32, {})
    pix = prep.clip_preprocess(images, clip.image_size, clip.image_mean, clip.image_std)
    with torch.no_grad():
        embeds = clip.model(pixel_values=pix, intermediate_output=-2)[2].float()
        cond, uncond = proj.tokens_for(embeds)
    assert out["tokens"][0].shape == (1, 2 * proj.tokens, proj.cross_dim) and out["scale"] == 0.5
    assert (out["tokens"][0] - cond).abs().max().item() <= 1e-5
    assert (out["tokens"][1] - uncond).abs().max().item() <= 1e-5


def test_ip_start_end_percent(comfy_host, models, pipe, choices, monkeypatch):
    patch = comfy_host.pack("nodes.patch")
    spec, inputs, images = pipe
    _, musev = models
    m = _with_ip(comfy_host, musev, images, inputs["clip_image_embeds"], choices["ip"], monkeypatch,
                 scale=0.8, start_percent=0.3, end_percent=0.7)
    provider = patch.get_state(m).ip
    ms = musev.get_model_object("model_sampling")
    for pct, active in ((0.05, False), (0.5, True), (0.95, False)):
        sigma = ms.percent_to_sigma(pct)
        out = provider.resolve(None, torch.device("cpu"), torch.float32, {"sigmas": torch.tensor([sigma])})
        assert out["scale"] == (0.8 if active else 0.0), (pct, out["scale"])
        assert set(out["tokens"]) == {0, 1}                     # tokens stay (the ReferenceNet's context)
    host = comfy_host.pack("nodes.host")
    with pytest.raises(host.MuseVInputError, match="start_percent"):
        _with_ip(comfy_host, musev, images, inputs["clip_image_embeds"], choices["ip"], monkeypatch,
                 start_percent=0.8, end_percent=0.2)


# ------------------------------------------------------------------------------------------------
# Wrong files / models

def test_clip_vision_of_wrong_width(comfy_host, tmp_path, models, pipe, choices):
    host = comfy_host.pack("nodes.host")
    nodes = comfy_host.pack("nodes.reference_nodes")
    _, musev = models
    spec, inputs, images = pipe
    wrong = inputs["clip_image_embeds"].shape[-1] + 16
    clip = tiny_clip_vision(tmp_path, projection_dim=wrong)
    with pytest.raises(host.MuseVInputError) as e:
        nodes.MuseVIPAdapter().apply(musev, clip, images, choices["ip"])
    msg = str(e.value)
    for part in ("MuseVIPAdapter", "'clip_vision'", f"{wrong}-d", "ViT-H/14", "1024-d", "Load CLIP Vision"):
        assert part in msg, (part, msg)


def test_sdxl_image_proj_is_rejected(comfy_host, models, pipe):
    host = comfy_host.pack("nodes.host")
    nodes = comfy_host.pack("nodes.reference_nodes")
    _, musev = models
    spec, inputs, images = pipe
    clip_dim = inputs["clip_image_embeds"].shape[-1]
    sdxl = {"image_proj": {"proj.weight": torch.randn(4 * 2048, clip_dim), "proj.bias": torch.zeros(4 * 2048),
                           "norm.weight": torch.ones(2048), "norm.bias": torch.zeros(2048)},
            "ip_adapter": {"1.to_k_ip.weight": torch.zeros(8, 2048)}}
    rel = save_bin("reftests_bad/ip-adapter_sdxl.bin", sdxl)
    with pytest.raises(host.MuseVInputError) as e:
        nodes.MuseVIPAdapter().apply(musev, object(), images, rel)
    msg = str(e.value)
    for part in ("MuseVIPAdapter", "'image_proj'", "2048-d", "SDXL", "ip_adapter_image_proj.bin"):
        assert part in msg, (part, msg)


def test_ip_adapter_plus_and_faceid_projections_are_rejected(comfy_host, models, pipe):
    host = comfy_host.pack("nodes.host")
    nodes = comfy_host.pack("nodes.reference_nodes")
    _, musev = models
    spec, inputs, images = pipe
    plus = save_safetensors("reftests_bad/ip-adapter-plus_sd15.safetensors", {
        "image_proj.latents": torch.zeros(1, 16, 8), "image_proj.proj_in.weight": torch.zeros(8, 8),
        "image_proj.proj_out.weight": torch.zeros(8, 8), "image_proj.norm_out.weight": torch.ones(8)})
    face = save_safetensors("reftests_bad/ip-adapter-faceid_sd15.safetensors", {
        "image_proj.proj.0.weight": torch.zeros(16, 8), "image_proj.proj.2.weight": torch.zeros(32, 16),
        "image_proj.norm.weight": torch.ones(8)})
    with pytest.raises(host.MuseVInputError, match=r"MuseVIPAdapter: 'image_proj'.*IP-Adapter Plus.*ip_adapter_image_proj"):
        nodes.MuseVIPAdapter().apply(musev, object(), images, plus)
    with pytest.raises(host.MuseVInputError, match=r"MuseVIPAdapter: 'image_proj'.*FaceID"):
        nodes.MuseVIPAdapter().apply(musev, object(), images, face)


def test_other_musev_files_given_to_the_wrong_node(comfy_host, parity_dir, models, pipe, choices):
    host = comfy_host.pack("nodes.host")
    nodes = comfy_host.pack("nodes.reference_nodes")
    motion_nodes = comfy_host.pack("nodes.motion_nodes")
    base, musev = models
    spec, inputs, images = pipe
    vae, _ = fixture_vae(parity_dir)
    motion_choice = f"reftests_nodes/motion/{'musev_referencenet'}/unet/"
    rn_file = choices["rn"] + "referencenet/diffusion_pytorch_model.safetensors"
    # ReferenceNet checkpoint -> LoadMuseVMotion
    with pytest.raises(host.MuseVInputError) as e:
        motion_nodes.LoadMuseVMotion().load(base, choices["rn"] + "referencenet/")
    msg = str(e.value)
    assert "LoadMuseVMotion" in msg and "'motion_model'" in msg and "MuseVReferenceNet" in msg, msg
    # motion checkpoint -> MuseVReferenceNet (folder and file)
    for choice in (motion_choice, motion_choice + "diffusion_pytorch_model.safetensors"):
        with pytest.raises(host.MuseVInputError) as e:
            nodes.MuseVReferenceNet().apply(musev, choice, vae, images)
        msg = str(e.value)
        assert "MuseVReferenceNet" in msg and "'referencenet'" in msg and "LoadMuseVMotion" in msg, msg
        assert "motion/musev_referencenet/referencenet" in msg, msg
    # image projection -> MuseVReferenceNet
    with pytest.raises(host.MuseVInputError, match=r"MuseVReferenceNet: 'referencenet'.*MuseVIPAdapter"):
        nodes.MuseVReferenceNet().apply(musev, choices["ip"], vae, images)
    # ReferenceNet / motion checkpoints -> MuseVIPAdapter
    with pytest.raises(host.MuseVInputError, match=r"MuseVIPAdapter: 'image_proj'.*ReferenceNet.*MuseVReferenceNet"):
        nodes.MuseVIPAdapter().apply(musev, object(), images, rn_file)
    with pytest.raises(host.MuseVInputError, match=r"MuseVIPAdapter: 'image_proj'.*motion UNet.*LoadMuseVMotion"):
        nodes.MuseVIPAdapter().apply(musev, object(), images, motion_choice + "diffusion_pytorch_model.safetensors")


def test_referencenet_that_does_not_fit_the_motion_model(comfy_host, parity_dir, models, pipe):
    """A ReferenceNet of other channels (e.g. a different base family) is refused at the node."""
    host = comfy_host.pack("nodes.host")
    nodes = comfy_host.pack("nodes.reference_nodes")
    _, musev = models
    spec, inputs, images = pipe
    vae, _ = fixture_vae(parity_dir)
    sd = load_tensors(os.path.join(parity_dir, os.path.dirname(spec["referencenet_weights"]), "weights.safetensors"))
    # every channel width x2 (GroupNorm makes them multiples of 32; kernels, latent channels and the
    # context width stay): a consistent encoder that is not the motion model's
    doubled = {k: torch.zeros([d * 2 if d % 32 == 0 else d for d in v.shape]) for k, v in sd.items()}
    rel = save_safetensors("reftests_bad/wide_referencenet/diffusion_pytorch_model.safetensors", doubled)
    with pytest.raises(host.MuseVInputError) as e:
        nodes.MuseVReferenceNet().apply(musev, rel, vae, images)
    msg = str(e.value)
    assert "MuseVReferenceNet" in msg and "'referencenet'" in msg and "does not fit" in msg, msg


def test_non_clip_image_encoder_is_rejected(comfy_host, tmp_path, models, pipe, choices):
    """A DINOv2 'CLIP vision' (ComfyUI loads those through CLIPVisionLoader too) is refused by name."""
    import json
    import comfy.clip_vision
    host = comfy_host.pack("nodes.host")
    nodes = comfy_host.pack("nodes.reference_nodes")
    _, musev = models
    spec, inputs, images = pipe
    cfg = {"hidden_size": 32, "use_mask_token": True, "patch_size": 14, "image_size": 28, "num_channels": 3,
           "num_attention_heads": 2, "hidden_act": "gelu", "mlp_ratio": 4, "model_type": "dinov2",
           "num_hidden_layers": 1, "layer_norm_eps": 1e-6, "qkv_bias": True, "use_swiglu_ffn": False,
           "layerscale_value": 1.0, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    path = tmp_path / "dino.json"
    path.write_text(json.dumps(cfg))
    dino = comfy.clip_vision.ClipVisionModel(str(path))
    with pytest.raises(host.MuseVInputError, match=r"MuseVIPAdapter: 'clip_vision' is a Dinov2Model .*ViT-H/14"):
        nodes.MuseVIPAdapter().apply(musev, dino, images, choices["ip"])


def test_referencenet_honours_interrupt(comfy_host, parity_dir, models, pipe, choices):
    import comfy.model_management as mm
    patch = comfy_host.pack("nodes.patch")
    layout = comfy_host.pack("musev_core.layout")
    spec, inputs, images = pipe
    _, musev = models
    vae, _ = fixture_vae(parity_dir)
    m = _with_rn(comfy_host, musev, choices["rn"], vae, images)
    provider = patch.get_state(m).reference
    channels, h, w = inputs["refer_latent_cfg"].shape[1:]
    lay = layout.CallLayout.build(2, [layout.UNCOND, layout.COND], [(0, 1)])
    text = torch.cat([inputs["negative_prompt_embeds"], inputs["prompt_embeds"]])
    to = {patch.INPUT_KEY: {"x_shape": (2, channels, h, w), "context": text, "layout": lay}}
    run = patch.MuseVRun()
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            provider.resolve(run, torch.device("cpu"), torch.float32, to, None)
    finally:
        mm.interrupt_current_processing(False)
    assert "referencenet" not in run.counters
    feats = provider.resolve(run, torch.device("cpu"), torch.float32, to, None)     # works again afterwards
    assert run.counters["referencenet"] == 1 and set(feats) == {layout.UNCOND, layout.COND}
