"""musev_core.pose: sizes, MuseV's frame rules, keypoint layouts, detector maths, pose alignment."""
import math

import numpy as np
import pytest

from conftest import pack_module

P = pack_module("musev_core.pose")


# --------------------------------------------------------------------------------------------- sizes

def test_generation_size_explicit_and_musev_floor():
    assert P.generation_size(512, 768, 1000, 333) == (512, 768)
    # MuseV: int(v // 64 * 64) of the condition image size (duffy 1280x704 stays; 1308x736 -> 1280x704)
    assert P.generation_size(0, 0, 1280, 704) == (1280, 704)
    assert P.generation_size(0, 0, 736, 1308) == (704, 1280)
    assert P.generation_size(0, 0, 563, 714) == (512, 704)
    # one side given: the other keeps the source aspect, floored to 64
    assert P.generation_size(512, 0, 1000, 2000) == (512, 1024)
    assert P.generation_size(0, 640, 1000, 500) == (1280, 640)
    with pytest.raises(ValueError):
        P.generation_size(0, 0, 40, 500)


def test_center_crop_box_musev_rule():
    # wider than the target: full height, centred columns (ceil edges)
    assert P.center_crop_box(500, 1000, 512, 512) == (0, 500, 250, 750)
    # taller: full width
    assert P.center_crop_box(1000, 300, 512, 512) == (350, 650, 0, 300)
    # odd split uses ceil on both edges like MMCM
    y0, y1, x0, x1 = P.center_crop_box(100, 201, 64, 64)
    assert (y0, y1) == (0, 100) and x0 == math.ceil((201 - 100) / 2) and x1 == math.ceil(201 - (201 - 100) / 2)
    # same aspect: the whole image (MuseV's drop of the last row/column is not reproduced)
    assert P.center_crop_box(704, 1280, 352, 640) == (0, 704, 0, 1280)


def test_crop_resize_points_maps_box_to_target():
    box = P.center_crop_box(500, 1000, 256, 256)          # columns 250..750 kept, scale 256/500
    pts = np.array([[250 - 0.5, -0.5], [750 - 0.5, 500 - 0.5], [500 - 0.5, 250 - 0.5]])
    out = P.crop_resize_points(pts, box, 256, 256)
    np.testing.assert_allclose(out, [[-0.5, -0.5], [255.5, 255.5], [127.5, 127.5]], atol=1e-9)


def test_detect_canvas_is_controlnet_aux_resize_rule():
    assert P.detect_canvas(704, 1280, 704) == (704, 1280)
    assert P.detect_canvas(512, 960, 512) == (512, 960)
    # 8-multiples round to 64 like controlnet_aux.util.resize_image
    assert P.detect_canvas(520, 776, 520) == (512, 768)


# --------------------------------------------------------------------------------------------- frame rules

def test_plan_video_has_condition_true():
    p = P.plan_frames(13, sample_rate=1, frame_count=0, video_has_condition=True)
    assert p.frame_indices == tuple(range(13))
    assert (p.n_vis, p.frames, p.hints, p.prepend_condition) == (1, 12, 13, False)


def test_plan_video_has_condition_false_prepends_condition_pose():
    p = P.plan_frames(12, sample_rate=1, frame_count=0, video_has_condition=False)
    assert p.frame_indices == tuple(range(12))
    assert (p.n_vis, p.frames, p.hints, p.prepend_condition) == (1, 12, 13, True)
    p2 = P.plan_frames(12, 1, 0, False, n_condition=2)
    assert (p2.n_vis, p2.frames, p2.hints) == (2, 12, 14)


def test_plan_sample_rate_and_cap():
    p = P.plan_frames(10, sample_rate=3, frame_count=0, video_has_condition=True)
    assert p.frame_indices == (0, 3, 6, 9) and p.frames == 3 and p.sample_rate == 3
    p = P.plan_frames(100, sample_rate=2, frame_count=5, video_has_condition=True)
    assert p.frame_indices == (0, 2, 4, 6, 8, 10) and p.frames == 5 and p.available == 49
    p = P.plan_frames(100, sample_rate=2, frame_count=5, video_has_condition=False)
    assert p.frame_indices == (0, 2, 4, 6, 8) and p.frames == 5 and p.available == 50


