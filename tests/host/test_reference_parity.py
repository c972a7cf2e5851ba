"""Parity of MuseV's reference-image inputs produced by this pack against MuseV's outputs:

* ReferenceNet features (12 down skips + mid) of every ``referencenet/`` case, the ReferenceNet loaded
  from the released folder layout (config.json with diffusers' defaults, shapes from the weights) and
  run on ComfyUI's own UNet code;
* IP-Adapter tokens of ``ip_adapter*/`` (one and two images) through MuseVIPAdapter, from the released
  ``.bin`` container and from a plain .safetensors;
* ``ip_adapter/case_unet_ip_only`` through the node's IP path and the patched ComfyUI UNet;
* the ``pipeline/`` chain refer_image -> VAE (the fixture's tiny VAE through ``comfy.sd.VAE``) ->
  latent -> ReferenceNet -> features, and the first denoising step's UNet calls, through the nodes.

The CLIP vision call is the only seam: the fixtures give its output (``clip_image_embeds``).
"""
import os

import pytest
import torch

from conftest import parity_root
from musev_testlib import list_arg, load_tensors
from reference_fixtures import (ClipSeam, build_musev_model, fixture_vae, manifest, pipeline_spec,
                                place_image_proj, place_referencenet)

TOL = 1e-4
LATENT_REL = 1e-5


def _referencenet_cases():
    folder = os.path.join(parity_root(), "referencenet")
    if not os.path.isdir(folder):
        return [pytest.param("missing", id="fixtures-missing")]
    cases = ["main"] + sorted(f[len("case_"):-len("_inputs.safetensors")] for f in os.listdir(folder)
                              if f.startswith("case_") and f.endswith("_inputs.safetensors"))
    return [pytest.param(c, id=c) for c in cases]


def _case_files(folder, case):
    if case == "main":
        return os.path.join(folder, "inputs.safetensors"), os.path.join(folder, "outputs.safetensors")
    return (os.path.join(folder, f"case_{case}_inputs.safetensors"),
            os.path.join(folder, f"case_{case}_outputs.safetensors"))


def _ip_folders():
    root = parity_root()
    if not os.path.isdir(root):
        return [pytest.param("missing", id="fixtures-missing")]
    return sorted(f for f in os.listdir(root)
                  if os.path.isfile(os.path.join(root, f, "ip_adapter_image_proj.bin")))


def _feature_errors(got, expected, order):
    """``got`` {role: [13 (1, C, n, h, w)]}, ``expected`` fixture tensors with a [uncond; cond] batch."""
    exp = list_arg(expected, "down_block_refer_embs") + [expected["mid_block_refer_emb"]]
    errs = []
    for b, role in enumerate(order):
        assert len(got[role]) == len(exp)
        for k, (g, e) in enumerate(zip(got[role], exp)):
            assert tuple(g.shape) == tuple(e[b:b + 1].shape), (k, g.shape, e.shape)
            errs.append((k, role, (g.float().cpu() - e[b:b + 1]).abs().max().item()))
    return errs


# ------------------------------------------------------------------------------------------------
# ReferenceNet on ComfyUI's UNet code

