"""The one model table: every model file the pack's workflows, demo, README and error messages name.

Pure data (no ComfyUI import), so scripts and tests can read it too.  The layout is MuseV's own
Hugging Face repo (TMElyralab/MuseV) cloned into ``ComfyUI/models/musev/``: a user who clones all of
it, or only the parts a workflow needs, runs every shipped workflow with no renaming.  Files that
are not in MuseV's repo (the OpenPose ControlNet, DWPose) go to the usual ComfyUI folders.

``name`` is the exact value a loader widget shows (relative to ``folder``; a trailing ``/`` marks
a folder).  ``needs`` are the files, relative to ``name``, whose presence makes it usable (any one
of each ``|`` group).  ``download`` are the Hugging Face patterns that fetch it (MuseV's repo only).

Also here, so that the demo, the loaders' errors and the README say the same thing: which files
each job needs (``JOBS``), what makes a folder of each kind usable (``FOLDER_NEEDS``), and the
check + "what is missing, where it goes, where to get it" text (``problems``, ``missing_report``).
"""
import os
from dataclasses import dataclass

HF_REPO = "TMElyralab/MuseV"
HF_MUSEV = f"https://huggingface.co/{HF_REPO}"


@dataclass(frozen=True)
class ModelFile:
    key: str
    folder: str            # ComfyUI models folder key (folder_paths): musev, controlnet, dwpose
    name: str              # widget value, relative to the folder
    url: str               # where to download it
    loader: str            # "Node.input" that takes it
    what: str              # one line for the README / missing-files list
    needs: tuple = ()      # files under ``name`` that must exist ("a|b" = either)
    download: tuple = ()   # HF patterns (relative to MuseV's repo) that fetch it; default: all of ``name``

    @property
    def is_folder(self):
        return self.name.endswith("/")

    @property
    def in_musev_repo(self):
        return self.folder == "musev" and self.url.startswith(HF_MUSEV)

    @property
    def patterns(self):
        if self.download:
            return self.download
        return (self.name + "*",) if self.is_folder else (self.name,)


def _hf(path, folder=False):
    return f"{HF_MUSEV}/{'tree' if folder else 'resolve'}/main/{path.rstrip('/')}"


_DIFFUSERS = ("config.json", "diffusion_pytorch_model.safetensors|diffusion_pytorch_model.bin")
_UNET = tuple("unet/" + f.replace("|", "|unet/") for f in _DIFFUSERS)
_PIPE = (("model_index.json",) + _UNET
         + ("text_encoder/config.json", "text_encoder/model.safetensors|text_encoder/pytorch_model.bin")
         + tuple("vae/" + f.replace("|", "|vae/") for f in _DIFFUSERS))
_TRANSFORMERS = ("config.json", "model.safetensors|pytorch_model.bin")

# What makes a folder of each kind usable (the loaders check these before loading).
FOLDER_NEEDS = {
    "motion": _UNET,                # motion/<variant>/ (config.json + weights in unet/)
    "referencenet": _DIFFUSERS,     # motion/musev_referencenet/referencenet/
    "pipeline": _PIPE,              # t2i/sd1.5/<name>/: a diffusers SD1.5 pipeline folder
    "vae": _DIFFUSERS,              # vae/sd-vae-ft-mse/: a diffusers AutoencoderKL folder
    "clip_vision": _TRANSFORMERS,   # IP-Adapter/models/image_encoder/: transformers CLIPVisionModelWithProjection
}

