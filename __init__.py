"""comfyui-musev: MuseV as native ComfyUI nodes."""
import logging

from .nodes import compat as _compat

WEB_DIRECTORY = "./web"
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}

_problems = _compat.host_problems()
if _problems:
    # Never break ComfyUI's start-up: one clear line, no nodes.
    logging.getLogger("comfyui-musev").error(
        "[comfyui-musev] needs ComfyUI >= %s (this is %s, which lacks: %s); no MuseV nodes were registered. "
        "Update ComfyUI.", _compat.MIN_COMFYUI, _compat.comfyui_version(), ", ".join(_problems))
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
