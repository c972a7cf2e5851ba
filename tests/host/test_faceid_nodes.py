"""IP-Adapter-FaceID in ComfyUI: the buffalo_l face analysis (SCRFD decode, NMS, 5-point alignment,
recognition) on tiny ONNX models built here with the ``onnx`` package and checked against values
computed by hand; MuseVFaceID / MuseVFaceEmbed on the stand-in models (both MuseV families, with and
without MuseVIPAdapter, scale 0 = no FaceID), through ComfyUI's executor; every bad input with a
clear message and the input MODEL untouched."""
import math
import os

import numpy as np
import pytest
import torch

from faceid_standins import CONTEXT, KPS, REC_DIM, as_image, face_image, place_buffalo, write_faceid_standin
from reference_fixtures import catch_log


# ------------------------------------------------------------------------------------------------
# Fixtures

@pytest.fixture(scope="module")
def fa(comfy_host):
    return comfy_host.pack("nodes.face_analysis")


@pytest.fixture(scope="module")
def buffalo(comfy_host):
    import folder_paths
    return place_buffalo(folder_paths.models_dir)


@pytest.fixture(scope="module")
def faceid_file(comfy_host):
    import folder_paths
    rel = "faceid_test/IP-Adapter/models/ip-adapter-faceid_sd15.bin"
    path = os.path.join(folder_paths.get_folder_paths("musev")[0], rel)
    proj, ip = write_faceid_standin(path)
    return rel, path, proj, ip


INSIGHT = "insightface/models/buffalo_l"
BGR = "BGR (as InsightFace)"
RGB = "RGB (as MuseV)"


# ------------------------------------------------------------------------------------------------
# Face analysis maths

def test_nms_by_hand(fa):
    dets = np.array([[0, 0, 9, 9, 0.8],       # IoU with the best (+1 areas): 81 / 119 -> suppressed
                     [20, 20, 29, 29, 0.7],   # apart -> kept
                     [1, 1, 10, 10, 0.95],    # best
                     [5, 0, 14, 9, 0.6]],     # IoU with the best: 6·9 / (100 + 100 - 54) = 0.37 -> kept
                    dtype=np.float32)
    assert [int(i) for i in fa.nms(dets, 0.4)] == [2, 1, 3]
    assert [int(i) for i in fa.nms(dets, 0.3)] == [2, 1]


