"""The fast path (example_workflows/musev_lcm_fast.json) in process: LCM-LoRA on the base
(LoraLoaderModelOnly), ComfyUI's ModelSamplingDiscrete(lcm), LoadMuseVMotion, the `lcm` sampler.

* the LoRA patches the base and the MuseV MODEL built on it keeps the patches;
* every UNet call goes through MuseV's patch (the per-call MuseV context reaches the UNet);
* timesteps: MuseV's continuous timesteps (nodes/patch.py MuseVTimesteps) are only for a plain
  ModelSamplingDiscrete; LCM's model_sampling (ModelSamplingDiscreteDistilled) keeps ComfyUI's own
  snapping to its 50-step grid, which is what LCM was distilled on and what its own denoising
  formula (c_skip / c_out of the same snapped timestep) uses.  The UNet must receive exactly
  ``model_sampling.timestep(sigma)`` for every step; the same test on a plain model sees MuseV's
  fractional timesteps, so the check can tell the two apart.
"""
import os

import pytest
import torch

from lora_standin import unet_lora_targets, write_random_lora
from musev_testlib import (comfy_unet_config, load_tensors, make_sd15_model, place_in_layout, read_json)

STEPS = 2
FRAMES = 4


@pytest.fixture(scope="module")
def pieces(comfy_host, parity_dir):
    """Base MODEL of the fixture pipeline, its motion folder (models/musev), conditioning, vision."""
    import folder_paths
    spec = read_json(os.path.join(parity_dir, "manifest.json"))["pipelines"]["pipeline"]
    weights_dir = os.path.join(parity_dir, os.path.dirname(spec["unet_weights"]))
    cfg = read_json(os.path.join(weights_dir, "config.json"))
    unet_config = comfy_unet_config(cfg)
    base = make_sd15_model(unet_config, load_tensors(os.path.join(parity_dir, spec["unet_weights"])))
    rel = "testmodels_lcm/pipeline/unet"
    place_in_layout(weights_dir, os.path.join(folder_paths.get_folder_paths("musev")[0], rel))
    # a stand-in LCM-LoRA for this UNet in models/loras
    loras = folder_paths.get_folder_paths("loras")[0]
    os.makedirs(loras, exist_ok=True)
    shapes = {"model.diffusion_model." + k: tuple(v.shape)
              for k, v in base.model.diffusion_model.state_dict().items()}
    n_lora = write_random_lora(os.path.join(loras, "musev_test_lcm_lora.safetensors"),
                               unet_lora_targets(base.model.model_config.unet_config, shapes))
    inputs = load_tensors(os.path.join(parity_dir, "pipeline", "inputs.safetensors"))
    vision = inputs["condition_latents"][0].permute(1, 0, 2, 3) / base.model.latent_format.scale_factor
    positive = [[inputs["prompt_embeds"], {}]]
    negative = [[inputs["negative_prompt_embeds"], {}]]
    return dict(base=base, motion=rel + "/", positive=positive, negative=negative, vision=vision, n_lora=n_lora)


def musev_model(host, base, motion):
    (model,) = host.pack("nodes.motion_nodes").LoadMuseVMotion().load(base, motion, frame_rate=8.0)
    return model


def lcm_model(host, pieces):
    """The fast path's chain: LoRA -> ModelSamplingDiscrete(lcm) -> LoadMuseVMotion."""
    import nodes as comfy_nodes
    from comfy_extras.nodes_model_advanced import ModelSamplingDiscrete
    (lora,) = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(pieces["base"], "musev_test_lcm_lora.safetensors",
                                                                    1.0)
    (lcm,) = ModelSamplingDiscrete().patch(lora, "lcm", False)
    return lora, musev_model(host, lcm, pieces["motion"])


