"""Pose conditioning for MuseV's pose2video / video2video (spec §5.1, §6): pure numpy.

What lives here (no ComfyUI, no OpenCV):

* generation sizes and MuseV's centre-crop box;
* MuseV's frame-selection rules (``sample_rate``, ``video_has_condition``) as a plan;
* DWPose whole-body keypoints (133 COCO-WholeBody points, as the YOLOX-l + DWPose-l 384x288
  models output them) -> the OpenPose-ordered 134-point layout (neck inserted) that
  ``controlnet_aux`` uses, and -> the pose dictionary its drawing functions take (body 18 points,
  both hands, keypoint threshold 0.3, no face);
* the detector's numeric pre/post-processing (YOLOX grid decode, NMS, top-down affine box,
  SimCC arg-max decode), shared by the ONNX and TorchScript backends in ``nodes/dwpose.py``.
  Kept for MuseV parity: MuseV ran DWPose through mmdet/mmpose, whose rules these are.  ``rtmlib``
  (the mmcv-free runner of the same ONNX models) was measured against them on the same networks:
  the keypoint positions agree (6e-6 px) but its scores are not mmpose's (the *mean* of the SimCC x/y
  maxima instead of the smaller one: 35 of 133 points change visibility at MuseV's 0.3 threshold
  in a synthetic check), its YOLOX keeps every class (a chair becomes a pose crop; mmdet+controlnet_aux
  keep persons only), it has no TorchScript backend, and it requires opencv-python and
  opencv-contrib-python next to ComfyUI's opencv-python-headless.  So it would draw different
  skeletons than MuseV;
* pose alignment ("posealign", promised by MuseV and never released): one similarity transform
  (uniform scale + translation) that moves the driving video's first skeleton onto the condition
  image's skeleton, applied to every frame.

Coordinates are pixels ``(x, y)`` unless a name says ``normalized``.  Invisible points are
marked with a score below the threshold (detector output) or with ``-1`` coordinates (the
controlnet_aux pose dictionary convention).
"""
import math
from dataclasses import dataclass

import numpy as np

KEYPOINT_THRESHOLD = 0.3          # MuseV / controlnet_aux DWposeDetector

# OpenPose body order (controlnet_aux draw_bodypose, 18 points).
BODY_NAMES = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
              "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
NOSE, NECK, R_SHOULDER, L_SHOULDER, R_HIP, L_HIP = 0, 1, 2, 5, 8, 11
R_KNEE, R_ANKLE, L_KNEE, L_ANKLE = 9, 10, 12, 13
# Joint colours of the OpenPose rendering (RGB), index = body point; limbs are drawn at 60 %.
BODY_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
               (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
               (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))

# 134-point OpenPose-ordered whole-body layout (controlnet_aux Wholebody output).
N_WHOLEBODY = 133
BODY = slice(0, 18)
FOOT = slice(18, 24)
FACE = slice(24, 92)
LEFT_HAND = slice(92, 113)
RIGHT_HAND = slice(113, 134)
# COCO-WholeBody body point -> OpenPose body point (after the neck is inserted at 17).
_MMPOSE_IDX = (17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3)
_OPENPOSE_IDX = (1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17)

# Segments whose lengths measure a body's size for alignment (torso first: most reliable).
SIZE_SEGMENTS = ((NECK, R_HIP), (NECK, L_HIP), (R_SHOULDER, L_SHOULDER), (R_HIP, L_HIP),
                 (R_HIP, R_KNEE), (L_HIP, L_KNEE), (R_KNEE, R_ANKLE), (L_KNEE, L_ANKLE),
                 (NECK, NOSE))


# ---------------------------------------------------------------------------------------------
# sizes and crops (spec §5.1)

