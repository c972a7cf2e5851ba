"""DWPose wrapper: controlnet_aux drawing used for real, weight discovery and its errors, and the
TorchScript backend end to end with tiny networks in the exact file format."""
import os

import numpy as np
import pytest

from pose_fixtures import dwpose_folder, install_tiny_dwpose, wholebody_points


@pytest.fixture(scope="module")
def mods(comfy_host):
    import folder_paths
    return {"dw": comfy_host.pack("nodes.dwpose"), "P": comfy_host.pack("musev_core.pose"),
            "host": comfy_host.pack("nodes.host"), "folder_paths": folder_paths}


def _openpose_keypoints(P, offset=(0, 0), scale=1.0, face_score=0.9):
    kp = wholebody_points(offset, scale)[None]
    sc = np.full((1, 133), 0.9)
    sc[0, 23:91] = face_score
    return P.wholebody_to_openpose(kp, sc)


def _color_near(img, xy, color, radius=1):
    x, y = int(round(xy[0])), int(round(xy[1]))
    patch = img[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1].reshape(-1, 3).astype(int)
    return bool((np.abs(patch - np.array(color)).max(-1) <= 2).any())


# --------------------------------------------------------------------------------------------- drawing

def test_draw_uses_controlnet_aux_body_and_hands_no_face(mods):
    dw, P = mods["dw"], mods["P"]
    kp, sc = _openpose_keypoints(P)
    img = dw.draw(kp, sc, 256, 256)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    # black canvas
    assert (img[0:20, 0:20] == 0).all() and (img[240:, 240:] == 0).all()
    # every body joint is a disc of its OpenPose colour (the wrists lie under the hands' root points)
    for j in range(18):
        color = (0, 0, 255) if j in (4, 7) else P.BODY_COLORS[j]
        assert _color_near(img, kp[0, j], color), P.BODY_NAMES[j]
    # limb neck -> right shoulder (limb 0: colour 0 at 60 %) at its midpoint
    mid = (kp[0, 1] + kp[0, 2]) / 2
    assert _color_near(img, mid, (153, 0, 0))
    # hands: keypoints are blue discs (0, 0, 255), finger lines in HSV colours
    assert _color_near(img, kp[0, 92 + 20], (0, 0, 255))
    assert _color_near(img, kp[0, 113 + 20], (0, 0, 255))
    # no face: the face ring around the nose is not drawn (controlnet_aux draws it white)
    assert not (img == 255).all(-1).any()
    face = kp[0, 24:92]
    assert all(not _color_near(img, p, (255, 255, 255), 0) for p in face[::7])


def test_draw_matches_controlnet_aux_dwposedetector(mods):
    """Our detect -> draw path gives the very image controlnet_aux's DWposeDetector draws for the
    same Wholebody output (faces hidden there by a low score: MuseV draws none)."""
    dw, P = mods["dw"], mods["P"]
    from controlnet_aux.dwpose import DWposeDetector
    kp, sc = _openpose_keypoints(P, face_score=0.1)
    sc[0, 3] = 0.2                    # one invisible body point (right elbow)
    sc[0, 100] = 0.25                 # one invisible hand point

    class FakeWholebody:
        def __call__(self, bgr):
            return kp.copy(), sc.copy()

    ref_det = DWposeDetector.__new__(DWposeDetector)
    ref_det.pose_estimation = FakeWholebody()
    frame = np.full((256, 256, 3), 90, np.uint8)
    ref = ref_det(frame, detect_resolution=256, image_resolution=256, output_type="np")

    ours_det = dw.DWPose.__new__(dw.DWPose)
    ours_det.impl = FakeWholebody()
    k2, s2, canvas = dw.detect_frame(ours_det, frame)
    ours = dw.draw_frame(k2, s2, 256, 256, canvas)
    assert canvas == (256, 256)
    np.testing.assert_array_equal(ours, ref)
    assert not _color_near(ours, kp[0, 3], P.BODY_COLORS[3], 0)


def test_draw_resizes_canvas_and_handles_nobody(mods):
    dw, P = mods["dw"], mods["P"]
    kp, sc = _openpose_keypoints(P)
    img = dw.draw(kp * 2, sc, 128, 128, 512, 512)          # drawn at 512, delivered at 128
    assert img.shape == (128, 128, 3) and img.max() > 0
    empty = dw.draw(np.zeros((0, 134, 2)), np.zeros((0, 134)), 64, 96)
    assert empty.shape == (96, 64, 3) and empty.max() == 0


def test_parse_rendered_body_reads_joints_back(mods):
    dw, P = mods["dw"], mods["P"]
    kp, sc = _openpose_keypoints(P, offset=(7, -5), scale=1.3)
    img = dw.draw(kp, sc, 256, 256)
    pts, found = dw.parse_rendered_body(img)
    torso = [P.NECK, P.R_SHOULDER, P.L_SHOULDER, P.R_HIP, P.L_HIP, P.NOSE, P.R_ANKLE, P.L_ANKLE]
    for j in torso:
        assert found[j] == 1, P.BODY_NAMES[j]
        np.testing.assert_allclose(pts[j], kp[0, j], atol=1.0)
    # float IMAGE input gives the same
    pts2, found2 = dw.parse_rendered_body(img.astype(np.float32) / 255.0)
    np.testing.assert_allclose(pts2[found2 > 0], pts[found > 0])
    # nothing there: nothing found
    assert dw.parse_rendered_body(np.zeros((64, 64, 3), np.uint8))[1].sum() == 0


