"""MuseV image -> video at full size on random weights of the released shapes and dtypes, loaded
through the pack's nodes as a user's graph would, on the CPU (or the GPU if there is one).

    source scripts/setup_env.sh && $MUSEV_PY bench/full_size.py [--dir DIR] [--keep]
        [--width 512] [--height 320] [--frames 12] [--steps 1] [--repeat 2] [--attention pytorch]

1. bench/released_weights.py writes the image->video files (SD1.5 diffusers folder, sd-vae-ft-mse,
   the ViT-H image_encoder, musev_referencenet's UNet, ReferenceNet and image projection, ~9 GB)
   into ``--dir`` (default: a temp folder, removed at the end unless ``--keep``).
2. The graph of example_workflows/musev_image_to_video.json, node by node with the node classes:
   MuseVCheckpointLoader, MuseVVAELoader, MuseVCLIPVisionLoader, LoadMuseVMotion, MuseVIPAdapter,
   MuseVReferenceNet, CLIPTextEncode x2, ParallelDenoiseSampler (12 + 1 frames, 1 step, CFG 3.5),
   VAEDecode.
3. Reports: load time per node, RSS of the loaded models, peak RSS above it during sampling and
   decoding, seconds per UNet call (each call timed, ReferenceNet run reported on its own), and the
   patched / bare SD1.5 call ratio at full size (the bare call: the same base UNet, the same rows and
   text context, median of ``--repeat`` calls).  Figures from one run; no asserts.

Needs about 16 GB of free RAM on the CPU (fp32 compute; check ``free -g``) and ~10 GB of disk.
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import released_weights as rw  # noqa: E402


def proc_status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak():
    """Start a new VmHWM (Linux: writing 5 to clear_refs resets the peak RSS)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class RssWatch:
    """Prints the highest RSS above ``base`` every 30 s while it runs (the run may be killed for memory)."""

    def __init__(self, base, every=30.0):
        import threading
        self.base, self.every, self.top = base, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        last = time.monotonic()
        while not self._stop.wait(0.2):
            self.top = max(self.top, proc_status("VmRSS"))
            if time.monotonic() - last >= self.every:
                last = time.monotonic()
                print(f"    ... RSS peak so far +{gib(self.top - self.base)} above the loaded models", flush=True)

    def stop(self):
        self._stop.set()
        self._thread.join()


def malloc_trim():
    """glibc keeps freed heap memory (a state dict read and dropped by a loader) in the process; give
    it back so that the RSS of the loaded models is theirs.  False where there is no glibc."""
    import gc
    gc.collect()
    try:
        import ctypes
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0) or True)
    except (OSError, AttributeError):
        return False


def gib(n):
    return f"{n / 2 ** 30:.2f} GiB"


def available_ram():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="where the released-layout files go (kept; reused when already there)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder of the weights")
    ap.add_argument("--musev", help="use this models/musev folder as it is (e.g. the real files, or the stand-in "
                                    "tree of tests/standins.py to check the script): nothing is written")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=320)
    ap.add_argument("--frames", type=int, default=12, help="frames after the condition frame")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="bare SD1.5 calls to time")
    ap.add_argument("--runs", type=int, default=2, help="sampling runs (the first is cold: one-time set-up, first "
                                                        "touch of the weights; the ratio uses the last)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--skip-decode", action="store_true",
                    help="no VAE decode (on a 23 GiB CPU machine ComfyUI's decode after a full-size run was killed for "
                         "memory, even one frame at a time)")
    ap.add_argument("--attention", default="pytorch", choices=["pytorch", "default"],
                    help="pytorch: fused SDPA (what ComfyUI picks on NVIDIA); default: what ComfyUI picks here")
    a = ap.parse_args()

    print(f"free RAM before start: {gib(available_ram())}; {common.load_info()}", flush=True)
    common.start_host(attention=a.attention)
    threads = common.set_threads(a.threads)
    import torch
    import folder_paths
    import nodes
    ref_nodes = common.pack("nodes.reference_nodes")
    mt = rw.model_table()

    own = a.dir is None and a.musev is None
    dest = a.dir or a.musev or tempfile.mkdtemp(prefix="musev-full-size-")
    try:
        t = time.perf_counter()
        if a.musev:
            musev_dir = os.path.abspath(a.musev)
        else:
            print(f"writing released-shape random weights to {dest}", flush=True)
            musev_dir = rw.write_released(dest, rw.IMAGE_TO_VIDEO)
        gen_s = time.perf_counter() - t
        folder_paths.add_model_folder_path("musev", musev_dir)
        run(a, threads, mt, musev_dir, gen_s, torch, nodes, ref_nodes)
    finally:
        if own and not a.keep:
            shutil.rmtree(dest, ignore_errors=True)
        elif own:
            print(f"kept {dest}")


