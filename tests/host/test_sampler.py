"""ParallelDenoiseSampler / MuseVContextWindows on the tiny fixture models: batched windows equal
one-at-a-time, KSampler + the context node equals ParallelDenoiseSampler, plain text-to-video,
the output layout, and bad input."""
import pytest
import torch

from musev_testlib import fixture_musev_model


@pytest.fixture(scope="module")
def musev(comfy_host, parity_dir):
    return fixture_musev_model(comfy_host, parity_dir, "pipeline", tag="sampler")


def pds(host, model, positive, negative, vision, frames, **kw):
    nodes = host.pack("nodes.sampler_nodes")
    h, w = vision.shape[2] * 8, vision.shape[3] * 8
    args = dict(frames=frames, width=w, height=h, context_frames=4, context_overlap=2, context_schedule="uniform_v2",
                context_batch_size=1, noise_type="video_fusion", w_ind_noise=0.5, img_weight=1e-3, seed=7, steps=2,
                cfg=3.5, sampler_name="euler", scheduler="musev_linspace", include_condition_frames=True,
                vision_latent={"samples": vision})
    args.update(kw)
    return nodes.ParallelDenoiseSampler().sample(model, positive, negative, **args)[0]["samples"]


def test_batched_windows_equal_one_at_a_time(comfy_host, musev):
    model, pos, neg, vision, _, _ = musev
    frames = 9            # uniform_v2 F=4 O=2 -> 4 windows, the last one shorter
    # One step: latents O(10), same to 1e-5 absolute.  Two steps: random weights blow the latents
    # up to O(100s), compared relative (1e-5·max, the fixture README's latent rule).
    for steps, rel in ((1, False), (2, True)):
        ref = pds(comfy_host, model, pos, neg, vision, frames, context_batch_size=1, steps=steps)
        for bs in (2, 64):
            out = pds(comfy_host, model, pos, neg, vision, frames, context_batch_size=bs, steps=steps)
            err = (out - ref).abs().max().item()
            tol = 1e-5 * ref.abs().max().item() if rel else 1e-5
            assert err <= tol, f"steps={steps} context_batch_size={bs}: {err:.3g} > {tol:.3g}"


def test_output_layout_and_condition_frames(comfy_host, musev):
    model, pos, neg, vision, _, _ = musev
    out = pds(comfy_host, model, pos, neg, vision, 5)
    assert out.shape == (vision.shape[0] + 5,) + tuple(vision.shape[1:])
    assert torch.equal(out[:vision.shape[0]], vision.float())
    assert torch.isfinite(out).all()
    bare = pds(comfy_host, model, pos, neg, vision, 5, include_condition_frames=False)
    assert torch.allclose(bare, out[vision.shape[0]:])


def test_ksampler_with_context_node_matches_parallel_denoise_sampler(comfy_host, musev):
    """Stock comfy.sample.sample (the KSampler path) on a MODEL patched by MuseVContextWindows."""
    import comfy.sample
    model, pos, neg, vision, _, _ = musev
    nodes = comfy_host.pack("nodes.sampler_nodes")
    frames = 7
    (patched,) = nodes.MuseVContextWindows().apply(model, 4, 2, "uniform_v2", 2, "video_fusion", 0.5, 1e-3,
                                                   vision_latent={"samples": vision})
    latent = torch.zeros(frames, *vision.shape[1:])
    noise = comfy.sample.prepare_noise(latent, 11)
    ks = comfy.sample.sample(patched, noise, 3, 3.5, "euler", "normal", pos, neg, latent, seed=11, disable_pbar=True)
    out = pds(comfy_host, model, pos, neg, vision, frames, seed=11, steps=3, scheduler="normal",
              include_condition_frames=False, context_batch_size=2)
    # PDS applies the diffusers initial-noise scale only with the musev scheduler: both runs are identical.
    assert (ks.float() - out).abs().max().item() <= 1e-5


def test_text_to_video_without_condition(comfy_host, parity_dir):
    model, pos, neg, vision, _, _ = fixture_musev_model(comfy_host, parity_dir, "pipeline_musev", tag="t2v")
    out = pds(comfy_host, model, pos, neg, vision, 6, vision_latent=None, width=vision.shape[3] * 8,
              height=vision.shape[2] * 8)
    assert out.shape == (6,) + tuple(vision.shape[1:]) and torch.isfinite(out).all()


@pytest.mark.parametrize("kw,needle", [
    (dict(context_frames=1), "context_frames"),
    (dict(context_overlap=4), "context_overlap"),
    (dict(frames=0), "frames"),
    (dict(width=100), "multiples of 8"),
    (dict(vision_latent=None, vision_image=torch.rand(1, 64, 64, 3)), "'vae'"),
    (dict(init_latent={"samples": torch.zeros(3, 4, 16, 24)}), "init_latent"),
])
def test_bad_input(comfy_host, musev, kw, needle):
    model, pos, neg, vision, _, _ = musev
    host = comfy_host.pack("nodes.host")
    frames = kw.pop("frames", 5)
    with pytest.raises(host.MuseVInputError, match=needle):
        pds(comfy_host, model, pos, neg, vision, frames, **kw)


def test_vision_latent_of_other_size(comfy_host, musev):
    model, pos, neg, vision, _, _ = musev
    host = comfy_host.pack("nodes.host")
    with pytest.raises(host.MuseVInputError, match="vision_latent"):
        pds(comfy_host, model, pos, neg, vision, 5, width=vision.shape[3] * 8 + 64)
    with pytest.raises(host.MuseVInputError, match="vision_latent"):
        pds(comfy_host, model, pos, neg, vision, 5, vision_latent={"samples": torch.full_like(vision, float("nan"))})


def test_non_musev_model(comfy_host, parity_dir):
    from musev_testlib import comfy_unet_config, make_sd15_model, read_json
    import os
    host = comfy_host.pack("nodes.host")
    cfg = read_json(os.path.join(parity_dir, "unet3d_musev", "config.json"))
    plain = make_sd15_model(comfy_unet_config(cfg))
    with pytest.raises(host.MuseVInputError, match="connect LoadMuseVMotion first"):
        pds(comfy_host, plain, [[torch.zeros(1, 7, cfg["cross_attention_dim"]), {}]],
            [[torch.zeros(1, 7, cfg["cross_attention_dim"]), {}]], torch.zeros(1, 4, 16, 24), 5)