def sample_recording(host, model, pieces, **kw):
    """ParallelDenoiseSampler on ``model``; returns (latents, [timesteps of every UNet call],
    [whether MuseV's per-call context reached the UNet])."""
    seen, musev = [], []
    dm = model.model.diffusion_model
    body = type(dm)._forward

    def recording(x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        # the UNet's body, inside every DIFFUSION_MODEL wrapper (MuseV's included)
        seen.append(timesteps.detach().float().cpu().clone())
        musev.append(transformer_options.get("musev_call") is not None)
        return body(dm, x, timesteps, context, y, control, transformer_options, **kwargs)

    vision = pieces["vision"]
    args = dict(frames=FRAMES, width=vision.shape[3] * 8, height=vision.shape[2] * 8, context_frames=4,
                context_overlap=2, context_schedule="uniform_v2", context_batch_size=1, noise_type="video_fusion",
                w_ind_noise=0.5, img_weight=1e-3, seed=3, steps=STEPS, cfg=1.5, sampler_name="lcm",
                scheduler="sgm_uniform", include_condition_frames=False, vision_latent={"samples": vision})
    args.update(kw)
    dm._forward = recording          # UNetModel.forward runs self._forward inside its wrappers
    try:
        (out,) = host.pack("nodes.sampler_nodes").ParallelDenoiseSampler().sample(
            model, pieces["positive"], pieces["negative"], **args)
    finally:
        del dm._forward
    return out["samples"], seen, musev


def test_lcm_lora_and_sampling_run_through_the_musev_patch(comfy_host, pieces):
    import comfy.samplers
    base = pieces["base"]
    lora, model = lcm_model(comfy_host, pieces)
    assert pieces["n_lora"] > 0 and len(lora.patches) == pieces["n_lora"], "the LoRA patched no weight"
    assert set(model.patches) == set(lora.patches), "LoadMuseVMotion dropped the LoRA"
    assert base.patches == {} and base.get_model_object("model_sampling") is not model.get_model_object(
        "model_sampling"), "the base MODEL was changed"
    ms = model.get_model_object("model_sampling")
    assert type(ms).__name__ == "ModelSamplingAdvanced" and hasattr(ms, "skip_steps"), type(ms).__mro__
    timesteps = comfy_host.pack("nodes.patch").MuseVTimesteps
    assert timesteps.for_model(model) is None, "MuseV's continuous timesteps must stay off for LCM"

    out, seen, musev = sample_recording(comfy_host, model, pieces)
    assert out.shape[0] == FRAMES and torch.isfinite(out).all()
    assert seen and all(musev), "a UNet call did not go through MuseV's patch"
    sigmas = comfy.samplers.calculate_sigmas(ms, "sgm_uniform", STEPS).cpu()
    want = [float(t) for t in ms.timestep(sigmas[:-1])]
    # LCM's grid: 50 distilled steps of 20 (t = 20k + 19), ComfyUI's snapping of each step's sigma
    assert all(t == int(t) and (int(t) + 1) % int(ms.skip_steps) == 0 for t in want), want
    got = sorted({float(v) for t in seen for v in t.tolist()}, reverse=True)
    assert got == sorted(set(want), reverse=True), (got, want)
    # every call of one step sees one timestep (all windows, both CFG halves)
    assert all(len(set(t.tolist())) == 1 for t in seen)


def test_plain_model_gets_musev_continuous_timesteps(comfy_host, pieces):
    """The same recording on the plain model (no LCM): MuseV's fractional timesteps reach the UNet,
    which ComfyUI's snapping would have rounded away (3 linspace steps: 999, 499.5, 0)."""
    model = musev_model(comfy_host, pieces["base"], pieces["motion"])
    _, seen, musev = sample_recording(comfy_host, model, pieces, steps=3, sampler_name="euler",
                                      scheduler="musev_linspace", cfg=3.5)
    assert all(musev)
    got = sorted({round(float(v), 3) for t in seen for v in t.tolist()}, reverse=True)
    assert got == [999.0, 499.5, 0.0], got
