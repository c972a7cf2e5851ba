"""PoseVideoCondition in a real ComfyUI with a tiny SD1.5 ControlNet built from ComfyUI's classes:
hint batch, order [vision pose; N frame poses], ControlNet chaining, per-window slicing, sizes,
MuseV's frame rules, alignment and every bad input."""
import numpy as np
import pytest
import torch

from pose_fixtures import dwpose_folder, install_tiny_dwpose, tiny_controlnet, wholebody_points


@pytest.fixture(scope="module")
def env(comfy_host):
    import folder_paths
    cn, cfg = tiny_controlnet()
    return {"node": comfy_host.pack("nodes.pose_nodes"), "dw": comfy_host.pack("nodes.dwpose"),
            "P": comfy_host.pack("musev_core.pose"), "err": comfy_host.pack("nodes.host").MuseVInputError,
            "cn": cn, "cfg": cfg, "folder_paths": folder_paths, "host": comfy_host}


def _cond(tag, prev_control=None):
    d = {"tag": tag}
    if prev_control is not None:
        d["control"] = prev_control
    return [[torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(len(tag))), d]]


def _frames(n, h=64, w=64):
    """Frame i carries its index in every pixel (distinct, easy to trace)."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, h, w, 3) / 100.0


def _run(env, frames, **kw):
    args = dict(positive=_cond("pos"), negative=_cond("neg"), control_net=env["cn"], frames=frames)
    args.update(kw)
    return env["node"].PoseVideoCondition().apply(**args)


# --------------------------------------------------------------------------------------------- schema

def test_registered_with_tooltips_and_contract(env):
    host = env["host"]
    cls = host.pack().NODE_CLASS_MAPPINGS["PoseVideoCondition"]
    spec = cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, (typ, *opts) in spec[group].items():
            assert opts and opts[0].get("tooltip"), f"{name} has no tooltip"
    assert "[pose of the condition/vision frame(s)" in cls.DESCRIPTION
    assert cls.RETURN_NAMES == ("positive", "negative", "pose_images", "frames", "frame_rate", "width", "height")
    assert spec["hidden"] == {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}


# --------------------------------------------------------------------------------------------- hints

def test_pose_video_hint_batch_order_and_chaining(env):
    prev = env["cn"].copy()
    pos_in = _cond("pos", prev)
    neg_in = _cond("neg", prev)
    frames = _frames(10)
    pos, neg, hints, n, rate, W, H = _run(env, frames, positive=pos_in, negative=neg_in, sample_rate=2,
                                          frame_count=3, mode="pose video", video_has_condition=True)
    assert (n, rate, W, H) == (3, 2.0, 64, 64)
    # [vision pose (frame 0); poses of the 3 generated frames (2, 4, 6)]
    assert hints.shape == (4, 64, 64, 3)
    torch.testing.assert_close(hints, frames[[0, 2, 4, 6]])
    c = pos[0][1]["control"]
    assert c is neg[0][1]["control"]                           # one object shared by positive and negative
    assert c.previous_controlnet is prev                       # chained after the existing control
    assert c.cond_hint_original.shape == (4, 3, 64, 64)
    torch.testing.assert_close(c.cond_hint_original, hints.movedim(-1, 1))
    assert (c.strength, c.timestep_percent_range) == (1.0, (0.0, 1.0))
    assert pos[0][1]["tag"] == "pos" and "control" not in _cond("x")[0][1]
    assert pos_in[0][1]["control"] is prev                     # inputs untouched
    # strength 0 leaves the conditioning alone but still returns the poses
    pos0, neg0, hints0, *_ = _run(env, frames, positive=pos_in, negative=neg_in, strength=0.0)
    assert pos0 is pos_in and neg0 is neg_in and hints0.shape == (10, 64, 64, 3)


def test_hints_drive_the_controlnet_per_window(env):
    """The ControlNet runs on the attached batch; slicing it as the sampler does per window
    ([vision hint; window hints]) gives each row exactly the residuals of the full run."""
    from musev_testlib import comfy_unet_config, make_sd15_model
    model = make_sd15_model(comfy_unet_config({"block_out_channels": [32, 64, 64, 64], "cross_attention_dim": 32,
                                               "attention_head_dim": 2, "layers_per_block": 1}))
    ms = model.model.model_sampling
    frames = torch.rand(7, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    pos, _, hints, n, *_ = _run(env, frames, start_percent=0.0, end_percent=1.0)
    assert n == 6 and hints.shape[0] == 7
    c = pos[0][1]["control"]
    c.pre_run(model.model, lambda p: ms.percent_to_sigma(p))
    x = torch.randn(7, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    sigma = torch.full((7,), 5.0)
    ctx = torch.randn(7, 77, 32)
    full = c.get_control(x, sigma, {"c_crossattn": ctx}, 1, {})
    rows = [0, 3, 4, 5]                       # vision hint + a window of frames 2..4 (hint rows 3..5)
    c.cond_hint_original, c.cond_hint = hints.movedim(-1, 1)[rows], None
    win = c.get_control(x[rows], sigma[rows], {"c_crossattn": ctx[rows]}, 1, {})
    for key in ("input", "middle"):
        for a, b in zip(full[key], win[key]):
            if a is not None:
                torch.testing.assert_close(b, a[rows], rtol=1e-4, atol=1e-5)
    # and the hint matters: another order gives other residuals
    c.cond_hint_original, c.cond_hint = hints.movedim(-1, 1)[[1, 3, 4, 5]], None
    other = c.get_control(x[rows], sigma[rows], {"c_crossattn": ctx[rows]}, 1, {})
    assert not torch.allclose(other["middle"][0][0], win["middle"][0][0])
    c.cleanup()


def test_size_from_condition_image_and_resize(env):
    frames = torch.zeros(3, 96, 128, 3)
    frames[:, :, 16:112] = 1.0                                 # the centre 96 columns are white
    cond = torch.rand(1, 150, 100, 3)                          # -> 64 x 128 (//64 rule)
    _, _, hints, n, _, W, H = _run(env, frames, condition_image=cond)
    assert (W, H, n) == (64, 128, 2)
    assert hints.shape == (3, 128, 64, 3)
    # explicit size: centre crop of the 128-wide frames to a square keeps only the white middle
    _, _, hints, *_ , W, H = _run(env, frames, width=48, height=48)
    assert (W, H) == (48, 48) and hints.shape == (3, 48, 48, 3)
    assert hints.min() > 0.99


# --------------------------------------------------------------------------------------------- detector paths

def test_video_has_condition_false_prepends_condition_pose(env):
    dw, P = env["dw"], env["P"]
    with dwpose_folder(env["folder_paths"], dw) as d:
        expected = install_tiny_dwpose(d, [(64, 40, 192, 232)], frame_size=256)
        frames = _frames(5, 256, 256)
        cond = torch.full((1, 256, 256, 3), 0.5)
        pos, _, hints, n, rate, W, H = _run(env, frames, condition_image=cond, video_has_condition=False)
        assert (n, W, H) == (5, 256, 256) and hints.shape == (6, 256, 256, 3)
        torch.testing.assert_close(hints[1:], frames)          # all 5 frames are generated
        kp, sc = P.wholebody_to_openpose(expected, np.ones((1, 133)))
        neck = np.round(kp[0, P.NECK]).astype(int)
        assert (hints[0, neck[1], neck[0]] * 255).round().tolist() == list(P.BODY_COLORS[P.NECK])
        assert pos[0][1]["control"].cond_hint_original.shape[0] == 6


def test_detect_mode_end_to_end(env):
    dw, P = env["dw"], env["P"]
    with dwpose_folder(env["folder_paths"], dw) as d:
        expected = install_tiny_dwpose(d, [(64, 40, 192, 232)], frame_size=256)
        frames = torch.rand(4, 256, 256, 3)
        _, _, hints, n, rate, W, H = _run(env, frames, mode="detect", sample_rate=1)
        assert (n, W, H) == (3, 256, 256) and hints.shape == (4, 256, 256, 3)
        kp, _ = P.wholebody_to_openpose(expected, np.ones((1, 133)))
        for j in (P.NECK, P.R_HIP, P.L_KNEE):
            x, y = np.round(kp[0, j]).astype(int)
            assert (hints[:, y, x] * 255).round().tolist() == [list(P.BODY_COLORS[j])] * 4
        assert hints[:, :8, :8].max() == 0                     # black canvas


def test_pose_align_in_pose_video_mode(env):
    """The driving pose video shows a smaller, shifted dancer; aligned, its first skeleton lands on
    the condition image's skeleton (the tiny detector's) and the whole clip moves with it."""
    dw, P = env["dw"], env["P"]
    with dwpose_folder(env["folder_paths"], dw) as d:
        expected = install_tiny_dwpose(d, [(64, 40, 192, 232)], frame_size=256)
        ref_kp, ref_sc = P.wholebody_to_openpose(expected, np.ones((1, 133)))
        drawn = []
        for i in range(3):
            kp, sc = P.wholebody_to_openpose(wholebody_points(offset=(30 + 4 * i, 20), scale=0.7)[None],
                                             np.ones((1, 133)))
            drawn.append(dw.draw(kp, sc, 256, 256))
        frames = torch.from_numpy(np.stack(drawn)).float() / 255.0
        cond = torch.full((1, 256, 256, 3), 0.5)
        _, _, hints, n, *_ = _run(env, frames, condition_image=cond, pose_align="scale+translate")
        assert n == 2
        pts, found = dw.parse_rendered_body((hints[0].numpy() * 255).round().astype(np.uint8))
        for j in (P.NECK, P.R_HIP, P.L_HIP, P.R_SHOULDER):
            assert found[j]
            np.testing.assert_allclose(pts[j], ref_kp[0, j], atol=1.5)
        # frame 2 keeps its 8 px shift relative to frame 0, scaled by 1/0.7
        p2, f2 = dw.parse_rendered_body((hints[2].numpy() * 255).round().astype(np.uint8))
        np.testing.assert_allclose(p2[P.NECK] - pts[P.NECK], [8 / 0.7, 0], atol=1.5)
        # translate only: necks meet, size stays
        _, _, hints_t, *_ = _run(env, frames, condition_image=cond, pose_align="translate")
        pt, ft = dw.parse_rendered_body((hints_t[0].numpy() * 255).round().astype(np.uint8))
        np.testing.assert_allclose(pt[P.NECK], ref_kp[0, P.NECK], atol=1.5)
        np.testing.assert_allclose(np.linalg.norm(pt[P.R_HIP] - pt[P.NECK]),
                                   0.7 * np.linalg.norm(ref_kp[0, P.R_HIP] - ref_kp[0, P.NECK]), rtol=0.05)


# --------------------------------------------------------------------------------------------- bad input

def test_bad_inputs_have_clear_messages(env):
    err = env["err"]
    with pytest.raises(err, match=r"PoseVideoCondition: 'frames': the image batch is empty"):
        _run(env, torch.zeros(0, 64, 64, 3))
    with pytest.raises(err, match=r"'frame_count': the pose clip is too short: 12 frames were requested but the "
                                  r"clip gives only 4"):
        _run(env, _frames(10), sample_rate=2, frame_count=12)
    with pytest.raises(err, match=r"'frames': the pose clip is too short.*no frame to generate"):
        _run(env, _frames(1))
    with pytest.raises(err, match=r"'condition_image': video_has_condition is False.*no condition_image"):
        _run(env, _frames(4), video_has_condition=False)
    with pytest.raises(err, match=r"'condition_image': pose_align"):
        _run(env, _frames(4), pose_align="translate")
    with pytest.raises(err, match=r"not a multiple of 8"):
        _run(env, _frames(4), width=60, height=64)
    with pytest.raises(err, match=r"'condition_image': 2 condition images"):
        _run(env, _frames(4), condition_image=torch.rand(2, 64, 64, 3))
    with pytest.raises(err, match=r"not a CONTROL_NET"):
        _run(env, _frames(4), control_net="nope")
    with dwpose_folder(env["folder_paths"], env["dw"]):
        with pytest.raises(err, match=r"(?s)needs DWPose weights.*yolox_l.onnx"):
            _run(env, _frames(4), mode="detect")


def test_non_openpose_controlnet_is_a_warning(env):
    import comfy.controlnet
    node = env["node"]
    cn = env["cn"]
    prompt = {"7": {"class_type": "PoseVideoCondition", "inputs": {"control_net": ["3", 0]}},
              "3": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "sd15/control_v11p_sd15_canny.pth"}}}
    w = node.control_net_warnings(cn, prompt, "7")
    assert len(w) == 1 and "control_v11p_sd15_canny.pth" in w[0] and "control_v11p_sd15_openpose" in w[0]
    prompt["3"]["inputs"]["control_net_name"] = "control_v11p_sd15_openpose.safetensors"
    assert node.control_net_warnings(cn, prompt, "7") == []
    assert node.control_net_warnings(cn, None, None) == []
    adapter = comfy.controlnet.T2IAdapter(torch.nn.Identity(), 3, 8, "nearest-exact")
    assert "T2IAdapter" in node.control_net_warnings(adapter)[0]
    # the node still runs (a warning, not a crash)
    _, _, hints, *_ = _run(env, _frames(3), control_net=adapter)
    assert hints.shape[0] == 3


# --------------------------------------------------------------------------------------------- executor

class _Store:
    items = {}
    results = {}


class _TestControlNet:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"control_net_name": ("STRING", {"default": ""})}}
    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, control_net_name):
        return (_Store.items["control_net"],)


class _TestInputs:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"key": ("STRING", {"default": ""})}}
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "IMAGE")
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, key):
        return (_Store.items["positive"], _Store.items["negative"], _Store.items["frames"])


class _TestSink:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"positive": ("CONDITIONING",), "pose_images": ("IMAGE",), "frames": ("INT",),
                             "frame_rate": ("FLOAT",)}}
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, positive, pose_images, frames, frame_rate):
        _Store.results.update(positive=positive, pose_images=pose_images, frames=frames, frame_rate=frame_rate)
        return {}


def test_runs_in_comfyui_executor(env):
    import nodes
    added = {"MuseVTest_ControlNet": _TestControlNet, "MuseVTest_Inputs": _TestInputs, "MuseVTest_Sink": _TestSink}
    nodes.NODE_CLASS_MAPPINGS.update(added)
    try:
        frames = _frames(9)
        _Store.items.update(control_net=env["cn"], positive=_cond("pos"), negative=_cond("neg"), frames=frames)
        prompt = {
            "1": {"class_type": "MuseVTest_ControlNet", "inputs": {"control_net_name": "control_v11p_sd15_openpose.pth"}},
            "2": {"class_type": "MuseVTest_Inputs", "inputs": {"key": "a"}},
            "3": {"class_type": "PoseVideoCondition", "inputs": {
                "positive": ["2", 0], "negative": ["2", 1], "control_net": ["1", 0], "frames": ["2", 2],
                "mode": "pose video", "video_has_condition": True, "sample_rate": 4, "frame_count": 0,
                "width": 0, "height": 0, "strength": 0.8, "start_percent": 0.1, "end_percent": 0.9,
                "pose_align": "off", "detector": "auto"}},
            "4": {"class_type": "MuseVTest_Sink", "inputs": {"positive": ["3", 0], "pose_images": ["3", 2],
                                                           "frames": ["3", 3], "frame_rate": ["3", 4]}},
        }
        env["host"].run_prompt(prompt, prompt_id="pose-node")
        r = _Store.results
        assert r["frames"] == 2 and r["frame_rate"] == 4.0
        torch.testing.assert_close(r["pose_images"], frames[[0, 4, 8]])
        c = r["positive"][0][1]["control"]
        assert (c.strength, c.timestep_percent_range) == (0.8, (0.1, 0.9))
        torch.testing.assert_close(c.cond_hint_original, frames[[0, 4, 8]].movedim(-1, 1))
    finally:
        for k in added:
            nodes.NODE_CLASS_MAPPINGS.pop(k, None)