@pytest.mark.parametrize("case", _referencenet_cases())
@pytest.mark.parametrize("config", ["released", "fixture"])
def test_referencenet_features_parity(comfy_host, parity_dir, case, config):
    paths = comfy_host.pack("nodes.paths")
    runner = comfy_host.pack("nodes.referencenet_runner")
    layout = comfy_host.pack("musev_core.layout")
    folder = os.path.join(parity_dir, "referencenet")
    inputs, outputs = (load_tensors(p) for p in _case_files(folder, case))
    assert float(inputs["timestep"]) == 0.0, "MuseV runs the ReferenceNet at timestep 0"
    choice = place_referencenet(parity_dir, f"rn_{config}", released_config=(config == "released"))
    patcher = runner.load_referencenet_patcher(paths.full_path(choice, "referencenet", "test"), torch.float32, None)
    assert not any(k.startswith(("output_blocks", "out.")) for k in patcher.model.state_dict()), "up path allocated"
    order = [layout.UNCOND, layout.COND]                     # fixture CFG batch: [uncond; cond]
    sample, ehs = inputs["sample"], inputs["encoder_hidden_states"]
    got = {}
    if torch.equal(sample[0], sample[1]):                    # MuseV's [ref; ref]: one batched pass
        got = runner.run_referencenet(patcher, sample[:1], {r: ehs[b:b + 1] for b, r in enumerate(order)})
    else:
        for b, r in enumerate(order):
            got.update(runner.run_referencenet(patcher, sample[b:b + 1], {r: ehs[b:b + 1]}))
    errs = _feature_errors(got, outputs, order)
    worst = max(e for *_, e in errs)
    print(f"referencenet/{case} ({config} config): max abs error {worst:.3g} over {len(errs)} features")
    assert worst <= TOL, [e for e in errs if e[2] > TOL][:5]


# ------------------------------------------------------------------------------------------------
# IP-Adapter tokens through MuseVIPAdapter

@pytest.fixture(scope="module")
def referencenet_model(comfy_host, parity_dir):
    spec = pipeline_spec(parity_dir)
    return build_musev_model(comfy_host, parity_dir, os.path.dirname(spec["unet_weights"]), "ipmodel")[1]


