"""One MuseV window call: per-run constants on vs off, vs the bare SD1.5 call, optionally vs an
earlier checkout of the pack, all in one process with the calls interleaved.

    python bench/bench_unet_call.py [--variant musev_referencenet] [--size 32] [--frames 13]
                                    [--repeat 5] [--threads 1] [--baseline DIR]

``--baseline DIR``: a checkout of an earlier commit (``git archive <rev> | tar -x -C DIR``), loaded
into the same host as a second pack; its call runs on the same weights and inputs.

Reduced SD1.5 topology (1/5 of SD1.5's widths), 2 guidance chunks x ``frames`` rows (1 vision frame
+ the window), fused SDPA attention (what ComfyUI picks on NVIDIA).  A ``musev_referencenet`` call
gets fixed ReferenceNet features and IP tokens, as in a sampling run after its first call.
"constants on" keeps one ``MuseVRun`` across the calls (what a sampling run does); "off" computes
them in every call.  The patched call does strictly more work than the bare one (22 temporal
convs, 16 temporal transformers, ReferenceOnly K/V doubling, 13 fusion and 16 IP attentions): the
ratio says what MuseV costs on top of SD1.5 in ComfyUI.  Medians of wall and CPU time; no asserts."""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def make_calls(root, variant, size, x, ts, ctx, bare_too=False):
    import torch
    import comfy.model_management
    patch = common.pack("nodes.patch", root)
    base, musev = common.build_model(variant=variant, root=root)
    musev = common.reference_inputs(base, musev, size, root=root)
    comfy.model_management.load_models_gpu([musev])
    unet = musev.model.diffusion_model
    # shared_context: one prompt per guidance chunk, as calc_cond_batch_wrapper announces for CONDITIONING
    # of batch 1 (the usual case); an earlier checkout ignores it
    extra = {"cond_or_uncond": [0, 1], patch.WINDOW_KEY: {"n_vis": 1, "shared_context": True}}
    to = patch.unet_transformer_options(musev, extra)
    constants_key = getattr(patch, "CONSTANTS_KEY", None)

    def call(run, constants=True):
        opts = dict(to)
        if run is not None:
            opts[patch.RUN_KEY] = run
        if constants_key is not None:
            opts[constants_key] = constants
        with torch.no_grad():
            return unet(x, ts, context=ctx, transformer_options=opts)

    run_on, run_off = patch.MuseVRun(), patch.MuseVRun()
    calls = {"on": lambda: call(run_on, True), "off": lambda: call(run_off, False)}
    return calls, musev


def timed(fn):
    import torch
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - w, time.process_time() - c, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="musev_referencenet", choices=["musev", "musev_referencenet"])
    ap.add_argument("--frames", type=int, default=13, help="rows per guidance chunk (1 vision + 12 window)")
    ap.add_argument("--size", type=int, default=32, help="latent height = width (32 = 256 px)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 = torch's default)")
    ap.add_argument("--baseline", default="", help="checkout of an earlier commit to time in the same run")
    a = ap.parse_args()
    common.start_host()
    threads = common.set_threads(a.threads)
    import torch
    import comfy.model_management
    root_base = common.load_other_pack(a.baseline) if a.baseline else None
    dev = comfy.model_management.get_torch_device()
    k, t = 2, a.frames
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(k * t, 4, a.size, a.size, generator=gen).to(dev)
    ts = torch.full((k * t,), 500.0, device=dev)
    ctx = torch.cat([torch.randn(1, 77, 768, generator=gen).expand(t, -1, -1) for _ in range(k)]).to(dev)

    calls, musev = make_calls(None, a.variant, a.size, x, ts, ctx)
    variants = {"MuseV call, per-run constants on": calls["on"], "MuseV call, constants per call": calls["off"]}
    if root_base:
        old, old_musev = make_calls(root_base, a.variant, a.size, x, ts, ctx)
        # the same motion weights in both copies (the base UNet weights come from the same seed)
        old_patch = common.pack("nodes.patch", root_base)
        new_patch = common.pack("nodes.patch")
        old_patch.get_state(old_musev).motion.load_state_dict(new_patch.get_state(musev).motion.state_dict())
        variants[f"baseline call ({os.path.basename(os.path.abspath(a.baseline))})"] = old["off"]
    base_bare, _ = common.build_model(variant=a.variant)
    comfy.model_management.load_models_gpu([base_bare])
    bare_unet = base_bare.model.diffusion_model

    def bare():
        with torch.no_grad():
            return bare_unet(x, ts, context=ctx, transformer_options={})
    variants["bare SD1.5 call"] = bare

    outs = {name: timed(fn)[2] for name, fn in variants.items()}      # warm-up (fills the run's constants)
    wall = {name: [] for name in variants}
    cpu = {name: [] for name in variants}
    for _ in range(a.repeat):
        for name, fn in variants.items():                              # interleaved: load drifts hit all alike
            w, c, _ = timed(fn)
            wall[name].append(w)
            cpu[name].append(c)
    med = {n: statistics.median(v) for n, v in wall.items()}
    medc = {n: statistics.median(v) for n, v in cpu.items()}
    print(f"device: {common.device_name()}; {threads} thread(s); {common.load_info()} (after the run)")
    print(f"{a.variant}, reduced SD1.5 (64/128/256/256), latent {a.size}x{a.size}, {k} guidance chunks x {t} "
          f"frames, median of {a.repeat} interleaved calls")
    for name in variants:
        print(f"  {name:<44}: wall {med[name] * 1000:8.0f} ms   cpu {medc[name] * 1000:8.0f} ms")
    on, off = "MuseV call, per-run constants on", "MuseV call, constants per call"
    bare_name = "bare SD1.5 call"
    print(f"ratio constants on / off         : wall {med[on] / med[off]:.3f}   cpu {medc[on] / medc[off]:.3f}")
    print(f"ratio patched (on) / bare         : wall {med[on] / med[bare_name]:.3f}   cpu {medc[on] / medc[bare_name]:.3f}")
    diff = float((outs[on] - outs[off]).abs().max())
    scale = float(outs[off].abs().max())
    print(f"max |on - off| {diff:.2e} (output max |x| {scale:.2f})")
    for name in variants:
        if name.startswith("baseline"):
            print(f"ratio now (on) / baseline          : wall {med[on] / med[name]:.3f}   cpu {medc[on] / medc[name]:.3f}")
            print(f"ratio baseline / bare              : wall {med[name] / med[bare_name]:.3f}   "
                  f"cpu {medc[name] / medc[bare_name]:.3f}")
            print(f"max |now - baseline| {float((outs[on] - outs[name]).abs().max()):.2e}")


if __name__ == "__main__":
    main()