def test_anchor_decode_by_hand(fa):
    """Input 32x24, strides 8/16/32, 2 anchors: one score above 0.5 at stride 8, cell (x=2, y=1),
    anchor 1 -> row (1·4 + 2)·2 + 1 = 13; box = centre -/+ distance·stride; key points likewise."""
    h, w = 24, 32
    outs_s, outs_b, outs_k = [], [], []
    for s in (8, 16, 32):
        n = (h // s) * (w // s) * 2
        outs_s.append(np.zeros((n, 1), np.float32))
        outs_b.append(np.tile(np.array([[1, 2, 3, 4]], np.float32), (n, 1)))
        outs_k.append(np.tile(np.arange(10, dtype=np.float32)[None] / 10, (n, 1)))
    outs_s[0][13, 0] = 0.9
    outs_s[0][12, 0] = 0.49                      # below the threshold
    scores, boxes, kps = fa.decode(outs_s + outs_b + outs_k, h, w, (8, 16, 32), 2, True, 0.5)
    assert scores.tolist() == [[pytest.approx(0.9)]]
    cx, cy = 2 * 8, 1 * 8
    assert boxes.tolist() == [[cx - 8, cy - 16, cx + 24, cy + 32]]
    exp = [[cx + 0.0 * 8, cy + 0.1 * 8], [cx + 0.2 * 8, cy + 0.3 * 8], [cx + 0.4 * 8, cy + 0.5 * 8],
           [cx + 0.6 * 8, cy + 0.7 * 8], [cx + 0.8 * 8, cy + 0.9 * 8]]
    assert np.allclose(kps[0], exp)
    centers = fa.anchor_centers(3, 4, 8, 2)
    assert centers.shape == (24, 2) and centers[13].tolist() == [16.0, 8.0] and centers[12].tolist() == [16.0, 8.0]


def test_letterbox_keeps_aspect(fa):
    img = np.full((120, 160, 3), 7, np.uint8)
    det, scale = fa.letterbox(img, (640, 640))
    assert det.shape == (640, 640, 3) and scale == 4.0
    assert (det[:480] == 7).all() and (det[480:] == 0).all()
    tall = np.full((300, 100, 3), 9, np.uint8)
    det, scale = fa.letterbox(tall, (640, 640))
    assert scale == 640 / 300 and (det[:, :int(640 / 3)] == 9).all() and (det[:, int(640 / 3):] == 0).all()


def test_similarity_alignment_recovers_a_known_transform(fa):
    """Key points = a known similarity (scale 1.7, 25 degrees, shift) of the ArcFace template: the
    estimate maps them back onto the template exactly, and warping an image drawn in template space
    through that similarity returns it."""
    import cv2
    a, th, t = 1.7, math.radians(25), np.array([30.0, -12.0])
    r = a * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    kps = fa.ARCFACE_DST.astype(np.float64) @ r.T + t
    m = fa.similarity_transform(kps, fa.ARCFACE_DST)
    inv = np.linalg.inv(np.vstack([np.hstack([r, t[:, None]]), [0, 0, 1]]))[:2]
    assert np.abs(m - inv).max() < 1e-9
    # an image in template space, moved by the similarity, then aligned back
    tmpl = np.zeros((112, 112, 3), np.uint8)
    cv2.rectangle(tmpl, (30, 40), (80, 90), (200, 100, 50), -1)
    fwd = np.hstack([r, t[:, None]])
    big = cv2.warpAffine(tmpl, fwd, (260, 260), flags=cv2.INTER_LINEAR, borderValue=0)
    back = fa.norm_crop(big, kps.astype(np.float32))
    inside, outside = (slice(44, 86), slice(34, 76)), (slice(5, 32), slice(5, 107))   # 4 px away from the edges
    assert (np.abs(back[inside].astype(int) - [200, 100, 50]) <= 1).all()
    assert (back[outside] <= 1).all()
    with pytest.raises(ValueError, match="degenerate"):
        fa.similarity_transform(np.zeros((5, 2)), fa.ARCFACE_DST)


def test_face_analysis_end_to_end_against_hand_values(comfy_host, fa, buffalo):
    """Stand-in detector on a 160x120 image with a blob centred where the 640x480 resize puts it on
    the stride-8 anchor (168, 120): first face = that anchor's box and key points / 4; embedding =
    normalised (channel means of the aligned face, swapped to RGB, (x-127.5)/127.5) @ W."""
    import cv2
    folder, w = buffalo
    analysis = fa.load_face_analysis(INSIGHT)
    assert analysis.source == folder and analysis.use_kps and analysis.strides == (8, 16, 32)
    rgb = face_image(160, 120, (168 - 1.5) / 4, (120 - 1.5) / 4, sigma=4.0, channel=0)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    dets, kpss = analysis.detect(bgr)
    assert dets.shape[0] >= 2 and (np.diff(dets[:, 4]) <= 0).all()          # sorted, NMS left more than one
    ax, ay = 168.0, 120.0
    assert np.allclose(dets[0, :4], np.array([ax - 16, ay - 16, ax + 16, ay + 16]) / 4, atol=1e-4)
    exp_kps = (np.array([ax, ay]) + np.array(KPS).reshape(5, 2) * 8) / 4
    assert np.allclose(kpss[0], exp_kps, atol=1e-4)
    emb, box = analysis.normed_embedding(bgr)
    m = fa.similarity_transform(exp_kps, fa.ARCFACE_DST)
    aligned = cv2.warpAffine(bgr, m, (112, 112), borderValue=0.0)
    means = (aligned[..., ::-1].astype(np.float64).mean(axis=(0, 1)) - 127.5) / 127.5
    raw = means @ w.astype(np.float64)
    assert np.abs(emb - raw / np.linalg.norm(raw)).max() < 1e-5
    assert abs(np.linalg.norm(emb) - 1) < 1e-5


def test_channel_order_and_no_face(comfy_host, fa, buffalo):
    """The blob is in the R channel: InsightFace's BGR order sees it in the detector's channel 0;
    MuseV's RGB order hands the detector B there, so it finds nothing -> a clear error naming the
    image."""
    MuseVInputError = comfy_host.pack("nodes.host").MuseVInputError
    analysis = fa.load_face_analysis(INSIGHT)
    img = as_image(face_image(160, 120, 41.6, 29.6, 4.0, channel=0))
    emb = fa.face_embeddings(analysis, img, BGR, "MuseVFaceID", "image")
    assert emb.shape == (1, REC_DIM)
    with pytest.raises(MuseVInputError, match=r"no face found in 'image' \(image 1 of 1, 160x120\)"):
        fa.face_embeddings(analysis, img, RGB, "MuseVFaceID", "image")
    blue = as_image(face_image(160, 120, 41.6, 29.6, 4.0, channel=2))
    assert fa.face_embeddings(analysis, blue, RGB, "MuseVFaceID", "image").shape == (1, REC_DIM)
    two = torch.cat([img, torch.zeros_like(img)])
    with pytest.raises(MuseVInputError, match=r"image 2 of 2"):
        fa.face_embeddings(analysis, two, BGR, "MuseVFaceEmbed", "image")


def test_missing_buffalo_files_list_files_and_places(comfy_host, fa):
    MuseVInputError = comfy_host.pack("nodes.host").MuseVInputError
    choice = "musev/IP-Adapter/image_encoder/models/buffalo_l"
    with pytest.raises(MuseVInputError) as e:
        fa.find_buffalo(choice, "MuseVFaceID")
    msg = str(e.value)
    for needle in ("MuseVFaceID", "'face_analysis'", "det_10g.onnx", "w600k_r50.onnx", "buffalo_l.zip",
                   os.path.join("IP-Adapter", "models", "image_encoder", "models", "buffalo_l"),
                   os.path.join("insightface", "models", "buffalo_l"), "face_embeds"):
        assert needle in msg, (needle, msg)
    with pytest.raises(MuseVInputError, match="not one of"):
        fa.find_buffalo("somewhere/else")


# ------------------------------------------------------------------------------------------------
# Nodes

@pytest.fixture(scope="module")
def base(comfy_host, standins):
    import nodes as comfy_nodes
    (model, clip, vae) = comfy_nodes.CheckpointLoaderSimple().load_checkpoint(standins.checkpoint)[:3]
    return model, clip


@pytest.fixture(scope="module")
def musev_models(comfy_host, standins, base):
    motion_nodes = comfy_host.pack("nodes.motion_nodes")
    model, _ = base
    out = {}
    for variant in ("musev", "musev_referencenet"):
        (out[variant],) = motion_nodes.LoadMuseVMotion().load(model, standins.motion[variant])
    return out


def _unet_out(comfy_host, model, seed=0, frames=3, n_vis=1):
    """One patched UNet call (CFG pair) on fixed inputs, through the real patch machinery."""
    import comfy.model_management
    patch = comfy_host.pack("nodes.patch")
    g = torch.Generator().manual_seed(seed)
    rows = 2 * frames
    x = torch.randn(rows, 4, 8, 8, generator=g)
    t = torch.full((rows,), 500.0)
    context = torch.randn(2, 77, CONTEXT, generator=g).repeat_interleave(frames, dim=0)
    comfy.model_management.load_models_gpu([model])
    try:
        to = patch.unet_transformer_options(model, {"cond_or_uncond": [1, 0], patch.WINDOW_KEY: {"n_vis": n_vis}})
        with torch.no_grad():
            return model.model.diffusion_model(x, t, context=context, transformer_options=to).float()
    finally:
        model.eject_model()


def _embeds(seed=3, n=1):
    e = torch.randn(n, REC_DIM, generator=torch.Generator().manual_seed(seed))
    return e / e.norm(dim=-1, keepdim=True)


def _ip(comfy_host, model, monkeypatch, standins):
    from reference_fixtures import ClipSeam
    nodes = comfy_host.pack("nodes.reference_nodes")
    clip = torch.randn(1, standins.clip_dim, generator=torch.Generator().manual_seed(11))
    monkeypatch.setattr(nodes, "clip_image_embeds", ClipSeam(clip))
    return nodes.MuseVIPAdapter().apply(model, object(), torch.rand(1, 64, 64, 3),
                                        standins.image_proj["musev_referencenet"])[0]


@pytest.mark.parametrize("variant", ["musev", "musev_referencenet"])
def test_faceid_node_scale_zero_is_identity_and_scale_acts(comfy_host, musev_models, faceid_file, variant):
    fnodes = comfy_host.pack("nodes.faceid_nodes")
    patch = comfy_host.pack("nodes.patch")
    model = musev_models[variant]
    before = dict(model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {}))
    plain = _unet_out(comfy_host, model)
    (zero,) = fnodes.MuseVFaceID().apply(model, faceid_file[0], 0.0, face_embeds=_embeds())
    assert torch.equal(_unet_out(comfy_host, zero), plain)
    (on,) = fnodes.MuseVFaceID().apply(model, faceid_file[0], 1.0, face_embeds=_embeds())
    out = _unet_out(comfy_host, on)
    assert torch.isfinite(out).all() and (out - plain).abs().max() > 1e-3
    # every spatial attn2 carries MuseV's patch; the input MODEL is untouched
    slots = on.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len([k for k, v in slots.items() if isinstance(v, patch.IPAttn2)]) == 16
    assert model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {}) == before
    assert patch.get_state(model).face is None and patch.get_state(on).face is not None
    assert on.get_additional_models_with_key(fnodes.FACE_KEY)