MODELS = (
    ModelFile("motion_musev", "musev", "motion/musev/", _hf("motion/musev", True), "LoadMuseVMotion.motion_model",
              "motion UNet `musev` (text/image-to-video without identity nets)", _UNET, ("motion/musev/unet/*",)),
    ModelFile("motion_referencenet", "musev", "motion/musev_referencenet/", _hf("motion/musev_referencenet", True),
              "LoadMuseVMotion.motion_model", "motion UNet `musev_referencenet` (image-to-video with identity)", _UNET,
              ("motion/musev_referencenet/unet/*",)),
    ModelFile("motion_pose", "musev", "motion/musev_referencenet_pose/", _hf("motion/musev_referencenet_pose", True),
              "LoadMuseVMotion.motion_model", "motion UNet `musev_referencenet_pose` (pose-to-video)", _UNET,
              ("motion/musev_referencenet_pose/unet/*",)),
    ModelFile("referencenet", "musev", "motion/musev_referencenet/referencenet/",
              _hf("motion/musev_referencenet/referencenet", True), "MuseVReferenceNet.referencenet",
              "ReferenceNet (also used by the pose model)", _DIFFUSERS),
    ModelFile("image_proj_referencenet", "musev", "motion/musev_referencenet/ip_adapter_image_proj.bin",
              _hf("motion/musev_referencenet/ip_adapter_image_proj.bin"), "MuseVIPAdapter.image_proj",
              "IP-Adapter image projection of `musev_referencenet`"),
    ModelFile("image_proj_pose", "musev", "motion/musev_referencenet_pose/ip_adapter_image_proj.bin",
              _hf("motion/musev_referencenet_pose/ip_adapter_image_proj.bin"), "MuseVIPAdapter.image_proj",
              "IP-Adapter image projection of `musev_referencenet_pose`"),
    ModelFile("t2i_majicmix", "musev", "t2i/sd1.5/majicmixRealv6Fp16/", _hf("t2i/sd1.5/majicmixRealv6Fp16", True),
              "MuseVCheckpointLoader.ckpt_name", "SD1.5 base (diffusers folder) for text/image-to-video", _PIPE),
    ModelFile("t2i_fantasticmix", "musev", "t2i/sd1.5/fantasticmix_v10/", _hf("t2i/sd1.5/fantasticmix_v10", True),
              "MuseVCheckpointLoader.ckpt_name", "SD1.5 base (diffusers folder) for video/pose-to-video", _PIPE),
    ModelFile("vae", "musev", "vae/sd-vae-ft-mse/", _hf("vae/sd-vae-ft-mse", True), "MuseVVAELoader.vae_name",
              "VAE sd-vae-ft-mse (diffusers folder)", _DIFFUSERS),
    ModelFile("clip_vision", "musev", "IP-Adapter/models/image_encoder/", _hf("IP-Adapter/models/image_encoder", True),
              "MuseVCLIPVisionLoader.clip_name", "CLIP vision ViT-H/14 (IP-Adapter's image_encoder, transformers folder)",
              _TRANSFORMERS, ("IP-Adapter/models/image_encoder/config.json",
                              "IP-Adapter/models/image_encoder/model.safetensors")),
    ModelFile("faceid", "musev", "IP-Adapter/models/ip-adapter-faceid_sd15.bin",
              _hf("IP-Adapter/models/ip-adapter-faceid_sd15.bin"), "MuseVFaceID.faceid_model",
              "IP-Adapter-FaceID weights (optional)"),
    ModelFile("insightface", "musev", "IP-Adapter/models/image_encoder/models/buffalo_l/",
              _hf("IP-Adapter/models/image_encoder/models/buffalo_l", True), "MuseVFaceID.face_analysis",
              "InsightFace buffalo_l ONNX files (face embeddings for FaceID, optional)",
              ("det_10g.onnx", "w600k_r50.onnx")),
    ModelFile("controlnet_openpose", "controlnet", "control_v11p_sd15_openpose.pth",
              "https://huggingface.co/lllyasviel/ControlNet-v1-1/resolve/main/control_v11p_sd15_openpose.pth",
              "ControlNetLoader.control_net_name", "OpenPose ControlNet (pose-to-video)"),
    ModelFile("lcm_lora", "loras", "lcm-lora-sdv1-5.safetensors",
              "https://huggingface.co/latent-consistency/lcm-lora-sdv1-5/resolve/main/pytorch_lora_weights.safetensors",
              "LoraLoaderModelOnly.lora_name", "LCM-LoRA for SD1.5 (the fast LCM workflow only; saved under this name)"),
    ModelFile("dwpose_det", "dwpose", "yolox_l.onnx", "https://huggingface.co/yzd-v/DWPose/resolve/main/yolox_l.onnx",
              "PoseVideoCondition (detect mode)", "DWPose person detector (pose from an RGB video, optional)"),
    ModelFile("dwpose_pose", "dwpose", "dw-ll_ucoco_384.onnx",
              "https://huggingface.co/yzd-v/DWPose/resolve/main/dw-ll_ucoco_384.onnx",
              "PoseVideoCondition (detect mode)", "DWPose whole-body keypoints (pose from an RGB video, optional)"),
)

BY_KEY = {m.key: m for m in MODELS}

# The files each job needs (the demo checks these; the shipped workflow of the same name uses them).
JOBS = {
    "image_to_video": ("t2i_majicmix", "vae", "clip_vision", "motion_referencenet", "referencenet",
                       "image_proj_referencenet"),
}


def get(key):
    return BY_KEY[key]


def by_name(folder, name):
    """The table entry a widget value names (``None`` for a file of the user's own)."""
    for m in MODELS:
        if m.folder == folder and m.name.rstrip("/") == name.rstrip("/"):
            return m
    return None


