"""LoadMuseVMotion: MuseV's temporal layers into an SD1.5 MODEL."""

from . import paths
from .host import sd15_unet
from .motion_loader import load_motion_patcher
from .patch import install

CATEGORY = "MuseV"


class LoadMuseVMotion:
    DESCRIPTION = (
        "Turns an SD1.5 MODEL into MuseV's video UNet: injects MuseV's temporal convolutions, temporal "
        "attention, frame embedding, ReferenceOnly self-attention and (referencenet variants) the IP-Adapter "
        "and ReferenceNet fusion layers. The base checkpoint's 2D weights (and LoRAs) are used as they are; the "
        "motion file's own 2D weights are ignored, as in MuseV.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.5 base MODEL (Load Checkpoint), LoRAs welcome."}),
                "motion_model": (paths.list_choices(paths.KIND_MOTION), {
                    "tooltip": "MuseV motion UNet from models/musev/: a variant folder (motion/musev/, "
                               "motion/musev_referencenet/, motion/musev_referencenet_pose/ or their unet/) or a "
                               "weight file. The variant is detected from the keys."}),
                "frame_rate": ("FLOAT", {
                    "default": 8.0, "min": 0.0, "max": 64.0, "step": 0.5,
                    "tooltip": "Frame-index multiplier of the referencenet variants' frame embedding (MuseV's "
                               "motion_speed): 8 for text/image-to-video as trained, the video's sample rate "
                               "(usually 1) for pose/video-to-video. The plain musev variant ignores it."}),
                "temporal_layers": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Off = MuseV's skip_temporal_layer: every temporal layer is bypassed, for a "
                               "single-image first-frame pass (text-to-image-to-video)."}),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, motion_model=None):
        # Replaces ComfyUI's "value not in list" check for this input (so that values of older workflows,
        # e.g. a variant's unet/ folder, stay valid) with the pack's own: a name inside models/musev/.
        return paths.validate_choice(motion_model, "motion_model", "LoadMuseVMotion", paths.KIND_MOTION)

    @classmethod
    def IS_CHANGED(cls, motion_model=None, **_):
        # the files inside a picked folder, not the folder: an edited unet/ file reloads
        return paths.fingerprint(motion_model, paths.KIND_MOTION, "LoadMuseVMotion", "motion_model")

    RETURN_TYPES = ("MODEL",)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The base MODEL with MuseV installed (a clone; the input MODEL is untouched).",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, model, motion_model, frame_rate=8.0, temporal_layers=True):
        # the name first (it may come through a link): nothing is opened outside models/musev
        path = paths.full_path(motion_model, "motion_model", "LoadMuseVMotion")
        files = paths.model_files(motion_model, "motion_model", "LoadMuseVMotion", paths.KIND_MOTION)
        unet = sd15_unet(model, "LoadMuseVMotion")
        base = model.model
        weight_dtype = base.get_dtype()
        compute_dtype = getattr(base, "manual_cast_dtype", None)
        patcher = load_motion_patcher(path, unet, weight_dtype, compute_dtype, files=files)
        return (install(model, patcher, source=motion_model, frame_rate=frame_rate, temporal=temporal_layers),)


NODE_CLASS_MAPPINGS = {"LoadMuseVMotion": LoadMuseVMotion}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadMuseVMotion": "Load MuseV Motion Model"}
