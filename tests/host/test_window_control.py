"""Per-window ControlNet: a ControlNet built with ComfyUI's own classes sees exactly the UNet's
window input (clean vision latent + scaled noisy window frames) with the window's control images
[vision-frame hint, window hints]; video-to-video init with a working denoise strength."""
import os

import pytest
import torch

from musev_testlib import comfy_unet_config, fixture_musev_model, read_json


@pytest.fixture(scope="module")
def musev(comfy_host, parity_dir):
    return fixture_musev_model(comfy_host, parity_dir, "pipeline", tag="ctrl")


def tiny_controlnet(parity_dir):
    """A ControlNet of the fixture UNet's topology (ComfyUI's cldm + controlnet classes)."""
    import comfy.cldm.cldm
    import comfy.controlnet
    cfg = comfy_unet_config(read_json(os.path.join(parity_dir, "unet3d_musev_referencenet", "config.json")))
    cfg.pop("out_channels")
    model = comfy.cldm.cldm.ControlNet(hint_channels=3, device="cpu", **cfg)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return comfy.controlnet.ControlNet(model, load_device=torch.device("cpu"))


class Spy:
    def __init__(self, control_model):
        self.inner = control_model
        self.seen = []
        self.timesteps = []

    def __getattr__(self, name):          # dtype, device... of the wrapped cldm model
        return getattr(self.inner, name)

    def __call__(self, x, hint, timesteps, context, **kw):
        self.seen.append((x.detach().clone(), hint.detach().clone()))
        self.timesteps.append(timesteps.detach().clone())
        return self.inner(x=x, hint=hint, timesteps=timesteps, context=context, **kw)


def with_control(cond, cnet):
    return [[c[0], dict(c[1], control=cnet, control_apply_to_uncond=False)] for c in cond]


def test_controlnet_sees_window_slices(comfy_host, parity_dir, musev):
    import comfy.sample
    import comfy.samplers
    model, pos, neg, vision, _, _ = musev
    W = comfy_host.pack("musev_core.windows")
    ctx = comfy_host.pack("nodes.context")
    n_vis, frames, F, O = vision.shape[0], 9, 4, 2
    h, w = vision.shape[2] * 8, vision.shape[3] * 8
    total = n_vis + frames
    # hint row i is a constant image of value (i + 1) / (total + 1): identifiable after resizing
    hints = torch.stack([torch.full((3, h, w), (i + 1) / (total + 1)) for i in range(total)])
    cnet = tiny_controlnet(parity_dir).copy().set_cond_hint(hints, 1.0, (0.0, 1.0))
    spy = Spy(cnet.control_model)
    cnet.control_model = spy
    m = ctx.apply_parallel_denoise(model, vision=vision, context_frames=F, context_overlap=O)
    latent = torch.zeros(frames, *vision.shape[1:])
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "normal", 2)
    comfy.sample.sample_custom(m, comfy.sample.prepare_noise(latent, 0), 3.5, comfy.samplers.sampler_object("euler"),
                               sigmas, with_control(pos, cnet), with_control(neg, cnet), latent, disable_pbar=True, seed=0)
    windows = W.get_windows("uniform_v2", frames, F, O)
    assert len(spy.seen) == 2 * len(windows)              # 2 steps x windows, CFG chunks batched
    vis_model = m.model.process_latent_in(vision)
    for j, (x, hint) in enumerate(spy.seen):
        win = windows[j % len(windows)]
        per_chunk = list(range(n_vis)) + [n_vis + f for f in win]
        k = x.shape[0] // len(per_chunk)
        got = (hint[:, 0, 0, 0] * (total + 1)).round().long() - 1
        assert got.tolist() == per_chunk * k, f"call {j}: hint rows {got.tolist()}, expected {per_chunk * k}"
        rows = x.reshape(k, len(per_chunk), *x.shape[1:])
        for c in range(k):   # the ControlNet's input: the clean vision latent in front of the window
            assert (rows[c, :n_vis] - vis_model).abs().max().item() <= 1e-5


def test_unet_and_controlnet_get_musevs_fractional_timesteps(comfy_host, parity_dir, musev):
    """MuseV's Euler pairs sigma with a continuous timestep (3 linspace steps: 999, 499.5, 0); ComfyUI
    snaps to the nearest training step (500).  Patched MuseV models get MuseV's, in the UNet and in
    the ControlNet; a plain MODEL keeps ComfyUI's."""
    import comfy.sample
    import comfy.samplers
    from comfy.patcher_extension import WrappersMP
    model, pos, neg, vision, _, _ = musev
    S = comfy_host.pack("musev_core.sigmas")
    ctx = comfy_host.pack("nodes.context")
    sigmas, want = S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, 3)
    assert want.tolist() == [999.0, 499.5, 0.0]
    h, w = vision.shape[2] * 8, vision.shape[3] * 8

    def run(m, with_cnet):
        seen = []

        def record(executor, x, timesteps, *args, **kwargs):
            seen.append(sorted(set(timesteps.tolist())))
            return executor(x, timesteps, *args, **kwargs)
        m = m.clone()
        m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test_record_timesteps", record)
        p, n, spy = pos, neg, None
        if with_cnet:
            cnet = tiny_controlnet(parity_dir).copy().set_cond_hint(torch.rand(1, 3, h, w), 1.0, (0.0, 1.0))
            spy = cnet.control_model = Spy(cnet.control_model)
            p, n = with_control(pos, cnet), with_control(neg, cnet)
        latent = torch.zeros(5, *vision.shape[1:])
        comfy.sample.sample_custom(m, comfy.sample.prepare_noise(latent, 0), 3.5, comfy.samplers.sampler_object("euler"),
                                   sigmas, p, n, latent, disable_pbar=True, seed=0)
        return seen, spy

    seen, spy = run(ctx.apply_parallel_denoise(model, vision=vision, context_frames=4, context_overlap=2), True)
    assert seen and all(len(s) == 1 for s in seen)
    assert [s[0] for s in seen[::2]] == [999.0, 499.5, 0.0]          # 2 windows per step, in order
    assert [s[0] for s in seen[1::2]] == [999.0, 499.5, 0.0]
    assert [sorted(set(ts.tolist())) for ts in spy.timesteps] == [[t] for t in (999.0, 999.0, 499.5, 499.5, 0.0, 0.0)]

    # what ComfyUI itself passes for that sigma (and still passes to models without MuseV)
    ms = model.get_model_object("model_sampling")
    assert ms.timestep(sigmas[1:2]).tolist() == [500]


