"""Side by side with the packs users already have (issue 11 §6): AnimateDiff-Evolved (ADE),
Advanced-ControlNet (ACN), IPAdapter_plus (IPA) and VideoHelperSuite (VHS) installed in ONE real
ComfyUI server with this pack, every combination run through /prompt on the stand-in models.

The packs' code is never in this repository: ``bash scripts/side_by_side.sh`` fetches them (pinned
commits, the newest that imports on each ComfyUI version) into
``$TMPDIR/musev-thirdparty/<ComfyUI version>/custom_nodes`` (or ``MUSEV_THIRDPARTY_NODES``); this
module SKIPS, loudly, when that folder is missing (CI has no GitHub).

What every combination does (``nodes/interop.py``):
* ADE motion model / evolved sampling and MuseV, either order: refused with a clear MuseVInputError,
  at LoadMuseVMotion (ADE first), at MuseV's own nodes (ADE in between) or at the start of sampling
  (ADE between our nodes and a KSampler).  The base MODEL is untouched afterwards.
* IPA with MuseV, either order: both adapters act.  Where MuseV's referencenet variants have their
  own IP-Adapter, MuseV's attention adds IPA's terms; the two orders give the same video; IPA at
  weight 0 gives MuseV's video (to 1e-5, see ATOL; the added term is exactly 0); IPA at weight 1
  changes it.
* ACN's ControlNetAdvanced with MuseV's windows: the same video as core's ControlNet (per-window hint
  slicing applies); its per-frame masks, latent keyframes and Reference ControlNet are refused at the
  start of sampling.
* VHS: its video loader feeds MuseV (condition frame, init latents, per-frame ControlNet hints), its
  batched VAE nodes, latent splitter and video combiner take MuseV's output.

Stand-ins made here (tiny, random): an AnimateDiff motion module in ADE's key layout (ADE builds
its modules at SD1.5's real widths, 320/640/1280, whatever the checkpoint: the file holds one small
random row per tensor, broadcast, so it is a few hundred kB on disk and ~0.5 GB in RAM while loaded),
and an SD1.5 IP-Adapter (image_proj + 16 to_k_ip/to_v_ip at the stand-in UNet's widths) for the
stand-in ViT-L CLIP vision.
"""
import os
import re
import shutil
import tempfile
import time
import uuid

import pytest
import torch

from comfy_server import ComfyServer, ServerError
from conftest import ARTIFACTS_DIR, _HOST_SKIP_NOTE, find_comfyui_path

from api_prompts import SIZE, loaders, sampler_inputs

PACKS = {   # folder name -> a node it must register
    "ComfyUI-AnimateDiff-Evolved": "ADE_UseEvolvedSampling",
    "ComfyUI-Advanced-ControlNet": "ACN_AdvancedControlNetApply_v2",
    "ComfyUI_IPAdapter_plus": "IPAdapterAdvanced",
    "ComfyUI-VideoHelperSuite": "VHS_VideoCombine",
}
ADE_FILE = "musev_standin_ade_motion.pth"
IPA_FILE = "musev_standin_ip-adapter_sd15.safetensors"
VIDEO = "source_video.mp4"          # written by the server's input/ set-up (tests/workflow_inputs.py)
IMAGE = "example.png"
# Equal videos are compared to 1e-5 (latents of magnitude ~10), not bit for bit: ComfyUI's CPU attention
# (sub-quadratic) picks its chunk sizes from the free memory at each call, so one computation can round
# differently from one call to the next.
ATOL = 1e-5
ROWS = []                           # the results table: (pack, combination, order, outcome)


# ------------------------------------------------------------------------------------------------
# Where the packs are

def host_version(path):
    try:
        with open(os.path.join(path, "comfyui_version.py")) as f:
            return re.search(r"__version__\s*=\s*['\"]([^'\"]+)", f.read()).group(1)
    except (OSError, AttributeError):
        return "unknown"


def packs_folder(comfy_path):
    env = os.environ.get("MUSEV_THIRDPARTY_NODES", "")
    if env:
        return env
    return os.path.join(tempfile.gettempdir(), "musev-thirdparty", host_version(comfy_path), "custom_nodes")


def _missing_packs():
    path = find_comfyui_path()
    if path is None:
        return None, []          # no host: these tests skip like every host test (conftest)
    folder = packs_folder(path)
    return folder, [p for p in PACKS if not os.path.isdir(os.path.join(folder, p))]


PACKS_DIR, MISSING = _missing_packs()
NOT_RUN = (f"side-by-side tests with the real packs NOT RUN: {', '.join(MISSING)} not in {PACKS_DIR}; run "
           "`bash scripts/side_by_side.sh` (fetches them, needs GitHub) or set MUSEV_THIRDPARTY_NODES to a folder "
           "holding them (the contract tests in that file still run).")
if MISSING:
    _HOST_SKIP_NOTE.append(NOT_RUN)


def needs_packs(test):
    """The real-pack tests exist only where the packs are (CI has no GitHub): there, instead of a
    row of skipped tests, the run ends with one loud line saying they did not run and why."""
    return None if MISSING else test


def _skip(msg):
    _HOST_SKIP_NOTE.append(msg)
    pytest.skip(msg)


# ------------------------------------------------------------------------------------------------
# Stand-ins of the other packs' model files

