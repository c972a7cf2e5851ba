"""Image -> MuseV video (the `musev_referencenet` model: IP-Adapter + ReferenceNet + visual-condition
parallel denoising), run by ComfyUI's own executor with this pack's nodes, decoded and saved as an
animated WEBP and an MP4.  Start it with scripts/demo.sh (which prepares the Python first).

Model files (--models DIR): DIR is either a ComfyUI models folder with MuseV's Hugging Face repo
cloned into DIR/musev/ (e.g. ComfyUI/models), or the clone of huggingface.co/TMElyralab/MuseV
itself.  The files are used as they are downloaded: no renaming, no conversion.  Missing files are
listed (what, where it goes, where to get it) and the demo stops with exit code 3 before anything
is installed or loaded.

Without --models, tiny random stand-ins in the same layout and formats run the same graph (the
video is noise): this proves the install, not the model.
"""
import argparse
import importlib.util
import os
import sys
import time

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE_DIR = os.environ.get("MUSEV_CACHE_DIR") or os.path.join(PACK_DIR, ".cache")
JOB = "image_to_video"
EXIT_MISSING = 3
T0 = time.monotonic()

# what the user cannot act on, kept out of the console (it stays in the log file)
QUIET = ("User settings have been changed to be stored on the server",
         "For multi-user setups add the --multi-user",
         "clip missing: ['text_projection.weight']",     # SD1.5 text encoders have no projection (harmless)
         "!!! Exception during processing", "Traceback (most recent call last)")


def say(msg=""):
    print(f"[musev-demo] {msg}" if msg else "", flush=True)


def seconds(t):
    return f"{t:.1f} s" if t < 120 else f"{int(t // 60)} min {int(t % 60)} s"


def du(path):
    """Size of a file tree in bytes (hard links once)."""
    total, seen = 0, set()
    for dirpath, _, files in os.walk(path):
        for fn in files:
            try:
                st = os.stat(os.path.join(dirpath, fn))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def gb(n):
    # binary units, as du -h (which the cache listing at the end uses) prints them
    return f"{n / 2 ** 30:.1f} GiB" if n >= 2 ** 27 else f"{n / 2 ** 20:.0f} MiB"


