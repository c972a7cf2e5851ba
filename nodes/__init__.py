"""ComfyUI adapters of comfyui-musev (thin: the maths is in musev_core)."""
from . import paths
from . import motion_nodes
from . import sampler_nodes
from . import pose_nodes
from . import reference_nodes
from . import faceid_nodes
from . import loader_nodes
from . import web_routes  # noqa: F401  (GET /musev/windows for the frontend widget)

paths.register()

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _mod in (motion_nodes, sampler_nodes, pose_nodes, reference_nodes, loader_nodes, faceid_nodes):
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)
