"""Test helpers for the pose tests: tiny DWPose networks in the TorchScript file format, a
temporary models/dwpose folder, skeletons, and a tiny SD1.5 ControlNet built from ComfyUI's classes."""
import contextlib
import os
import shutil
import tempfile

import numpy as np
import torch

# COCO-WholeBody body points of a standing person in a 256x256 frame (x, y)
COCO_BODY = np.array([
    [128, 60],                      # 0 nose
    [122, 54], [134, 54],           # 1 left eye, 2 right eye  (image-left = person's right)
    [116, 58], [140, 58],           # 3 left ear, 4 right ear
    [104, 86], [152, 86],           # 5 left shoulder, 6 right shoulder
    [96, 120], [160, 120],          # 7 left elbow, 8 right elbow
    [92, 150], [164, 150],          # 9 left wrist, 10 right wrist
    [112, 150], [144, 150],         # 11 left hip, 12 right hip
    [110, 186], [146, 186],         # 13 left knee, 14 right knee
    [108, 220], [148, 220],         # 15 left ankle, 16 right ankle
], dtype=np.float64)


def wholebody_points(offset=(0.0, 0.0), scale=1.0, center=(128.0, 128.0)):
    """133 COCO-WholeBody points: the body above, feet below the ankles, face points around the nose,
    hands fanned out from the wrists.  Optionally scaled about ``center`` and shifted."""
    kp = np.zeros((133, 2))
    kp[:17] = COCO_BODY
    kp[17:23] = COCO_BODY[[15, 15, 15, 16, 16, 16]] + [[0, 6], [4, 6], [-4, 6], [0, 6], [4, 6], [-4, 6]]
    ang = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    kp[23:91] = COCO_BODY[0] + np.stack([10 * np.cos(ang), 12 * np.sin(ang)], 1)
    for base, wrist, sign in ((91, COCO_BODY[9], -1), (112, COCO_BODY[10], 1)):
        kp[base] = wrist
        for f in range(5):
            for j in range(4):
                kp[base + 1 + 4 * f + j] = wrist + [sign * (3 + 2 * f), 4 + 3 * j]
    kp = (kp - center) * scale + center + np.asarray(offset)
    return kp


class TinyYolox(torch.nn.Module):
    """YOLOX-l's I/O (1, 3, 640, 640) -> (1, 8400, 85) raw head output; a random conv whose output
    is multiplied by 0 keeps the graph input-dependent, a table holds the predictions."""

    def __init__(self, table):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.register_buffer("table", table.float())

    def forward(self, x):
        assert x.shape[1] == 3 and x.shape[2] == 640 and x.shape[3] == 640
        return self.table.unsqueeze(0).expand(x.shape[0], -1, -1) + 0.0 * self.conv(x[:, :, :8, :8]).mean()


class TinyDWPose(torch.nn.Module):
    """DWPose-l 384x288 SimCC I/O with a fixed batch of 5 (the '_bs5' TorchScript file):
    (5, 3, 384, 288) -> (simcc_x (5, 133, 576), simcc_y (5, 133, 768))."""

    def __init__(self, sx, sy):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.register_buffer("sx", sx.float())
        self.register_buffer("sy", sy.float())

    def forward(self, x):
        assert x.shape[0] == 5 and x.shape[1] == 3 and x.shape[2] == 384 and x.shape[3] == 288
        z = 0.0 * self.conv(x[:, :, :8, :8]).mean()
        return self.sx.unsqueeze(0).expand(5, -1, -1) + z, self.sy.unsqueeze(0).expand(5, -1, -1) + z


