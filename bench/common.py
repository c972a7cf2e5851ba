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


def start_host(attention="pytorch"):
    """Start ComfyUI in-process.  ``attention="pytorch"``: fused SDPA (``--use-pytorch-cross-attention``,
    what ComfyUI picks by itself on NVIDIA; on CPU it would pick sub-quadratic attention, whose
    unfused softmax would dominate every figure); ``"default"``: whatever ComfyUI picks."""
    import logging
    logging.disable(logging.WARNING)      # ComfyUI's start-up chatter (missing audio nodes etc.)
    path = comfy_path()
    sys.path.insert(0, path)
    from comfy.cli_args import args
    args.cpu = not _has_cuda()
    if attention == "pytorch":
        args.use_pytorch_cross_attention = True
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
    _HOST["loop"] = loop


_HOST = {}


def load_other_pack(path):
    """Import a second copy of the pack (e.g. a checkout of an earlier commit: ``git archive <rev> |
    tar -x -C DIR``) into the running host, for before/after figures from one process.  Returns the
    module prefix to give :func:`pack` / :func:`build_model` as ``root``."""
    import nodes
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "__init__.py")):
        sys.exit(f"bench: {path} is not a checkout of the pack")
    assert _HOST["loop"].run_until_complete(nodes.load_custom_node(path)), f"{path} failed to import"
    return path.replace(".", "_x_")


def _has_cuda():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def pack(name, root=None):
    return importlib.import_module(f"{root or PACK_MODULE}.{name}")


def build_model(channels=(64, 128, 256, 256), context_dim=768, heads=8, variant="musev", seed=0, root=None):
    """(base MODEL, MuseV MODEL) of a reduced SD1.5 topology (``root``: which copy of the pack)."""
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

    keys = pack("musev_core.keys", root)
    motion_m = pack("musev_core.motion", root)
    loader = pack("nodes.motion_loader", root)
    host = pack("nodes.host", root)
    patch = pack("nodes.patch", root)
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


def reference_inputs(base, musev, size, n_ref=1, seed=1, root=None):
    """Give a ``musev_referencenet`` MODEL fixed ReferenceNet features (the base UNet's own encoder
    features of a random latent: the 13 shapes the fusions expect) and IP tokens for both guidance
    roles, as the providers would after their first call of a run."""
    import torch
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    patch = pack("nodes.patch", root)
    state = patch.get_state(musev)
    if not state.motion.flags.refer_fusion:
        return musev
    unet = base.model.diffusion_model
    gen = torch.Generator().manual_seed(seed)
    cross = unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features
    feats, tokens = {}, {}
    with torch.no_grad():
        for role in (0, 1):
            x = torch.randn(n_ref, 4, size, size, generator=gen)
            ctx = torch.randn(n_ref, 4, cross, generator=gen)
            emb = unet.time_embed(openaimodel.timestep_embedding(torch.zeros(n_ref), unet.model_channels))
            h, out = x, []
            for block in list(unet.input_blocks) + [unet.middle_block]:
                h = openaimodel.forward_timestep_embed(block, h, emb, ctx, {})
                out.append(h.movedim(0, 1).unsqueeze(0).clone())
            feats[role] = out
            tokens[role] = torch.randn(1, 4 * n_ref, cross, generator=gen)
    m = musev.clone()
    patch.set_state(m, state.replace(reference=patch.StaticReference(feats), ip=patch.StaticIP(tokens, 1.0)))
    return m


def set_threads(n):
    """Pin torch's intra-op threads (0 = leave torch's default); returns the count in use."""
    import torch
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()


def load_info():
    """``uptime``-style load averages, printed with every benchmark (the machine may be shared)."""
    try:
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg()) + f" on {os.cpu_count()} cores"
    except OSError:
        return "load average unknown"


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
