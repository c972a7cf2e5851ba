"""ComfyUI adapters of comfyui-musev (thin: the maths is in musev_core)."""
from . import paths
from . import motion_nodes
from . import sampler_nodes

paths.register()

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _mod in (motion_nodes, sampler_nodes):
    NODE_CLASS_MAPPINGS.update(_mod.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_mod.NODE_DISPLAY_NAME_MAPPINGS)
