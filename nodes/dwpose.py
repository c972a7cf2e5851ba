"""DWPose (YOLOX-l person detector + DWPose-l 384x288 whole-body keypoints) around controlnet_aux.

MuseV's ``dwpose_body_hand`` control images: body (18-point OpenPose skeleton) + both hands, no
face, keypoint threshold 0.3, black canvas, detected at ``min(H, W)`` and drawn with
controlnet_aux's own ``draw_pose``.  Weights are read from ``models/dwpose/`` (searched
recursively), never downloaded.  Three interchangeable file sets of the same two networks:

=============  ======================================================  ===========================
backend        files (detector, pose model)                            runs with
=============  ======================================================  ===========================
onnx           yolox_l.onnx, dw-ll_ucoco_384.onnx                       onnxruntime
torchscript    yolox_l.torchscript.pt, dw-ll_ucoco_384_bs5.torchscript.pt   torch only
openmmlab      yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth,     controlnet_aux's
               dw-ll_ucoco_384.pth                                      DWposeDetector (mmpose,
                                                                        mmdet, mmcv) = MuseV's path
=============  ======================================================  ===========================

The onnx/torchscript backends run the networks with the numeric pre/post-processing of
``musev_core.pose`` (letterbox 640, YOLOX decode + NMS, persons > 0.5, top-down affine crop with
1.25 padding, SimCC decode), which is what mmdet/mmpose do for these two models.  That code exists
only for MuseV parity: ``rtmlib`` runs the same ONNX files without mmcv but scores keypoints and
filters boxes differently from mmpose/mmdet (see ``musev_core/pose.py``), so it is not used.
"""
import contextlib
import importlib.util
import logging
import os
import re

import numpy as np

import folder_paths

from ..musev_core import pose as P
from .host import MuseVInputError
from .paths import register_folder

log = logging.getLogger("musev")

FOLDER = "dwpose"
EXTENSIONS = {".onnx", ".pt", ".pth", ".torchscript", ".ckpt"}

BACKENDS = {
    "onnx": {
        "det": ("yolox_l.onnx",),
        "pose": ("dw-ll_ucoco_384.onnx",),
        "needs": ("onnxruntime",),
        "source": "the DWPose release (Hugging Face yzd-v/DWPose; also the files comfyui_controlnet_aux keeps)",
    },
    "torchscript": {
        "det": ("yolox_l.torchscript.pt",),
        "pose": ("dw-ll_ucoco_384_bs5.torchscript.pt", "dw-ll_ucoco_384.torchscript.pt"),
        "needs": (),
        "source": "Hugging Face hr16/yolox-onnx and hr16/DWPose-TorchScript-BatchSize5",
    },
    "openmmlab": {
        "det": ("yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth",),
        "pose": ("dw-ll_ucoco_384.pth",),
        "needs": ("mmpose", "mmdet", "mmcv"),
        "source": "OpenMMLab's YOLOX-l COCO checkpoint and Hugging Face wanghaofan/dw-ll_ucoco_384",
    },
}
AUTO_ORDER = ("openmmlab", "onnx", "torchscript")
DETECTOR_CHOICES = ("auto",) + tuple(BACKENDS)


def register():
    register_folder(FOLDER, EXTENSIONS)


def folders():
    register()
    return list(folder_paths.get_folder_paths(FOLDER))