def test_faceid_term_in_the_unet_matches_a_direct_computation(comfy_host, musev_models, faceid_file):
    """At one attn2 of the real UNet: the patched output minus the text-only output equals
    scale · Attn(q, face_k, face_v) computed by hand from the file's weights and projection."""
    fnodes = comfy_host.pack("nodes.faceid_nodes")
    F = comfy_host.pack("musev_core.faceid")
    model = musev_models["musev"]
    e = _embeds(seed=5)
    (on,) = fnodes.MuseVFaceID().apply(model, faceid_file[0], 0.8, face_embeds=e)
    unet = on.model.diffusion_model
    attn2 = unet.input_blocks[4][1].transformer_blocks[0].attn2        # down_blocks.1.attentions.0
    seen = {}
    orig = F.FaceCall.add

    def spy(self, prefix, q, out, heads, layout, attn_fn=None):
        res = orig(self, prefix, q, out, heads, layout, attn_fn)
        if prefix == "down_blocks.1.attentions.0.transformer_blocks.0.attn2":
            seen.update(q=q.clone(), out=out.clone(), res=res.clone(), heads=heads, roles=layout.row_index("role", q.device))
        return res

    F.FaceCall.add = spy
    try:
        _unet_out(comfy_host, on)
    finally:
        F.FaceCall.add = orig
    assert seen, "the face term never ran at down_blocks.1.attentions.0"
    _, _, proj_sd, ip = faceid_file
    proj = F.MLPProjModel.from_state_dict({k: v.half().float() for k, v in proj_sd.items()})
    with torch.no_grad():
        cond, uncond = proj.tokens_for(e)
    wk, wv = ip["5.to_k_ip.weight"].float(), ip["5.to_v_ip.weight"].float()
    q, heads = seen["q"].double(), seen["heads"]
    d = q.shape[-1] // heads
    exp = []
    for row in range(q.shape[0]):
        tok = (cond if int(seen["roles"][row]) == 0 else uncond)[0].double()
        k, v = tok @ wk.double().T, tok @ wv.double().T
        qh = q[row].reshape(-1, heads, d).transpose(0, 1)
        kh, vh = k.reshape(-1, heads, d).transpose(0, 1), v.reshape(-1, heads, d).transpose(0, 1)
        att = torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), -1) @ vh
        exp.append(att.transpose(0, 1).reshape(q.shape[1], -1))
    exp = 0.8 * torch.stack(exp)
    err = (seen["res"].double() - seen["out"].double() - exp).abs().max().item()
    assert err < 1e-4, err
    assert attn2.to_k.out_features == wk.shape[0]