def model_table():
    path = os.path.join(PACK_DIR, "nodes", "model_table.py")
    spec = importlib.util.spec_from_file_location("musev_model_table", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def musev_root(models):
    """(models/musev folder, what DIR was taken for)."""
    models = os.path.abspath(os.path.expanduser(models))
    if os.path.isdir(os.path.join(models, "musev")):
        return os.path.join(models, "musev"), "a ComfyUI models folder with MuseV's files in musev/"
    if any(os.path.exists(os.path.join(models, d)) for d in ("motion", "t2i", "vae", "IP-Adapter")):
        return models, "a clone of TMElyralab/MuseV"
    return os.path.join(models, "musev"), "a ComfyUI models folder, no musev/ in it yet"


def check_models(models):
    """Print what is missing; return True when every file of the job is there."""
    mt = model_table()
    root, taken_as = musev_root(models)
    lines, missing = mt.missing_report(mt.JOBS[JOB], {"musev": root}, "image-to-video")
    if not missing:
        say(f"model files: all {len(mt.JOBS[JOB])} found in {root} ({taken_as})")
        return True
    say(f"--models {models}: taken as {taken_as}")
    for line in lines:
        print("  " + line if line else "", flush=True)
    print(flush=True)
    say("then run the demo again with the same --models (exit code 3: model files missing)")
    return False


def needed_files_text():
    mt = model_table()
    rows = [f"  {mt.get(k).name:<56} {mt.get(k).what}" for k in mt.JOBS[JOB]]
    return "\n".join(rows)


def parse(argv=None):
    ap = argparse.ArgumentParser(
        prog="scripts/demo.sh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("Files the demo needs, relative to models/musev/ (= the root of MuseV's HF repo):\n"
                f"{needed_files_text()}\n\n"
                "Caches (kept per checkout; delete them to reclaim the space):\n"
                f"  {os.path.join(PACK_DIR, '.venv')}  Python packages, only when no ComfyUI Python was found\n"
                f"  {os.path.join(CACHE_DIR, 'standins')}  stand-in weights (about 4.3 GiB), only without --models\n"
                f"  {os.path.join(CACHE_DIR, 'demo')}  the last run's ComfyUI log\n"
                "Inside ComfyUI/custom_nodes/<pack> the demo uses that ComfyUI and its Python.\n\n"
                "Exit codes: 0 done, 1 the run failed, 2 bad arguments, 3 model files missing."))
    ap.add_argument("--models", metavar="DIR", help="ComfyUI models folder with musev/ inside, or the MuseV clone "
                                                    "itself (default: tiny random stand-ins)")
    ap.add_argument("--image", help="condition image (default: a synthetic portrait)")
    ap.add_argument("--frames", type=int, help="frames after the condition frame (default 12 = one window)")
    ap.add_argument("--width", type=int, help="pixels, a multiple of 64 (default 512; 128 with stand-ins)")
    ap.add_argument("--height", type=int, help="pixels, a multiple of 64 (default 512; 128 with stand-ins)")
    ap.add_argument("--steps", type=int, help="denoising steps (default 10, MuseV's; 2 with stand-ins)")
    ap.add_argument("--seed", type=int, default=1234, help="noise seed (default 1234)")
    ap.add_argument("--out", default=os.path.join(PACK_DIR, "demo-output"), help="where the videos are copied "
                                                                                  "(default: demo-output/)")
    ap.add_argument("--check-models", action="store_true",
                    help="only check --models DIR and exit (0, or 3 when files are missing)")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------------------------
# ComfyUI, in this process, its logging sent to a file

def setup_logging(log_path):
    import logging
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    file_handler = logging.FileHandler(log_path, mode="w", encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    console = logging.StreamHandler(sys.stdout)

    class ConsoleFormat(logging.Formatter):
        def format(self, record):
            ours = record.name.startswith(("comfyui-musev", "musev"))
            level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
            return f"      [{'musev' if ours else 'comfyui'}] {level}{record.getMessage()}"
    console.setFormatter(ConsoleFormat())

    class ConsoleFilter(logging.Filter):
        quiet = True            # during start-up everything goes to the file only

        def filter(self, record):
            if self.quiet:
                return False
            ours = record.name.startswith(("comfyui-musev", "musev"))
            if record.levelno < (logging.INFO if ours else logging.WARNING) or record.name == "py.warnings":
                return False
            msg = record.getMessage()
            return not any(q in msg for q in QUIET)

    flt = ConsoleFilter()
    console.addFilter(flt)
    logging.basicConfig(level=logging.INFO, handlers=[file_handler, console], force=True)
    logging.captureWarnings(True)
    return flt


def start_comfy(musev_dirs, console_filter):
    path = os.environ.get("COMFYUI_PATH")
    if not path or not os.path.isfile(os.path.join(path, "nodes.py")):
        sys.exit("demo: COMFYUI_PATH is not a ComfyUI tree (start the demo with scripts/demo.sh)")
    sys.path.insert(0, path)
    import asyncio
    import atexit
    import shutil
    import tempfile
    from comfy.cli_args import args
    import torch
    args.cpu = not torch.cuda.is_available()
    args.base_directory = tempfile.mkdtemp(prefix="musev-demo-")
    atexit.register(shutil.rmtree, args.base_directory, True)
    import utils  # noqa: F401
    import folder_paths
    for d in musev_dirs:
        folder_paths.add_model_folder_path("musev", d)
    import nodes
    import server
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = server.PromptServer(loop)
    failed = loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)) or []
    ok = loop.run_until_complete(nodes.load_custom_node(PACK_DIR))
    console_filter.quiet = False
    if not ok:
        sys.exit(f"demo: the pack failed to import into ComfyUI (traceback in {LOG_PATH})")
    device = "GPU " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    import comfyui_version
    say(f"ComfyUI {comfyui_version.__version__} ({path}) on {device}; its log: {LOG_PATH}")
    if failed:
        say(f"  ComfyUI could not import {len(failed)} of its optional node files ({', '.join(sorted(failed))}), "
            "most often audio nodes without a working torchaudio. This demo does not use them; ComfyUI's "
            "'pip install -r requirements.txt' advice for it is in the log.")
    return srv


