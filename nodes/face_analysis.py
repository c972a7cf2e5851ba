"""Face embeddings for IP-Adapter-FaceID from InsightFace's ``buffalo_l`` ONNX files, run with
onnxruntime (no ``insightface`` package, no download at run time).

What MuseV does (MMCM ``InsightFaceExtractorNormEmb`` = insightface 0.7.3 ``FaceAnalysis(name=
"buffalo_l", allowed_modules=["detection", "recognition"])``, ``prepare(det_size=(640, 640))``),
reproduced step by step:

1. detector ``det_10g.onnx`` (SCRFD): the image is resized (``cv2.resize``, bilinear) to fit 640x640
   keeping its aspect (``int`` sizes), pasted top-left on black; blob ``(x - 127.5) / 128``, channels
   swapped (``swapRB``); per stride (8, 16, 32; 2 anchors per cell) scores >= 0.5 are kept, boxes =
   anchor centre -/+ distance·stride, 5 key points = centre + offset·stride, all divided by the resize
   scale; sorted by score, NMS at IoU 0.4 (``+1`` pixel areas);
2. the FIRST face of that order (the highest score after NMS), as MuseV takes ``faces[0]``;
3. alignment: similarity transform (Umeyama, as ``skimage.transform.SimilarityTransform``) of the 5
   points onto the ArcFace 112x112 template, ``cv2.warpAffine`` (bilinear, black border);
4. recognition ``w600k_r50.onnx``: blob ``(x - 127.5) / 127.5``, channels swapped; the 512-d output
   divided by its L2 norm (``normed_embedding``).

InsightFace treats its input as BGR (OpenCV order).  MuseV hands it the image in RGB order (MMCM
converts to BGR for PIL and back), so MuseV's embeddings are computed on channel-swapped pixels;
``CHANNEL_MUSEV`` reproduces that, ``CHANNEL_INSIGHTFACE`` gives InsightFace BGR as it expects (how
IP-Adapter-FaceID was trained and how other FaceID nodes call it).

Files are looked for in MuseV's place (``models/musev/IP-Adapter/models/image_encoder/models/
buffalo_l/``, also ``IP-Adapter/image_encoder/models/buffalo_l/`` as MuseV's config names it) and
in IPAdapter_plus' place (``models/insightface/models/buffalo_l/``).
"""
import logging
import os

import numpy as np

import folder_paths

from .host import FileModelCache, MuseVInputError

log = logging.getLogger("comfyui-musev")

DET_FILE = "det_10g.onnx"
REC_FILE = "w600k_r50.onnx"
BUFFALO_URL = "https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
DET_SIZE = (640, 640)          # (width, height), MuseV's det_size
DET_THRESH = 0.5
NMS_THRESH = 0.4
DET_MEAN, DET_STD = 127.5, 128.0
REC_MEAN, REC_STD = 127.5, 127.5      # w600k_r50 (a PyTorch export: no Sub/Mul input nodes)
ARCFACE_SIZE = 112
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float32)

CHANNEL_MUSEV = "RGB (as MuseV)"
CHANNEL_INSIGHTFACE = "BGR (as InsightFace)"
CHANNEL_CHOICES = (CHANNEL_MUSEV, CHANNEL_INSIGHTFACE)

# (folder key, path relative to it, label)
PLACES = (
    ("musev", "IP-Adapter/models/image_encoder/models/buffalo_l", "MuseV's place"),
    ("musev", "IP-Adapter/image_encoder/models/buffalo_l", "MuseV's config path"),
    ("insightface", "models/buffalo_l", "IPAdapter_plus' place"),
)
AUTO = "auto"


# ------------------------------------------------------------------------------------------------
# Where the files are

def _roots(folder):
    from . import paths
    if folder == "musev":
        paths.register()
        return list(folder_paths.get_folder_paths(paths.FOLDER))
    roots = []
    if folder in folder_paths.folder_names_and_paths:
        roots += list(folder_paths.get_folder_paths(folder))
    default = os.path.join(folder_paths.models_dir, folder)
    if default not in roots:
        roots.append(default)
    return roots