def test_faceid_with_and_without_ip_adapter_in_any_order(comfy_host, musev_models, faceid_file, standins,
                                                         monkeypatch):
    fnodes = comfy_host.pack("nodes.faceid_nodes")
    model = musev_models["musev_referencenet"]
    ip_first = fnodes.MuseVFaceID().apply(_ip(comfy_host, model, monkeypatch, standins), faceid_file[0], 1.0,
                                          face_embeds=_embeds())[0]
    face_first = _ip(comfy_host, fnodes.MuseVFaceID().apply(model, faceid_file[0], 1.0, face_embeds=_embeds())[0],
                     monkeypatch, standins)
    a, b = _unet_out(comfy_host, ip_first), _unet_out(comfy_host, face_first)
    assert torch.equal(a, b)
    ip_only = _unet_out(comfy_host, _ip(comfy_host, model, monkeypatch, standins))
    assert (a - ip_only).abs().max() > 1e-3          # (FaceID alone vs none: the scale test above)


def test_face_image_at_another_size_is_cropped_to_the_video_before_detection(comfy_host, musev_models, faceid_file,
                                                                            buffalo):
    """MuseV crops/resizes the face image to the video's size first: the provider re-detects at
    sampling time (prepare), once per size; an image at the video's size is used as given."""
    fnodes = comfy_host.pack("nodes.faceid_nodes")
    patch = comfy_host.pack("nodes.patch")
    img = as_image(face_image(96, 64, 40.0, 30.0, 4.0, channel=0))          # 3:2, the video is 64x64
    (m,) = fnodes.MuseVFaceID().apply(musev_models["musev"], faceid_file[0], 1.0, image=img,
                                      face_analysis=INSIGHT, channel_order=BGR)
    provider = patch.get_state(m).face
    assert provider.analyses == 0
    with catch_log() as records:
        provider.prepare(patch.MuseVRun(), (3, 4, 8, 8))
        provider.prepare(patch.MuseVRun(), (3, 4, 8, 8))
    assert provider.analyses == 1
    assert any("MuseVFaceID" in r.getMessage() and "cropping" in r.getMessage() for r in records)
    key, cropped = provider.embeds_for((64, 64))
    assert key == (64, 64) and not torch.equal(cropped, provider.embeds_for(None)[1])
    # the same embedding as detecting on MuseV's crop directly
    fa = comfy_host.pack("nodes.face_analysis")
    image_prep = comfy_host.pack("musev_core.image_prep")
    direct = fa.face_embeddings(provider.analysis, image_prep.crop_resize_to(img, 64, 64), BGR)
    assert torch.allclose(cropped, direct, atol=1e-6)
    same = as_image(face_image(64, 64, 30.0, 30.0, 3.0, channel=0))
    (m2,) = fnodes.MuseVFaceID().apply(musev_models["musev"], faceid_file[0], 1.0, image=same,
                                       face_analysis=INSIGHT, channel_order=BGR)
    p2 = patch.get_state(m2).face
    p2.prepare(patch.MuseVRun(), (3, 4, 8, 8))
    assert p2.analyses == 0


