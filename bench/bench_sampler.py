"""ParallelDenoiseSampler: integration overhead, batched windows, memory vs video length.

    python bench/bench_sampler.py            # all three
    python bench/bench_sampler.py --memory-run N   (internal: one length, prints peak memory)

1. overhead = sampler wall time / (number of UNet calls x the median time of one patched UNet
   call of the same shape), and wall / (sum of the UNet calls' own times), for 24 frames,
   F=12, O=4 (3 windows), 3 steps;
2. context_batch_size auto (0, the default: as many windows per UNet call as free memory allows)
   vs 1: wall times, the batch auto chose, and the max difference of the two videos' latents;
3. peak memory for 96 vs 24 frames (each in a fresh process): flat except the latent.
Ratios printed from one run; no asserts."""
import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SIZE = 16            # latent 16x16 (128 px): CPU-friendly


def setup():
    common.start_host()
    import torch
    base, musev = common.build_model()
    vision = torch.randn(1, 4, SIZE, SIZE)
    pos = [[torch.randn(1, 77, 768), {}]]
    neg = [[torch.randn(1, 77, 768), {}]]
    return musev, vision, pos, neg


class CallTimer:
    def __init__(self):
        self.times = []

    def __call__(self, executor, *args, **kwargs):
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = executor(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - t)
        return out

    def __deepcopy__(self, memo):
        return self


def run_sampler(musev, vision, pos, neg, frames, batch, steps=3, timer=None):
    from comfy.patcher_extension import WrappersMP
    nodes = common.pack("nodes.sampler_nodes")
    m = musev.clone()
    if timer is not None:
        m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, "bench", timer)
    t = time.perf_counter()
    out = nodes.ParallelDenoiseSampler().sample(
        m, pos, neg, frames=frames, width=SIZE * 8, height=SIZE * 8, context_frames=12, context_overlap=4,
        context_schedule="uniform_v2", context_batch_size=batch, noise_type="video_fusion", w_ind_noise=0.5,
        img_weight=1e-3, seed=0, steps=steps, cfg=3.5, sampler_name="euler", scheduler="musev_linspace",
        include_condition_frames=True, vision_latent={"samples": vision})
    return time.perf_counter() - t, out


def bare_call_time(musev, frames):
    import torch
    import comfy.model_management
    patch = common.pack("nodes.patch")
    comfy.model_management.load_models_gpu([musev])
    dev = musev.load_device
    x = torch.randn(2 * frames, 4, SIZE, SIZE, device=dev)
    ts = torch.full((2 * frames,), 500.0, device=dev)
    ctx = torch.randn(2 * frames, 77, 768, device=dev)
    to = patch.unet_transformer_options(musev, {"cond_or_uncond": [0, 1], patch.WINDOW_KEY: {"n_vis": 1}})

    def call():
        with torch.no_grad():
            musev.model.diffusion_model(x, ts, context=ctx, transformer_options=dict(to))

    t = common.timeit(call, repeat=5)
    musev.eject_model()
    return t


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memory_run(frames):
    """Peak memory of one sampling run above the memory held before it (GPU: allocated bytes;
    CPU: peak RSS, reset through /proc/self/clear_refs after a warm-up run)."""
    import torch
    musev, vision, pos, neg = setup()
    run_sampler(musev, vision, pos, neg, 2, 1, steps=1)            # load everything once
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run_sampler(musev, vision, pos, neg, frames, 1, steps=1)
        print(f"PEAK {(torch.cuda.max_memory_allocated() - base) / 2**20:.1f}")
        return
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status_kib("VmRSS")
    run_sampler(musev, vision, pos, neg, frames, 1, steps=1)
    print(f"PEAK {(_status_kib('VmHWM') - base) / 1024:.1f}")


def auto_choices():
    """Records what context_batch_size auto chooses (the handler is made inside the node)."""
    ctx = common.pack("nodes.context")
    real = ctx.MuseVContextHandler.auto_batch_size
    seen = []

    def auto_batch_size(handler, *args, **kwargs):
        out = real(handler, *args, **kwargs)
        seen.append(out)
        return out
    ctx.MuseVContextHandler.auto_batch_size = auto_batch_size
    return seen


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--memory-run", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    a = ap.parse_args()
    if a.memory_run:
        memory_run(a.memory_run)
        return
    musev, vision, pos, neg = setup()
    threads = common.set_threads(a.threads)
    seen = auto_choices()
    W = common.pack("musev_core.windows")
    frames = 24
    n_windows = len(W.get_windows("uniform_v2", frames, 12, 4))
    run_sampler(musev, vision, pos, neg, 13, 1, steps=1)            # warm-up
    timer = CallTimer()
    wall, _ = run_sampler(musev, vision, pos, neg, frames, 1, timer=timer)
    n_calls = len(timer.times)
    per_call = bare_call_time(musev, 13)
    print(f"device: {common.device_name()}; {threads} thread(s); {common.load_info()}; reduced SD1.5 "
          f"(64/128/256/256), latent {SIZE}x{SIZE}, {frames} frames, F=12 O=4 ({n_windows} windows), 3 steps, "
          f"CFG batched")
    print(f"UNet calls: {n_calls}; wall {wall:.2f} s; sum of UNet call times {sum(timer.times):.2f} s; "
          f"one patched call of a full window {per_call * 1000:.0f} ms")
    print(f"overhead ratio wall / sum(UNet calls)          : {wall / sum(timer.times):.3f}")
    print(f"overhead ratio wall / (calls x full-window call): {wall / (n_calls * per_call):.3f}  "
          f"(the last window is shorter, so this understates)")
    t1, o1 = run_sampler(musev, vision, pos, neg, frames, 1)
    n_seen = len(seen)
    tauto, oauto = run_sampler(musev, vision, pos, neg, frames, 0)
    k, details = seen[n_seen] if len(seen) > n_seen else ("?", "no decision recorded")
    ref = o1[0]["samples"]
    tall, oall = run_sampler(musev, vision, pos, neg, frames, n_windows)
    print(f"context_batch_size auto -> {k} window(s) per call ({details})")
    print(f"batched windows: batch 1 {t1:.2f} s, auto ({k}) {tauto:.2f} s, auto / batch 1 {tauto / t1:.3f}, "
          f"max |diff| {float((ref - oauto[0]['samples']).abs().max()):.2e} (latent max {float(ref.abs().max()):.2f})")
    print(f"all {n_windows} windows in one call: {tall:.2f} s, / batch 1 {tall / t1:.3f}, max |diff| "
          f"{float((ref - oall[0]['samples']).abs().max()):.2e}")
    peaks = {}
    for n in (24, 96):
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-run", str(n)],
                             capture_output=True, text=True, env=os.environ)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("PEAK")]
        peaks[n] = float(line[-1].split()[1]) if line else float("nan")
    latent_mb = (96 - 24) * 4 * SIZE * SIZE * 4 / 2**20
    print(f"peak memory above the loaded models ({'GPU allocated' if 'CPU' not in common.device_name() else 'RSS'}): "
          f"24 frames {peaks[24]:.0f} MiB, 96 frames {peaks[96]:.0f} MiB, ratio {peaks[96] / peaks[24]:.3f} "
          f"(latent growth alone: {latent_mb:.2f} MiB)")


if __name__ == "__main__":
    main()
