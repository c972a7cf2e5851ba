"""The one model table: every model file the pack's workflows, demo, README and error messages name.

Pure data (no ComfyUI import), so scripts and tests can read it too.  The layout is MuseV's own
Hugging Face repo (TMElyralab/MuseV) cloned into ``ComfyUI/models/musev/``: a user who clones all of
it, or only the parts a workflow needs, runs every shipped workflow with no renaming.  Files that
are not in MuseV's repo (the OpenPose ControlNet, DWPose) go to the usual ComfyUI folders.

``name`` is the exact value a loader widget shows (relative to ``folder``; a trailing ``/`` marks
a folder).  ``needs`` are the files, relative to ``name``, whose presence makes it usable (any one
of each ``|`` group).
"""
from dataclasses import dataclass

HF_MUSEV = "https://huggingface.co/TMElyralab/MuseV"


@dataclass(frozen=True)
class ModelFile:
    key: str
    folder: str            # ComfyUI models folder key (folder_paths): musev, controlnet, dwpose
    name: str              # widget value, relative to the folder
    url: str               # where to download it
    loader: str            # "Node.input" that takes it
    what: str              # one line for the README / missing-files list
    needs: tuple = ()      # files under ``name`` that must exist ("a|b" = either)

    @property
    def is_folder(self):
        return self.name.endswith("/")


def _hf(path, folder=False):
    return f"{HF_MUSEV}/{'tree' if folder else 'resolve'}/main/{path.rstrip('/')}"


_UNET = ("unet/config.json", "unet/diffusion_pytorch_model.safetensors|unet/diffusion_pytorch_model.bin")
_PIPE = ("model_index.json", "unet/config.json",
         "unet/diffusion_pytorch_model.safetensors|unet/diffusion_pytorch_model.bin",
         "text_encoder/config.json", "text_encoder/model.safetensors|text_encoder/pytorch_model.bin",
         "vae/config.json", "vae/diffusion_pytorch_model.safetensors|vae/diffusion_pytorch_model.bin")

MODELS = (
    ModelFile("motion_musev", "musev", "motion/musev/", _hf("motion/musev", True), "LoadMuseVMotion.motion_model",
              "motion UNet `musev` (text/image-to-video without identity nets)", _UNET),
    ModelFile("motion_referencenet", "musev", "motion/musev_referencenet/", _hf("motion/musev_referencenet", True),
              "LoadMuseVMotion.motion_model", "motion UNet `musev_referencenet` (image-to-video with identity)", _UNET),
    ModelFile("motion_pose", "musev", "motion/musev_referencenet_pose/", _hf("motion/musev_referencenet_pose", True),
              "LoadMuseVMotion.motion_model", "motion UNet `musev_referencenet_pose` (pose-to-video)", _UNET),
    ModelFile("referencenet", "musev", "motion/musev_referencenet/referencenet/",
              _hf("motion/musev_referencenet/referencenet", True), "MuseVReferenceNet.referencenet",
              "ReferenceNet (also used by the pose model)",
              ("config.json", "diffusion_pytorch_model.safetensors|diffusion_pytorch_model.bin")),
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
              "VAE sd-vae-ft-mse (diffusers folder)",
              ("config.json", "diffusion_pytorch_model.safetensors|diffusion_pytorch_model.bin")),
    ModelFile("clip_vision", "musev", "IP-Adapter/models/image_encoder/", _hf("IP-Adapter/models/image_encoder", True),
              "MuseVCLIPVisionLoader.clip_name", "CLIP vision ViT-H/14 (IP-Adapter's image_encoder, transformers folder)",
              ("config.json", "model.safetensors|pytorch_model.bin")),
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
    ModelFile("dwpose_det", "dwpose", "yolox_l.onnx", "https://huggingface.co/yzd-v/DWPose/resolve/main/yolox_l.onnx",
              "PoseVideoCondition (detect mode)", "DWPose person detector (pose from an RGB video, optional)"),
    ModelFile("dwpose_pose", "dwpose", "dw-ll_ucoco_384.onnx",
              "https://huggingface.co/yzd-v/DWPose/resolve/main/dw-ll_ucoco_384.onnx",
              "PoseVideoCondition (detect mode)", "DWPose whole-body keypoints (pose from an RGB video, optional)"),
)

BY_KEY = {m.key: m for m in MODELS}


def get(key):
    return BY_KEY[key]