# ------------------------------------------------------------------------------------------------
# Bad inputs

def test_bad_inputs_give_clear_errors_and_leave_the_model_untouched(comfy_host, musev_models, faceid_file, standins,
                                                                   base, buffalo, tmp_path):
    import folder_paths
    fnodes = comfy_host.pack("nodes.faceid_nodes")
    patch = comfy_host.pack("nodes.patch")
    MuseVInputError = comfy_host.pack("nodes.host").MuseVInputError
    model = musev_models["musev_referencenet"]
    options_before = repr(sorted(model.model_options["transformer_options"].keys()))
    state_before = patch.get_state(model)
    node = fnodes.MuseVFaceID()
    root = folder_paths.get_folder_paths("musev")[0]

    def expect(pattern, *args, **kw):
        with pytest.raises(MuseVInputError, match=pattern):
            node.apply(*args, **kw)

    emb = _embeds()
    # no face in the image
    expect(r"no face found in 'image' \(image 1 of 1, 64x64\)", model, faceid_file[0], 1.0,
           image=torch.zeros(1, 64, 64, 3), face_analysis=INSIGHT, channel_order=BGR)
    # wrong files given as faceid_model
    motion_file = standins.motion["musev_referencenet"] + "unet/diffusion_pytorch_model.safetensors"
    expect(r"MuseVFaceID: 'faceid_model' \(diffusion_pytorch_model.safetensors\) is a MuseV motion UNet.*"
           r"LoadMuseVMotion.*ip-adapter-faceid_sd15.bin", model, motion_file, 1.0, face_embeds=emb)
    expect(r"is an IP-Adapter image projection.*MuseVIPAdapter", model, standins.image_proj["musev_referencenet"],
           1.0, face_embeds=emb)
    expect(r"ReferenceNet.*MuseVReferenceNet", model,
           standins.referencenet + "diffusion_pytorch_model.safetensors", 1.0, face_embeds=emb)
    sdxl = {f"{i}.to_k_ip.weight": torch.zeros(640, 2048) for i in range(1, 140, 2)}
    sdxl.update({f"{i}.to_v_ip.weight": torch.zeros(640, 2048) for i in range(1, 140, 2)})
    proj = {"proj.0.weight": torch.zeros(1024, 512), "proj.0.bias": torch.zeros(1024),
            "proj.2.weight": torch.zeros(4 * 2048, 1024), "proj.2.bias": torch.zeros(4 * 2048),
            "norm.weight": torch.ones(2048), "norm.bias": torch.zeros(2048)}
    torch.save({"image_proj": proj, "ip_adapter": sdxl}, os.path.join(root, "faceid_test", "faceid_sdxl.bin"))
    expect(r"SDXL", model, "faceid_test/faceid_sdxl.bin", 1.0, face_embeds=emb)
    write_faceid_standin(os.path.join(root, "faceid_test", "faceid_640.bin"), unet_channels=(640, 640, 640, 640))
    expect(r"does not fit the base model.*640 channels.*320", model, "faceid_test/faceid_640.bin", 1.0,
           face_embeds=emb)
    with open(os.path.join(root, "faceid_test", "broken.bin"), "wb") as f:
        f.write(b"PK\x03\x04 not really")
    expect(r"'faceid_model'.*broken.bin", model, "faceid_test/broken.bin", 1.0, face_embeds=emb)
    expect(r"ip-adapter-faceid_sd15.bin.*is not there: download.*huggingface", model,
           "IP-Adapter/models/ip-adapter-faceid_sd15.bin", 1.0, face_embeds=emb)
    # inputs
    expect(r"connect a face 'image' or your own 'face_embeds'", model, faceid_file[0], 1.0)
    expect(r"both 'image' and 'face_embeds'", model, faceid_file[0], 1.0, image=torch.rand(1, 8, 8, 3),
           face_embeds=emb)
    expect(r"'face_embeds' gives 256-d face embeddings.*takes 512-d", model, faceid_file[0], 1.0,
           face_embeds=torch.randn(2, 256))
    expect(r"'face_embeds' holds NaN", model, faceid_file[0], 1.0, face_embeds=torch.full((1, 512), float("nan")))
    expect(r"no MuseV motion model.*LoadMuseVMotion", base[0], faceid_file[0], 1.0, face_embeds=emb)
    expect(r"'face_analysis'.*det_10g.onnx.*w600k_r50.onnx", model, faceid_file[0], 1.0,
           image=torch.rand(1, 64, 64, 3), face_analysis="musev/IP-Adapter/image_encoder/models/buffalo_l")
    # nothing happened to the input MODEL
    assert patch.get_state(model) is state_before
    assert repr(sorted(model.model_options["transformer_options"].keys())) == options_before
    # a user embedding that is not normalised works, with a warning
    with catch_log() as records:
        fnodes.MuseVFaceID().apply(model, faceid_file[0], 1.0, face_embeds=emb[0] * 20)
    assert any("normed_embedding" in r.getMessage() for r in records)