def test_plan_errors():
    with pytest.raises(ValueError, match="requested but the clip gives only 4"):
        P.plan_frames(10, sample_rate=2, frame_count=6, video_has_condition=True)
    with pytest.raises(ValueError, match="no frame to generate"):
        P.plan_frames(1, 1, 0, True)
    with pytest.raises(ValueError, match="no frames"):
        P.plan_frames(0, 1, 0, True)
    with pytest.raises(ValueError, match="sample_rate"):
        P.plan_frames(10, 0, 0, True)
    # one frame is enough when the condition brings its own pose
    assert P.plan_frames(1, 1, 0, False).frames == 1


# --------------------------------------------------------------------------------------------- layouts

def _wholebody(seed=0, n=1):
    rng = np.random.default_rng(seed)
    kp = rng.uniform(10, 500, size=(n, 133, 2))
    sc = rng.uniform(0.5, 1.0, size=(n, 133))
    return kp, sc


def test_wholebody_to_openpose_neck_and_order():
    kp, sc = _wholebody()
    sc[0, 5] = 0.2                                    # left shoulder weak -> neck score 0
    op, ops = P.wholebody_to_openpose(kp, sc)
    assert op.shape == (1, 134, 2) and ops.shape == (1, 134)
    np.testing.assert_allclose(op[0, 1], (kp[0, 5] + kp[0, 6]) / 2)     # neck
    assert ops[0, 1] == 0.0
    # COCO right shoulder (6) -> OpenPose 2, left shoulder (5) -> 5, nose stays 0, right eye (2) -> 14
    np.testing.assert_allclose(op[0, 2], kp[0, 6])
    np.testing.assert_allclose(op[0, 5], kp[0, 5])
    np.testing.assert_allclose(op[0, 0], kp[0, 0])
    np.testing.assert_allclose(op[0, 14], kp[0, 2])
    np.testing.assert_allclose(op[0, 8], kp[0, 12])                    # right hip
    np.testing.assert_allclose(op[0, 11], kp[0, 11])                   # left hip
    # everything after the 17 body points moves by one: hands at 92..133
    np.testing.assert_allclose(op[0, 92:113], kp[0, 91:112])
    np.testing.assert_allclose(op[0, 113:134], kp[0, 112:133])
    sc[0, 5] = 0.9
    assert P.wholebody_to_openpose(kp, sc)[1][0, 1] == 1.0
    with pytest.raises(ValueError):
        P.wholebody_to_openpose(kp[:, :100], sc[:, :100])


def test_pose_dict_thresholds_like_dwposedetector():
    kp = np.full((2, 134, 2), 50.0)
    sc = np.full((2, 134), 0.9)
    sc[0, 3] = 0.3           # body: needs > 0.3
    sc[1, 0] = 0.1
    sc[0, 95] = 0.3          # hands: invisible only below 0.3
    sc[1, 120] = 0.29
    d = P.pose_dict(kp, sc, width=100, height=200)
    sub = d["bodies"]["subset"]
    assert sub.shape == (2, 18) and sub[0, 3] == -1 and sub[1, 0] == -1
    assert sub[0, 4] == 4 and sub[1, 5] == 18 + 5
    cand = d["bodies"]["candidate"]
    assert cand.shape == (36, 2)
    np.testing.assert_allclose(cand[0], [0.5, 0.25])
    hands = d["hands"]
    assert hands.shape == (4, 21, 2)                 # left hands of both persons, then right hands
    np.testing.assert_allclose(hands[0, 3], [0.5, 0.25])       # 95 = left hand point 3, score == 0.3 kept
    np.testing.assert_allclose(hands[3, 7], [-1, -1])          # person 1 right hand point 7 (120)
    assert d["faces"].shape[0] == 0


