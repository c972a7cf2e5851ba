"""Tiny InsightFace buffalo_l and IP-Adapter-FaceID stand-ins (built with the ``onnx`` package and
torch), shared by the FaceID tests and the shipped-workflow runs."""
import os

import numpy as np
import torch

CONTEXT = 768

DET_A = 6.0                       # detector score = sigmoid(DET_A · normalised channel 0)
BOX = 2.0                         # box half size, in strides
KPS = [-1.0, -0.5, 1.0, -0.5, 0.0, 0.3, -0.8, 1.2, 0.8, 1.2]    # 5 points, in strides from the anchor
REC_DIM = 512


def _conv_outputs(nodes, inits, inp, name, stride, weight, bias, width, anchors=2):
    """Conv(1x1, stride) -> (h·w·anchors, width): each cell's value repeated per anchor, row-major."""
    from onnx import helper, numpy_helper
    inits.append(numpy_helper.from_array(weight.astype(np.float32), f"{name}_w"))
    inits.append(numpy_helper.from_array(bias.astype(np.float32), f"{name}_b"))
    nodes.append(helper.make_node("Conv", [inp, f"{name}_w", f"{name}_b"], [f"{name}_c"], kernel_shape=[1, 1],
                                  strides=[stride, stride]))
    src = f"{name}_c"
    if name.startswith("score"):
        nodes.append(helper.make_node("Sigmoid", [src], [f"{name}_s"]))
        src = f"{name}_s"
    nodes.append(helper.make_node("Transpose", [src], [f"{name}_t"], perm=[0, 2, 3, 1]))
    inits.append(numpy_helper.from_array(np.array([3], dtype=np.int64), f"{name}_ax"))
    nodes.append(helper.make_node("Unsqueeze", [f"{name}_t", f"{name}_ax"], [f"{name}_u"]))
    nodes.append(helper.make_node("Concat", [f"{name}_u"] * anchors, [f"{name}_a"], axis=3))
    inits.append(numpy_helper.from_array(np.array([-1, width], dtype=np.int64), f"{name}_shape"))
    nodes.append(helper.make_node("Reshape", [f"{name}_a", f"{name}_shape"], [name]))


def make_detector(path, score_gain=DET_A):
    """SCRFD-shaped: 9 outputs (scores, boxes, key points for strides 8/16/32, 2 anchors); the score
    samples channel 0 of the blob at each anchor centre, boxes and key points are constants."""
    import onnx
    from onnx import TensorProto, helper
    nodes, inits, outputs = [], [], []
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for s in (8, 16, 32):
            name = f"{kind}{s}"
            w = np.zeros((width, 3, 1, 1))
            if kind == "score":
                w[0, 0, 0, 0] = score_gain
                b = np.zeros(1)
            elif kind == "bbox":
                b = np.full(4, BOX)
            else:
                b = np.array(KPS)
            _conv_outputs(nodes, inits, "input.1", name, s, w, b, width)
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, width]))
    graph = helper.make_graph(nodes, "scrfd_standin",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


def make_recognizer(path, seed=0):
    """ArcFace-shaped: (1, 3, 112, 112) -> (1, 512) = channel means @ W."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    w = np.random.default_rng(seed).standard_normal((3, REC_DIM)).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["gap"]),
             helper.make_node("Flatten", ["gap"], ["flat"]),
             helper.make_node("MatMul", ["flat", "W"], ["fc1"])]
    graph = helper.make_graph(nodes, "arcface_standin",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [None, 3, 112, 112])],
                              [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [None, REC_DIM])],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return w


def place_buffalo(models_dir, rel=("insightface", "models", "buffalo_l")):
    folder = os.path.join(models_dir, *rel)
    os.makedirs(folder, exist_ok=True)
    make_detector(os.path.join(folder, "det_10g.onnx"))
    w = make_recognizer(os.path.join(folder, "w600k_r50.onnx"))
    return folder, w


def face_image(width, height, cx, cy, sigma, channel=0, peak=255.0):
    """An RGB uint8 image, black but for a Gaussian blob in one channel (the stand-in detector's
    'face')."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.zeros((height, width, 3), dtype=np.float64)
    img[..., channel] = peak * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def as_image(rgb):
    return torch.from_numpy(rgb.astype(np.float32) / 255.0)[None]


def write_faceid_standin(path, unet_channels=(320, 320, 320, 320), cross=CONTEXT, id_dim=REC_DIM, tokens=4,
                         seed=21, lora=True):
    """A tiny ip-adapter-faceid_sd15.bin in the released layout (``torch.save({"image_proj",
    "ip_adapter"})``: MLPProjModel + to_k_ip/to_v_ip at the odd indices + LoRA weights)."""
    from conftest import pack_module
    F = pack_module("musev_core.faceid")
    g = torch.Generator().manual_seed(seed)
    hidden = 2 * id_dim
    proj = {"proj.0.weight": torch.randn(hidden, id_dim, generator=g) / id_dim ** 0.5,
            "proj.0.bias": torch.randn(hidden, generator=g) * 0.02,
            "proj.2.weight": torch.randn(cross * tokens, hidden, generator=g) / hidden ** 0.5,
            "proj.2.bias": torch.randn(cross * tokens, generator=g) * 0.02,
            "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}
    level = {"down_blocks.0": 0, "down_blocks.1": 1, "down_blocks.2": 2, "up_blocks.1": 2, "up_blocks.2": 1,
             "up_blocks.3": 0, "mid_block": 3}
    ip = {}
    for i, prefix in enumerate(F.FACE_ATTN2_PREFIXES):
        c = unet_channels[level["mid_block" if prefix.startswith("mid") else ".".join(prefix.split(".")[:2])]]
        for n in ("to_k_ip", "to_v_ip"):
            ip[f"{2 * i + 1}.{n}.weight"] = (torch.randn(c, cross, generator=g) / cross ** 0.5).half()
        if lora:
            for j in (2 * i, 2 * i + 1):
                ip[f"{j}.to_q_lora.down.weight"] = torch.zeros(8, c).half()
                ip[f"{j}.to_q_lora.up.weight"] = torch.zeros(c, 8).half()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"image_proj": {k: v.half() for k, v in proj.items()}, "ip_adapter": ip}, path)
    return proj, ip


def gray_face_image(width, height, cx, cy, sigma):
    """The stand-in detector's 'face' in all three channels: found whatever channel order is picked."""
    one = face_image(width, height, cx, cy, sigma, channel=0)[..., 0]
    return np.stack([one] * 3, axis=-1)