LOG_PATH = os.path.join(CACHE_DIR, "demo", "comfyui.log")


class Progress:
    """Stage lines per node and ComfyUI's own progress bars (the ProgressBar hook the UI uses)."""

    def __init__(self, prompt, labels):
        self.prompt, self.labels = prompt, labels
        self.node, self.t_node, self.last = None, 0.0, (None, 0.0)
        self.bar = (None, 0, 0.0)          # (total, last value, start) of the progress bar being shown
        self.tty = sys.stdout.isatty()

    def _end_node(self):
        if self.node is not None:
            if self.tty:
                print("\r\033[K", end="")
            print(f"      {self._label(self.node)}: {seconds(time.monotonic() - self.t_node)}", flush=True)
        self.node = None

    def _label(self, node_id):
        cls = self.prompt.get(str(node_id), {}).get("class_type", node_id)
        return f"{self.labels.get(str(node_id), cls)} ({cls})"

    def event(self, event, data):
        if event == "executing":
            node = data.get("node") if isinstance(data, dict) else data
            if node != self.node:
                self._end_node()
            if node is not None:
                self.node, self.t_node = node, time.monotonic()
        elif event == "execution_cached" and isinstance(data, dict) and data.get("nodes"):
            print(f"      cached: {', '.join(self._label(n) for n in data['nodes'])}", flush=True)

    def hook(self, value, total, preview=None, *args, **kwargs):
        if not total or total <= 1:
            return
        now = time.monotonic()
        b_total, b_value, b_start = self.bar
        if total != b_total or value < b_value:      # a new bar (a node may run several: ReferenceNet, steps)
            b_start = self.last[1] if b_total is not None and self.last[1] > self.t_node else self.t_node
        self.bar = (total, value, b_start)
        elapsed = now - b_start
        eta = f", ~{seconds(elapsed / value * (total - value))} left" if 0 < value < total else ""
        line = f"      {self._label(self.node) if self.node else 'progress'}: {value}/{total} ({seconds(elapsed)}{eta})"
        if self.tty:
            print("\r\033[K" + line, end="", flush=True)
        elif value == total or value == 1 or now - self.last[1] >= 10:
            print(line, flush=True)
        self.last = (value, now)

    def install(self, srv):
        import comfy.utils
        send = srv.send_sync

        def send_sync(event, data, sid=None):
            try:
                self.event(event, data)
            except Exception:  # noqa: BLE001  (a display problem must not stop the run)
                pass
            return send(event, data, sid)
        srv.send_sync = send_sync
        comfy.utils.set_progress_bar_global_hook(self.hook)

    def finish(self):
        self._end_node()


# ------------------------------------------------------------------------------------------------
# the graph

def condition_image(path, width, height):
    import numpy as np
    from PIL import Image, ImageDraw
    import folder_paths
    if path:
        img = Image.open(path).convert("RGB")
    else:   # a simple synthetic "portrait": gradient background, head and shoulders
        w, h = width, height
        img = Image.fromarray(np.stack([np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1)),
                                        np.tile(np.linspace(0, 255, h, dtype=np.uint8)[:, None], (1, w)),
                                        np.full((h, w), 160, np.uint8)], -1))
        d = ImageDraw.Draw(img)
        d.ellipse([w * 0.35, h * 0.15, w * 0.65, h * 0.5], fill=(230, 190, 160))
        d.rectangle([w * 0.25, h * 0.5, w * 0.75, h], fill=(40, 60, 120))
    name = "musev_demo_condition.png"
    img.save(os.path.join(folder_paths.get_input_directory(), name))
    return name