def floor64(value):
    """MuseV's size rule: ``int(v // 64 * 64)``."""
    return int(value // 64 * 64)


def generation_size(width, height, source_width, source_height, multiple=64):
    """(W, H) of the generation.  An explicit non-zero width/height is used as given; a zero one
    comes from the source (the condition image, else the video), floored to a multiple of 64
    like MuseV.  When only one side is given the other keeps the source's aspect ratio."""
    width, height = int(width), int(height)
    if width > 0 and height > 0:
        return width, height
    if source_width <= 0 or source_height <= 0:
        raise ValueError("no size: give width and height, or a source image")
    if width > 0:
        height = source_height * width / source_width
        return width, max(multiple, int(height // multiple * multiple))
    if height > 0:
        width = source_width * height / source_height
        return max(multiple, int(width // multiple * multiple)), height
    w = int(source_width // multiple * multiple)
    h = int(source_height // multiple * multiple)
    if w <= 0 or h <= 0:
        raise ValueError(f"the source is {source_width}x{source_height}, smaller than {multiple} pixels")
    return w, h


def center_crop_box(height, width, target_height, target_width):
    """MuseV's centre crop to the target aspect (keep the full height when the image is relatively
    wider, else the full width; box edges with ceil).  Returns ``(y0, y1, x0, x1)`` (exclusive
    ends).  MuseV's clamp to ``w-1``/``h-1`` (always dropping the last row and column) is not
    reproduced: an image already of the target aspect is not cropped."""
    if width / height >= target_width / target_height:
        keep = height * target_width / target_height
        x0 = math.ceil((width - keep) / 2)
        x1 = math.ceil(width - (width - keep) / 2)
        y0, y1 = 0, height
    else:
        keep = width * target_height / target_width
        y0 = math.ceil((height - keep) / 2)
        y1 = math.ceil(height - (height - keep) / 2)
        x0, x1 = 0, width
    x0, y0 = max(0, x0), max(0, y0)
    x1, y1 = min(width, max(x1, x0 + 1)), min(height, max(y1, y0 + 1))
    return y0, y1, x0, x1


def crop_resize_points(points, box, target_width, target_height):
    """Map pixel points of the source image through ``center_crop_box`` + resize to the target
    (pixel-centre convention).  ``points`` (..., 2); invisible rows are the caller's business."""
    y0, y1, x0, x1 = box
    sx = target_width / (x1 - x0)
    sy = target_height / (y1 - y0)
    p = np.asarray(points, dtype=np.float64).copy()
    p[..., 0] = (p[..., 0] - x0 + 0.5) * sx - 0.5
    p[..., 1] = (p[..., 1] - y0 + 0.5) * sy - 0.5
    return p


def detect_canvas(height, width, resolution):
    """Canvas size of controlnet_aux's ``resize_image(img, resolution)``: the short side scaled
    to ``resolution``, both sides rounded to multiples of 64 (MuseV: resolution = min(H, W))."""
    k = float(resolution) / min(height, width)
    return int(np.round(height * k / 64.0)) * 64, int(np.round(width * k / 64.0)) * 64


# ---------------------------------------------------------------------------------------------
# MuseV's frame selection (spec §6)

@dataclass(frozen=True)
class FramePlan:
    """Which clip frames give control images.

    ``frame_indices``: indices into the loaded clip (every ``sample_rate``-th frame) whose pose
    images are used, in order.  ``prepend_condition``: the condition image's own pose comes first
    (``video_has_condition`` False).  The hint batch is ``[condition pose(s)?] + poses of
    frame_indices``; its first ``n_vis`` images belong to the vision (condition) frame(s), the
    remaining ``frames`` to the generated frames."""
    frame_indices: tuple
    prepend_condition: bool
    n_vis: int
    frames: int
    sample_rate: int
    available: int          # generated frames the clip could give at this sample_rate

    @property
    def hints(self):
        return self.n_vis + self.frames


def sampled_count(n_frames, sample_rate):
    return (int(n_frames) + int(sample_rate) - 1) // int(sample_rate)


def plan_frames(n_frames, sample_rate=1, frame_count=0, video_has_condition=True, n_condition=1):
    """MuseV's video2video frame rules on a whole clip (no ``time_size`` clips: the sampler's
    windows take any length).

    * every ``sample_rate``-th frame of the clip is used (frame 0 first);
    * ``video_has_condition`` True: the first sampled frame's pose belongs to the condition image
      (the vision frame); the next ``frame_count`` poses drive the generated frames;
    * False: the condition image's own pose (one per condition image, ``n_condition``) is
      prepended; the first ``frame_count`` sampled poses drive the generated frames;
    * ``frame_count`` 0 = as many as the clip gives.  Raises ``ValueError`` when the clip is too
      short."""
    n_frames, sample_rate, frame_count = int(n_frames), int(sample_rate), int(frame_count)
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be at least 1, got {sample_rate}")
    if frame_count < 0:
        raise ValueError(f"the frame count must be 0 (all) or positive, got {frame_count}")
    if n_frames <= 0:
        raise ValueError("the clip has no frames")
    sampled = list(range(0, n_frames, sample_rate))
    if video_has_condition:
        available = len(sampled) - 1
        n_vis, lead = 1, 1
    else:
        if n_condition < 1:
            raise ValueError("video_has_condition False needs a condition image")
        available = len(sampled)
        n_vis, lead = int(n_condition), 0
    if available < 1:
        raise ValueError(
            f"the clip gives {len(sampled)} frame(s) at sample_rate {sample_rate} and the first one is the "
            "condition frame's pose, which leaves no frame to generate")
    frames = available if frame_count == 0 else frame_count
    if frames > available:
        raise ValueError(
            f"{frames} frames were requested but the clip gives only {available} at sample_rate {sample_rate} "
            f"({n_frames} loaded frame(s)" + (", the first of them is the condition frame's pose)" if lead else ")"))
    return FramePlan(frame_indices=tuple(sampled[:lead + frames]), prepend_condition=not video_has_condition,
                     n_vis=n_vis, frames=frames, sample_rate=sample_rate, available=available)


# ---------------------------------------------------------------------------------------------
# keypoint layouts

def wholebody_to_openpose(keypoints, scores, threshold=KEYPOINT_THRESHOLD):
    """COCO-WholeBody (N, 133, 2) keypoints + (N, 133) scores -> the OpenPose-ordered (N, 134)
    layout of controlnet_aux's ``Wholebody``: a neck (mean of both shoulders, score 1/0 when both
    shoulders are above ``threshold``) is inserted at 17 and the 17 body points are reordered."""
    kp = np.asarray(keypoints, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (N_WHOLEBODY, 2) or sc.shape != kp.shape[:2]:
        raise ValueError(f"expected (N, 133, 2) keypoints and (N, 133) scores, got {kp.shape} and {sc.shape}")
    info = np.concatenate([kp, sc[..., None]], axis=-1)
    neck = info[:, [5, 6]].mean(axis=1)
    neck[:, 2] = np.logical_and(info[:, 5, 2] > threshold, info[:, 6, 2] > threshold).astype(np.float64)
    info = np.insert(info, 17, neck, axis=1)
    info[:, list(_OPENPOSE_IDX)] = info[:, list(_MMPOSE_IDX)]
    return info[..., :2], info[..., 2]


def pose_dict(keypoints, scores, width, height, threshold=KEYPOINT_THRESHOLD):
    """OpenPose-ordered (N, 134, 2) pixel keypoints of a ``width`` x ``height`` canvas -> the
    dictionary controlnet_aux's ``draw_pose`` takes, built the way its ``DWposeDetector`` builds
    it: body candidates normalised, subset = point index or -1 (score <= threshold), hands with
    invisible points at -1 (left hands of every person, then right hands), and no face."""
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 134, 2).copy()
    sc = np.asarray(scores, dtype=np.float64).reshape(-1, 134)
    n = kp.shape[0]
    kp[..., 0] /= float(width)
    kp[..., 1] /= float(height)
    body = kp[:, BODY].reshape(n * 18, 2).copy()
    subset = np.where(sc[:, BODY] > threshold, np.arange(n * 18, dtype=np.float64).reshape(n, 18), -1.0)
    kp[sc < threshold] = -1
    hands = np.concatenate([kp[:, LEFT_HAND], kp[:, RIGHT_HAND]], axis=0)
    return {"bodies": {"candidate": body, "subset": subset}, "hands": hands,
            "faces": np.zeros((0, 68, 2))}


def main_person(keypoints, scores, threshold=KEYPOINT_THRESHOLD):
    """Index of the person whose visible body points span the largest box (alignment uses one
    person), or None when nobody has two visible body points."""
    best, best_area = None, -1.0
    for i in range(len(keypoints)):
        vis = np.asarray(scores[i][BODY]) > threshold
        if vis.sum() < 2:
            continue
        p = np.asarray(keypoints[i][BODY])[vis]
        area = float(np.ptp(p[:, 0]) * np.ptp(p[:, 1])) + 1e-6 * vis.sum()
        if area > best_area:
            best, best_area = i, area
    return best


# ---------------------------------------------------------------------------------------------
# detector maths (YOLOX-l person boxes, DWPose-l 384x288 SimCC keypoints)

DET_INPUT = (640, 640)            # (h, w)
POSE_INPUT = (288, 384)           # (w, h)
POSE_MEAN = np.array([123.675, 116.28, 103.53])
POSE_STD = np.array([58.395, 57.12, 57.375])
SIMCC_SPLIT = 2.0
BOX_PADDING = 1.25
PERSON_SCORE = 0.5                # controlnet_aux's mmdet path keeps persons above 0.5
NMS_IOU = 0.65                    # YOLOX test config


def letterbox_ratio(height, width, size=DET_INPUT):
    return min(size[0] / height, size[1] / width)


def yolox_decode(raw, size=DET_INPUT, strides=(8, 16, 32)):
    """Raw YOLOX head output (A, 5 + classes), anchors ordered stride by stride, row-major -> boxes
    in letterboxed pixels (centre x, y, w, h) and the rest unchanged."""
    out = np.array(raw, dtype=np.float64, copy=True)
    grids, steps = [], []
    for s in strides:
        hs, ws = size[0] // s, size[1] // s
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
        steps.append(np.full((hs * ws, 1), s))
    grids = np.concatenate(grids)
    steps = np.concatenate(steps)
    if out.shape[0] != grids.shape[0]:
        raise ValueError(f"the detector returned {out.shape[0]} anchors; a {size[1]}x{size[0]} YOLOX input has "
                         f"{grids.shape[0]}")
    out[:, :2] = (out[:, :2] + grids) * steps
    out[:, 2:4] = np.exp(out[:, 2:4]) * steps
    return out


def nms(boxes, scores, iou):
    """Greedy NMS on xyxy boxes; returns kept indices, best first."""
    boxes = np.asarray(boxes, dtype=np.float64)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    area = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    keep = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(0, xx2 - xx1) * np.maximum(0, yy2 - yy1)
        ovr = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = rest[ovr <= iou]
    return keep


def person_boxes(decoded, ratio, score_thr=PERSON_SCORE, iou=NMS_IOU):
    """Decoded YOLOX predictions -> person boxes (xyxy, original pixels), best first.  A box's
    class is its arg-max class (mmdet's YOLOX head); persons = class 0."""
    obj = decoded[:, 4]
    cls = decoded[:, 5:]
    label = np.argmax(cls, axis=1)
    score = obj * cls[np.arange(len(cls)), label]
    keep = (label == 0) & (score > score_thr)
    if not keep.any():
        return np.zeros((0, 4))
    c = decoded[keep, :4]
    s = score[keep]
    boxes = np.stack([c[:, 0] - c[:, 2] / 2, c[:, 1] - c[:, 3] / 2,
                      c[:, 0] + c[:, 2] / 2, c[:, 1] + c[:, 3] / 2], axis=1) / ratio
    return boxes[nms(boxes, s, iou)]


def box_center_scale(box, input_size=POSE_INPUT, padding=BOX_PADDING):
    """xyxy box -> (centre, scale (w, h)) padded and widened to the model's aspect ratio w/h."""
    x0, y0, x1, y1 = [float(v) for v in box]
    center = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    w, h = (x1 - x0) * padding, (y1 - y0) * padding
    aspect = input_size[0] / input_size[1]
    if w > h * aspect:
        h = w / aspect
    else:
        w = h * aspect
    return center, np.array([w, h])


def box_affine(center, scale, input_size=POSE_INPUT):
    """2x3 matrix mapping image pixels into the model input (no rotation): the box centre goes to
    the input centre and ``scale`` to the input size."""
    k = input_size[0] / scale[0]
    return np.array([[k, 0.0, input_size[0] / 2 - k * center[0]],
                     [0.0, k, input_size[1] / 2 - k * center[1]]])


def simcc_decode(simcc_x, simcc_y, center, scale, input_size=POSE_INPUT, split=SIMCC_SPLIT):
    """SimCC outputs (K, Wx), (K, Wy) of one crop -> (K, 2) image pixels and (K,) scores (the
    smaller of the two maxima; a non-positive maximum marks the point invalid at -1)."""
    sx = np.asarray(simcc_x, dtype=np.float64)
    sy = np.asarray(simcc_y, dtype=np.float64)
    locs = np.stack([sx.argmax(-1), sy.argmax(-1)], -1).astype(np.float64)
    vals = np.minimum(sx.max(-1), sy.max(-1))
    locs[vals <= 0] = -1
    kp = locs / split
    kp = kp / np.asarray(input_size, dtype=np.float64) * scale + center - scale / 2
    return kp, vals


# ---------------------------------------------------------------------------------------------
# pose alignment

@dataclass(frozen=True)
class Similarity:
    """x' = scale * x + tx,  y' = scale * y + ty  (pixels)."""
    scale: float = 1.0
    tx: float = 0.0
    ty: float = 0.0

    def matrix(self):
        return np.array([[self.scale, 0.0, self.tx], [0.0, self.scale, self.ty]])

    def apply(self, points, visible=None):
        """Transform (..., 2) points; rows where ``visible`` is False are left untouched."""
        p = np.asarray(points, dtype=np.float64)
        out = p * self.scale + np.array([self.tx, self.ty])
        if visible is not None:
            out = np.where(np.asarray(visible)[..., None], out, p)
        return out

    @property
    def identity(self):
        return self.scale == 1.0 and self.tx == 0.0 and self.ty == 0.0


ALIGN_MODES = ("off", "scale+translate", "translate")


def anchor_point(points, visible):
    """Reference point of a skeleton: the neck, else the hip centre, else the mean of visible
    body points.  Returns (point, name) or (None, None)."""
    p = np.asarray(points, dtype=np.float64)
    v = np.asarray(visible, dtype=bool)
    if v[NECK]:
        return p[NECK], "neck"
    if v[R_HIP] and v[L_HIP]:
        return (p[R_HIP] + p[L_HIP]) / 2, "hip centre"
    if v.any():
        return p[v].mean(axis=0), "body centre"
    return None, None


def _common_anchor(ref, ref_vis, drv, drv_vis):
    both = ref_vis & drv_vis
    for idx, name in ((NECK, "neck"),):
        if both[idx]:
            return ref[idx], drv[idx], name
    if both[R_HIP] and both[L_HIP]:
        return (ref[R_HIP] + ref[L_HIP]) / 2, (drv[R_HIP] + drv[L_HIP]) / 2, "hip centre"
    if both.any():
        return ref[both].mean(0), drv[both].mean(0), "common points"
    return None, None, None


def body_size(points, visible, segments=SIZE_SEGMENTS):
    """Sum of the lengths of the size segments visible in the skeleton (and the list used)."""
    p = np.asarray(points, dtype=np.float64)
    v = np.asarray(visible, dtype=bool)
    used = [(a, b) for a, b in segments if v[a] and v[b]]
    return float(sum(np.linalg.norm(p[a] - p[b]) for a, b in used)), used


def estimate_alignment(ref_points, ref_scores, drv_points, drv_scores, mode="scale+translate",
                       threshold=KEYPOINT_THRESHOLD, max_scale=4.0):
    """The similarity that moves the driving skeleton (18 body points) onto the reference one.

    scale = (sum of the size segments visible in BOTH skeletons, reference) / (same, driving):
    torso (neck-hips), shoulders, hips, thighs, shins, head; uniform in x and y.  translation:
    the driving anchor (neck, else hip centre, else the common points' mean) lands on the
    reference anchor.  Returns ``(Similarity, info)``; raises ``ValueError`` when the skeletons
    share no usable point."""
    if mode not in ALIGN_MODES:
        raise ValueError(f"unknown alignment mode {mode!r} (one of {ALIGN_MODES})")
    if mode == "off":
        return Similarity(), {"mode": "off"}
    ref = np.asarray(ref_points, dtype=np.float64)[:18]
    drv = np.asarray(drv_points, dtype=np.float64)[:18]
    ref_vis = np.asarray(ref_scores)[:18] > threshold
    drv_vis = np.asarray(drv_scores)[:18] > threshold
    ref_a, drv_a, anchor = _common_anchor(ref, ref_vis, drv, drv_vis)
    if anchor is None:
        raise ValueError("the two skeletons share no visible body point")
    scale = 1.0
    used = []
    if mode == "scale+translate":
        both = ref_vis & drv_vis
        r_size, used = body_size(ref, both)
        d_size, _ = body_size(drv, both)
        if not used or d_size <= 1e-6 or r_size <= 1e-6:
            raise ValueError("the two skeletons share no measurable body segment (neck, shoulders, hips, legs)")
        scale = r_size / d_size
        if not (1.0 / max_scale <= scale <= max_scale):
            raise ValueError(f"the skeletons differ in size by a factor of {scale:.2f} (more than {max_scale}x): "
                             "probably not the same kind of shot")
    t = ref_a - scale * drv_a
    info = {"mode": mode, "anchor": anchor, "segments": [(BODY_NAMES[a], BODY_NAMES[b]) for a, b in used]}
    return Similarity(float(scale), float(t[0]), float(t[1])), info


def align_wholebody(keypoints, scores, sim, threshold=KEYPOINT_THRESHOLD):
    """Apply a similarity to (N, 134, 2) keypoints; points at or below ``threshold`` unchanged."""
    return sim.apply(keypoints, np.asarray(scores) > threshold)