def test_main_person_picks_largest():
    kp = np.zeros((2, 134, 2))
    sc = np.zeros((2, 134))
    kp[0, :18] = np.random.default_rng(0).uniform(0, 10, (18, 2))
    kp[1, :18] = np.random.default_rng(1).uniform(0, 100, (18, 2))
    sc[:, :18] = 0.9
    assert P.main_person(kp, sc) == 1
    sc[1] = 0
    assert P.main_person(kp, sc) == 0
    sc[0] = 0
    assert P.main_person(kp, sc) is None


# --------------------------------------------------------------------------------------------- detector maths

def test_yolox_decode_grid_and_person_boxes():
    size = (64, 64)
    n = (8 * 8) + (4 * 4) + (2 * 2)
    raw = np.zeros((n, 5 + 3))
    raw[:, 2:4] = np.log(1.0)
    # anchor 9 = stride-8 grid (x=1, y=1): a person box centred at (1.5*8, 1.5*8), 16x24 px
    raw[9, :4] = [0.5, 0.5, math.log(2), math.log(3)]
    raw[9, 4] = 0.9
    raw[9, 5:] = [0.8, 0.1, 0.1]
    # a near-duplicate with a lower score (suppressed), and a car (class 1)
    raw[10, :4] = [-0.5, 0.5, math.log(2), math.log(3)]
    raw[10, 4], raw[10, 5:] = 0.9, [0.7, 0.1, 0.1]
    raw[70, 4], raw[70, 5:] = 0.9, [0.1, 0.9, 0.0]
    dec = P.yolox_decode(raw, size)
    np.testing.assert_allclose(dec[9, :4], [12, 12, 16, 24])
    boxes = P.person_boxes(dec, ratio=0.5)
    np.testing.assert_allclose(boxes, [[(12 - 8) / 0.5, 0, (12 + 8) / 0.5, (12 + 12) / 0.5]], atol=1e-9)
    with pytest.raises(ValueError, match="anchors"):
        P.yolox_decode(raw[:-1], size)


def test_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=float)
    assert P.nms(boxes, np.array([0.9, 0.8, 0.7]), 0.5) == [0, 2]
    assert P.nms(boxes, np.array([0.7, 0.8, 0.9]), 0.9) == [2, 1, 0]


def test_box_affine_and_simcc_roundtrip():
    box = [100, 50, 160, 250]                      # 60 x 200 -> padded 75 x 250 -> aspect 0.75: 187.5 x 250
    c, s = P.box_center_scale(box)
    np.testing.assert_allclose(c, [130, 150])
    np.testing.assert_allclose(s, [187.5, 250])
    M = P.box_affine(c, s)
    # the box centre maps to the input centre, the scaled box to the whole input
    np.testing.assert_allclose(M @ [130, 150, 1], [144, 192])
    np.testing.assert_allclose(M @ [130 - 93.75, 150 - 125, 1], [0, 0], atol=1e-9)
    # SimCC peaks at an input location decode back to the image point it came from
    target = np.array([[120.0, 90.0], [140.0, 230.0]])
    inp = (M @ np.c_[target, np.ones(2)].T).T
    sx = np.zeros((2, 576))
    sy = np.zeros((2, 768))
    for k in range(2):
        sx[k, int(round(inp[k, 0] * 2))] = 0.8
        sy[k, int(round(inp[k, 1] * 2))] = 0.6
    kp, vals = P.simcc_decode(sx, sy, c, s)
    np.testing.assert_allclose(kp, target, atol=s[0] / 288 / 2 + 1e-9)
    np.testing.assert_allclose(vals, [0.6, 0.6])
    kp, vals = P.simcc_decode(-np.ones((1, 576)), np.ones((1, 768)), c, s)
    assert vals[0] < 0 and np.all(kp[0] == -1 / 2 / np.array([288, 384]) * s + c - s / 2)


# --------------------------------------------------------------------------------------------- alignment