def _ip_cases(folder_path):
    cases = [("one", "inputs.safetensors", "outputs.safetensors")]
    if os.path.isfile(os.path.join(folder_path, "case_two_images_inputs.safetensors")):
        cases.append(("two", "case_two_images_inputs.safetensors", "case_two_images_outputs.safetensors"))
    return cases


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
@pytest.mark.parametrize("folder", _ip_folders())
def test_ip_adapter_tokens_parity(comfy_host, parity_dir, referencenet_model, monkeypatch, folder, fmt):
    nodes = comfy_host.pack("nodes.reference_nodes")
    patch = comfy_host.pack("nodes.patch")
    layout = comfy_host.pack("musev_core.layout")
    folder_path = os.path.join(parity_dir, folder)
    choice = place_image_proj(parity_dir, folder, f"ip_{fmt}", fmt)
    checked = 0
    for name, fin, fout in _ip_cases(folder_path):
        embeds = load_tensors(os.path.join(folder_path, fin))["clip_image_embeds"]
        expected = load_tensors(os.path.join(folder_path, fout))
        seam = ClipSeam(embeds)
        monkeypatch.setattr(nodes, "clip_image_embeds", seam)
        images = torch.rand(embeds.shape[0], 40, 64, 3)
        (m,) = nodes.MuseVIPAdapter().apply(referencenet_model, object(), images, choice, scale=1.0)
        assert seam.calls, "the node must call CLIP vision"
        provider = patch.get_state(m).ip
        # resolved for a video of the image's own size, as the wrapper does
        to = {patch.INPUT_KEY: {"x_shape": (2, 4, 40 // 8, 64 // 8), "context": None, "layout": None}}
        out = provider.resolve(None, torch.device("cpu"), torch.float32, to)
        tokens = out["tokens"]
        got = torch.cat([tokens[layout.UNCOND], tokens[layout.COND]])          # MuseV: [uncond; cond]
        exp = expected["image_prompt_embeds"]
        assert got.shape == exp.shape, (got.shape, exp.shape)
        err = (got - exp).abs().max().item()
        print(f"{folder} ({fmt}) {name} image(s): tokens max abs error {err:.3g}")
        assert err <= TOL
        for key, role in (("cond_tokens", layout.COND), ("uncond_tokens", layout.UNCOND)):
            if key in expected:
                assert (tokens[role] - expected[key]).abs().max().item() <= TOL
        assert out["scale"] == 1.0
        checked += 1
    assert checked >= 1


def _unet_call(patch, patched, sample, timestep, context, n_vis, cond_or_uncond=(1, 0)):
    """One call of the patched ComfyUI UNet on a fixture (b, c, T, h, w) batch ([uncond; cond])."""
    import comfy.model_management
    b, c, frames, h, w = sample.shape
    x = sample.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w)
    t = timestep.reshape(1).expand(b * frames).clone()
    ctx = context.repeat_interleave(frames, dim=0)
    comfy.model_management.load_models_gpu([patched])
    try:
        to = patch.unet_transformer_options(patched, {"cond_or_uncond": list(cond_or_uncond),
                                                      patch.WINDOW_KEY: {"n_vis": n_vis}})
        with torch.no_grad():
            eps = patched.model.diffusion_model(x, t, context=ctx, transformer_options=to)
    finally:
        patched.eject_model()
    return eps.reshape(b, frames, c, h, w).permute(0, 2, 1, 3, 4)


def test_unet_ip_only_parity_through_node(comfy_host, parity_dir, monkeypatch):
    """``ip_adapter/case_unet_ip_only``: CLIP embeds -> MuseVIPAdapter -> patched UNet (scale != 1)."""
    nodes = comfy_host.pack("nodes.reference_nodes")
    patch = comfy_host.pack("nodes.patch")
    case = manifest(parity_dir)["unet_cases"]["ip_adapter"]["unet_ip_only"]
    scalars = case["scalar_args"]
    _, model = build_musev_model(comfy_host, parity_dir, os.path.dirname(case["weights"]), "iponly",
                                 frame_rate=float(scalars.get("sample_frame_rate", 8.0)))
    ip_folder = os.path.dirname(case["inputs"])
    embeds = load_tensors(os.path.join(parity_dir, ip_folder, "inputs.safetensors"))["clip_image_embeds"]
    monkeypatch.setattr(nodes, "clip_image_embeds", ClipSeam(embeds))
    inputs = load_tensors(os.path.join(parity_dir, case["inputs"]))
    b, c, frames, h, w = inputs["sample"].shape
    (m,) = nodes.MuseVIPAdapter().apply(model, object(), torch.rand(embeds.shape[0], h * 8, w * 8, 3),
                                        place_image_proj(parity_dir, ip_folder, "iponly", "bin"),
                                        scale=float(scalars["ip_adapter_scale"]))
    n_vis = len(inputs["vision_conditon_frames_sample_index"].tolist()) if "vision_conditon_frames_sample_index" in inputs else 0
    out = _unet_call(patch, m, inputs["sample"], inputs["timestep"], inputs["encoder_hidden_states"], n_vis)
    expected = load_tensors(os.path.join(parity_dir, case["outputs"]))["sample"]
    err = (out.float() - expected).abs().max().item()
    print(f"ip_adapter/case_unet_ip_only through MuseVIPAdapter: max abs error {err:.3g}")
    assert err <= TOL


# ------------------------------------------------------------------------------------------------
# pipeline/: refer_image -> VAE -> ReferenceNet (+ IP tokens) through the nodes

class _Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        out = executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        self.calls.append((out.detach().clone(), list(transformer_options["cond_or_uncond"])))
        return out

    def __deepcopy__(self, memo):
        return self


def _pipeline_models(comfy_host, parity_dir, monkeypatch, tag):
    nodes = comfy_host.pack("nodes.reference_nodes")
    spec = pipeline_spec(parity_dir)
    args = spec["call_args"]
    inputs = load_tensors(os.path.join(parity_dir, "pipeline", "inputs.safetensors"))
    _, model = build_musev_model(comfy_host, parity_dir, os.path.dirname(spec["unet_weights"]), tag,
                                 frame_rate=float(args["motion_speed"]))
    refer = inputs["refer_image"]                                 # (1, 3, n_ref, H, W), 0..255
    images = (refer[0].permute(1, 2, 3, 0) / 255.0).contiguous()  # IMAGE (n_ref, H, W, 3)
    seam = ClipSeam(inputs["clip_image_embeds"])
    monkeypatch.setattr(nodes, "clip_image_embeds", seam)
    ip_folder = os.path.dirname(spec["ip_adapter_weights"])
    (m,) = nodes.MuseVIPAdapter().apply(model, object(), images, place_image_proj(parity_dir, ip_folder, tag, "bin"),
                                        scale=float(args["ip_adapter_scale"]))
    vae, _ = fixture_vae(parity_dir)
    rn_choice = place_referencenet(parity_dir, tag, released_config=True,
                                   folder=os.path.dirname(spec["referencenet_weights"]))
    (m,) = nodes.MuseVReferenceNet().apply(m, rn_choice, vae, images)
    return spec, m, inputs


def test_pipeline_reference_chain_parity(comfy_host, parity_dir, monkeypatch):
    """refer_image -> VAE -> latent -> ReferenceNet features and IP tokens, through the nodes' providers
    as the DIFFUSION_MODEL wrapper resolves them."""
    patch = comfy_host.pack("nodes.patch")
    layout = comfy_host.pack("musev_core.layout")
    spec, m, inputs = _pipeline_models(comfy_host, parity_dir, monkeypatch, "chain")
    state = patch.get_state(m)
    refer_cfg = inputs["refer_latent_cfg"]                        # (2·n_ref, C, h, w): [uncond refs; cond refs]
    n_ref = inputs["refer_image"].shape[2]
    channels, h, w = refer_cfg.shape[1:]
    run = patch.MuseVRun()
    lay = layout.CallLayout.build(2, [layout.UNCOND, layout.COND], [(0, 1)])
    text = torch.cat([inputs["negative_prompt_embeds"], inputs["prompt_embeds"]])
    to = {patch.INPUT_KEY: {"x_shape": (2, channels, h, w), "context": text, "layout": lay}, patch.RUN_KEY: run}
    ip = state.ip.resolve(run, torch.device("cpu"), torch.float32, to)
    order = [layout.UNCOND, layout.COND]
    tok_err = (torch.cat([ip["tokens"][r] for r in order]) - inputs["ip_adapter_image_emb"]).abs().max().item()
    latent = state.reference.latent_for(h, w)
    exp_latent = refer_cfg[:n_ref]
    lat_err = (latent.float() - exp_latent).abs().max().item()
    feats = state.reference.resolve(run, torch.device("cpu"), torch.float32, to, ip)
    errs = _feature_errors(feats, inputs, order)
    worst = max(e for *_, e in errs)
    print(f"pipeline chain: IP tokens {tok_err:.3g}, VAE latent {lat_err:.3g}, ReferenceNet features {worst:.3g}")
    assert torch.equal(refer_cfg[:n_ref], refer_cfg[n_ref:])         # MuseV: the same latent for both halves
    assert tok_err <= TOL and lat_err <= TOL and worst <= TOL
    assert run.counters.get("referencenet") == 1
    again = state.reference.resolve(run, torch.device("cpu"), torch.float32, to, ip)
    assert run.counters.get("referencenet") == 1 and all(a[0] is b[0] or torch.equal(a[0], b[0])
                                                         for a, b in zip(again.values(), feats.values()))


def test_pipeline_first_step_through_nodes(comfy_host, parity_dir, monkeypatch):
    """Step 0 of ``pipeline/`` run by ComfyUI's euler + MuseV's context windows with the reference inputs
    coming from the nodes: every window's UNet output matches MuseV's, the ReferenceNet ran once."""
    import comfy.sample
    import comfy.samplers
    from comfy.patcher_extension import WrappersMP
    context = comfy_host.pack("nodes.context")
    spec, m, inputs = _pipeline_models(comfy_host, parity_dir, monkeypatch, "step0")
    args = spec["call_args"]
    steps = load_tensors(os.path.join(parity_dir, "pipeline", "steps.safetensors"))
    calls = load_tensors(os.path.join(parity_dir, "pipeline", "unet_calls.safetensors"))
    cond = inputs["condition_latents"]
    scale = m.model.latent_format.scale_factor
    vision = cond[0].permute(1, 0, 2, 3) / scale
    m = context.apply_parallel_denoise(
        m, vision=vision, schedule={"uniform_v2": "uniform_v2", "uniform": "uniform_looped"}[args["context_schedule"]],
        context_frames=args["context_frames"], context_overlap=args["context_overlap"],
        context_batch_size=args["context_batch_size"], noise=None)
    rec = _Recorder()
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "reference-parity-recorder", rec)
    forwards = []
    rn = m.additional_models["musev_referencenet"][0].model
    hook = rn.input_blocks[0][0].register_forward_hook(lambda *a: forwards.append(1))
    try:
        start = steps["latents_before.0"][0].permute(1, 0, 2, 3)
        sigmas = steps["sigmas"][0:2].clone()
        comfy.sample.sample_custom(m, torch.zeros_like(start), float(args["guidance_scale"]),
                                   comfy.samplers.sampler_object("euler"), sigmas,
                                   [[inputs["prompt_embeds"], {}]], [[inputs["negative_prompt_embeds"], {}]],
                                   start / scale, disable_pbar=True, seed=0)
    finally:
        hook.remove()
    step0 = sorted(k for k, v in spec["unet_calls"].items() if v["step"] == 0)
    assert len(rec.calls) == len(step0), (len(rec.calls), step0)
    worst = 0.0
    for key, (out, cou) in zip(step0, rec.calls):
        exp = calls[key + ".out"]                                     # (2, C, T, h, w) [uncond; cond]
        k = len(cou)
        per = out.reshape(k, out.shape[0] // k, *out.shape[1:])
        for j, role in enumerate(cou):
            b = 0 if role == 1 else 1
            worst = max(worst, (per[j].permute(1, 0, 2, 3).float() - exp[b]).abs().max().item())
    print(f"pipeline step 0 through the nodes: {len(rec.calls)} UNet calls, max abs error {worst:.3g}, "
          f"ReferenceNet passes {len(forwards)}")
    assert worst <= TOL
    assert len(forwards) == 1


def test_referencenet_half_weights_with_manual_cast(comfy_host, parity_dir):
    """fp16 weights computed in fp32 (comfy.ops.manual_cast, as for an fp16 base on a GPU without fp16
    compute): same features up to fp16 weight rounding."""
    paths = comfy_host.pack("nodes.paths")
    runner = comfy_host.pack("nodes.referencenet_runner")
    layout = comfy_host.pack("musev_core.layout")
    inputs = load_tensors(os.path.join(parity_dir, "referencenet", "inputs.safetensors"))
    outputs = load_tensors(os.path.join(parity_dir, "referencenet", "outputs.safetensors"))
    choice = place_referencenet(parity_dir, "rn_half")
    path = paths.full_path(choice, "referencenet", "test")
    patcher = runner.load_referencenet_patcher(path, torch.float16, torch.float32)
    assert next(patcher.model.parameters()).dtype == torch.float16
    order = [layout.UNCOND, layout.COND]
    ehs = inputs["encoder_hidden_states"]
    got = runner.run_referencenet(patcher, inputs["sample"][:1], {r: ehs[b:b + 1] for b, r in enumerate(order)})
    exp = list_arg(outputs, "down_block_refer_embs") + [outputs["mid_block_refer_emb"]]
    for b, role in enumerate(order):
        for g, e in zip(got[role], exp):
            assert g.dtype == torch.float32
            rel = ((g - e[b:b + 1]).norm() / e[b:b + 1].norm()).item()
            assert rel < 5e-3, rel
