"""The main job, end to end on a fresh machine: image -> MuseV video through ComfyUI's own
executor with this pack's nodes (MuseVIPAdapter + MuseVReferenceNet + ParallelDenoiseSampler),
decoded and saved as an animated WEBP and an MP4.

    bash scripts/demo.sh [--image PATH] [--frames N] [--models DIR]

Without --models the released weights are replaced by tiny random stand-ins in the real formats
(generated once, ~1.8 GB in the temp folder): the run proves the pipeline, the video is noise.
With --models pointing at a ComfyUI models folder holding the released files (see README), the
real models are used (names below)."""
import argparse
import asyncio
import atexit
import os
import shutil
import sys
import tempfile

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

REAL = {
    "checkpoint": "majicmixRealv6Fp16.safetensors",
    "vae": "sd-vae-ft-mse.safetensors",
    "clip_vision": "IP-Adapter-image_encoder-ViT-H-14.safetensors",
    "motion": "motion/musev_referencenet/",
    "referencenet": "motion/musev_referencenet/referencenet/",
    "image_proj": "motion/musev_referencenet/ip_adapter_image_proj.bin",
}


def start_comfy(models_dir):
    path = os.environ.get("COMFYUI_PATH")
    if not path or not os.path.isfile(os.path.join(path, "nodes.py")):
        sys.exit("demo: COMFYUI_PATH is not a ComfyUI tree (run through scripts/demo.sh)")
    sys.path.insert(0, path)
    from comfy.cli_args import args
    import torch
    args.cpu = not torch.cuda.is_available()
    args.base_directory = tempfile.mkdtemp(prefix="musev-demo-")
    atexit.register(shutil.rmtree, args.base_directory, True)
    import utils  # noqa: F401
    import folder_paths
    if models_dir:
        folder_paths.add_model_folder_path("checkpoints", os.path.join(models_dir, "checkpoints"))
        for name in ("vae", "clip_vision", "controlnet", "musev"):
            folder_paths.add_model_folder_path(name, os.path.join(models_dir, name))
    import nodes
    import server
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = server.PromptServer(loop)
    loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not loop.run_until_complete(nodes.load_custom_node(PACK_DIR)):
        sys.exit("demo: the pack failed to import (see the log above)")
    return srv


def condition_image(path, size):
    import numpy as np
    from PIL import Image, ImageDraw
    import folder_paths
    if path:
        img = Image.open(path).convert("RGB")
    else:   # a simple synthetic "portrait": gradient background, head and shoulders
        img = Image.new("RGB", (size, size))
        px = np.linspace(0, 255, size, dtype=np.uint8)
        img = Image.fromarray(np.stack([np.tile(px, (size, 1)), np.tile(px[:, None], (1, size)),
                                        np.full((size, size), 160, np.uint8)], -1))
        d = ImageDraw.Draw(img)
        d.ellipse([size * 0.35, size * 0.15, size * 0.65, size * 0.5], fill=(230, 190, 160))
        d.rectangle([size * 0.25, size * 0.5, size * 0.75, size], fill=(40, 60, 120))
    name = "musev_demo_condition.png"
    img.save(os.path.join(folder_paths.get_input_directory(), name))
    return name


