"""Shared set-up of the benchmarks: a real ComfyUI host (COMFYUI_PATH or the enclosing tree), a
reduced SD1.5-topology MODEL built with ComfyUI's own classes and a MuseV motion model of the same
layout, random weights (speed does not depend on them).  Benchmarks print ratios measured in one
run; they never assert timings."""
import asyncio
import atexit
import importlib
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
import time

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_MODULE = PACK_DIR.replace(".", "_x_")


def comfy_path():
    cand = os.environ.get("COMFYUI_PATH", "")
    if cand and os.path.isfile(os.path.join(cand, "nodes.py")):
        return cand
    tree = os.path.dirname(os.path.dirname(PACK_DIR))
    if os.path.isfile(os.path.join(tree, "nodes.py")):
        return tree
    sys.exit("bench: set COMFYUI_PATH to a ComfyUI tree (source scripts/setup_env.sh)")


def start_host():
    import logging
    logging.disable(logging.WARNING)      # ComfyUI's start-up chatter (missing audio nodes etc.)
    path = comfy_path()
    sys.path.insert(0, path)
    from comfy.cli_args import args
    args.cpu = not _has_cuda()
    args.base_directory = tempfile.mkdtemp(prefix="musev-bench-")
    atexit.register(shutil.rmtree, args.base_directory, True)
    import utils  # noqa: F401
    import folder_paths  # noqa: F401
    import nodes
    import server
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    server.PromptServer(loop)
    loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    assert loop.run_until_complete(nodes.load_custom_node(PACK_DIR)), "pack failed to import"


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def pack(name):
    return importlib.import_module(f"{PACK_MODULE}.{name}")


def build_model(channels=(64, 128, 256, 256), context_dim=768, heads=8, variant="musev", seed=0):
    """(base MODEL, MuseV MODEL) of a reduced SD1.5 topology."""
    import torch
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    mc = channels[0]
    cfg = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
           "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": mc,
           "num_res_blocks": [2] * 4, "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
           "channel_mult": [c // mc for c in channels], "transformer_depth_middle": 1,
           "use_linear_in_transformer": False, "context_dim": context_dim, "num_heads": heads,
           "num_head_channels": -1, "transformer_depth_output": [1] * 9 + [0] * 3,
           "use_temporal_attention": False, "use_temporal_resblock": False, "dtype": torch.float32}
    model_config = comfy.supported_models.SD15(cfg)
    for k in ("num_heads", "num_head_channels", "context_dim", "model_channels"):
        model_config.unet_config[k] = cfg[k]
    model_config.set_inference_dtype(torch.float32, None)
    base_model = model_config.get_model({})
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in base_model.diffusion_model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / max(1, p[0].numel()) ** 0.5))
    dev = comfy.model_management.get_torch_device()
    off = comfy.model_management.unet_offload_device()
    base = comfy.model_patcher.ModelPatcher(base_model, dev, off)

    keys = pack("musev_core.keys")
    motion_m = pack("musev_core.motion")
    loader = pack("nodes.motion_loader")
    host = pack("nodes.host")
    patch = pack("nodes.patch")
    layout = keys.sd_layout(variant, list(channels), 4 * mc, context_dim)
    motion = motion_m.MuseVMotionModel(variant, layout, heads, ops=host.host_ops(torch.float32, None, dev))
    with torch.no_grad():
        for name, p in motion.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / max(1, p[0].numel()) ** 0.5))
            if name.endswith("temporal_weight"):
                p.fill_(0.5)
    motion.eval()
    mp = comfy.model_patcher.ModelPatcher(loader.MotionModule(motion), dev, off)
    return base, patch.install(base, mp, source="bench", frame_rate=8.0)


def timeit(fn, repeat=5, warmup=1):
    import torch
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def device_name():
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"