def test_unet_input_is_scaled_as_musevs_scheduler_scales_it(comfy_host, musev):
    """MuseV divides by float32(sqrt(sigma² + 1)) taken in double precision; ComfyUI's float32 root is
    an ulp off for many sigmas.  The UNet of a MuseV model gets MuseV's input, bit for bit."""
    import comfy.sample
    import comfy.samplers
    from comfy.patcher_extension import WrappersMP
    model, pos, neg, vision, _, _ = musev
    S = comfy_host.pack("musev_core.sigmas")
    ctx = comfy_host.pack("nodes.context")
    frames = 5
    gen = torch.Generator().manual_seed(3)
    start = torch.randn(frames, *vision.shape[1:], generator=gen) * 100      # a LATENT (VAE space)
    x_in = model.model.process_latent_in(start)                                 # what the sampler denoises
    ms = model.get_model_object("model_sampling")

    def musev_scaled(x, sigma):
        return x / torch.sqrt(sigma.double() ** 2 + 1).float()

    # a sigma of MuseV's schedule where ComfyUI's own scaling differs (so the test can fail)
    sigma = next(s for s in S.euler_sigmas(S.SD15_SCHEDULER_CONFIG, 30)[0][:-1]
                 if not torch.equal(ms.calculate_input(s.reshape(1), x_in), musev_scaled(x_in, s)))
    seen = []

    def record(executor, x, *args, **kwargs):
        seen.append(x.detach().clone())
        return executor(x, *args, **kwargs)
    m = ctx.apply_parallel_denoise(model, vision=vision, context_frames=8, context_overlap=2).clone()
    m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "test_record_input", record)
    comfy.sample.sample_custom(m, torch.zeros_like(start), 3.5, comfy.samplers.sampler_object("euler"),
                               torch.stack([sigma, torch.tensor(0.0)]), pos, neg, start, disable_pbar=True, seed=0)
    (x,) = seen
    n_vis = vision.shape[0]
    rows = x.reshape(2, n_vis + frames, *x.shape[1:])          # [cond; uncond] chunks of one window
    for chunk in rows:
        assert torch.equal(chunk[n_vis:], musev_scaled(x_in, sigma))
        assert not torch.equal(chunk[n_vis:], ms.calculate_input(sigma.reshape(1), x_in))


def test_bad_hint_count(comfy_host, parity_dir, musev):
    import comfy.sample
    model, pos, neg, vision, _, _ = musev
    host = comfy_host.pack("nodes.host")
    ctx = comfy_host.pack("nodes.context")
    h, w = vision.shape[2] * 8, vision.shape[3] * 8
    cnet = tiny_controlnet(parity_dir).copy().set_cond_hint(torch.rand(4, 3, h, w), 1.0, (0.0, 1.0))
    m = ctx.apply_parallel_denoise(model, vision=vision, context_frames=4, context_overlap=2)
    latent = torch.zeros(9, *vision.shape[1:])
    # caught before sampling starts (nodes/checks.py), naming both counts and the fix
    with pytest.raises(host.MuseVInputError, match=r"is 9 but the pose clip .* has 4 frames.*PoseVideoCondition"):
        comfy.sample.sample(m, comfy.sample.prepare_noise(latent, 0), 1, 3.5, "euler", "normal",
                            with_control(pos, cnet), with_control(neg, cnet), latent, disable_pbar=True, seed=0)


def test_video_init_denoise_strength(comfy_host, musev):
    """which2video='video': init latents from the driving video; denoise < 1 keeps it, 1.0 = MuseV."""
    model, pos, neg, vision, _, _ = musev
    nodes = comfy_host.pack("nodes.sampler_nodes")
    frames = 5
    gen = torch.Generator().manual_seed(1)
    init = torch.randn(frames, *vision.shape[1:], generator=gen)
    h, w = vision.shape[2] * 8, vision.shape[3] * 8

    def run(denoise):
        return nodes.ParallelDenoiseSampler().sample(
            model, pos, neg, frames=frames, width=w, height=h, context_frames=4, context_overlap=2,
            context_schedule="uniform_v2", context_batch_size=1, noise_type="video_fusion", w_ind_noise=0.5,
            img_weight=1e-3, seed=3, steps=4, cfg=3.5, sampler_name="euler", scheduler="normal",
            include_condition_frames=False, vision_latent={"samples": vision}, init_latent={"samples": init},
            denoise=denoise)[0]["samples"]

    dist = {d: (run(d) - init).abs().mean().item() for d in (0.25, 1.0)}
    assert dist[0.25] < 0.5 * dist[1.0], dist