LABELS = {"ckpt": "SD1.5 base", "vae": "VAE", "clipv": "CLIP vision", "img": "condition image",
          "motion": "MuseV motion UNet", "ip": "IP-Adapter", "ref": "ReferenceNet", "pos": "prompt",
          "neg": "negative prompt", "sample": "parallel denoising", "decode": "VAE decode",
          "webp": "animated WEBP", "video": "video", "save": "MP4"}


def prompt(names, image, frames, width, height, steps, seed, fps=12):
    """The image-to-video graph of example_workflows/musev_image_to_video.json, with the models of
    nodes/model_table.py (``names``: table key -> widget value)."""
    return {
        "ckpt": {"class_type": "MuseVCheckpointLoader", "inputs": {"ckpt_name": names["t2i_majicmix"]}},
        "vae": {"class_type": "MuseVVAELoader", "inputs": {"vae_name": names["vae"]}},
        "clipv": {"class_type": "MuseVCLIPVisionLoader", "inputs": {"clip_name": names["clip_vision"]}},
        "img": {"class_type": "LoadImage", "inputs": {"image": image}},
        "motion": {"class_type": "LoadMuseVMotion", "inputs": {"model": ["ckpt", 0],
                                                               "motion_model": names["motion_referencenet"],
                                                               "frame_rate": 8.0, "temporal_layers": True}},
        "ip": {"class_type": "MuseVIPAdapter", "inputs": {"model": ["motion", 0], "clip_vision": ["clipv", 0],
                                                          "image": ["img", 0],
                                                          "image_proj": names["image_proj_referencenet"],
                                                          "scale": 1.0, "start_percent": 0.0, "end_percent": 1.0}},
        "ref": {"class_type": "MuseVReferenceNet", "inputs": {"model": ["ip", 0], "referencenet": names["referencenet"],
                                                              "vae": ["vae", 0], "image": ["img", 0]}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text":
                "(masterpiece, best quality, highres:1), (1girl, solo:1), (eye blinks:1.8), (head wave:1.3)"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text":
                "(worst quality:2), (low quality:2), lowres, ((monochrome)), ((grayscale)), bad hands"}},
        "sample": {"class_type": "ParallelDenoiseSampler", "inputs": {
            "model": ["ref", 0], "positive": ["pos", 0], "negative": ["neg", 0], "frames": frames, "width": width,
            "height": height, "context_frames": 12, "context_overlap": 4, "context_schedule": "uniform_v2",
            "context_batch_size": 1, "noise_type": "video_fusion", "w_ind_noise": 0.5, "img_weight": 0.001,
            "seed": seed, "steps": steps, "cfg": 3.5, "sampler_name": "euler", "scheduler": "musev_linspace",
            "include_condition_frames": True, "vision_image": ["img", 0], "vae": ["vae", 0]}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "webp": {"class_type": "SaveAnimatedWEBP", "inputs": {"images": ["decode", 0], "filename_prefix": "musev_demo",
                                                              "fps": float(fps), "lossless": False, "quality": 90,
                                                              "method": "default"}},
        "video": {"class_type": "CreateVideo", "inputs": {"images": ["decode", 0], "fps": float(fps)}},
        "save": {"class_type": "SaveVideo", "inputs": {"video": ["video", 0], "filename_prefix": "musev_demo",
                                                       "format": "mp4", "codec": "h264"}},
    }


def format_node_errors(p, node_errors):
    """ComfyUI's validation result as lines a person reads (no dict dumps)."""
    lines = []
    for node_id, info in (node_errors or {}).items():
        cls = info.get("class_type") or p.get(node_id, {}).get("class_type", "?")
        for e in info.get("errors", []):
            extra = e.get("extra_info") or {}
            what = extra.get("input_name")
            detail = e.get("details") or e.get("message", "")
            if e.get("type") == "value_not_in_list" and what:
                value = p.get(node_id, {}).get("inputs", {}).get(what)
                n = len((extra.get("input_config") or [[]])[0] or [])
                detail = f"{value!r} is not one of the {n} files ComfyUI lists for this input"
            lines.append(f"  {LABELS.get(node_id, node_id)} ({cls}){f', input {what!r}' if what else ''}: {detail}")
    return lines