def _find(names):
    for root in folders():
        if not os.path.isdir(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames.sort()
            for name in names:
                if name in filenames:
                    return os.path.join(dirpath, name)
    return None


# How to install a backend's optional packages (not in requirements.txt: onnxruntime and
# onnxruntime-gpu share one module, so the pack must not pull the CPU one over a GPU install).
INSTALL = {"onnxruntime": "pip install onnxruntime   (CPU; or onnxruntime-gpu for CUDA, not both)",
           "mmpose": "pip install -U openmim && mim install mmcv mmdet mmpose",
           "mmdet": "pip install -U openmim && mim install mmcv mmdet mmpose",
           "mmcv": "pip install -U openmim && mim install mmcv mmdet mmpose"}


def missing_modules(backend):
    return [m for m in BACKENDS[backend]["needs"] if importlib.util.find_spec(m) is None]


def install_lines(modules):
    return "".join(f"\n  {line}" for line in dict.fromkeys(INSTALL.get(m, f"pip install {m}") for m in modules))


def find_weights(backend):
    """(detector path, pose path) of one backend, or None when a file is missing."""
    spec = BACKENDS[backend]
    det, pose = _find(spec["det"]), _find(spec["pose"])
    return (det, pose) if det and pose else None


def _expected_text():
    lines = []
    for name, spec in BACKENDS.items():
        needs = f" (needs {', '.join(spec['needs'])})" if spec["needs"] else " (torch only)"
        lines.append(f"  {name}{needs}: {spec['det'][0]} + {spec['pose'][0]}  [{spec['source']}]")
    return "\n".join(lines)


def resolve(choice, node="PoseVideoCondition", input_name="detector"):
    """(backend, det path, pose path) for a detector choice, or a clear MuseVInputError."""
    where = ", ".join(folders())
    if choice == "auto":
        found = []
        for backend in AUTO_ORDER:
            paths = find_weights(backend)
            if paths is None:
                continue
            if missing_modules(backend):
                found.append((backend, missing_modules(backend)))
                continue
            return (backend,) + paths
        if found:
            detail = "; ".join(f"{b} weights are there but {', '.join(m)} is not installed" for b, m in found)
            raise MuseVInputError(
                f"{node}: DWPose cannot run ({detail}). Install the missing package(s) into ComfyUI's Python:"
                f"{install_lines(m for _, ms in found for m in ms)}\nor put another file set "
                f"in models/{FOLDER}/ ({where}):\n{_expected_text()}")
        raise MuseVInputError(
            f"{node}: the '{input_name}' needs DWPose weights (YOLOX-l + DWPose-l 384x288), none found in "
            f"models/{FOLDER}/ ({where}). Put ONE of these file pairs there (any sub-folder) and run again; "
            f"nothing is downloaded at run time:\n{_expected_text()}\nOr render the poses elsewhere and use "
            "mode 'pose video'.")
    if choice not in BACKENDS:
        raise MuseVInputError(f"{node}: '{input_name}' = {choice!r} is not one of {', '.join(DETECTOR_CHOICES)}")
    paths = find_weights(choice)
    spec = BACKENDS[choice]
    if paths is None:
        raise MuseVInputError(
            f"{node}: '{input_name}' = {choice!r} needs {spec['det'][0]} and {spec['pose'][0]} in models/{FOLDER}/ "
            f"({where}), from {spec['source']}; not found. Put them there (any sub-folder), or pick another "
            f"detector:\n{_expected_text()}")
    missing = missing_modules(choice)
    if missing:
        raise MuseVInputError(
            f"{node}: '{input_name}' = {choice!r} needs the Python package(s) {', '.join(missing)}, which are not "
            f"installed. Install them into ComfyUI's Python:{install_lines(missing)}\nor pick another detector "
            "(onnx: onnxruntime; torchscript: torch only).")
    return (choice,) + paths


# ---------------------------------------------------------------------------------------------
# network runners

def _torch_device():
    import comfy.model_management
    return comfy.model_management.get_torch_device()


def _run_batched(run, x, fixed_batch):
    """Run ``run`` on ``x`` (a numpy batch) in chunks of a model's fixed batch size (zero-padded)."""
    if not fixed_batch or x.shape[0] == fixed_batch:
        return run(x)
    outs = []
    for i in range(0, x.shape[0], fixed_batch):
        chunk = x[i:i + fixed_batch]
        n = chunk.shape[0]
        if n < fixed_batch:
            chunk = np.concatenate([chunk, np.zeros((fixed_batch - n,) + chunk.shape[1:], chunk.dtype)])
        outs.append([o[:n] for o in run(chunk)])
    return [np.concatenate([o[k] for o in outs]) for k in range(len(outs[0]))]


class _TorchScriptNet:
    def __init__(self, path):
        import torch
        self.torch = torch
        try:
            self.net = torch.jit.load(path, map_location="cpu").eval()
        except Exception as e:  # a clear message instead of a TorchScript stack trace
            raise MuseVInputError(f"PoseVideoCondition: {os.path.basename(path)} is not a loadable TorchScript "
                                  f"file ({type(e).__name__}: {e}); re-download it") from None
        m = re.search(r"_bs(\d+)", os.path.basename(path))
        self.fixed_batch = int(m.group(1)) if m else None
        self.device = "cpu"

    def to(self, device):
        try:
            self.net.to(device)
            self.device = device
        except Exception:           # scripted for the CPU only: stay there
            self.net.to("cpu")
            self.device = "cpu"

    def __call__(self, x):
        return _run_batched(self._run, np.ascontiguousarray(x, dtype=np.float32), self.fixed_batch)

    def _run(self, x):
        torch = self.torch
        with torch.inference_mode():
            out = self.net(torch.from_numpy(x).to(self.device))
        if isinstance(out, torch.Tensor):
            out = [out]
        return [o.float().cpu().numpy() for o in out]


class _OnnxNet:
    def __init__(self, path):
        import onnxruntime as ort
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.sess = ort.InferenceSession(path, providers=providers or None)
        except Exception as e:
            raise MuseVInputError(f"PoseVideoCondition: {os.path.basename(path)} is not a loadable ONNX file "
                                  f"({type(e).__name__}: {e}); re-download it") from None
        inp = self.sess.get_inputs()[0]
        self.name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None

    def to(self, device):
        pass

    def __call__(self, x):
        return _run_batched(self._run, np.ascontiguousarray(x, dtype=np.float32), self.fixed_batch)

    def _run(self, x):
        return [np.asarray(o) for o in self.sess.run(None, {self.name: x})]


class _NetworkWholebody:
    """YOLOX + DWPose run through plain networks (onnx / torchscript) with musev_core's maths."""

    def __init__(self, det_net, pose_net):
        self.det = det_net
        self.pose = pose_net

    def to(self, device):
        self.det.to(device)
        self.pose.to(device)
        return self

    def __call__(self, bgr):
        import cv2
        h, w = bgr.shape[:2]
        r = P.letterbox_ratio(h, w)
        resized = cv2.resize(bgr, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR)
        padded = np.full(P.DET_INPUT + (3,), 114, dtype=np.uint8)
        padded[:resized.shape[0], :resized.shape[1]] = resized
        raw = self.det(padded.transpose(2, 0, 1)[None].astype(np.float32))[0]
        boxes = P.person_boxes(P.yolox_decode(raw.reshape(-1, raw.shape[-1])), r)
        if len(boxes) == 0:                      # mmpose: no box = the whole image
            boxes = np.array([[0.0, 0.0, float(w), float(h)]])
        rgb = bgr[..., ::-1]
        crops, centers, scales = [], [], []
        for box in boxes:
            c, s = P.box_center_scale(box)
            crop = cv2.warpAffine(np.ascontiguousarray(rgb), P.box_affine(c, s), P.POSE_INPUT, flags=cv2.INTER_LINEAR)
            crops.append(((crop - P.POSE_MEAN) / P.POSE_STD).transpose(2, 0, 1))
            centers.append(c)
            scales.append(s)
        outs = self.pose(np.stack(crops).astype(np.float32))
        if len(outs) < 2:
            raise MuseVInputError("PoseVideoCondition: the DWPose pose model returned one output; a SimCC model "
                                  "(simcc_x, simcc_y) is expected: check the file")
        kps, scs = [], []
        for i in range(len(boxes)):
            k, v = P.simcc_decode(outs[0][i], outs[1][i], centers[i], scales[i])
            kps.append(k)
            scs.append(v)
        if kps[0].shape[0] != P.N_WHOLEBODY:
            raise MuseVInputError(f"PoseVideoCondition: the pose model gives {kps[0].shape[0]} keypoints; DWPose "
                                  f"whole-body models give {P.N_WHOLEBODY}: check the file")
        return P.wholebody_to_openpose(np.stack(kps), np.stack(scs))


@contextlib.contextmanager
def _offline():
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _openmmlab_wholebody(det_path, pose_path):
    # controlnet_aux's own Wholebody (mmdet + mmpose) with its bundled configs and LOCAL checkpoints.
    with _offline():
        from controlnet_aux.dwpose.wholebody import Wholebody
        return Wholebody(det_ckpt=det_path, pose_ckpt=pose_path, device="cpu")


class DWPose:
    """``detect(rgb uint8 HxWx3) -> (keypoints (N, 134, 2) px, scores (N, 134))`` in
    controlnet_aux's OpenPose-ordered whole-body layout."""

    def __init__(self, backend, det_path, pose_path):
        self.backend = backend
        self.paths = (det_path, pose_path)
        if backend == "openmmlab":
            self.impl = _openmmlab_wholebody(det_path, pose_path)
        elif backend == "onnx":
            self.impl = _NetworkWholebody(_OnnxNet(det_path), _OnnxNet(pose_path))
        elif backend == "torchscript":
            self.impl = _NetworkWholebody(_TorchScriptNet(det_path), _TorchScriptNet(pose_path))
        else:
            raise MuseVInputError(f"unknown DWPose backend {backend!r}")
        self.device = "cpu"

    def to(self, device):
        if str(device) != str(self.device):
            try:
                self.impl.to(device)
                self.device = device
            except Exception as e:   # keep working on CPU rather than fail
                log.warning("[MuseV] DWPose stays on the CPU (%s)", e)
        return self

    def detect(self, rgb):
        import torch
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        with torch.inference_mode():
            kp, sc = self.impl(bgr)
        return np.asarray(kp, dtype=np.float64), np.asarray(sc, dtype=np.float64)


_CACHE = {}


def load(choice="auto", node="PoseVideoCondition"):
    backend, det, pose = resolve(choice, node)
    key = (backend, det, pose)
    if key not in _CACHE:
        _CACHE.clear()
        log.info("[MuseV] DWPose: %s backend, %s + %s", backend, det, pose)
        _CACHE[key] = DWPose(backend, det, pose)
    return _CACHE[key]


# ---------------------------------------------------------------------------------------------
# drawing (controlnet_aux's own functions)

def draw(keypoints, scores, width, height, canvas_width=None, canvas_height=None):
    """MuseV's dwpose_body_hand image: body + both hands, no face, threshold 0.3, black canvas,
    drawn by controlnet_aux's ``draw_pose`` at the detect canvas size, then resized to
    width x height (bilinear) like controlnet_aux/MMCM.  ``keypoints`` are pixels of the canvas.
    Returns uint8 (height, width, 3)."""
    import cv2
    cw, ch = canvas_width or width, canvas_height or height
    try:
        from controlnet_aux.dwpose import draw_pose
        import matplotlib  # noqa: F401  (controlnet_aux's hand drawing imports it lazily)
    except ImportError as e:
        raise MuseVInputError(
            f"PoseVideoCondition: drawing poses needs controlnet_aux and matplotlib ({e}); install them into "
            "ComfyUI's Python: pip install controlnet_aux matplotlib") from None
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 134, 2)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1, 134)
    if kp.shape[0] == 0:
        img = np.zeros((ch, cw, 3), dtype=np.uint8)
    else:
        img = draw_pose(P.pose_dict(kp, sc, cw, ch), ch, cw)
    if (cw, ch) != (width, height):
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    return img


