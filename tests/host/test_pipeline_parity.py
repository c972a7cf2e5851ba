"""Parity of visual-condition parallel denoising run by ComfyUI's own sampling against MuseV's
pipeline (``pipeline/`` = musev_referencenet with ReferenceNet + IP tokens, ``pipeline_musev/``).

ComfyUI's euler sampler (comfy.sample.sample_custom + CFGGuider) runs the fixture's sigmas from
its initial latents; the MuseV MODEL patch + context handler do the windows.  Checked: every
per-window UNet call (input and output), every step's guided prediction and latents, the final
latents.  Per-step checks start from the recorded ``latents_before.i`` (README rule 3).
"""
import copy
import os

import pytest
import torch

from conftest import parity_root
from musev_testlib import comfy_unet_config, list_arg, load_tensors, make_sd15_model, place_in_layout, read_json

TOL = 1e-4
LATENT_REL = 1e-5


def _pipelines():
    manifest = os.path.join(parity_root(), "manifest.json")
    if not os.path.isfile(manifest):
        return [pytest.param("missing", id="fixtures-missing")]
    return [pytest.param(name, id=name) for name in sorted(read_json(manifest)["pipelines"])]


class Recorder:
    """Innermost DIFFUSION_MODEL wrapper: records every UNet call (input after MuseV's vision
    overwrite, output) with the chunk roles."""

    def __init__(self):
        self.calls = []

    def __call__(self, executor, x, timesteps, context, y, control, transformer_options, **kwargs):
        out = executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        self.calls.append((x.detach().clone(), out.detach().clone(), list(transformer_options["cond_or_uncond"])))
        return out

    def __deepcopy__(self, memo):
        return self


def build(host, parity_dir, name, tag):
    import folder_paths
    from comfy.patcher_extension import WrappersMP
    patch = host.pack("nodes.patch")
    context = host.pack("nodes.context")
    motion_nodes = host.pack("nodes.motion_nodes")
    layout = host.pack("musev_core.layout")

    spec = read_json(os.path.join(parity_dir, "manifest.json"))["pipelines"][name]
    args = spec["call_args"]
    weights_dir = os.path.join(parity_dir, os.path.dirname(spec["unet_weights"]))
    cfg = read_json(os.path.join(weights_dir, "config.json"))
    base = make_sd15_model(comfy_unet_config(cfg), load_tensors(os.path.join(parity_dir, spec["unet_weights"])))
    rel = f"pipeline_parity_{tag}/{name}/unet"
    place_in_layout(weights_dir, os.path.join(folder_paths.get_folder_paths("musev")[0], rel))
    (model,) = motion_nodes.LoadMuseVMotion().load(base, rel + "/", frame_rate=float(args["motion_speed"]))

    inputs = load_tensors(os.path.join(parity_dir, name, "inputs.safetensors"))
    state = patch.get_state(model)
    roles = [layout.UNCOND, layout.COND]          # fixture CFG batches are [uncond; cond]
    if spec.get("referencenet_weights"):
        feats = list_arg(inputs, "down_block_refer_embs") + [inputs["mid_block_refer_emb"]]
        state = state.replace(reference=patch.StaticReference({r: [f[i:i + 1] for f in feats] for i, r in enumerate(roles)}))
    if spec.get("ip_adapter_weights"):
        ip = inputs["ip_adapter_image_emb"]
        state = state.replace(ip=patch.StaticIP({r: ip[i:i + 1] for i, r in enumerate(roles)}, scale=args["ip_adapter_scale"]))
    patch.set_state(model, state)

    # The fixture's latents are in model space (x scale_factor): a latent format with scale 1 lets
    # them through bit-exactly (dividing and re-multiplying by 0.18215 costs an ulp).
    # (this BaseModel is built for this test alone)
    latent_format = copy.copy(model.model.latent_format)
    latent_format.scale_factor = 1.0
    model.model.latent_format = latent_format
    cond = inputs["condition_latents"]                       # (1, C, n_vis, h, w), model space
    vision = cond[0].permute(1, 0, 2, 3)
    model = context.apply_parallel_denoise(
        model, vision=vision, schedule={"uniform_v2": "uniform_v2", "uniform": "uniform_looped"}[args["context_schedule"]],
        context_frames=args["context_frames"], context_overlap=args["context_overlap"],
        context_batch_size=args["context_batch_size"], noise=None)
    rec = Recorder()
    model.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "parity-recorder", rec)
    positive = [[inputs["prompt_embeds"], {}]]
    negative = [[inputs["negative_prompt_embeds"], {}]]
    return spec, model, rec, positive, negative, inputs