def ade_motion_standin(path, widths=(320, 640, 1280, 1280), pe_len=32, seed=0):
    """An AnimateDiff motion module in ADE's key layout: down blocks (2 modules each), one
    temporal self-attention block per module (ADE reads the count from the keys), positional
    encoding of 32 frames.  Each tensor is one random row broadcast (torch.save keeps the small
    storage); ADE loads it as a full-width module."""
    gen = torch.Generator().manual_seed(seed)

    def t(*shape):
        row = torch.randn(shape[-1], generator=gen) * 0.02
        return row.expand(*shape)

    sd = {}
    for b, c in enumerate(widths):
        for m in range(2):
            p = f"down_blocks.{b}.motion_modules.{m}.temporal_transformer."
            blk = p + "transformer_blocks.0."
            sd.update({p + "norm.weight": t(c) + 1, p + "norm.bias": t(c), p + "proj_in.weight": t(c, c),
                       p + "proj_in.bias": t(c), p + "proj_out.weight": t(c, c), p + "proj_out.bias": t(c),
                       blk + "attention_blocks.0.pos_encoder.pe": t(1, pe_len, c),
                       blk + "norms.0.weight": t(c) + 1, blk + "norms.0.bias": t(c),
                       blk + "ff.net.0.proj.weight": t(8 * c, c), blk + "ff.net.0.proj.bias": t(8 * c),
                       blk + "ff.net.2.weight": t(c, 4 * c), blk + "ff.net.2.bias": t(c),
                       blk + "ff_norm.weight": t(c) + 1, blk + "ff_norm.bias": t(c)})
            for name in ("to_q", "to_k", "to_v", "to_out.0"):
                sd[blk + f"attention_blocks.0.{name}.weight"] = t(c, c)
            sd[blk + "attention_blocks.0.to_out.0.bias"] = t(c)
    sd = {k: (v if v.stride() and 0 in v.stride() else v.contiguous()) for k, v in sd.items()}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(sd, path)
    return path


def ipadapter_standin(path, clip_dim, context_dim=768, block_width=320, tokens=4, seed=0):
    """An SD1.5 IP-Adapter (IPAdapter_plus' .safetensors layout) for a CLIP vision of ``clip_dim``
    image_embeds and a UNet whose attention blocks are ``block_width`` wide (the stand-in's)."""
    from safetensors.torch import save_file
    gen = torch.Generator().manual_seed(seed)
    sd = {"image_proj.proj.weight": torch.randn(tokens * context_dim, clip_dim, generator=gen) / clip_dim ** 0.5,
          "image_proj.proj.bias": torch.randn(tokens * context_dim, generator=gen) * 0.02,
          "image_proj.norm.weight": torch.ones(context_dim), "image_proj.norm.bias": torch.zeros(context_dim)}
    for i in range(16):
        for kv in ("k", "v"):
            sd[f"ip_adapter.{2 * i + 1}.to_{kv}_ip.weight"] = torch.randn(block_width, context_dim, generator=gen) * 0.05
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in sd.items()}, path)
    return path


# ------------------------------------------------------------------------------------------------
# The server

class Env:
    def __init__(self, server, standins, version, packs):
        self.srv = server
        self.s = standins
        self.version = version
        self.packs = packs
        self.info = {}

    def node(self, name):
        if name not in self.info:
            self.info[name] = self.srv.object_info(name)
        return self.info[name]


@pytest.fixture(scope="module")
def env(comfy_host):
    comfy_path = find_comfyui_path()
    folder = packs_folder(comfy_path)
    version = host_version(comfy_path)
    missing = [p for p in PACKS if not os.path.isdir(os.path.join(folder, p))]
    if missing:
        _skip(f"side-by-side tests SKIPPED: the other packs ({', '.join(missing)}) are not in {folder}: run "
              "`bash scripts/side_by_side.sh` (needs GitHub) or set MUSEV_THIRDPARTY_NODES to a folder holding them")
    base = tempfile.mkdtemp(prefix="musev-side-by-side-")
    os.makedirs(os.path.join(base, "custom_nodes"))
    for p in PACKS:
        os.symlink(os.path.abspath(os.path.join(folder, p)), os.path.join(base, "custom_nodes", p),
                   target_is_directory=True)
    srv = ComfyServer(comfy_path, base_dir=base)
    standins = srv.standins()
    models = os.path.join(base, "models")
    ade_motion_standin(os.path.join(models, "animatediff_models", ADE_FILE))
    ipadapter_standin(os.path.join(models, "ipadapter", IPA_FILE), standins.clip_dim)
    try:
        srv.start()
    except ServerError as e:
        srv.stop(keep_dir=True)
        pytest.fail(f"could not start ComfyUI with the other packs: {e}")
    e = Env(srv, standins, version, folder)
    yield e
    srv.stop(keep_dir=False)
    shutil.rmtree(base, ignore_errors=True)
    _write_table(e)