# ------------------------------------------------------------------------------------------------
# checking files on disk (pure Python: the demo runs this before ComfyUI starts)

LFS_POINTER = b"version https://git-lfs"
NOT_DOWNLOADED = "a Git LFS pointer, not the file (run `git lfs install && git lfs pull` in the clone)"


def file_problem(path):
    """``None`` when ``path`` is a usable file, else why not: missing, empty, a Git LFS pointer."""
    if not os.path.isfile(path):
        return "missing"
    size = os.path.getsize(path)
    if size == 0:
        return "empty (an interrupted download?)"
    if size < 1024 and not path.endswith(".json"):
        with open(path, "rb") as f:
            if f.read(len(LFS_POINTER)) == LFS_POINTER:
                return NOT_DOWNLOADED
    return None


def folder_problems(folder, needs):
    """``[(file, problem)]`` for the files ``needs`` asks of ``folder`` ("a|b": either will do)."""
    out = []
    for spec in needs:
        alternatives = spec.split("|")
        found = [file_problem(os.path.join(folder, a)) for a in alternatives]
        if all(found):
            why = next((p for p in found if p != "missing"), "missing")
            out.append((" or ".join(alternatives), why))
    return out


def problems(entry, root):
    """``[(file, problem)]`` of one table entry under ``root`` (its ComfyUI folder); ``[]`` = usable."""
    path = os.path.join(root, entry.name)
    if entry.is_folder:
        if not os.path.isdir(path):
            return [(entry.name, "missing")]
        return [(entry.name + f, p) for f, p in folder_problems(path, entry.needs)]
    p = file_problem(path)
    return [(entry.name, p)] if p else []


def missing_report(keys, roots, job=None):
    """``(lines, missing keys)``: for each entry of ``keys`` that is not usable under ``roots``
    (folder key -> directory), what is missing, where it goes and where to get it, then one
    command that fetches all of MuseV's own files."""
    lines, missing = [], []
    for key in keys:
        entry = BY_KEY[key]
        root = roots[entry.folder]
        found = problems(entry, root)
        if not found:
            continue
        missing.append(key)
        dest = os.path.join(root, entry.name)
        lines.append(f"  * {entry.what}")
        lines.append(f"      goes to:  {dest}")
        lines.append(f"      get it:   {entry.url}")
        for rel, why in found[:6]:
            if rel == entry.name and why == "missing":
                lines.append("      missing:  all of it")
            else:
                lines.append(f"      {why}: {rel}" if why != "missing" else f"      missing:  {rel}")
        if len(found) > 6:
            lines.append(f"      ... and {len(found) - 6} more")
    if not missing:
        return [], []
    head = f"{len(missing)} of {len(keys)} model files{f' for {job}' if job else ''} are missing or incomplete:"
    lines.insert(0, head)
    hf = [BY_KEY[k] for k in missing if BY_KEY[k].in_musev_repo]
    if hf:
        pats = " ".join(f'"{p}"' for e in hf for p in e.patterns)
        lines += ["", "All of MuseV's files above in one command (Hugging Face CLI, `pip install -U huggingface_hub`):",
                  f"  hf download {HF_REPO} --local-dir {roots['musev']} --include {pats}",
                  "(older huggingface_hub: `huggingface-cli download` with the same arguments), or clone the whole",
                  f"repo with Git LFS: git clone {HF_MUSEV} {roots['musev']}"]
    return lines, missing


def markdown_table():
    """The README's model table (README section "Where the released files go")."""
    rows = ["| file | goes to (keep MuseV's layout) | picked in | what |", "|---|---|---|---|"]
    for m in MODELS:
        link = f"[`{m.name}`]({m.url})"
        rows.append(f"| {link} | `models/{m.folder}/{m.name}` | {m.loader} | {m.what} |")
    return "\n".join(rows)


README_BEGIN = "<!-- model table: generated by `python3 nodes/model_table.py --write-readme` -->"
README_END = "<!-- end of model table -->"


def write_readme(path):
    """Replace the README's model table (between the markers) with :func:`markdown_table`."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    a, b = text.index(README_BEGIN) + len(README_BEGIN), text.index(README_END)
    new = text[:a] + "\n" + markdown_table() + "\n" + text[b:]
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text


if __name__ == "__main__":
    import sys
    if sys.argv[1:] == ["--write-readme"]:
        readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
        print("README.md: model table", "updated" if write_readme(readme) else "already up to date")
    else:
        print(markdown_table())
