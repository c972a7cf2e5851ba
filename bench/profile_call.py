"""torch.profiler view of one MuseV window call next to the bare SD1.5 call of the same batch.

    python bench/profile_call.py [--variant musev_referencenet] [--size 32] [--frames 13] [--threads 1]
                                 [--top 25] [--reference-path]

Builds the reduced SD1.5 topology of ``common.build_model`` (1/5 of SD1.5's widths), gives a
``musev_referencenet`` model fixed ReferenceNet features and IP tokens, runs one warm-up call and
one profiled call of 2 guidance chunks x ``frames`` rows, and prints the top ops by self CPU time
of the patched call and of the bare call (the same UNet with nothing installed).
``--reference-path`` profiles the call with the per-run constants off (everything computed per
call, text K/V for every row) instead of the default one.  ``--baseline DIR`` profiles an earlier
checkout of the pack (``git archive <rev> | tar -x -C DIR``) instead."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def build(variant, size, frames, root=None):
    import torch
    import comfy.model_management
    base, musev = common.build_model(variant=variant, root=root)
    musev = common.reference_inputs(base, musev, size, root=root)
    comfy.model_management.load_models_gpu([musev])
    dev = musev.load_device
    k, t = 2, frames
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(k * t, 4, size, size, generator=gen).to(dev)
    ts = torch.full((k * t,), 500.0, device=dev)
    ctx = torch.cat([torch.randn(1, 77, 768, generator=gen).expand(t, -1, -1) for _ in range(k)]).to(dev)
    return base, musev, x, ts, ctx


def call_fn(patch, musev, x, ts, ctx, fast=True, bare=False):
    import torch
    unet = musev.model.diffusion_model
    # shared_context: one prompt per guidance chunk, as calc_cond_batch_wrapper announces for batch-1 prompts
    extra = {"cond_or_uncond": [0, 1], patch.WINDOW_KEY: {"n_vis": 1, "shared_context": True}}
    constants_key = getattr(patch, "CONSTANTS_KEY", None)
    if constants_key is not None:
        extra[constants_key] = bool(fast)
    to = {} if bare else patch.unet_transformer_options(musev, extra)
    run_key = getattr(patch, "RUN_KEY", None)
    run = patch.MuseVRun() if (run_key and not bare) else None

    def call():
        opts = dict(to)
        if run is not None:
            opts[run_key] = run            # one sampling run: per-run constants persist across calls
        with torch.no_grad():
            return unet(x, ts, context=ctx, transformer_options=opts)
    return call


def profile(fn, top, label):
    import torch
    from torch.profiler import ProfilerActivity, profile as tprofile
    fn()                                            # warm-up (fills the per-run caches)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with tprofile(activities=acts) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\n=== {label}: self CPU total {total / 1e6:.2f} s ===")
    print(f"{'op':<40} {'calls':>6} {'self s':>8} {'share':>6}")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"{e.key[:40]:<40} {e.count:>6} {e.self_cpu_time_total / 1e6:>8.3f} {e.self_cpu_time_total / total:>6.1%}")
    return {e.key: (e.count, e.self_cpu_time_total) for e in events}, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="musev_referencenet", choices=["musev", "musev_referencenet"])
    ap.add_argument("--size", type=int, default=32, help="latent height = width (32 = 256 px)")
    ap.add_argument("--frames", type=int, default=13, help="rows per guidance chunk (1 vision + 12 window)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--reference-path", action="store_true", help="profile with the per-run constants off")
    ap.add_argument("--baseline", default="", help="profile this checkout of the pack instead")
    a = ap.parse_args()
    common.start_host()
    threads = common.set_threads(a.threads)
    root = common.load_other_pack(a.baseline) if a.baseline else None
    patch = common.pack("nodes.patch", root)
    base, musev, x, ts, ctx = build(a.variant, a.size, a.frames, root)
    print(f"device: {common.device_name()}; {threads} thread(s); {common.load_info()}")
    print(f"{a.variant}, reduced SD1.5 (64/128/256/256), latent {a.size}x{a.size}, 2 x {a.frames} rows")
    path = f"baseline {a.baseline}" if a.baseline else ("constants off" if a.reference_path else "default path")
    patched, t_patched = profile(call_fn(patch, musev, x, ts, ctx, fast=not a.reference_path), a.top,
                                 f"MuseV-patched call ({path})")
    musev.eject_model()
    bare, t_bare = profile(call_fn(patch, musev, x, ts, ctx, bare=True), a.top, "bare SD1.5 call")
    print(f"\nself CPU patched / bare: {t_patched / t_bare:.2f}")
    print(f"\n{'op (patched - bare)':<40} {'extra calls':>11} {'extra s':>8}")
    diff = []
    for key, (n, t) in patched.items():
        bn, bt = bare.get(key, (0, 0))
        diff.append((t - bt, n - bn, key))
    for dt, dn, key in sorted(diff, reverse=True)[:a.top]:
        print(f"{key[:40]:<40} {dn:>11} {dt / 1e6:>8.3f}")


if __name__ == "__main__":
    main()