def _write_table(e):
    if not ROWS:
        return
    lines = [f"# Side by side on ComfyUI {e.version}", "", f"packs: {e.packs}", "",
             "| pack | combination | order | result |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in ROWS]
    text = "\n".join(lines) + "\n"
    os.makedirs(ARTIFACTS_DIR, exist_ok=True)
    with open(os.path.join(ARTIFACTS_DIR, f"side_by_side_{e.version}.md"), "w") as f:
        f.write(text)
    print("\n" + text)


def record(pack, combination, order, outcome):
    ROWS.append((pack, combination, order, outcome))


def run(env, prompt, timeout=900):
    """-> ("success", entry) | ("rejected", body) | ("failed", execution_error).  Long HTTP timeouts:
    on a busy 2-core machine ComfyUI's event loop can take a while to answer during sampling."""
    prompt_id = str(uuid.uuid4())
    status, body = env.srv.post_json("/prompt", {"prompt": prompt, "client_id": "musev-side-by-side",
                                                 "prompt_id": prompt_id}, timeout=300)
    if status != 200:
        return "rejected", body
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = env.srv.get_json(f"/history/{prompt_id}", timeout=300)
        except (TimeoutError, ServerError):
            status, body = 0, {}
        entry = body.get(prompt_id) if status == 200 else None
        if entry is not None and (entry.get("status") or {}).get("completed") is not None:
            break
        assert env.srv.alive(), f"ComfyUI died while running the prompt; log:\n{env.srv.log_tail()}"
        assert time.monotonic() < deadline, f"prompt not finished after {timeout} s"
        time.sleep(0.2)
    status = entry.get("status") or {}
    if status.get("status_str") == "success":
        return "success", entry
    errs = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
    return "failed", (errs[0] if errs else status)


def works(env, prompt):
    got, info = run(env, prompt)
    assert got == "success", f"expected the prompt to run, got {got}: {str(info)[:3000]}"
    return info


def refused(env, prompt, node_id, *needles):
    """The prompt fails in ``node_id`` with our MuseVInputError naming the problem (not a raw
    error from inside the other pack or torch); returns the message."""
    got, info = run(env, prompt)
    assert got == "failed", f"expected a refusal at {node_id}, got {got}: {str(info)[:2000]}"
    detail = f"{info.get('node_type')} {info.get('exception_type')}: {info.get('exception_message')}"
    assert info.get("node_id") == node_id, f"refused at the wrong node: {detail}"
    assert str(info.get("exception_type", "")).endswith("MuseVInputError"), \
        f"not our clear error: {detail}\n" + "".join(info.get("traceback", []))[-2000:]
    text = info["exception_message"]
    for needle in needles:
        assert re.search(needle, text, re.IGNORECASE), f"no {needle!r} in: {detail}"
    return text


def latent_of(env, entry, node="save"):
    from safetensors.torch import load_file
    saved = entry["outputs"][node]["latents"]
    return load_file(env.srv.output_path(saved[0]))["latent_tensor"]


_N = [0]


def prefix(tag):
    _N[0] += 1
    return f"sbs/{_N[0]:03d}_{tag}"


# ------------------------------------------------------------------------------------------------
# Prompt pieces

def base_prompt(env, variant="musev", model_from=("ckpt", 0)):
    p = loaders(env.s, variant)
    p["motion"]["inputs"]["model"] = list(model_from)
    p["image"] = {"class_type": "LoadImage", "inputs": {"image": IMAGE}}
    return p


def add_sampler(p, model=("motion", 0), save=True, **over):
    inputs = sampler_inputs(model=model, **over)
    inputs.setdefault("vision_image", ["image", 0])
    inputs.setdefault("vae", ["vae", 0])
    p["sampler"] = {"class_type": "ParallelDenoiseSampler", "inputs": inputs}
    if save:
        p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": prefix("pds")}}
    return p


def add_ksampler(p, model, frames=2):
    p["empty"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": frames}}
    p["ks"] = {"class_type": "KSampler", "inputs": {
        "model": list(model), "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["empty", 0],
        "seed": 1, "steps": 1, "cfg": 3.5, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["ks", 0], "filename_prefix": prefix("ks")}}
    return p


def add_ade(p, model, motion=True, context=False):
    """ADE gen2: Load AnimateDiff Model -> Apply AnimateDiff Model -> Use Evolved Sampling."""
    inputs = {"model": list(model), "beta_schedule": "autoselect"}
    if motion:
        p["ade_load"] = {"class_type": "ADE_LoadAnimateDiffModel", "inputs": {"model_name": ADE_FILE}}
        p["ade_apply"] = {"class_type": "ADE_ApplyAnimateDiffModelSimple", "inputs": {"motion_model": ["ade_load", 0]}}
        inputs["m_models"] = ["ade_apply", 0]
    if context:
        p["ade_ctx"] = {"class_type": "ADE_StandardStaticContextOptions",
                        "inputs": {"context_length": 2, "context_overlap": 1}}
        inputs["context_options"] = ["ade_ctx", 0]
    p["ade"] = {"class_type": "ADE_UseEvolvedSampling", "inputs": inputs}
    return ("ade", 0)


def add_clip_vision(env, p):
    p["cv"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": env.s.clip_vision}}


def add_musev_ipadapter(env, p, model, variant="musev_referencenet"):
    add_clip_vision(env, p)
    p["mip"] = {"class_type": "MuseVIPAdapter", "inputs": {
        "model": list(model), "clip_vision": ["cv", 0], "image": ["image", 0],
        "image_proj": env.s.image_proj[variant], "scale": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    return ("mip", 0)


def add_ipa(env, p, model, weight=1.0, key="ipa"):
    add_clip_vision(env, p)
    p["ipa_load"] = {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": IPA_FILE}}
    p[key] = {"class_type": "IPAdapterAdvanced", "inputs": {
        "model": list(model), "ipadapter": ["ipa_load", 0], "image": ["image", 0], "weight": weight,
        "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
        "embeds_scaling": "V only", "clip_vision": ["cv", 0]}}
    return (key, 0)


def add_video(p, frames):
    p["video"] = {"class_type": "VHS_LoadVideo", "inputs": {
        "video": VIDEO, "force_rate": 0, "custom_width": 0, "custom_height": 0, "frame_load_cap": frames,
        "skip_first_frames": 0, "select_every_nth": 1}}
    return ("video", 0)


def add_controlnet(env, p, kind, image, strength=1.0, **acn_optional):
    """Core ControlNetLoader + ControlNetApplyAdvanced, or ACN's loader + Apply Advanced ControlNet."""
    if kind == "core":
        p["cn"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": env.s.controlnet}}
        p["cn_apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": list(image),
            "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
    else:
        p["cn"] = {"class_type": "ACN_ControlNetLoaderAdvanced", "inputs": {"cnet": env.s.controlnet}}
        inputs = {"positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": list(image),
                  "strength": strength, "start_percent": 0.0, "end_percent": 1.0}
        inputs.update(acn_optional)
        p["cn_apply"] = {"class_type": "ACN_AdvancedControlNetApply_v2", "inputs": inputs}
    return ("cn_apply", 0), ("cn_apply", 1)


# ------------------------------------------------------------------------------------------------
# Import

@needs_packs
def test_all_packs_import_beside_musev(env):
    """One ComfyUI with the five packs: every one imports and registers its nodes (ours too)."""
    log = open(env.srv.log_path, encoding="utf-8", errors="replace").read()
    assert "IMPORT FAILED" not in log, log[-4000:]
    for pack, node in PACKS.items():
        env.node(node)
        record(pack, "imports beside comfyui-musev", "-", f"works: registers {node}")
    for node in ("LoadMuseVMotion", "ParallelDenoiseSampler", "MuseVIPAdapter"):
        env.node(node)


# ------------------------------------------------------------------------------------------------
# AnimateDiff-Evolved: refused in every order, never a raw error from inside sampling

ADE_NEEDLES = (r"AnimateDiff", r"MuseV is itself a video model", r"out of this MODEL's path")


@needs_packs
def test_reference_run_before(env):
    """MuseV alone (the figure later runs must reproduce: refusals leave the base MODEL untouched)."""
    p = add_sampler(base_prompt(env))
    env.reference = latent_of(env, works(env, p))
    record("(none)", "MuseV alone, ParallelDenoiseSampler", "-", "works (reference video)")


@needs_packs
@pytest.mark.parametrize("motion,context", [(True, False), (False, True)], ids=["motion_model", "evolved_sampling"])
def test_ade_before_musev_refused_at_load(env, motion, context):
    p = base_prompt(env)
    model = add_ade(p, ("ckpt", 0), motion=motion, context=context)
    p["motion"]["inputs"]["model"] = list(model)
    add_sampler(p)
    text = refused(env, p, "motion", "LoadMuseVMotion", *ADE_NEEDLES)
    what = "motion model (Apply AnimateDiff Model)" if motion else "Use Evolved Sampling + context options, no motion model"
    record("AnimateDiff-Evolved", what, "ADE -> LoadMuseVMotion",
           f"refused at LoadMuseVMotion: \"{text[:90]}...\"")


@needs_packs
@pytest.mark.parametrize("motion,context,sampler", [
    (True, False, "KSampler"), (False, True, "KSampler"), (True, False, "ParallelDenoiseSampler"),
    (True, False, "KSampler after MuseVContextWindows")],
    ids=["motion_model-KSampler", "evolved_sampling-KSampler", "motion_model-ParallelDenoiseSampler",
         "motion_model-MuseVContextWindows-KSampler"])
def test_musev_then_ade_refused(env, motion, context, sampler):
    p = base_prompt(env)
    model = ("motion", 0)
    if "MuseVContextWindows" in sampler:
        p["cw"] = {"class_type": "MuseVContextWindows", "inputs": {
            "model": ["motion", 0], "context_frames": 2, "context_overlap": 1, "context_schedule": "uniform_v2",
            "context_batch_size": 1, "noise_type": "video_fusion", "w_ind_noise": 0.5, "img_weight": 0.001}}
        model = ("cw", 0)
    model = add_ade(p, model, motion=motion, context=context)
    if sampler.startswith("KSampler"):
        add_ksampler(p, model)
        text = refused(env, p, "ks", r"start of sampling", r"after LoadMuseVMotion", *ADE_NEEDLES)
        where = "refused at the start of sampling (KSampler)"
    else:
        add_sampler(p, model=model)
        text = refused(env, p, "sampler", "ParallelDenoiseSampler", *ADE_NEEDLES)
        where = "refused at ParallelDenoiseSampler"
    what = "motion model" if motion else "Use Evolved Sampling + context options"
    chain = "LoadMuseVMotion -> " + ("MuseVContextWindows -> " if "MuseVContextWindows" in sampler else "") + \
        f"ADE -> {sampler.split()[0]}"
    record("AnimateDiff-Evolved", what, chain, f"{where}: \"{text[:80]}...\"")


@needs_packs
def test_ade_gen1_loader_after_musev_refused(env):
    p = base_prompt(env)
    p["ade1"] = {"class_type": "ADE_AnimateDiffLoaderGen1", "inputs": {
        "model": ["motion", 0], "model_name": ADE_FILE, "beta_schedule": "autoselect"}}
    add_ksampler(p, ("ade1", 0))
    text = refused(env, p, "ks", r"start of sampling", *ADE_NEEDLES)
    record("AnimateDiff-Evolved", "AnimateDiff Loader (gen1)", "LoadMuseVMotion -> ADE gen1 -> KSampler",
           f"refused at the start of sampling: \"{text[:60]}...\"")


@needs_packs
def test_reference_run_after_refusals(env):
    """After the refused prompts the same MuseV prompt gives the same video (base MODEL untouched)."""
    if getattr(env, "reference", None) is None:
        pytest.skip("the reference run did not run in this session")
    p = add_sampler(base_prompt(env))
    again = latent_of(env, works(env, p))
    diff = (again - env.reference).abs().max().item()
    assert diff <= ATOL, diff
    record("(none)", "MuseV alone again after the refusals", "-", f"works, same video as the first run (max |diff| {diff:.2g})")


# ------------------------------------------------------------------------------------------------
# IPAdapter_plus: composed with MuseV in either order

def _ipa_prompt(env, order, variant, weight=1.0, musev_ip=True):
    p = base_prompt(env, variant)
    if order == "none":
        model = ("motion", 0)
    elif order == "IPA first":
        model = add_ipa(env, p, ("ckpt", 0), weight)
        p["motion"]["inputs"]["model"] = list(model)
        model = ("motion", 0)
    else:
        model = add_ipa(env, p, ("motion", 0), weight)
    if musev_ip:
        model = add_musev_ipadapter(env, p, model, variant)
    return add_sampler(p, model=model)


@needs_packs
def test_ipadapter_plus_with_musev_referencenet(env):
    """MuseV's own IP-Adapter (musev_referencenet + MuseVIPAdapter) and IPAdapter_plus both act."""
    v = "musev_referencenet"
    alone = latent_of(env, works(env, _ipa_prompt(env, "none", v)))
    after = latent_of(env, works(env, _ipa_prompt(env, "IPA after", v)))
    first = latent_of(env, works(env, _ipa_prompt(env, "IPA first", v)))
    zero = latent_of(env, works(env, _ipa_prompt(env, "IPA after", v, weight=0.0)))
    diff = (after - alone).abs().max().item()
    assert diff > 1e-3, f"IPAdapter_plus after MuseV changed nothing (max |diff| {diff}): silently ignored"
    assert torch.allclose(first, after, rtol=0, atol=ATOL), (first - after).abs().max()
    zdiff = (zero - alone).abs().max().item()
    assert zdiff <= ATOL, zdiff
    record("IPAdapter_plus", "musev_referencenet + MuseVIPAdapter + IPAdapterAdvanced", "LoadMuseVMotion -> IPA",
           f"works: MuseV IP term + IPA terms (video changes by up to {diff:.3g}; IPA weight 0 = MuseV alone, "
           f"max |diff| {zdiff:.2g})")
    record("IPAdapter_plus", "musev_referencenet + MuseVIPAdapter + IPAdapterAdvanced", "IPA -> LoadMuseVMotion",
           f"works: same video as the other order (max |diff| {(first - after).abs().max().item():.2g})")


@needs_packs
def test_ipadapter_plus_with_plain_musev(env):
    """The plain musev variant has no IP layers of its own: IPAdapter_plus' patches run as they are."""
    v = "musev"
    alone = latent_of(env, works(env, _ipa_prompt(env, "none", v, musev_ip=False)))
    after = latent_of(env, works(env, _ipa_prompt(env, "IPA after", v, musev_ip=False)))
    first = latent_of(env, works(env, _ipa_prompt(env, "IPA first", v, musev_ip=False)))
    diff = (after - alone).abs().max().item()
    assert diff > 1e-3, f"IPAdapter_plus changed nothing on the musev variant (max |diff| {diff})"
    assert torch.allclose(first, after, rtol=0, atol=ATOL), (first - after).abs().max()
    record("IPAdapter_plus", "musev (no MuseV IP layers) + IPAdapterAdvanced", "either order",
           f"works: IPA's attention patches act (video changes by up to {diff:.3g}); both orders equal")


# ------------------------------------------------------------------------------------------------
# Advanced-ControlNet with MuseV's per-window hint slicing

FRAMES = 4


def _cn_prompt(env, kind, **acn_optional):
    p = base_prompt(env, "musev")
    hints = add_video(p, 1 + FRAMES)            # condition frame's hint first, then one per frame
    pos, neg = add_controlnet(env, p, kind, hints, **acn_optional)
    add_sampler(p, positive=list(pos), negative=list(neg), frames=FRAMES, context_frames=2, context_overlap=1)
    return p


@needs_packs
def test_acn_controlnet_matches_core_controlnet(env):
    core = latent_of(env, works(env, _cn_prompt(env, "core")))
    acn = latent_of(env, works(env, _cn_prompt(env, "acn")))
    p = base_prompt(env, "musev")
    add_sampler(p, frames=FRAMES, context_frames=2, context_overlap=1)
    none = latent_of(env, works(env, p))
    assert (core - none).abs().max() > 1e-3, "the ControlNet did nothing: the comparison would prove nothing"
    diff = (acn - core).abs().max().item()
    assert diff <= ATOL, f"ACN's ControlNetAdvanced differs from core's ControlNet by {diff}"
    record("Advanced-ControlNet", "ControlNetAdvanced, per-frame hints, 3 windows + condition frame",
           "conditioning into ParallelDenoiseSampler",
           f"works: same video as core's ControlNet (max |diff| {diff:.2g})")


@needs_packs
def test_acn_single_frame_mask_works(env):
    p = _cn_prompt(env, "acn", mask_optional=["mask", 0])
    p["mask"] = {"class_type": "SolidMask", "inputs": {"value": 0.5, "width": SIZE, "height": SIZE}}
    works(env, p)
    record("Advanced-ControlNet", "ControlNetAdvanced + single-frame mask", "conditioning", "works")


@needs_packs
@pytest.mark.parametrize("feature", ["per_frame_mask", "latent_keyframe", "reference_controlnet"])
def test_acn_frame_indexed_features_refused(env, feature):
    if feature == "reference_controlnet":
        p = base_prompt(env, "musev")
        p["empty"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}}
        p["ref_pre"] = {"class_type": "ACN_ReferencePreprocessor", "inputs": {
            "image": ["image", 0], "vae": ["vae", 0], "latent_size": ["empty", 0]}}
        p["cn"] = {"class_type": "ACN_ReferenceControlNet", "inputs": {
            "reference_type": "reference_attn", "style_fidelity": 0.5, "ref_weight": 1.0}}
        p["cn_apply"] = {"class_type": "ACN_AdvancedControlNetApply_v2", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "image": ["ref_pre", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        add_sampler(p, positive=["cn_apply", 0], negative=["cn_apply", 1], frames=FRAMES, context_frames=2,
                    context_overlap=1)
        needle = r"Reference ControlNet"
    elif feature == "per_frame_mask":
        p = _cn_prompt(env, "acn", mask_optional=["mask", 0])
        p["mask"] = {"class_type": "ImageToMask", "inputs": {"image": ["video", 0], "channel": "red"}}
        needle = r"mask with one frame per latent"
    else:
        p = _cn_prompt(env, "acn", latent_kf_override=["lkf", 0])
        p["lkf"] = {"class_type": "LatentKeyframe", "inputs": {"batch_index": 1, "strength": 0.5}}
        needle = r"latent keyframes"
    text = refused(env, p, "sampler", r"start of sampling", needle)
    record("Advanced-ControlNet", feature.replace("_", " "), "conditioning into ParallelDenoiseSampler",
           f"refused at the start of sampling: \"{text[:80]}...\"")


# ------------------------------------------------------------------------------------------------
# VideoHelperSuite: its loaders feed MuseV, its combiner takes MuseV's frames

def _combine_format(env):
    formats = env.node("VHS_VideoCombine")["input"]["required"]["format"][0]
    return "video/h264-mp4" if "video/h264-mp4" in formats else "image/gif"


@needs_packs
def test_vhs_video_to_musev_to_vhs(env):
    """VHS_LoadVideo -> (first frame = condition image, the rest = init latents via VHS's batched
    VAE encode) -> ParallelDenoiseSampler -> VHS_SplitLatents -> VHS_VAEDecodeBatched ->
    VHS_VideoCombine."""
    p = base_prompt(env, "musev")
    add_video(p, 1 + FRAMES)
    p["first"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["video", 0], "batch_index": 0, "length": 1}}
    p["rest"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["video", 0], "batch_index": 1, "length": FRAMES}}
    p["enc"] = {"class_type": "VHS_VAEEncodeBatched", "inputs": {"pixels": ["rest", 0], "vae": ["vae", 0], "per_batch": 2}}
    add_sampler(p, save=False, frames=FRAMES, context_frames=2, context_overlap=1, vision_image=["first", 0],
                init_latent=["enc", 0], denoise=0.6)
    p["split"] = {"class_type": "VHS_SplitLatents", "inputs": {"latents": ["sampler", 0], "split_index": 1}}
    p["dec"] = {"class_type": "VHS_VAEDecodeBatched", "inputs": {"samples": ["split", 2], "vae": ["vae", 0], "per_batch": 2}}
    fmt = _combine_format(env)
    p["combine"] = {"class_type": "VHS_VideoCombine", "inputs": {
        "images": ["dec", 0], "frame_rate": 8.0, "loop_count": 0, "filename_prefix": prefix("vhs"), "format": fmt,
        "pingpong": False, "save_output": True}}
    entry = works(env, p)
    files = [f for f in entry["outputs"]["combine"]["gifs"] if not f["filename"].endswith(".png")]
    assert files, entry["outputs"]["combine"]
    path = env.srv.output_path(files[0])
    assert os.path.getsize(path) > 0
    if fmt == "video/h264-mp4":
        from workflow_inputs import video_frame_count
        assert video_frame_count(path) == FRAMES
    record("VideoHelperSuite", "LoadVideo -> VAEEncodeBatched -> MuseV (vision frame, init latents) -> "
           "SplitLatents -> VAEDecodeBatched -> VideoCombine", "-", f"works ({fmt}, {FRAMES} frames)")


@needs_packs
def test_everything_together(env):
    """VHS video -> ACN per-frame control -> MuseV referencenet + MuseVIPAdapter + IPAdapter_plus ->
    VHS_VideoCombine, in one graph."""
    v = "musev_referencenet"
    p = base_prompt(env, v)
    hints = add_video(p, 1 + FRAMES)
    pos, neg = add_controlnet(env, p, "acn", hints)
    model = add_ipa(env, p, ("motion", 0))
    model = add_musev_ipadapter(env, p, model, v)
    add_sampler(p, model=model, save=False, positive=list(pos), negative=list(neg), frames=FRAMES,
                context_frames=2, context_overlap=1)
    p["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["sampler", 0], "vae": ["vae", 0]}}
    p["combine"] = {"class_type": "VHS_VideoCombine", "inputs": {
        "images": ["dec", 0], "frame_rate": 8.0, "loop_count": 0, "filename_prefix": prefix("all"),
        "format": "image/gif", "pingpong": False, "save_output": True}}
    works(env, p)
    record("all four", "VHS video -> ACN ControlNet -> MuseV + MuseVIPAdapter + IPAdapter_plus -> VHS combine",
           "-", "works")


# ------------------------------------------------------------------------------------------------
# Contract tests without the packs (run in CI): what nodes/interop.py recognises, on the tiny
# fixture MuseV model.  The keys and class names are those the real packs use (the tests above
# check them against the packs' code when it is present).

@pytest.fixture(scope="module")
def musev(comfy_host, parity_dir):
    from musev_testlib import fixture_musev_model
    return fixture_musev_model(comfy_host, parity_dir, "pipeline", tag="sbs")


def _fixture_base(parity_dir):
    from musev_testlib import comfy_unet_config, load_tensors, make_sd15_model, read_json
    spec = read_json(os.path.join(parity_dir, "manifest.json"))["pipelines"]["pipeline"]
    cfg = read_json(os.path.join(parity_dir, os.path.dirname(spec["unet_weights"]), "config.json"))
    return make_sd15_model(comfy_unet_config(cfg), load_tensors(os.path.join(parity_dir, spec["unet_weights"])))


def _pds(comfy_host, model, pos, neg, vision, frames=2, **kw):
    nodes = comfy_host.pack("nodes.sampler_nodes")
    args = dict(frames=frames, width=vision.shape[3] * 8, height=vision.shape[2] * 8, context_frames=2,
                context_overlap=1, context_schedule="uniform_v2", context_batch_size=1, noise_type="video_fusion",
                w_ind_noise=0.5, img_weight=1e-3, seed=3, steps=1, cfg=3.5, sampler_name="euler",
                scheduler="musev_linspace", include_condition_frames=True, vision_latent={"samples": vision})
    args.update(kw)
    return nodes.ParallelDenoiseSampler().sample(model, pos, neg, **args)[0]["samples"]


def _ksample(model, pos, vision, frames=2):
    import comfy.sample
    latent = torch.zeros(frames, *vision.shape[1:])
    return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 1), 1, 3.5, "euler", "normal", pos, pos,
                               latent, seed=1, disable_pbar=True)


def _ade_like(model, kind):
    """A clone carrying what AnimateDiff-Evolved's nodes put on a MODEL (ModelPatcherHelper)."""
    import comfy.model_patcher
    from comfy.patcher_extension import PatcherInjection, WrappersMP
    m = model.clone()
    if kind == "motion_model":
        mm = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), load_device="cpu", offload_device="cpu")
        m.set_additional_models("ADE", [mm])
        m.set_injections("ADE", [PatcherInjection(inject=lambda p: None, eject=lambda p: None)])
    m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, "ADE", lambda executor, *a, **k: executor(*a, **k))
    m.set_attachments("ADE_params", object())
    return m


@pytest.mark.parametrize("kind", ["motion_model", "evolved_sampling"])
def test_contract_ade_refused_everywhere(comfy_host, parity_dir, musev, kind):
    model, pos, neg, vision, _, _ = musev
    host = comfy_host.pack("nodes.host")
    patch = comfy_host.pack("nodes.patch")
    state = patch.get_state(model)
    before = {k: v.clone() for k, v in model.model.diffusion_model.state_dict().items()}
    # ADE first: LoadMuseVMotion (install) refuses
    with pytest.raises(host.MuseVInputError, match=r"LoadMuseVMotion: the 'model' input carries .*AnimateDiff"):
        patch.install(_ade_like(_fixture_base(parity_dir), kind), state.motion_patcher)
    ade = _ade_like(model, kind)
    # ADE between LoadMuseVMotion and our nodes: the node refuses
    with pytest.raises(host.MuseVInputError, match=r"ParallelDenoiseSampler: the 'model' input carries .*AnimateDiff"):
        _pds(comfy_host, ade, pos, neg, vision)
    nodes = comfy_host.pack("nodes.sampler_nodes")
    with pytest.raises(host.MuseVInputError, match=r"MuseVContextWindows: .*AnimateDiff"):
        nodes.MuseVContextWindows().apply(ade, 2, 1, "uniform_v2", 1, "video_fusion", 0.5, 1e-3)
    # ADE between our nodes and a KSampler: refused at the start of sampling
    with pytest.raises(host.MuseVInputError, match=r"MuseV \(start of sampling\): .*AnimateDiff.*out of this MODEL's path"):
        _ksample(ade, pos, vision)
    after = model.model.diffusion_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and set(before) == set(after)
    assert patch.count_injected(model.model.diffusion_model) == 0


class _AdditiveAttn2:
    """The shape of IPAdapter_plus' attn2 replace: plain attention plus a term of its own."""

    def __init__(self, weight):
        self.weight = weight

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention
        return optimized_attention(q, k, v, extra_options["n_heads"]) + self.weight * torch.tanh(q)


def _with_block_patches(model, keys, weight):
    m = model.clone()
    for key in keys:
        m.set_model_attn2_replace(_AdditiveAttn2(weight), key[0], key[1])
    return m


def test_contract_shadowed_attn2_composed_in_either_order(comfy_host, parity_dir, musev):
    model, pos, neg, vision, _, _ = musev
    patch = comfy_host.pack("nodes.patch")
    K = comfy_host.pack("musev_core.keys")
    state = patch.get_state(model)
    keys = [K.ip_attn2_key(p, state.motion.layers)[:2] for p in state.motion.ip_prefixes]
    assert keys, "the fixture's referencenet variant has IP layers"
    alone = _pds(comfy_host, model, pos, neg, vision)
    zero = _pds(comfy_host, _with_block_patches(model, keys, 0.0), pos, neg, vision)
    after = _pds(comfy_host, _with_block_patches(model, keys, 0.5), pos, neg, vision)
    first = patch.install(_with_block_patches(_fixture_base(parity_dir), keys, 0.5), state.motion_patcher,
                          frame_rate=state.frame_rate)
    patch.set_state(first, state)
    first = _pds(comfy_host, first, pos, neg, vision)
    assert (zero - alone).abs().max() <= ATOL, (zero - alone).abs().max()
    assert (after - alone).abs().max() > 1e-4, "the other pack's attn2 patch was ignored"
    assert torch.allclose(first, after, rtol=0, atol=ATOL), (first - after).abs().max()


def test_contract_attn2_slot_taken(comfy_host, parity_dir, musev):
    model, pos, neg, vision, _, _ = musev
    host = comfy_host.pack("nodes.host")
    patch = comfy_host.pack("nodes.patch")
    K = comfy_host.pack("musev_core.keys")
    state = patch.get_state(model)
    key = K.ip_attn2_key(state.motion.ip_prefixes[0], state.motion.layers)
    base = _fixture_base(parity_dir).clone()
    base.set_model_attn2_replace(_AdditiveAttn2(0.5), *key)
    with pytest.raises(host.MuseVInputError, match=r"already replaced the cross-attention .*lost"):
        patch.install(base, state.motion_patcher)
    over = model.clone()
    over.set_model_attn2_replace(_AdditiveAttn2(0.5), *key)
    with pytest.raises(host.MuseVInputError, match=r"start of sampling.*replaced the cross-attention.*skipped silently"):
        _pds(comfy_host, over, pos, neg, vision)


def _acn_like(name, **attrs):
    """A ControlBase of the class name Advanced-ControlNet uses, with the given attributes."""
    from comfy.controlnet import ControlBase
    control = type(name, (ControlBase,), {})()
    control.__dict__.update(attrs)
    return control


class _Keyframes:
    def __init__(self, n):
        self.keyframes = list(range(n))


@pytest.mark.parametrize("name,attrs,needle", [
    ("ReferenceAdvanced", {}, r"Reference ControlNet"),
    ("SparseCtrlAdvanced", {}, r"SparseCtrl"),
    ("ControlNetAdvanced", {"mask_cond_hint_original": torch.ones(3, 8, 8)}, r"mask with one frame per latent"),
    ("ControlNetAdvanced", {"latent_keyframe_override": _Keyframes(1)}, r"latent keyframes"),
], ids=["reference", "sparsectrl", "per_frame_mask", "latent_keyframes"])
def test_contract_frame_indexed_controls_refused(comfy_host, parity_dir, musev, name, attrs, needle):
    model, pos, neg, vision, _, _ = musev
    host = comfy_host.pack("nodes.host")
    cpos = [[c[0], dict(c[1], control=_acn_like(name, **attrs))] for c in pos]
    with pytest.raises(host.MuseVInputError, match=rf"start of sampling.*{needle}"):
        _pds(comfy_host, model, cpos, neg, vision)


def test_contract_context_windows_replaced(comfy_host, parity_dir, musev):
    model, pos, neg, vision, _, _ = musev
    host = comfy_host.pack("nodes.host")
    nodes = comfy_host.pack("nodes.sampler_nodes")
    (cw,) = nodes.MuseVContextWindows().apply(model, 2, 1, "uniform_v2", 1, "video_fusion", 0.5, 1e-3,
                                              vision_latent={"samples": vision})
    other = cw.clone()
    other.model_options["context_handler"] = type("IndexListContextHandler", (), {})()
    with pytest.raises(host.MuseVInputError, match=r"context windows were replaced by IndexListContextHandler"):
        _ksample(other, pos, vision)
