"""Patched (MuseV) UNet call vs the bare ComfyUI UNet call on the same batch.

    python bench/bench_unet_call.py [--frames 13] [--size 32]

Prints the time ratio (patched / bare).  The patched call does strictly more work (22 temporal
convs, 17 temporal attentions, ReferenceOnly K/V doubling); the ratio says what MuseV costs on
top of SD1.5 in ComfyUI, not overhead of the integration."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=13, help="frames per UNet call (1 vision + 12 window)")
    ap.add_argument("--size", type=int, default=16, help="latent height = width")
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    common.start_host()
    import torch
    import comfy.model_management
    patch = common.pack("nodes.patch")
    base, musev = common.build_model()
    comfy.model_management.load_models_gpu([musev])
    dev = musev.load_device
    k, t = 2, a.frames
    x = torch.randn(k * t, 4, a.size, a.size, device=dev)
    ts = torch.full((k * t,), 500.0, device=dev)
    ctx = torch.randn(k * t, 77, 768, device=dev)
    unet = musev.model.diffusion_model
    to_musev = patch.unet_transformer_options(musev, {"cond_or_uncond": [0, 1], patch.WINDOW_KEY: {"n_vis": 1}})

    def run_musev():
        with torch.no_grad():
            unet(x, ts, context=ctx, transformer_options=dict(to_musev))

    t_musev = common.timeit(run_musev, a.repeat)
    musev.eject_model()

    def run_bare():
        with torch.no_grad():
            unet(x, ts, context=ctx, transformer_options={})

    t_bare = common.timeit(run_bare, a.repeat)
    print(f"device: {common.device_name()}")
    print(f"batch: {k} guidance chunks x {t} frames, latent {a.size}x{a.size}, reduced SD1.5 (64/128/256/256)")
    print(f"bare UNet call     : {t_bare * 1000:8.1f} ms")
    print(f"MuseV-patched call : {t_musev * 1000:8.1f} ms")
    print(f"ratio patched/bare : {t_musev / t_bare:8.2f}")


if __name__ == "__main__":
    main()