# ------------------------------------------------------------------------------------------------
# Through ComfyUI's executor

def _save_input(name, rgb):
    import folder_paths
    from PIL import Image
    path = os.path.join(folder_paths.get_input_directory(), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(rgb).save(path)
    return name


def faceid_i2v_prompt(s, image, faceid_model, face_image, frames=3, size=64, variant="musev_referencenet",
                      embed_node=True):
    """Image -> video with MuseV's IP-Adapter, ReferenceNet and FaceID (referencenet family), or FaceID
    alone (musev)."""
    p = {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": s.checkpoint}},
        "motion": {"class_type": "LoadMuseVMotion", "inputs": {"model": ["ckpt", 0], "motion_model": s.motion[variant],
                                                               "frame_rate": 8.0, "temporal_layers": True}},
        "image": {"class_type": "LoadImage", "inputs": {"image": image}},
        "face_image": {"class_type": "LoadImage", "inputs": {"image": face_image}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": s.vae}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a girl, eye blinks"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "worst quality"}},
    }
    model = ["motion", 0]
    if variant != "musev":
        p["clip_vision"] = {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": s.clip_vision}}
        p["ip"] = {"class_type": "MuseVIPAdapter", "inputs": {
            "model": model, "clip_vision": ["clip_vision", 0], "image": ["image", 0],
            "image_proj": s.image_proj[variant], "scale": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        p["refnet"] = {"class_type": "MuseVReferenceNet", "inputs": {
            "model": ["ip", 0], "referencenet": s.referencenet, "vae": ["vae", 0], "image": ["image", 0]}}
        model = ["refnet", 0]
    face = {"model": model, "faceid_model": faceid_model, "scale": 1.0, "face_analysis": INSIGHT,
            "channel_order": BGR}
    if embed_node:
        p["face_embed"] = {"class_type": "MuseVFaceEmbed", "inputs": {
            "image": ["face_image", 0], "face_analysis": INSIGHT, "channel_order": BGR}}
        face["face_embeds"] = ["face_embed", 0]
    else:
        face["image"] = ["face_image", 0]
    p["faceid"] = {"class_type": "MuseVFaceID", "inputs": face}
    p["sampler"] = {"class_type": "ParallelDenoiseSampler", "inputs": {
        "model": ["faceid", 0], "positive": ["pos", 0], "negative": ["neg", 0], "frames": frames, "width": size,
        "height": size, "context_frames": 3, "context_overlap": 1, "context_schedule": "uniform_v2",
        "context_batch_size": 1, "noise_type": "video_fusion", "w_ind_noise": 0.5, "img_weight": 0.001, "seed": 3,
        "steps": 1, "cfg": 3.5, "sampler_name": "euler", "scheduler": "normal", "include_condition_frames": True,
        "vision_image": ["image", 0], "vae": ["vae", 0]}}
    p["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sampler", 0], "filename_prefix": "musev_faceid"}}
    return p


def test_faceid_video_in_executor(comfy_host, standins, faceid_file, buffalo, monkeypatch):
    """The referencenet family with IP-Adapter + ReferenceNet + MuseVFaceEmbed -> MuseVFaceID (the
    plain family and the image input run through the executor in the next test)."""
    F = comfy_host.pack("musev_core.faceid")
    calls = []
    orig = F.FaceCall.add

    def counting(self, prefix, q, out, heads, layout, attn_fn=None):
        if self.active:
            calls.append(prefix)
        return orig(self, prefix, q, out, heads, layout, attn_fn)

    monkeypatch.setattr(F.FaceCall, "add", counting)
    image = _save_input("musev_faceid_cond.png", face_image(64, 64, 30.0, 28.0, 12.0, channel=1))
    face = _save_input("musev_faceid_face.png", face_image(64, 64, 30.0, 30.0, 3.0, channel=0))
    prompt = faceid_i2v_prompt(standins, image, faceid_file[0], face, variant="musev_referencenet", embed_node=True)
    outputs, _ = comfy_host.run_prompt(prompt, prompt_id="faceid-i2v")
    assert outputs["save"]
    assert calls and len(calls) % 16 == 0 and set(calls) == set(F.FACE_ATTN2_PREFIXES)


def test_executor_reports_no_face(comfy_host, standins, faceid_file, buffalo):
    """musev family, face from an image input: a face image without a face stops the run with
    MuseVFaceID's message (wrong files: test_bad_inputs_give_clear_errors_and_leave_the_model_untouched)."""
    image = _save_input("musev_faceid_cond2.png", face_image(64, 64, 30.0, 28.0, 12.0, channel=1))
    black = _save_input("musev_faceid_black.png", np.zeros((64, 64, 3), np.uint8))
    prompt = faceid_i2v_prompt(standins, image, faceid_file[0], black, variant="musev", embed_node=False)
    outputs, ex = comfy_host.run_prompt(prompt, prompt_id="faceid-noface", expect_success=False)
    text = " ".join(str(m) for m in ex.status_messages)
    assert outputs is None and "MuseVFaceID: no face found in 'image' (image 1 of 1, 64x64)" in text, text[:2000]


def test_other_attn2_patches_compose_or_are_refused(comfy_host, musev_models, faceid_file):
    """Another pack's attn2 patch on a whole block (IPAdapter_plus' (block, id) keys) stays active
    under MuseVFaceID, composed by MuseV's attn2 patch; one on exactly a slot FaceID needs would be
    lost, so it is refused with the node's message."""
    fnodes = comfy_host.pack("nodes.faceid_nodes")
    err = comfy_host.pack("nodes.host").MuseVInputError
    model = musev_models["musev"]
    calls = []

    class Foreign:
        def __call__(self, q, k, v, extra_options):
            calls.append(extra_options.get("block"))
            import comfy.ldm.modules.attention as attention
            return attention.optimized_attention(q, k, v, extra_options["n_heads"]) * 1.5

    block = model.clone()
    block.set_model_attn2_replace(Foreign(), "input", 1)
    (face,) = fnodes.MuseVFaceID().apply(block, faceid_file[0], 1.0, face_embeds=_embeds())
    plain = _unet_out(comfy_host, fnodes.MuseVFaceID().apply(model, faceid_file[0], 1.0, face_embeds=_embeds())[0])
    composed = _unet_out(comfy_host, face)
    assert calls and (composed - plain).abs().max() > 1e-4       # the other pack's term acted
    slot = model.clone()
    slot.set_model_attn2_replace(Foreign(), "input", 1, 0)
    with pytest.raises(err, match=r"MuseVFaceID: another node already replaced the cross-attention"):
        fnodes.MuseVFaceID().apply(slot, faceid_file[0], 1.0, face_embeds=_embeds())