def detector_table(boxes_letterbox, n_classes=80):
    """Raw YOLOX rows placing person boxes (xyxy in the 640x640 letterboxed input) on stride-8 anchors."""
    n = 80 * 80 + 40 * 40 + 20 * 20
    t = torch.zeros(n, 5 + n_classes)
    t[:, 4] = 0.01
    for i, (x0, y0, x1, y1) in enumerate(boxes_letterbox):
        cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
        gx, gy = int(cx // 8), int(cy // 8)
        a = gy * 80 + gx
        t[a, 0] = cx / 8 - gx
        t[a, 1] = cy / 8 - gy
        t[a, 2] = float(np.log(w / 8))
        t[a, 3] = float(np.log(h / 8))
        t[a, 4] = 0.95
        t[a, 5] = 0.9 - 0.01 * i
    return t


def simcc_tables(crop_points, visible_value=1.0, weak=()):
    """SimCC outputs with one peak per keypoint at ``crop_points`` (133, 2) in 288x384 input pixels."""
    sx = torch.full((133, 576), -0.1)
    sy = torch.full((133, 768), -0.1)
    for k, (u, v) in enumerate(crop_points):
        val = 0.1 if k in weak else visible_value
        sx[k, int(round(u * 2))] = val
        sy[k, int(round(v * 2))] = val
    return sx, sy


def save_torchscript(module, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.jit.script(module.eval()).save(path)


@contextlib.contextmanager
def dwpose_folder(folder_paths, dwpose_module):
    """Point the registered 'dwpose' model folder at a fresh temporary directory."""
    dwpose_module.register()
    old = folder_paths.folder_names_and_paths["dwpose"]
    d = tempfile.mkdtemp(prefix="musev-dwpose-")
    folder_paths.folder_names_and_paths["dwpose"] = ([d], set(old[1]))
    dwpose_module._CACHE.clear()
    try:
        yield d
    finally:
        folder_paths.folder_names_and_paths["dwpose"] = old
        dwpose_module._CACHE.clear()
        shutil.rmtree(d, ignore_errors=True)


def install_tiny_dwpose(folder, person_boxes_px, frame_size=256, weak=()):
    """Tiny TorchScript DWPose in ``folder`` that 'detects' the wholebody_points() skeleton inside
    each given box (xyxy pixels of a frame_size square frame).  Returns the expected (N, 133, 2)
    image keypoints."""
    from conftest import pack_module
    P = pack_module("musev_core.pose")
    r = P.letterbox_ratio(frame_size, frame_size)
    table = detector_table([np.asarray(b) * r for b in person_boxes_px])
    # every box gets the same crop-relative skeleton; the skeleton's frame points live in box 0
    c, s = P.box_center_scale(person_boxes_px[0])
    M = P.box_affine(c, s)
    pts = wholebody_points()
    crop = (M @ np.c_[pts, np.ones(len(pts))].T).T
    sx, sy = simcc_tables(crop, weak=weak)
    save_torchscript(TinyYolox(table), os.path.join(folder, "yolox_l.torchscript.pt"))
    save_torchscript(TinyDWPose(sx, sy), os.path.join(folder, "sub", "dw-ll_ucoco_384_bs5.torchscript.pt"))
    expected = []
    for b in person_boxes_px:
        cb, sb = P.box_center_scale(b)
        q = np.round(crop * 2) / 2
        expected.append(q / np.array(P.POSE_INPUT) * sb + cb - sb / 2)
    return np.stack(expected)


def tiny_controlnet(seed=0):
    """An SD1.5-topology ControlNet (tiny channels) built with ComfyUI's own classes."""
    import comfy.cldm.cldm
    import comfy.controlnet
    from musev_testlib import comfy_unet_config
    cfg = dict(comfy_unet_config({"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32,
                                  "attention_head_dim": 2, "layers_per_block": 1}))
    cfg.pop("out_channels")
    cfg["hint_channels"] = 3
    model = comfy.cldm.cldm.ControlNet(**cfg, device="cpu")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return comfy.controlnet.ControlNet(model, load_device=torch.device("cpu")), cfg


def save_onnx_constant_model(path, input_name, input_shape, outputs):
    """An ONNX graph with the given input and constant outputs (+ 0 x mean(input), so that the
    input is really consumed): the I/O format of the released YOLOX / DWPose .onnx files."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes = [helper.make_node("ReduceMean", [input_name], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"])]
    inits = [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")]
    outs = []
    for i, (name, arr) in enumerate(outputs):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=np.float32), f"const{i}"))
        nodes.append(helper.make_node("Add", [f"const{i}", "z"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(np.shape(arr))))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT,
                                                                           list(input_shape))], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)


def install_tiny_dwpose_onnx(folder, person_box_px, frame_size=256):
    """The ONNX file pair (batch-1 pose model, like the official dw-ll_ucoco_384.onnx) 'detecting'
    wholebody_points() in one box; returns the expected (1, 133, 2) image keypoints."""
    from conftest import pack_module
    P = pack_module("musev_core.pose")
    r = P.letterbox_ratio(frame_size, frame_size)
    table = detector_table([np.asarray(person_box_px) * r]).numpy()[None]
    c, s = P.box_center_scale(person_box_px)
    crop = (P.box_affine(c, s) @ np.c_[wholebody_points(), np.ones(133)].T).T
    sx, sy = simcc_tables(crop)
    save_onnx_constant_model(os.path.join(folder, "yolox_l.onnx"), "images", (1, 3, 640, 640), [("output", table)])
    save_onnx_constant_model(os.path.join(folder, "DWPose", "dw-ll_ucoco_384.onnx"), "input", (1, 3, 384, 288),
                             [("simcc_x", sx.numpy()[None]), ("simcc_y", sy.numpy()[None])])
    q = np.round(crop * 2) / 2
    return (q / np.array(P.POSE_INPUT) * s + c - s / 2)[None]