def sample(model, positive, negative, cfg, sigmas, start):
    """Run ComfyUI's euler from latents ``start`` (model space, frames = batch) over ``sigmas``."""
    import comfy.sample
    import comfy.samplers
    steps = []

    def callback(i, denoised, x, total):
        steps.append((x.detach().clone(), denoised.detach().clone()))

    assert model.model.latent_format.scale_factor == 1.0    # model space in and out
    out = comfy.sample.sample_custom(model, torch.zeros_like(start), cfg, comfy.samplers.sampler_object("euler"),
                                     sigmas, positive, negative, start, callback=callback,
                                     disable_pbar=True, seed=0)
    return out, steps


def frames_first(t):       # (1, C, N, h, w) -> (N, C, h, w)
    return t[0].permute(1, 0, 2, 3)


def chunks_by_role(x, cou):
    """(k·T, C, h, w) UNet rows -> {role: (C, T, h, w)} (role 0 = cond, 1 = uncond)."""
    k = len(cou)
    per = x.reshape(k, x.shape[0] // k, *x.shape[1:])
    return {role: per[j].permute(1, 0, 2, 3) for j, role in enumerate(cou)}


def check_calls(recorded, expected_calls, unet_calls, first_index):
    errs = []
    for j, (x, out, cou) in enumerate(recorded):
        key = f"call{first_index + j:03d}"
        exp_in, exp_out = unet_calls[key + ".sample"], unet_calls[key + ".out"]   # (2, C, T, h, w) [uncond; cond]
        got_in, got_out = chunks_by_role(x, cou), chunks_by_role(out, cou)
        for b, role in enumerate((1, 0)):
            assert got_in[role].shape == exp_in[b].shape, (key, got_in[role].shape, exp_in[b].shape)
            errs.append((key, "sample", (got_in[role].float() - exp_in[b]).abs().max().item()))
            errs.append((key, "out", (got_out[role].float() - exp_out[b]).abs().max().item()))
    return errs


@pytest.mark.parametrize("name", _pipelines())
def test_pipeline_parity_per_step(comfy_host, parity_dir, name):
    """Each step from the recorded latents_before.i: every UNet call, the guided prediction and
    the Euler update."""
    spec, model, rec, positive, negative, _ = build(comfy_host, parity_dir, name, "step")
    steps = load_tensors(os.path.join(parity_dir, name, "steps.safetensors"))
    calls = load_tensors(os.path.join(parity_dir, name, "unet_calls.safetensors"))
    sigmas = steps["sigmas"]
    cfg = float(spec["call_args"]["guidance_scale"])
    call_index = 0
    worst = {}
    for i in range(len(sigmas) - 1):
        start = frames_first(steps[f"latents_before.{i}"])
        rec.calls.clear()
        out, rec_steps = sample(model, positive, negative, cfg, sigmas[i:i + 2].clone(), start)
        n_step_calls = sum(1 for c in spec["unet_calls"].values() if c["step"] == i)
        assert len(rec.calls) == n_step_calls, f"step {i}: {len(rec.calls)} UNet calls, MuseV made {n_step_calls}"
        for key, what, err in check_calls(rec.calls, n_step_calls, calls, call_index):
            worst[what] = max(worst.get(what, 0.0), err)
            assert err <= TOL, f"{name} step {i} {key}.{what}: {err:.3g}"
        call_index += n_step_calls
        # Guided prediction, in MuseV's ε space: the recorded per-window UNet outputs averaged over
        # the windows covering each frame, then CFG (float64).  ComfyUI's own guided result lives in
        # x0 space (denoised = x - σ·ε, float32): at σ≈0.03 and |x|≈60 its ulp alone is worth
        # ~1e-4 in ε, so that one is checked at the latent scale below, and through latents_after.
        windows = [w for batch in spec["global_context"] for w in batch]
        step_calls = [c for c in spec["unet_calls"].values() if c["step"] == i]
        eps_sum = {0: torch.zeros_like(start, dtype=torch.float64), 1: torch.zeros_like(start, dtype=torch.float64)}
        count = torch.zeros(start.shape[0], dtype=torch.float64)
        for (xin, out_eps, cou), w, meta in zip(rec.calls, windows, step_calls):
            n_vis = len(meta["vision_conditon_frames_sample_index"] or [])
            for role, e in chunks_by_role(out_eps, cou).items():
                eps_sum[role][w] += e.permute(1, 0, 2, 3)[n_vis:].double()
            count[w] += 1
        view = count.view(-1, 1, 1, 1)
        guided = eps_sum[1] / view + cfg * (eps_sum[0] / view - eps_sum[1] / view)
        expected_guided = frames_first(steps[f"guided_noise_pred.{i}"]).double()
        err = (guided - expected_guided).abs().max().item()
        worst["guided"] = max(worst.get("guided", 0.0), err)
        assert err <= TOL, f"{name} step {i} guided_noise_pred: {err:.3g}"
        x, denoised = rec_steps[0]
        implied = x.double() - float(sigmas[i]) * expected_guided
        tol = LATENT_REL * implied.abs().max().item()
        err = (denoised.double() - implied).abs().max().item()
        assert err <= tol, f"{name} step {i} guided x0 (ComfyUI's denoised): {err:.3g} > {tol:.3g}"
        expected_after = frames_first(steps[f"latents_after.{i}"])
        tol = LATENT_REL * expected_after.abs().max().item()
        err = (out - expected_after).abs().max().item()
        assert err <= tol, f"{name} step {i} latents_after: {err:.3g} > {tol:.3g}"
    assert call_index == len(spec["unet_calls"])


@pytest.mark.parametrize("name", _pipelines())
def test_pipeline_parity_end_to_end(comfy_host, parity_dir, name):
    """One ComfyUI sampling run from initial_latents: latents at every step and the final latents."""
    spec, model, rec, positive, negative, inputs = build(comfy_host, parity_dir, name, "e2e")
    steps = load_tensors(os.path.join(parity_dir, name, "steps.safetensors"))
    outputs = load_tensors(os.path.join(parity_dir, name, "outputs.safetensors"))
    sigmas = steps["sigmas"].clone()
    start = frames_first(inputs["initial_latents"])
    out, rec_steps = sample(model, positive, negative, float(spec["call_args"]["guidance_scale"]), sigmas, start)
    assert len(rec.calls) == len(spec["unet_calls"])
    for i, (x, _) in enumerate(rec_steps):
        exp = frames_first(steps[f"latents_before.{i}"])
        tol = LATENT_REL * exp.abs().max().item()
        assert (x - exp).abs().max().item() <= tol, f"{name}: latents before step {i}"
    final = frames_first(outputs["final_latents"])
    n_vis = inputs["condition_latents"].shape[2]
    got = torch.cat([frames_first(inputs["condition_latents"]), out])
    tol = LATENT_REL * final.abs().max().item()
    err = (got - final).abs().max().item()
    assert got.shape == final.shape and n_vis >= 1
    assert err <= tol, f"{name}: final latents {err:.3g} > {tol:.3g}"
    # the decoded video through ComfyUI's VAE class (the fixture's tiny diffusers VAE)
    from reference_fixtures import fixture_vae
    vae, vae_cfg = fixture_vae(parity_dir, name)
    frames = vae.decode(got / vae_cfg.get("scaling_factor", 0.18215))         # (N, H, W, 3) in [0, 1]
    expected_video = outputs["videos"][0].permute(1, 2, 3, 0)                  # (1, 3, N, H, W) -> (N, H, W, 3)
    err = (frames.float().cpu() - expected_video).abs().max().item()
    assert frames.shape == expected_video.shape and err <= TOL, f"{name}: decoded video {err:.3g}"