def run(a, threads, mt, musev_dir, gen_s, torch, nodes, ref_nodes):
    L = nodes.NODE_CLASS_MAPPINGS
    name = {m.key: m.name for m in mt.MODELS}
    rss0 = proc_status("VmRSS")
    loads = []

    def load(label, fn):
        t = time.perf_counter()
        out = fn()
        loads.append((label, time.perf_counter() - t))
        print(f"  {label:<40} {loads[-1][1]:7.1f} s   RSS {gib(proc_status('VmRSS'))}", flush=True)
        return out

    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, a.height, a.width, 3, generator=gen)
    print("loading through the nodes:", flush=True)
    model, clip, vae_base = load("MuseVCheckpointLoader (diffusers .bin)",
                                 lambda: L["MuseVCheckpointLoader"]().load(name["t2i_majicmix"]))
    (vae,) = load("MuseVVAELoader (diffusers folder)", lambda: L["MuseVVAELoader"]().load(name["vae"]))
    (clipv,) = load("MuseVCLIPVisionLoader (ViT-H folder)",
                    lambda: L["MuseVCLIPVisionLoader"]().load(name["clip_vision"]))
    (motion,) = load("LoadMuseVMotion", lambda: L["LoadMuseVMotion"]().load(model, name["motion_referencenet"],
                                                                            8.0, True))
    (ip,) = load("MuseVIPAdapter (+ CLIP vision call)",
                 lambda: L["MuseVIPAdapter"]().apply(motion, clipv, image, name["image_proj_referencenet"],
                                                     1.0, 0.0, 1.0))
    (ref,) = load("MuseVReferenceNet", lambda: L["MuseVReferenceNet"]().apply(ip, name["referencenet"], vae, image))
    (pos,) = load("CLIPTextEncode (positive)", lambda: L["CLIPTextEncode"]().encode(clip, "a girl, eye blinks"))
    (neg,) = load("CLIPTextEncode (negative)", lambda: L["CLIPTextEncode"]().encode(clip, "worst quality"))
    load_s = sum(t for _, t in loads)
    rss_untrimmed = proc_status("VmRSS")
    trimmed = malloc_trim()          # hand the loaders' freed buffers (whole state dicts) back to the OS
    rss_loaded = proc_status("VmRSS")
    print(f"  loaded: RSS {gib(rss_loaded)} ({gib(rss_untrimmed)} before malloc_trim); sampling ...", flush=True)
    watch = RssWatch(rss_loaded)

    # time every main UNet call and every ReferenceNet run of the sampling run
    calls, rn_runs = [], []
    unet = ref.model.diffusion_model

    def pre(_module, args, kwargs):
        x = args[0] if args else kwargs.get("x")
        calls.append({"t0": time.perf_counter(), "rows": int(x.shape[0]), "shape": tuple(x.shape)})

    def post(_module, _args, _kwargs, _out):
        calls[-1]["t1"] = time.perf_counter()

    h1 = unet.register_forward_pre_hook(pre, with_kwargs=True)
    h2 = unet.register_forward_hook(post, with_kwargs=True)
    run_rn_fn = ref_nodes.run_referencenet

    def timed_rn(*args, **kwargs):
        t = time.perf_counter()
        try:
            return run_rn_fn(*args, **kwargs)
        finally:
            rn_runs.append((t, time.perf_counter()))
    ref_nodes.run_referencenet = timed_rn
    peak_ok = reset_peak()
    sample_s, run_calls, run_rn = [], [], []
    try:
        for _ in range(max(1, a.runs)):
            n_calls, n_rn = len(calls), len(rn_runs)
            t = time.perf_counter()
            (latent,) = L["ParallelDenoiseSampler"]().sample(
                model=ref, positive=pos, negative=neg, frames=a.frames, width=a.width, height=a.height,
                context_frames=12, context_overlap=4, context_schedule="uniform_v2", context_batch_size=1,
                noise_type="video_fusion", w_ind_noise=0.5, img_weight=0.001, seed=1234, steps=a.steps, cfg=3.5,
                sampler_name="euler", scheduler="musev_linspace", include_condition_frames=True,
                vision_image=image, vae=vae)
            sample_s.append(time.perf_counter() - t)
            run_calls.append(calls[n_calls:])
            run_rn.append(rn_runs[n_rn:])
    finally:
        h1.remove()
        h2.remove()
        ref_nodes.run_referencenet = run_rn_fn
    watch.stop()
    peak_sample = proc_status("VmHWM")
    t = time.perf_counter()
    # frame by frame: ComfyUI's VAEDecode sizes its batch from the free RAM on the CPU and decoding all
    # 13 frames at once at full size ran this 23 GiB machine out of memory (VAE Decode (Tiled) or a
    # frame-batched decode is what a CPU user needs there too)
    if a.skip_decode:
        decoded = torch.empty(0)
    else:
        decoded = torch.cat([L["VAEDecode"]().decode(vae, {"samples": latent["samples"][i:i + 1]})[0]
                             for i in range(latent["samples"].shape[0])])
    decode_s = time.perf_counter() - t
    peak_all = proc_status("VmHWM")
    rows = calls[-1]["rows"] if calls else 0

    # the bare SD1.5 call: same base UNet, same rows, same text context
    import comfy.model_management
    base = model
    comfy.model_management.load_models_gpu([base])
    dev = comfy.model_management.get_torch_device()
    dtype = base.model.get_dtype()
    shape = calls[-1]["shape"]
    x = torch.randn(shape, generator=gen).to(dev, dtype)
    ctx = torch.cat([pos[0][0], neg[0][0]]).to(dev, dtype)
    ctx = ctx.repeat_interleave(rows // ctx.shape[0], 0) if rows % ctx.shape[0] == 0 else ctx[:1].expand(rows, -1, -1)
    ts = torch.full((rows,), 500.0, device=dev, dtype=dtype)
    bare = []
    with torch.no_grad():
        for _ in range(a.repeat):
            t = time.perf_counter()
            base.model.diffusion_model(x, ts, context=ctx, transformer_options={})
            bare.append(time.perf_counter() - t)
    bare_med = statistics.median(bare)

    # report
    print()
    print(f"device: {common.device_name()}; {threads} thread(s); attention {a.attention}; {common.load_info()}")
    print(f"image -> video {a.width}x{a.height}, {a.frames} + 1 frames, {a.steps} step(s), CFG 3.5, "
          f"UNet weights {dtype}")
    print(f"files ({'as given' if a.musev else f'released shapes, written in {gen_s:.0f} s'}):")
    for fname, dt, fmt, size in rw.describe(musev_dir):
        kind = "" if a.musev else f"{dt:<8} {fmt:<11}"
        print(f"  {fname:<56} {kind} {size / 1e9:6.2f} GB")
    print(f"load time through the nodes        : {load_s:7.1f} s")
    print(f"RSS: before loading {gib(rss0)}, loaded models {gib(rss_loaded)} (+{gib(rss_loaded - rss0)}; "
          f"{gib(rss_untrimmed)} before malloc_trim{'' if trimmed else ' (no glibc: not trimmed)'})")
    if peak_ok:
        print(f"peak RSS above the loaded models   : sampling +{gib(peak_sample - rss_loaded)}, "
              f"sampling + VAE decode +{gib(peak_all - rss_loaded)}")
    else:
        print("peak RSS above the loaded models   : (this kernel cannot reset the peak: not measured)")

    def inside(c, runs):
        return sum(min(e, c["t1"]) - max(st, c["t0"]) for st, e in runs if st < c["t1"] and e > c["t0"])

    per_run = []
    for i, (secs, cs, rns) in enumerate(zip(sample_s, run_calls, run_rn)):
        print(f"sampling run {i + 1}{' (cold)' if i == 0 and len(sample_s) > 1 else ''}: ParallelDenoiseSampler "
              f"{secs:.1f} s (incl. VAE encode of the condition frame); ReferenceNet "
              f"{sum(e - st for st, e in rns):.1f} s")
        for j, c in enumerate(cs):
            rn_in = inside(c, rns)
            print(f"  UNet call {j + 1}: {c['t1'] - c['t0']:7.1f} s, {c['rows']} rows {c['shape'][1:]}"
                  + (f" (of which ReferenceNet {rn_in:.1f} s)" if rn_in > 0 else ""))
        per_run.append(statistics.median([(c["t1"] - c["t0"]) - inside(c, rns) for c in cs]) if cs else float("nan"))
    per_call = per_run[-1]
    print(f"seconds per UNet call (MuseV)      : {per_call:7.1f} s  ({rows} rows = {rows // max(1, a.frames + 1)} "
          f"guidance chunk(s) x {a.frames + 1} frames; last run, ReferenceNet excluded)")
    print(f"bare SD1.5 call, same rows         : {bare_med:7.1f} s  (median of {len(bare)}: "
          f"{', '.join(f'{b:.1f}' for b in bare)})")
    print(f"ratio patched / bare at full size  : {per_call / bare_med:.2f}")
    if not a.skip_decode:
        print(f"VAE decode, {decoded.shape[0]} frames              : {decode_s:7.1f} s")


if __name__ == "__main__":
    main()