def detect_frame(detector, rgb):
    """Keypoints of an RGB uint8 frame already at the generation size, detected at ``min(H, W)``
    (controlnet_aux's ``resize_image`` rule, MuseV's detect_resolution).  Returns (keypoints in
    generation pixels (N, 134, 2), scores (N, 134), detect canvas (width, height))."""
    from controlnet_aux.util import HWC3, resize_image
    h, w = rgb.shape[:2]
    small = resize_image(HWC3(np.ascontiguousarray(rgb)), min(h, w))
    ch, cw = small.shape[:2]
    kp, sc = detector.detect(small)
    return kp * np.array([w / cw, h / ch]), sc, (cw, ch)


def draw_frame(kp_gen, scores, width, height, canvas, similarity=None):
    """Draw detected keypoints (generation pixels) at the detect canvas, optionally aligned first."""
    cw, ch = canvas
    if similarity is not None and not similarity.identity:
        kp_gen = P.align_wholebody(kp_gen, scores, similarity)
    kp = np.asarray(kp_gen) / np.array([width / cw, height / ch])
    return draw(kp, scores, width, height, cw, ch)


# ---------------------------------------------------------------------------------------------
# reading a rendered OpenPose image back (pose-video alignment)

def parse_rendered_body(rgb, tolerance=60, min_area=4):
    """Body joints of an OpenPose-style rendering (joint discs in the 18 OpenPose colours, limbs at
    60 % brightness): every bright pixel is given its nearest joint colour, thin strokes (hand
    lines) are eroded away, and a colour with exactly one remaining blob gives that joint's
    centre.  Returns ((18, 2) pixels, (18,) scores 1/0).  Meant for one person; a joint whose
    colour appears as several blobs (several people, hand points sharing the knee's blue) is
    reported missing."""
    import cv2
    img = np.asarray(rgb)
    if img.dtype != np.uint8:
        img = np.clip(np.asarray(img, dtype=np.float64) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    img = img[..., :3].astype(np.int16)
    colors = np.array(P.BODY_COLORS, dtype=np.int16)
    bright = img.max(-1) >= 200
    dist = np.abs(img[:, :, None, :] - colors[None, None]).max(-1)
    nearest = dist.argmin(-1)
    ok = bright & (dist.min(-1) <= tolerance)
    kernel = np.ones((3, 3), np.uint8)
    pts = np.zeros((18, 2))
    scores = np.zeros(18)
    for j in range(18):
        mask = (ok & (nearest == j)).astype(np.uint8)
        if not mask.any():
            continue
        mask = cv2.erode(mask, kernel, iterations=2)
        n, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
        blobs = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= min_area]
        if len(blobs) == 1:
            # centre of the un-eroded disc around the blob = centroid of the blob (symmetric erosion)
            pts[j] = cents[blobs[0]]
            scores[j] = 1.0
    return pts, scores
