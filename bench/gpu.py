"""MuseV on a GPU at full SD1.5 size, fp16: speed, memory and auto window batching, per variant.

    python bench/gpu.py [--dir DIR] [--keep] [--steps 10] [--long 44] [--variants musev,musev_referencenet]

Ready to run on a lent GPU with no editing (needs COMFYUI_PATH or the pack inside a ComfyUI tree,
~12 GB of disk for the weights, ~10 minutes on an A100/H100).  Without CUDA it says so and exits 0.

1. bench/released_weights.py writes random weights in MuseV's released layout, shapes and dtypes
   (SD1.5 diffusers folder, sd-vae-ft-mse, the ViT-H image encoder, the musev and musev_referencenet
   motion UNets, the ReferenceNet and the image projection) into ``--dir`` (default: a temp folder,
   removed at the end unless ``--keep``).
2. Per variant, the graph of the shipped image-to-video workflow, node by node (MuseVCheckpointLoader,
   MuseVVAELoader, MuseVCLIPVisionLoader, LoadMuseVMotion, [MuseVIPAdapter, MuseVReferenceNet],
   CLIPTextEncode, ParallelDenoiseSampler), 512x512, fp16 (what ComfyUI picks for SD1.5 on NVIDIA),
   fused SDPA attention, CFG 3.5, Euler, MuseV's sigmas, for 12 + 1 frames (MuseV's published case:
   one window) and for ``--long`` + 1 frames (several windows: where batching them matters), each with
   ``context_batch_size`` 1 and auto (0).
3. Prints per run: s/step, s per 12 frames, the sum of the UNet calls per step, peak VRAM above the
   loaded models (``torch.cuda.max_memory_allocated`` minus what was allocated before the run), the
   batch size auto chose and its memory estimate next to the measured peak (to calibrate
   ``nodes/context.py: MUSEV_MEMORY_FACTOR``), and the auto / batch-1 time ratio; then MuseV's
   published figures (README: 8 GB musev, 12 GB musev_referencenet at 512x512, 12 frames; about
   9 s per 12 frames on an A100) next to ours.  Figures from one run; no asserts.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MUSEV_PUBLISHED = {"musev": 8.0, "musev_referencenet": 12.0}    # GB at 512x512, 12 frames (MuseV README)
MUSEV_S_PER_12 = 9.0                                            # s per 12 frames on an A100 (MuseV README)
VARIANTS = ("musev", "musev_referencenet")


def has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def gib(n):
    return f"{n / 2 ** 30:.2f} GiB"


class Recorder:
    """Times every main UNet call (forward hooks, CUDA-synchronised) and every auto decision."""

    def __init__(self, torch, ctx_mod):
        self.torch = torch
        self.calls = []
        self.auto = []
        real = ctx_mod.MuseVContextHandler.auto_batch_size
        rec = self

        def auto_batch_size(handler, model, n_frames, n_vis, latent_shape, devices, n_conds=2):
            k, details = real(handler, model, n_frames, n_vis, latent_shape, devices, n_conds)
            est = handler.memory_for(model, n_frames, n_vis, latent_shape, k, n_conds)
            rec.auto.append((k, details, est))
            return k, details
        ctx_mod.MuseVContextHandler.auto_batch_size = auto_batch_size

    def hook(self, unet):
        torch = self.torch

        def pre(_m, args, kwargs):
            torch.cuda.synchronize()
            x = args[0] if args else kwargs.get("x")
            self.calls.append([time.perf_counter(), None, int(x.shape[0])])

        def post(_m, _a, _k, _o):
            torch.cuda.synchronize()
            self.calls[-1][1] = time.perf_counter()
        return [unet.register_forward_pre_hook(pre, with_kwargs=True),
                unet.register_forward_hook(post, with_kwargs=True)]


def build_graph(L, name, variant, image):
    (model, clip, _vae) = L["MuseVCheckpointLoader"]().load(name["t2i_majicmix"])
    (vae,) = L["MuseVVAELoader"]().load(name["vae"])
    motion_key = "motion_musev" if variant == "musev" else "motion_referencenet"
    (m,) = L["LoadMuseVMotion"]().load(model, name[motion_key], 8.0, True)
    if variant != "musev":
        (clipv,) = L["MuseVCLIPVisionLoader"]().load(name["clip_vision"])
        (m,) = L["MuseVIPAdapter"]().apply(m, clipv, image, name["image_proj_referencenet"], 1.0, 0.0, 1.0)
        (m,) = L["MuseVReferenceNet"]().apply(m, name["referencenet"], vae, image)
    (pos,) = L["CLIPTextEncode"]().encode(clip, "a girl, eye blinks, smiling, best quality")
    (neg,) = L["CLIPTextEncode"]().encode(clip, "worst quality, low quality, blurry")
    return m, pos, neg, vae


def sample(L, model, pos, neg, vae, image, frames, batch, steps, size):
    return L["ParallelDenoiseSampler"]().sample(
        model=model, positive=pos, negative=neg, frames=frames, width=size, height=size, context_frames=12,
        context_overlap=4, context_schedule="uniform_v2", context_batch_size=batch, noise_type="video_fusion",
        w_ind_noise=0.5, img_weight=0.001, seed=1234, steps=steps, cfg=3.5, sampler_name="euler",
        scheduler="musev_linspace", include_condition_frames=True, vision_image=image, vae=vae)[0]["samples"]


def measure(torch, rec, fn, steps):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    rec.calls.clear()
    n_auto = len(rec.auto)
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t
    total = torch.cuda.max_memory_allocated()
    peak = total - before
    unet = sum(c[1] - c[0] for c in rec.calls if c[1] is not None)
    rows = max((c[2] for c in rec.calls), default=0)
    auto = rec.auto[n_auto] if len(rec.auto) > n_auto else None
    return {"wall": wall, "per_step": wall / steps, "unet_per_step": unet / steps, "peak": peak, "total": total,
            "calls_per_step": len(rec.calls) / steps, "rows": rows, "auto": auto, "out": out}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="where the released-layout files go (kept; reused when already there)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder of the weights")
    ap.add_argument("--size", type=int, default=512, help="width = height in pixels")
    ap.add_argument("--steps", type=int, default=10, help="denoising steps (MuseV: 10)")
    ap.add_argument("--long", type=int, default=44, help="frames of the several-window run (F=12, O=4)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args()
    if not has_cuda():
        print("bench/gpu.py: no CUDA device here; nothing measured (run it on a machine with an NVIDIA GPU).")
        return 0

    import common
    import released_weights as rw
    common.start_host(attention="pytorch")
    import torch
    import folder_paths
    import nodes
    ctx_mod = common.pack("nodes.context")
    W = common.pack("musev_core.windows")
    mt = rw.model_table()
    variants = [v.strip() for v in a.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        sys.exit(f"bench/gpu.py: unknown variant(s) {bad}; choose from {list(VARIANTS)}")

    own = a.dir is None
    dest = a.dir or tempfile.mkdtemp(prefix="musev-gpu-bench-")
    try:
        t = time.perf_counter()
        keys = tuple(rw.IMAGE_TO_VIDEO) + (("motion_musev",) if "musev" in variants else ())
        print(f"writing released-shape random weights to {dest}", flush=True)
        musev_dir = rw.write_released(dest, keys)
        folder_paths.add_model_folder_path("musev", musev_dir)
        print(f"  done in {time.perf_counter() - t:.0f} s", flush=True)
        L = nodes.NODE_CLASS_MAPPINGS
        name = {m.key: m.name for m in mt.MODELS}
        rec = Recorder(torch, ctx_mod)
        gen = torch.Generator().manual_seed(0)
        image = torch.rand(1, a.size, a.size, 3, generator=gen)
        results = {}
        for variant in variants:
            print(f"\n== {variant} ==", flush=True)
            model, pos, neg, vae = build_graph(L, name, variant, image)
            hooks = rec.hook(model.model.diffusion_model)
            try:
                sample(L, model, pos, neg, vae, image, 12, 1, 1, a.size)          # warm-up: loads everything
                res = {}
                for frames in (12, a.long):
                    for batch in (1, 0):
                        r = measure(torch, rec, lambda: sample(L, model, pos, neg, vae, image, frames, batch,
                                                               a.steps, a.size), a.steps)
                        res[(frames, batch)] = r
                        n_win = len(W.get_windows("uniform_v2", frames, 12, 4))
                        k = r["auto"][0] if (batch == 0 and r["auto"]) else batch
                        print(f"  {frames:>3}+1 frames ({n_win} window(s)), context_batch_size "
                              f"{'auto' if batch == 0 else batch}"
                              f"{f' -> {k}' if batch == 0 else ''}: {r['per_step']:.3f} s/step, "
                              f"{r['wall'] / (frames / 12):.2f} s per 12 frames ({a.steps} steps), UNet calls "
                              f"{r['unet_per_step']:.3f} s/step ({r['calls_per_step']:.0f} per step, up to "
                              f"{r['rows']} rows), peak VRAM above the loaded models {gib(r['peak'])} "
                              f"(total {gib(r['total'])})", flush=True)
                        if batch == 0 and r["auto"]:
                            print(f"      auto: {r['auto'][1]}; estimate for {k} window(s) {gib(r['auto'][2])} "
                                  f"vs measured peak {gib(r['peak'])}", flush=True)
                    r1, ra = res[(frames, 1)], res[(frames, 0)]
                    diff = float((r1["out"].float() - ra["out"].float()).abs().max())
                    print(f"  {frames}+1 frames: auto / batch 1 wall {ra['wall'] / r1['wall']:.3f}, max |diff| "
                          f"{diff:.2e} (latent max {float(r1['out'].abs().max()):.1f})", flush=True)
            finally:
                for h in hooks:
                    h.remove()
            results[variant] = res
            del model, pos, neg, vae
            import comfy.model_management
            comfy.model_management.unload_all_models()
            comfy.model_management.soft_empty_cache()

        print(f"\ndevice: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; {a.size}x{a.size}, fp16, "
              f"{a.steps} steps, CFG 3.5")
        print(f"{'variant':<20} {'s/12 frames (1 win)':>20} {'MuseV A100':>11} {'peak VRAM total':>16} {'MuseV':>6} "
              f"{'auto k (long)':>14} {'auto/batch1 (long)':>19}")
        for variant, res in results.items():
            r12 = res[(12, 0)]
            rl1, rla = res[(a.long, 1)], res[(a.long, 0)]
            k = rla["auto"][0] if rla["auto"] else "?"
            print(f"{variant:<20} {r12['wall']:>20.2f} {MUSEV_S_PER_12:>11.1f} {gib(r12['total']):>16} "
                  f"{MUSEV_PUBLISHED[variant]:>4.0f}GB {str(k):>14} {rla['wall'] / rl1['wall']:>19.3f}")
        print("MuseV's figures are its README's (GPU memory of the whole run, weights included; A100). Ours: the peak "
              "allocated during the 12+1-frame run, weights of every loaded model included (CLIP vision, VAE...), "
              "on this GPU; the lines above give it without the loaded models.")
    finally:
        if own and not a.keep:
            shutil.rmtree(dest, ignore_errors=True)
        elif own:
            print(f"kept {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