def prompt(m, image, frames, size, steps, fps):
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": m["checkpoint"]}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": m["vae"]}},
        "clipv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": m["clip_vision"]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "motion": {"class_type": "LoadMuseVMotion", "inputs": {"model": ["ckpt", 0], "motion_model": m["motion"],
                                                               "frame_rate": 8.0, "temporal_layers": True}},
        "ip": {"class_type": "MuseVIPAdapter", "inputs": {"model": ["motion", 0], "clip_vision": ["clipv", 0],
                                                          "image": ["img", 0], "image_proj": m["image_proj"],
                                                          "scale": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "ref": {"class_type": "MuseVReferenceNet", "inputs": {"model": ["ip", 0], "referencenet": m["referencenet"],
                                                              "vae": ["vae", 0], "image": ["img", 0]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text":
                "(masterpiece, best quality, highres:1), (1girl, solo:1), (eye blinks:1.8), (head wave:1.3)"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text":
                "(worst quality:2), (low quality:2), lowres, ((monochrome)), ((grayscale)), bad hands"}},
        "sample": {"class_type": "ParallelDenoiseSampler", "inputs": {
            "model": ["ref", 0], "positive": ["pos", 0], "negative": ["neg", 0], "frames": frames, "width": size,
            "height": size, "context_frames": 12, "context_overlap": 4, "context_schedule": "uniform_v2",
            "context_batch_size": 1, "noise_type": "video_fusion", "w_ind_noise": 0.5, "img_weight": 0.001,
            "seed": 1234, "steps": steps, "cfg": 3.5, "sampler_name": "euler", "scheduler": "musev_linspace",
            "include_condition_frames": True, "vision_image": ["img", 0], "vae": ["vae", 0]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "webp": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["decode", 0], "filename_prefix": "musev_demo",
                                                              "fps": float(fps), "lossless": False, "quality": 90,
                                                              "method": "default"}},
        "video": {"class_type": "CreateVideo", "inputs": {"images": ["decode", 0], "fps": float(fps)}},
        "save": {"class_type": "SaveVideo", "inputs": {"video": ["video", 0], "filename_prefix": "musev_demo",
                                                       "format": "mp4", "codec": "h264"}},
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", help="condition image (default: a synthetic one)")
    ap.add_argument("--frames", type=int, default=None, help="frames to generate (default 24; 12 with stand-ins)")
    ap.add_argument("--size", type=int, default=None, help="width = height in pixels (default 512; 128 with stand-ins)")
    ap.add_argument("--steps", type=int, default=None, help="steps (default 10; 2 with stand-ins)")
    ap.add_argument("--models", help="a ComfyUI models folder with the released files (else stand-ins)")
    ap.add_argument("--out", default=os.path.join(PACK_DIR, "demo-output"), help="where to copy the results")
    a = ap.parse_args()
    srv = start_comfy(a.models)
    import shutil
    import execution
    import folder_paths
    if a.models:
        names, frames, size, steps = REAL, a.frames or 24, a.size or 512, a.steps or 10
    else:
        sys.path.insert(0, os.path.join(PACK_DIR, "tests"))
        from standins import make_standins
        s = make_standins(folder_paths.models_dir)
        names = {"checkpoint": s.checkpoint, "vae": s.vae, "clip_vision": s.clip_vision,
                 "motion": s.motion["musev_referencenet"], "referencenet": s.referencenet,
                 "image_proj": s.image_proj["musev_referencenet"]}
        frames, size, steps = a.frames or 12, a.size or 128, a.steps or 2
        print("demo: no --models given: using tiny random stand-in weights (the video will be noise)")
    p = prompt(names, condition_image(a.image, size), frames, size, steps, 12)
    ok, err, outputs, node_errors = asyncio.run(execution.validate_prompt("demo", p, None))
    if not ok:
        sys.exit(f"demo: invalid prompt: {err} {node_errors}")
    compat = sys.modules[PACK_DIR.replace(".", "_x_") + ".nodes.compat"]   # the pack, as ComfyUI loaded it
    ex = compat.prompt_executor(srv)
    ex.execute(p, "demo", {}, outputs)
    if not ex.success:
        for kind, data in ex.status_messages:
            if kind == "execution_error":
                sys.exit(f"demo failed in {data.get('node_type')}: {data.get('exception_message')}")
        sys.exit("demo failed")
    os.makedirs(a.out, exist_ok=True)
    out_dir = folder_paths.get_output_directory()
    saved = []
    for root, _, files in os.walk(out_dir):
        for fn in sorted(files):
            if fn.startswith("musev_demo"):
                shutil.copy(os.path.join(root, fn), a.out)
                saved.append(os.path.join(a.out, fn))
    print(f"demo: {frames} frames + 1 condition frame at {size}x{size}, {steps} steps. Saved:")
    for path in sorted(saved):
        print("  ", path)


if __name__ == "__main__":
    main()
