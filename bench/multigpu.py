"""MuseV on ComfyUI's MultiGPU work units (ComfyUI >= 0.28, "MultiGPU CFG Split").

Runs the same video (ParallelDenoiseSampler, 24 frames in 12/4 windows, CFG) on one GPU and then on
N GPUs through ``comfy.multigpu.create_multigpu_deepclones`` (what the MultiGPU node does), and
prints the speed-up and the max difference of the latents.  With N >= 2 the window groups are
spread over the devices (nodes/context.py ``multigpu_lanes``); with one window group the CFG halves
are split, as ComfyUI does for any model.

    source scripts/setup_env.sh && $MUSEV_PY bench/multigpu.py [--gpus N] [--frames F] [--steps S]

Needs at least two CUDA devices; with fewer it says so and exits 0.  Weights are random (speed does
not depend on them), in a reduced SD1.5 topology by default (--full: SD1.5 channel sizes)."""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=0, help="GPUs to use (default: all)")
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--size", type=int, default=512, help="width = height in pixels")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--full", action="store_true", help="SD1.5 channel sizes (320/640/1280/1280)")
    ap.add_argument("--simulate-on-cpu", action="store_true",
                    help="check this script without GPUs: two CPU 'devices' (cpu, cpu:0); no speed-up expected")
    a = ap.parse_args()

    import torch
    n_dev = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if a.simulate_on_cpu:
        n_dev = 2
    if n_dev < 2:
        print(f"bench/multigpu.py: {n_dev} CUDA device(s) here; MultiGPU work units need at least 2. Nothing run.")
        return 0
    import common
    common.start_host()
    import comfy.model_management
    from comfy import multigpu
    if a.simulate_on_cpu:
        cpus = [torch.device("cpu"), torch.device("cpu", 0)]
        comfy.model_management.get_all_torch_devices = lambda exclude_current=False: list(cpus)
    compat = common.pack("nodes.compat")
    if not compat.has_multigpu():
        print("bench/multigpu.py: this ComfyUI has no MultiGPU work units (needs ComfyUI >= 0.28). Nothing run.")
        return 0
    gpus = a.gpus or n_dev
    channels = (320, 640, 1280, 1280) if a.full else (64, 128, 256, 256)

    def build():
        base, musev = common.build_model(channels=channels, variant="musev", seed=0)
        return base, musev

    base, musev = build()
    # deep clones rebuild the models from these factories (what ComfyUI's loaders register)
    base.cached_patcher_init = musev.cached_patcher_init = (lambda *args, **kw: build()[0], ())
    patch = common.pack("nodes.patch")
    motion_patcher = patch.motion_patcher_of(musev)
    motion_patcher.cached_patcher_init = (lambda *args, **kw: patch.motion_patcher_of(build()[1]), ())

    sampler = common.pack("nodes.sampler_nodes").ParallelDenoiseSampler()
    ctx_dim = 768
    cond = [[torch.randn(1, 77, ctx_dim, generator=torch.Generator().manual_seed(1)), {}]]
    uncond = [[torch.zeros(1, 77, ctx_dim), {}]]

    def run(model):
        t = time.perf_counter()
        out = sampler.sample(model, cond, uncond, a.frames, a.size, a.size, context_frames=12, context_overlap=4,
                             context_schedule="uniform_v2", context_batch_size=1, noise_type="video_fusion",
                             w_ind_noise=0.5, img_weight=0.001, seed=3, steps=a.steps, cfg=3.5,
                             sampler_name="euler", scheduler="musev_linspace", include_condition_frames=False)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return out[0]["samples"], time.perf_counter() - t

    run(musev)                                   # warm-up (loads, kernels)
    one, t_one = run(musev)
    split = multigpu.create_multigpu_deepclones(musev, gpus)
    run(split)                                   # warm-up of the clones
    many, t_many = run(split)
    devices = [comfy.model_management.get_torch_device()] + [c.load_device for c in
                                                             split.get_additional_models_with_key("multigpu")]
    diff = (many - one).abs().max().item()
    print(f"MuseV MultiGPU work units: {a.frames} frames, {a.size}x{a.size}, {a.steps} steps, windows 12/4, CFG 3.5, "
          f"channels {channels}")
    names = [torch.cuda.get_device_name(d) if d.type == "cuda" else "CPU" for d in devices]
    print(f"  devices: {', '.join(f'{n} ({d})' for n, d in zip(names, devices))}")
    print(f"  1 GPU: {t_one:.2f} s   {len(devices)} GPUs: {t_many:.2f} s   speed-up {t_one / t_many:.2f}x")
    print(f"  max |latent difference| vs 1 GPU: {diff:.3g} (max |latent| {one.abs().max().item():.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