# --------------------------------------------------------------------------------------------- weights

def test_missing_weights_error_names_files_and_folder(mods):
    dw, host = mods["dw"], mods["host"]
    with dwpose_folder(mods["folder_paths"], dw) as d:
        with pytest.raises(host.MuseVInputError) as e:
            dw.load("auto")
        msg = str(e.value)
        assert "PoseVideoCondition" in msg and "models/dwpose" in msg and d in msg
        for name in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx", "yolox_l.torchscript.pt",
                     "dw-ll_ucoco_384_bs5.torchscript.pt", "dw-ll_ucoco_384.pth"):
            assert name in msg
        with pytest.raises(host.MuseVInputError, match="yolox_l.torchscript.pt"):
            dw.load("torchscript")


def test_backend_without_its_package_is_a_clear_error(mods):
    dw, host = mods["dw"], mods["host"]
    with dwpose_folder(mods["folder_paths"], dw) as d:
        for name in ("yolox_l_8x8_300e_coco_20211126_140236-d3bd2b23.pth", "dw-ll_ucoco_384.pth"):
            open(os.path.join(d, name), "wb").close()
        missing = dw.missing_modules("openmmlab")
        if not missing:
            pytest.skip("mmpose/mmdet/mmcv are installed here")
        with pytest.raises(host.MuseVInputError, match="not installed"):
            dw.load("openmmlab")
        with pytest.raises(host.MuseVInputError, match="weights are there but"):
            dw.load("auto")


def test_broken_torchscript_file_is_a_clear_error(mods):
    dw, host = mods["dw"], mods["host"]
    with dwpose_folder(mods["folder_paths"], dw) as d:
        for name in ("yolox_l.torchscript.pt", "dw-ll_ucoco_384_bs5.torchscript.pt"):
            with open(os.path.join(d, name), "wb") as f:
                f.write(b"not a model")
        with pytest.raises(host.MuseVInputError, match="not a loadable TorchScript"):
            dw.load("torchscript")


def test_torchscript_backend_end_to_end(mods):
    """Tiny networks in the TorchScript files' exact I/O (YOLOX 1x3x640x640 -> 1x8400x85; DWPose
    bs5 5x3x384x288 -> SimCC 5x133x576 / 5x133x768): letterbox, decode, NMS, crops (padded to the
    fixed batch), SimCC decode, OpenPose conversion and controlnet_aux drawing all run."""
    dw, P = mods["dw"], mods["P"]
    with dwpose_folder(mods["folder_paths"], dw) as d:
        boxes = [(84, 40, 172, 232), (4, 60, 60, 200)]
        expected = install_tiny_dwpose(d, boxes, weak=(3,))          # COCO 3 (left ear) below threshold
        assert dw.resolve("auto")[0] == "torchscript"
        det = dw.load("auto")
        assert det.backend == "torchscript" and dw.load("torchscript") is det      # cached
        frame = np.full((256, 256, 3), 60, np.uint8)
        kp, sc, canvas = dw.detect_frame(det, frame)
        assert canvas == (256, 256) and kp.shape == (2, 134, 2)
        exp_op, exp_sc = P.wholebody_to_openpose(expected, np.where(np.arange(133) == 3, 0.1, 1.0)[None].repeat(2, 0))
        np.testing.assert_allclose(kp, exp_op, atol=1e-3)   # float32 box decode
        np.testing.assert_allclose(sc, exp_sc, atol=1e-6)
        img = dw.draw_frame(kp, sc, 256, 256, canvas)
        for person in range(2):
            for j in (P.NECK, P.R_HIP, P.L_SHOULDER):
                assert _color_near(img, kp[person, j], P.BODY_COLORS[j]), (person, j)
        # the weak point (OpenPose 17 = left ear) is not drawn
        assert not _color_near(img, kp[0, 17], P.BODY_COLORS[17], 0)


def test_onnx_backend_end_to_end(mods):
    """Tiny graphs in the released .onnx files' I/O, run by onnxruntime through the same maths."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from pose_fixtures import install_tiny_dwpose_onnx
    dw, P = mods["dw"], mods["P"]
    with dwpose_folder(mods["folder_paths"], dw) as d:
        expected = install_tiny_dwpose_onnx(d, (64, 40, 192, 232))
        det = dw.load("auto")
        assert det.backend == "onnx"
        kp, sc, canvas = dw.detect_frame(det, np.full((256, 256, 3), 10, np.uint8))
        exp_op, _ = P.wholebody_to_openpose(expected, np.ones((1, 133)))
        assert kp.shape == (1, 134, 2)
        np.testing.assert_allclose(kp, exp_op, atol=1e-3)
        img = dw.draw_frame(kp, sc, 256, 256, canvas)
        assert _color_near(img, kp[0, P.NECK], P.BODY_COLORS[P.NECK])