def choice_name(folder, rel):
    return f"{folder}/{rel}"


def choices():
    """``auto`` + every known place (always listed, so saved workflows validate; a missing folder gets
    a clear error when the node runs)."""
    return [AUTO] + [choice_name(f, r) for f, r, _ in PLACES]


def _has_files(d):
    return all(os.path.isfile(os.path.join(d, n)) for n in (DET_FILE, REC_FILE))


def _candidates(choice):
    places = PLACES if choice == AUTO else [p for p in PLACES if choice_name(p[0], p[1]) == choice]
    out = []
    for folder, rel, label in places:
        for root in _roots(folder):
            out.append((os.path.join(root, rel), label))
    return out


def _where_text():
    lines = []
    for folder, rel, label in PLACES:
        root = _roots(folder)[0]
        lines.append(f"  {os.path.join(root, rel)}{os.sep}   ({label})")
    return "\n".join(lines)


def find_buffalo(choice=AUTO, node="MuseVFaceID", input_name="face_analysis"):
    """The folder holding ``det_10g.onnx`` and ``w600k_r50.onnx`` for a choice, or a clear error that
    lists the files and where they go."""
    if choice not in choices():
        raise MuseVInputError(f"{node}: '{input_name}' = {choice!r} is not one of {', '.join(choices())}")
    partial = []
    for d, label in _candidates(choice):
        if _has_files(d):
            return d
        if os.path.isdir(d):
            partial.append(d)
    got = ""
    if partial:
        have = sorted(set(os.listdir(partial[0])))
        got = f" {partial[0]} exists but holds {have or 'nothing'}."
    raise MuseVInputError(
        f"{node}: '{input_name}' ({choice}): the InsightFace buffalo_l files {DET_FILE} (face detector) and "
        f"{REC_FILE} (face recognition) were not found.{got} Unzip buffalo_l.zip ({BUFFALO_URL}) so that both "
        f"files sit in one of these folders (nothing is downloaded at run time):\n{_where_text()}\n"
        "Or connect your own 512-d face embedding to 'face_embeds' instead of an image.")


# ------------------------------------------------------------------------------------------------
# ONNX sessions

_SESSIONS = FileModelCache(4)


def _ort(node):
    try:
        import onnxruntime
    except ImportError:
        raise MuseVInputError(
            f"{node}: face detection needs the Python package onnxruntime, which is not installed in ComfyUI's "
            "Python: run `pip install onnxruntime` (or onnxruntime-gpu) there and restart ComfyUI; or connect "
            "your own 512-d face embedding to 'face_embeds'.") from None
    return onnxruntime


def open_session(path, node="MuseVFaceID"):
    ort = _ort(node)

    def build():
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            return ort.InferenceSession(path, providers=providers or None)
        except Exception as e:  # noqa: BLE001  (onnxruntime raises its own exception types)
            raise MuseVInputError(f"{node}: {os.path.basename(path)} is not a loadable ONNX model "
                                  f"({type(e).__name__}: {str(e)[:200]}); download buffalo_l again") from None
    return _SESSIONS.get_or_build(FileModelCache.key(path), build)


# ------------------------------------------------------------------------------------------------
# SCRFD detector maths (insightface model_zoo/scrfd.py, retinaface.py)

DET_LAYOUTS = {          # number of outputs -> (strides, anchors per cell, has key points)
    6: ((8, 16, 32), 2, False),
    9: ((8, 16, 32), 2, True),
    10: ((8, 16, 32, 64, 128), 1, False),
    15: ((8, 16, 32, 64, 128), 1, True),
}


def anchor_centers(height, width, stride, num_anchors):
    """``(height·width·num_anchors, 2)`` (x, y) centres, row-major, each repeated per anchor."""
    centers = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
    centers = (centers * stride).reshape((-1, 2))
    if num_anchors > 1:
        centers = np.stack([centers] * num_anchors, axis=1).reshape((-1, 2))
    return centers