def _skeleton():
    pts = np.array([[100, 40], [100, 80], [70, 80], [60, 120], [55, 160], [130, 80], [140, 120], [145, 160],
                    [80, 170], [80, 230], [80, 290], [120, 170], [120, 230], [120, 290],
                    [95, 35], [105, 35], [90, 40], [110, 40]], dtype=float)
    return pts, np.ones(18)


def test_alignment_recovers_known_similarity():
    ref, rs = _skeleton()
    true = P.Similarity(1.7, -30.0, 12.5)
    drv = (ref - [true.tx, true.ty]) / true.scale        # drv mapped by `true` gives ref
    sim, info = P.estimate_alignment(ref, rs, drv, rs, "scale+translate")
    assert info["anchor"] == "neck"
    np.testing.assert_allclose([sim.scale, sim.tx, sim.ty], [true.scale, true.tx, true.ty], atol=1e-9)
    np.testing.assert_allclose(sim.apply(drv), ref, atol=1e-9)
    # a whole clip moves with the same transform
    later = drv + [5, -3]
    np.testing.assert_allclose(sim.apply(later), ref + np.array([5, -3]) * 1.7, atol=1e-9)


def test_alignment_translate_only_and_hip_anchor():
    ref, rs = _skeleton()
    drv = ref * 0.5 + [10, 20]
    sim, info = P.estimate_alignment(ref, rs, drv, rs, "translate")
    assert sim.scale == 1.0
    np.testing.assert_allclose(sim.apply(drv[P.NECK]), ref[P.NECK])
    ds = rs.copy()
    ds[P.NECK] = 0.0                                       # neck missing in the driving frame
    sim, info = P.estimate_alignment(ref, rs, drv, ds, "scale+translate")
    assert info["anchor"] == "hip centre"
    np.testing.assert_allclose(sim.scale, 2.0)
    np.testing.assert_allclose(sim.apply((drv[P.R_HIP] + drv[P.L_HIP]) / 2), (ref[P.R_HIP] + ref[P.L_HIP]) / 2)


def test_alignment_uses_only_segments_visible_in_both():
    ref, rs = _skeleton()
    drv = ref / 2.0
    drv[P.R_ANKLE] = [1000, 1000]                          # a wrong ankle, but invisible in the driving frame
    ds = rs.copy()
    ds[P.R_ANKLE] = 0.1
    sim, info = P.estimate_alignment(ref, rs, drv, ds, "scale+translate")
    np.testing.assert_allclose(sim.scale, 2.0)
    assert ("r_knee", "r_ankle") not in info["segments"]


def test_alignment_errors_and_off():
    ref, rs = _skeleton()
    assert P.estimate_alignment(ref, rs, ref, rs, "off")[0].identity
    with pytest.raises(ValueError, match="no visible"):
        P.estimate_alignment(ref, rs, ref, np.zeros(18), "scale+translate")
    with pytest.raises(ValueError, match="factor"):
        P.estimate_alignment(ref, rs, ref / 10.0, rs, "scale+translate")
    only_nose = np.zeros(18)
    only_nose[P.NOSE] = 1
    with pytest.raises(ValueError, match="measurable"):
        P.estimate_alignment(ref, only_nose, ref, only_nose, "scale+translate")
    with pytest.raises(ValueError, match="unknown"):
        P.estimate_alignment(ref, rs, ref, rs, "rotate")


def test_align_wholebody_keeps_invisible_points():
    kp = np.full((1, 134, 2), 10.0)
    sc = np.full((1, 134), 0.9)
    sc[0, 100] = 0.1
    out = P.align_wholebody(kp, sc, P.Similarity(2.0, 1.0, -1.0))
    np.testing.assert_allclose(out[0, 0], [21.0, 19.0])
    np.testing.assert_allclose(out[0, 100], [10.0, 10.0])
    np.testing.assert_allclose(P.Similarity(2.0, 1.0, -1.0).matrix(), [[2, 0, 1], [0, 2, -1]])