def run(a):
    stages = 3 + (0 if a.models else 1)
    stage = [0]

    def begin(title):
        stage[0] += 1
        say(f"({stage[0]}/{stages}) {title}")
        return time.monotonic()

    if a.models:
        root, _ = musev_root(a.models)
        if not check_models(a.models):
            return EXIT_MISSING
        dirs = [root]
    else:
        dirs = []
    t = begin("starting ComfyUI")
    console_filter = setup_logging(LOG_PATH)
    srv = start_comfy(dirs, console_filter)
    say(f"    ComfyUI ready in {seconds(time.monotonic() - t)}")
    import folder_paths
    if not a.models:
        t = begin("stand-in weights (random, in MuseV's released layout and formats: reduced UNets and MuseV parts; the CLIP text "
                  "and vision encoders at full size, which ComfyUI needs to recognise them)")
        os.environ.setdefault("MUSEV_STANDIN_CACHE", os.path.join(CACHE_DIR, "standins"))
        sys.path.insert(0, os.path.join(PACK_DIR, "tests"))
        try:
            import standins
        except ImportError as e:
            say(f"stand-ins need this checkout's tests/ folder ({e}); pass --models DIR with MuseV's files")
            return 1
        root = standins.released_root()
        folder_paths.add_model_folder_path("musev", root)
        say(f"    {os.environ['MUSEV_STANDIN_CACHE']}: {gb(du(os.environ['MUSEV_STANDIN_CACHE']))} "
            f"(kept for the next run; {seconds(time.monotonic() - t)}). The video will be noise.")
        frames, width, height, steps = a.frames or 12, a.width or 128, a.height or 128, a.steps or 2
    else:
        frames, width, height, steps = a.frames or 12, a.width or 512, a.height or 512, a.steps or 10
    mt = model_table()
    names = {m.key: m.name for m in mt.MODELS}
    p = prompt(names, condition_image(a.image, width, height), frames, width, height, steps, a.seed)
    t = begin(f"image -> video: {frames} frames + 1 condition frame at {width}x{height}, {steps} steps, seed {a.seed}")
    import asyncio
    import execution
    ok, err, outputs, node_errors = asyncio.run(execution.validate_prompt("demo", p, None))
    if not ok:
        say(f"ComfyUI refused the graph: {(err or {}).get('message', '')} {(err or {}).get('details', '')}".rstrip())
        for line in format_node_errors(p, node_errors):
            print(line, flush=True)
        return 1
    progress = Progress(p, LABELS)
    progress.install(srv)
    compat = sys.modules[PACK_DIR.replace(".", "_x_") + ".nodes.compat"]   # the pack, as ComfyUI loaded it
    ex = compat.prompt_executor(srv)
    ex.execute(p, "demo", {"client_id": "musev-demo"}, outputs)   # a client: the executor reports node starts
    progress.finish()
    if not ex.success:
        for kind, data in ex.status_messages:
            if kind == "execution_error":
                node = data.get("node_id")
                say(f"failed in {LABELS.get(node, node)} ({data.get('node_type')}): {data.get('exception_message')}")
                say(f"traceback: {LOG_PATH}")
                return 1
        say(f"failed (see {LOG_PATH})")
        return 1
    say(f"    done in {seconds(time.monotonic() - t)}")
    t = begin("saving")
    import shutil
    os.makedirs(a.out, exist_ok=True)
    saved = []
    for dirpath, _, files in os.walk(folder_paths.get_output_directory()):
        for fn in sorted(files):
            if fn.startswith("musev_demo"):
                shutil.copy(os.path.join(dirpath, fn), a.out)
                saved.append(os.path.join(a.out, fn))
    for path in sorted(saved):
        say(f"    {path}")
    say(f"total {seconds(time.monotonic() - T0)} (this script; scripts/demo.sh also reports the set-up)")
    return 0


def main():
    a = parse()
    if a.check_models:
        if not a.models:
            return 0
        return 0 if check_models(a.models) else EXIT_MISSING
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