def distance2bbox(points, distance):
    return np.stack([points[:, 0] - distance[:, 0], points[:, 1] - distance[:, 1],
                     points[:, 0] + distance[:, 2], points[:, 1] + distance[:, 3]], axis=-1)


def distance2kps(points, distance):
    preds = []
    for i in range(0, distance.shape[1], 2):
        preds.append(points[:, i % 2] + distance[:, i])
        preds.append(points[:, i % 2 + 1] + distance[:, i + 1])
    return np.stack(preds, axis=-1)


def nms(dets, thresh=NMS_THRESH):
    """Indices kept by greedy NMS over ``(n, 5)`` ``[x1, y1, x2, y2, score]`` (insightface's ``+1``
    pixel areas), best first."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def letterbox(img, size=DET_SIZE):
    """``(det_img (h, w, 3) uint8, det_scale)``: resized to fit ``size`` = (w, h), pasted top-left."""
    import cv2
    in_w, in_h = size
    im_ratio = float(img.shape[0]) / img.shape[1]
    model_ratio = float(in_h) / in_w
    if im_ratio > model_ratio:
        new_h = in_h
        new_w = int(new_h / im_ratio)
    else:
        new_w = in_w
        new_h = int(new_w * im_ratio)
    if new_w < 1 or new_h < 1:
        raise ValueError(f"image {img.shape[1]}x{img.shape[0]} is too thin to look for faces")
    det_scale = float(new_h) / img.shape[0]
    resized = cv2.resize(img, (new_w, new_h))
    det_img = np.zeros((in_h, in_w, 3), dtype=np.uint8)
    det_img[:new_h, :new_w, :] = resized
    return det_img, det_scale


def decode(net_outs, input_height, input_width, strides, num_anchors, use_kps, threshold=DET_THRESH):
    """Per-stride outputs -> ``(scores (n, 1), boxes (n, 4), kps (n, 5, 2) or None)`` above threshold,
    in the detector's input pixels."""
    fmc = len(strides)
    scores_list, bboxes_list, kpss_list = [], [], []
    for idx, stride in enumerate(strides):
        scores = net_outs[idx]
        bbox_preds = net_outs[idx + fmc] * stride
        kps_preds = net_outs[idx + fmc * 2] * stride if use_kps else None
        centers = anchor_centers(input_height // stride, input_width // stride, stride, num_anchors)
        if scores.shape[0] != centers.shape[0]:
            raise ValueError(f"detector output {idx} has {scores.shape[0]} rows for {centers.shape[0]} anchors")
        pos = np.where(scores >= threshold)[0]
        scores_list.append(scores[pos])
        bboxes_list.append(distance2bbox(centers, bbox_preds)[pos])
        if use_kps:
            kpss = distance2kps(centers, kps_preds)
            kpss_list.append(kpss.reshape((kpss.shape[0], kpss.shape[1] // 2, 2))[pos])
    return (np.vstack(scores_list), np.vstack(bboxes_list),
            np.vstack(kpss_list) if use_kps else None)


# ------------------------------------------------------------------------------------------------
# Alignment (insightface utils/face_align.py)

def similarity_transform(src, dst):
    """Least-squares similarity ``(2, 3)`` matrix mapping ``src`` points onto ``dst`` (Umeyama 1991
    with scale, as ``skimage.transform.SimilarityTransform.estimate``)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_d, dst_d = src - src_mean, dst - dst_mean
    a = dst_d.T @ src_d / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    t = np.eye(dim + 1, dtype=np.float64)
    u, s, vt = np.linalg.svd(a)
    rank = np.linalg.matrix_rank(a)
    if rank == 0:
        raise ValueError("degenerate face key points (all in one place)")
    if rank == dim - 1:
        if np.linalg.det(u) * np.linalg.det(vt) > 0:
            t[:dim, :dim] = u @ vt
        else:
            keep = d[dim - 1]
            d[dim - 1] = -1
            t[:dim, :dim] = u @ np.diag(d) @ vt
            d[dim - 1] = keep
    else:
        t[:dim, :dim] = u @ np.diag(d) @ vt
    scale = 1.0 / src_d.var(axis=0).sum() * (s @ d)
    t[:dim, dim] = dst_mean - scale * (t[:dim, :dim] @ src_mean.T)
    t[:dim, :dim] *= scale
    return t[:2, :]


def norm_crop(img, kps, size=ARCFACE_SIZE):
    """The face aligned onto the ArcFace template: ``(size, size, 3)`` uint8."""
    import cv2
    if size % 112:
        raise ValueError(f"ArcFace crops are multiples of 112, got {size}")
    m = similarity_transform(kps, ARCFACE_DST * (size / 112.0))
    return cv2.warpAffine(img, m, (size, size), borderValue=0.0)


# ------------------------------------------------------------------------------------------------
# The two networks

class FaceAnalysis:
    """``det_10g`` + ``w600k_r50`` as insightface's FaceAnalysis runs them (detection, recognition)."""

    def __init__(self, det_session, rec_session, source="", det_size=DET_SIZE, det_thresh=DET_THRESH,
                 nms_thresh=NMS_THRESH):
        self.det = det_session
        self.rec = rec_session
        self.source = source
        self.det_thresh = det_thresh
        self.nms_thresh = nms_thresh
        outs = self.det.get_outputs()
        if len(outs) not in DET_LAYOUTS:
            raise ValueError(f"{DET_FILE} has {len(outs)} outputs, not an SCRFD face detector (9 or 15 expected)")
        self.strides, self.num_anchors, self.use_kps = DET_LAYOUTS[len(outs)]
        if not self.use_kps:
            raise ValueError(f"{DET_FILE} gives no face key points ({len(outs)} outputs): FaceID needs the 5 points "
                             "to align the face; use buffalo_l's det_10g.onnx")
        self.det_batched = len(outs[0].shape) == 3
        self.det_names = [o.name for o in outs]
        inp = self.det.get_inputs()[0]
        self.det_input = inp.name
        shape = inp.shape
        fixed = None if isinstance(shape[2], str) or shape[2] is None else (int(shape[3]), int(shape[2]))
        if fixed is not None and fixed != tuple(det_size):
            log.warning("%s: the detector has a fixed %dx%d input; using it instead of %dx%d",
                        DET_FILE, fixed[0], fixed[1], det_size[0], det_size[1])
        self.det_size = fixed or tuple(det_size)
        rin = self.rec.get_inputs()[0]
        rshape = rin.shape
        if len(self.rec.get_outputs()) != 1 or len(rshape) != 4 or rshape[2] != rshape[3] or rshape[2] % 112:
            raise ValueError(f"{REC_FILE} is not an ArcFace recognition model (input {rshape}, "
                             f"{len(self.rec.get_outputs())} outputs)")
        self.rec_input = rin.name
        self.rec_size = int(rshape[2])
        self.rec_names = [o.name for o in self.rec.get_outputs()]

    def detect(self, img):
        """``(dets (n, 5) float32 [x1, y1, x2, y2, score], kps (n, 5, 2))`` in ``img`` pixels, best first.
        ``img``: ``(h, w, 3)`` uint8 in the order InsightFace takes as BGR."""
        import cv2
        det_img, det_scale = letterbox(img, self.det_size)
        in_w, in_h = self.det_size
        blob = cv2.dnn.blobFromImage(det_img, 1.0 / DET_STD, (in_w, in_h), (DET_MEAN, DET_MEAN, DET_MEAN),
                                     swapRB=True)
        outs = self.det.run(self.det_names, {self.det_input: blob})
        if self.det_batched:
            outs = [o[0] for o in outs]
        scores, boxes, kpss = decode(outs, blob.shape[2], blob.shape[3], self.strides, self.num_anchors,
                                     self.use_kps, self.det_thresh)
        order = scores.ravel().argsort()[::-1]
        boxes = boxes / det_scale
        kpss = kpss / det_scale
        pre_det = np.hstack((boxes, scores)).astype(np.float32, copy=False)[order, :]
        keep = nms(pre_det, self.nms_thresh)
        return pre_det[keep, :], kpss[order][keep]

    def embedding(self, img, kps):
        """The raw (not normalised) recognition output of the face at ``kps``."""
        import cv2
        aligned = norm_crop(img, kps, self.rec_size)
        blob = cv2.dnn.blobFromImages([aligned], 1.0 / REC_STD, (self.rec_size, self.rec_size),
                                      (REC_MEAN, REC_MEAN, REC_MEAN), swapRB=True)
        return self.rec.run(self.rec_names, {self.rec_input: blob})[0].flatten()

    def normed_embedding(self, img):
        """``(embedding / ||embedding|| (d,) float32, face box)`` of the first face, or ``(None, None)``."""
        dets, kpss = self.detect(img)
        if dets.shape[0] == 0:
            return None, None
        emb = self.embedding(img, kpss[0]).astype(np.float32)
        norm = float(np.linalg.norm(emb))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError(f"{REC_FILE} returned a zero or non-finite embedding")
        return emb / norm, dets[0]


def load_face_analysis(choice=AUTO, node="MuseVFaceID", input_name="face_analysis"):
    folder = find_buffalo(choice, node, input_name)
    det = open_session(os.path.join(folder, DET_FILE), node)
    rec = open_session(os.path.join(folder, REC_FILE), node)
    try:
        return FaceAnalysis(det, rec, source=folder)
    except ValueError as e:
        raise MuseVInputError(f"{node}: '{input_name}' ({folder}): {e}") from None


# ------------------------------------------------------------------------------------------------
# ComfyUI images -> embeddings

def to_uint8(images):
    """ComfyUI IMAGE ``(n, H, W, 3)`` floats in [0, 1] -> ``(n, H, W, 3)`` uint8 RGB (rounded: an
    8-bit image loaded by LoadImage comes back exactly)."""
    import torch
    x = images[..., :3].detach().float().clamp(0.0, 1.0).cpu()
    return (x * 255.0).round().to(torch.uint8).numpy()


def face_embeddings(analysis, images, channel_order=CHANNEL_MUSEV, node="MuseVFaceID", input_name="image",
                    note=""):
    """``(n, d)`` float32 torch tensor: the normed embedding of the first face of each image; an image
    without a face is a MuseVInputError naming it."""
    import torch
    if channel_order not in CHANNEL_CHOICES:
        raise MuseVInputError(f"{node}: 'channel_order' = {channel_order!r} is not one of {', '.join(CHANNEL_CHOICES)}")
    import comfy.model_management
    frames = to_uint8(images)
    out = []
    for i, rgb in enumerate(frames):
        comfy.model_management.throw_exception_if_processing_interrupted()
        img = np.ascontiguousarray(rgb if channel_order == CHANNEL_MUSEV else rgb[..., ::-1])
        try:
            emb, box = analysis.normed_embedding(img)
        except ValueError as e:
            raise MuseVInputError(f"{node}: '{input_name}' image {i + 1} of {len(frames)}: {e}") from None
        if emb is None:
            h, w = rgb.shape[:2]
            raise MuseVInputError(
                f"{node}: no face found in '{input_name}' (image {i + 1} of {len(frames)}, {w}x{h}){note}. "
                "Give a photo with a clearly visible face (frontal, not tiny, not cut off), or connect your own "
                "512-d face embedding to 'face_embeds'.")
        log.info("%s: face found in '%s' image %d (box %s, score %.2f)", node, input_name, i + 1,
                 [int(round(v)) for v in box[:4]], float(box[4]))
        out.append(torch.from_numpy(emb.copy()))
    return torch.stack(out)
