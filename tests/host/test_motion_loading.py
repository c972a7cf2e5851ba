"""LoadMuseVMotion: checkpoint formats, key coverage (fixtures and the released layout at full
SD1.5 size), the base MODEL left exactly as it was (after a run, an error, an interrupt), bad input."""
import os
import shutil

import pytest
import torch
from safetensors.torch import save_file

from conftest import PACK_DIR, parity_root
from musev_testlib import comfy_unet_config, fixture_musev_model, load_tensors, make_sd15_model, read_json

UNET_FOLDERS = ("unet3d_musev", "unet3d_musev_referencenet", "unet3d_musev_referencenet_pose")


def _musev_dir():
    import folder_paths
    return folder_paths.get_folder_paths("musev")[0]


def _load(host, base, choice, **kw):
    return host.pack("nodes.motion_nodes").LoadMuseVMotion().load(base, choice, kw.get("frame_rate", 8.0),
                                                                 kw.get("temporal_layers", True))[0]


def _base_for(parity_dir, folder):
    cfg = read_json(os.path.join(parity_dir, folder, "config.json"))
    return make_sd15_model(comfy_unet_config(cfg), load_tensors(os.path.join(parity_dir, folder, "weights.safetensors")))


def _motion_sd(host, model):
    return {k: v.clone() for k, v in host.pack("nodes.patch").get_state(model).motion.state_dict().items()}


@pytest.mark.parametrize("folder", UNET_FOLDERS)
def test_formats_load_identically(comfy_host, parity_dir, tmp_path, folder):
    """.safetensors and .bin, diffusers folder and single file: the same motion weights."""
    src = os.path.join(parity_dir, folder)
    sd = load_tensors(os.path.join(src, "weights.safetensors"))
    root = os.path.join(_musev_dir(), f"formats_{folder}")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(os.path.join(root, "st", "unet"))
    os.makedirs(os.path.join(root, "bin", "unet"))
    shutil.copy(os.path.join(src, "weights.safetensors"), os.path.join(root, "st", "unet", "diffusion_pytorch_model.safetensors"))
    shutil.copy(os.path.join(src, "config.json"), os.path.join(root, "st", "unet", "config.json"))
    torch.save(sd, os.path.join(root, "bin", "unet", "diffusion_pytorch_model.bin"))
    shutil.copy(os.path.join(src, "config.json"), os.path.join(root, "bin", "unet", "config.json"))
    torch.save(sd, os.path.join(root, "single.bin"))
    shutil.copy(os.path.join(src, "weights.safetensors"), os.path.join(root, "single.safetensors"))
    base = _base_for(parity_dir, folder)
    choices = [f"formats_{folder}/st/", f"formats_{folder}/st/unet/", f"formats_{folder}/bin/",
               f"formats_{folder}/single.bin", f"formats_{folder}/single.safetensors"]
    paths = comfy_host.pack("nodes.paths")
    listed = paths.list_choices(paths.KIND_MOTION)
    for c in choices:   # one entry per model: the variant folder, not also its unet/ (which still loads)
        assert (c in listed) == (not c.endswith("/unet/")), c
    ref = _motion_sd(comfy_host, _load(comfy_host, base, choices[0]))
    assert ref
    for c in choices[1:]:
        got = _motion_sd(comfy_host, _load(comfy_host, base, c))
        assert got.keys() == ref.keys(), c
        assert all(torch.equal(got[k], ref[k]) for k in ref), c


@pytest.mark.parametrize("folder", UNET_FOLDERS)
def test_key_coverage_fixture(comfy_host, parity_dir, folder):
    model = _load_fixture(comfy_host, parity_dir, folder)
    state = comfy_host.pack("nodes.patch").get_state(model)
    sd = load_tensors(os.path.join(parity_dir, folder, "weights.safetensors"))
    report = state.motion.coverage_report(sd)
    t2i = [line.split("\t")[0] for line in open(os.path.join(parity_dir, folder, "t2i_keys.txt")) if line.strip()
           and not line.startswith("#")]
    assert report["missing"] == [] and report["unused"] == []
    assert report["ignored_2d"] == len(t2i)
    assert report["motion"] + report["ignored_2d"] == report["total"]


def _load_fixture(host, parity_dir, folder):
    import folder_paths  # noqa: F401
    from musev_testlib import place_in_layout
    rel = f"coverage_{folder}/unet"
    place_in_layout(os.path.join(parity_dir, folder), os.path.join(_musev_dir(), rel))
    return _load(host, _base_for(parity_dir, folder), rel + "/")


def _released_keys():
    """shared/fixtures/released_keys: MUSEV_RELEASED_KEYS, else beside the parity fixture folder,
    else beside the checkout (a MUSEV_PARITY_FIXTURES set elsewhere need not carry a copy)."""
    candidates = [os.environ.get("MUSEV_RELEASED_KEYS"),
                  os.path.join(os.path.dirname(parity_root()), "released_keys"),
                  os.path.join(os.path.dirname(PACK_DIR), "shared", "fixtures", "released_keys")]
    for root in candidates:
        if root and os.path.isdir(root):
            return root
    pytest.fail(f"released key lists not found (tried {[c for c in candidates if c]}): set MUSEV_RELEASED_KEYS "
                "to shared/fixtures/released_keys")


@pytest.mark.parametrize("tsv,variant", [("musev_keys_unet_musev.tsv", "musev"),
                                         ("musev_keys_unet_musev_referencenet.tsv", "musev_referencenet")])
def test_key_coverage_released_layout_full_size(comfy_host, tsv, variant):
    """A checkpoint with exactly the released key set and full SD1.5 shapes (meta tensors) loads
    with 0 missing / unused keys and fits a full-size SD1.5 ComfyUI UNet."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from standins import sd15_unet_config
    M = comfy_host.pack("musev_core.motion")
    patch = comfy_host.pack("nodes.patch")
    sd = {}
    with open(os.path.join(_released_keys(), tsv)) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            key, shape = line.rstrip("\n").split("\t")
            dims = [int(d) for d in shape.strip("()[] ").split(",") if d.strip()]
            sd[key] = torch.empty(dims, device="meta")
    with torch.device("meta"):
        motion = M.MuseVMotionModel.from_state_dict(sd, heads=8)
        cfg = dict(sd15_unet_config(), channel_mult=[1, 2, 4, 4])
        unet = UNetModel(**cfg, operations=comfy.ops.disable_weight_init)
    assert motion.variant == variant
    report = motion.coverage_report(sd)
    assert report["missing"] == [] and report["unused"] == []
    assert report["ignored_2d"] == 686
    patch.check_fits(unet, motion)
    patch.inject_into(unet, motion)
    assert patch.count_injected(unet) == len(motion.placements)
    expected = {"musev": 22 + 16 + 1, "musev_referencenet": 22 + 16 + 13}[variant]
    assert len(motion.placements) == expected
    patch.eject_from(unet)
    assert patch.count_injected(unet) == 0


# ------------------------------------------------------------------------------------------------
# The base MODEL is left exactly as it was

def _snapshot(model):
    unet = model.model.diffusion_model
    return ([(n, type(m).__name__) for n, m in unet.named_modules()],
            {k: v.detach().clone() for k, v in unet.state_dict().items()},
            [(n, m.eps) for n, m in unet.named_modules() if isinstance(m, torch.nn.LayerNorm)])


def _assert_same(before, after):
    assert before[0] == after[0], "module tree changed"
    assert before[1].keys() == after[1].keys()
    assert all(torch.equal(before[1][k], after[1][k]) for k in before[1]), "weights changed"
    assert before[2] == after[2], "LayerNorm eps changed"


def _sample(model, pos, neg, vision, steps=2, frames=5, callback=None):
    import comfy.sample
    latent = torch.zeros(frames, *vision.shape[1:])
    return comfy.sample.sample(model, comfy.sample.prepare_noise(latent, 0), steps, 3.5, "euler", "normal", pos, neg,
                               latent, disable_pbar=True, seed=0, callback=callback)


@pytest.fixture(scope="module")
def ref_model(comfy_host, parity_dir):
    return fixture_musev_model(comfy_host, parity_dir, "pipeline", tag="base")


def test_base_model_untouched_after_run(comfy_host, ref_model):
    import comfy.model_management
    model, pos, neg, vision, _, _ = ref_model
    base_patcher = model.clone()
    before = _snapshot(base_patcher)
    ctx = comfy_host.pack("nodes.context")
    m = ctx.apply_parallel_denoise(model, vision=vision, context_frames=3, context_overlap=1)
    out = _sample(m, pos, neg, vision)
    assert torch.isfinite(out).all()
    _assert_same(before, _snapshot(base_patcher))
    # the next run of the same clone re-injects and gives the same result
    out2 = _sample(m, pos, neg, vision)
    assert torch.equal(out, out2)
    comfy.model_management.unload_all_models()
    _assert_same(before, _snapshot(base_patcher))


def test_base_model_untouched_after_error(comfy_host, ref_model):
    model, pos, neg, vision, _, _ = ref_model
    patch = comfy_host.pack("nodes.patch")
    before = _snapshot(model)

    class Broken:
        def resolve(self, *a, **k):
            raise RuntimeError("boom inside a UNet call")

        def __deepcopy__(self, memo):
            return self

    m = model.clone()
    patch.set_state(m, patch.get_state(m).replace(reference=Broken()))
    with pytest.raises(RuntimeError, match="boom"):
        _sample(m, pos, neg, vision)
    _assert_same(before, _snapshot(model))


def test_base_model_untouched_after_interrupt_and_next_run_clean(comfy_host, ref_model):
    import comfy.model_management
    model, pos, neg, vision, _, _ = ref_model
    before = _snapshot(model)
    ctx = comfy_host.pack("nodes.context")
    m = ctx.apply_parallel_denoise(model, vision=vision, context_frames=3, context_overlap=1)
    clean = _sample(m, pos, neg, vision, steps=3)

    def interrupt(step, *args):
        if step == 1:
            comfy.model_management.interrupt_current_processing(True)

    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            _sample(m, pos, neg, vision, steps=3, callback=interrupt)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    _assert_same(before, _snapshot(model))
    again = _sample(m, pos, neg, vision, steps=3)
    assert torch.equal(again, clean)


# ------------------------------------------------------------------------------------------------
# Bad input

def _tiny_model(kind):
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    base = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "in_channels": 4, "model_channels": 32, "num_res_blocks": [2, 2, 2, 2],
            "channel_mult": [1, 1, 1, 1], "transformer_depth_middle": 1, "use_temporal_attention": False,
            "use_temporal_resblock": False, "dtype": torch.float32}
    if kind == "sdxl":
        cfg = dict(base, num_res_blocks=[2, 2, 2], channel_mult=[1, 1, 1], transformer_depth=[0, 0, 1, 1, 1, 1],
                   transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1], use_linear_in_transformer=True,
                   context_dim=64, adm_in_channels=2816, num_classes="sequential", num_head_channels=8)
        mc = comfy.supported_models.SDXL(cfg)
    else:
        cfg = dict(base, transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1] * 9 + [0] * 3,
                   use_linear_in_transformer=True, context_dim=64, adm_in_channels=None, num_head_channels=8)
        mc = comfy.supported_models.SD20(cfg)
    for k, v in cfg.items():
        mc.unet_config[k] = v
    mc.set_inference_dtype(torch.float32, None)
    return comfy.model_patcher.ModelPatcher(mc.get_model({}), comfy.model_management.get_torch_device(),
                                            comfy.model_management.unet_offload_device())


@pytest.fixture(scope="module")
def sd15_base(parity_dir):
    return _base_for(parity_dir, "unet3d_musev")


def _write(name, sd):
    path = os.path.join(_musev_dir(), "bad", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if name.endswith(".safetensors"):
        save_file(sd, path)
    else:
        torch.save(sd, path)
    return "bad/" + name


def test_bad_non_musev_file(comfy_host, sd15_base):
    host = comfy_host.pack("nodes.host")
    choice = _write("not_musev.safetensors", {"foo.weight": torch.zeros(3, 3)})
    with pytest.raises(host.MuseVInputError, match="motion_model.*no MuseV temporal layers"):
        _load(comfy_host, sd15_base, choice)
    choice = _write("proj.safetensors", {"proj.weight": torch.zeros(12, 8), "proj.bias": torch.zeros(12),
                                          "norm.weight": torch.ones(3), "norm.bias": torch.zeros(3)})
    with pytest.raises(host.MuseVInputError, match="image projection.*MuseVIPAdapter"):
        _load(comfy_host, sd15_base, choice)


def test_bad_referencenet_given_to_motion_loader(comfy_host, parity_dir, sd15_base):
    host = comfy_host.pack("nodes.host")
    from musev_testlib import place_in_layout
    place_in_layout(os.path.join(parity_dir, "referencenet"), os.path.join(_musev_dir(), "bad", "refnet"))
    with pytest.raises(host.MuseVInputError, match="ReferenceNet checkpoint.*MuseVReferenceNet"):
        _load(comfy_host, sd15_base, "bad/refnet/")


@pytest.mark.parametrize("kind", ["sdxl", "sd2"])
def test_bad_base_model_family(comfy_host, parity_dir, kind):
    host = comfy_host.pack("nodes.host")
    from musev_testlib import place_in_layout
    place_in_layout(os.path.join(parity_dir, "unet3d_musev"), os.path.join(_musev_dir(), "bad", "motion_ok", "unet"))
    with pytest.raises(host.MuseVInputError, match="LoadMuseVMotion: the 'model' input.*SD1.5"):
        _load(comfy_host, _tiny_model(kind), "bad/motion_ok/")


def test_bad_truncated_file(comfy_host, parity_dir, sd15_base):
    host = comfy_host.pack("nodes.host")
    data = open(os.path.join(parity_dir, "unet3d_musev", "weights.safetensors"), "rb").read()
    path = os.path.join(_musev_dir(), "bad", "truncated.safetensors")
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(host.MuseVInputError, match="motion_model.*truncated.*download it again"):
        _load(comfy_host, sd15_base, "bad/truncated.safetensors")
    bin_path = os.path.join(_musev_dir(), "bad", "truncated.bin")
    torch.save({"a": torch.zeros(1000)}, bin_path)
    raw = open(bin_path, "rb").read()
    with open(bin_path, "wb") as f:
        f.write(raw[: len(raw) // 2])
    with pytest.raises(host.MuseVInputError, match="motion_model.*download it again"):
        _load(comfy_host, sd15_base, "bad/truncated.bin")


class Payload:
    """An object a weights-only load must refuse (unpickling it would import this module)."""

    def __init__(self):
        self.value = 1


def test_bad_bin_that_needs_code(comfy_host, sd15_base):
    host = comfy_host.pack("nodes.host")
    path = os.path.join(_musev_dir(), "bad", "code.bin")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": Payload()}, path)
    with pytest.raises(host.MuseVInputError, match="refusing to load.*unpickle"):
        _load(comfy_host, sd15_base, "bad/code.bin")


def test_bad_channel_mismatch(comfy_host, parity_dir):
    """The fixture motion file (channels 32/64/32/32) on a base with other channels."""
    host = comfy_host.pack("nodes.host")
    from musev_testlib import place_in_layout
    place_in_layout(os.path.join(parity_dir, "unet3d_musev"), os.path.join(_musev_dir(), "bad", "motion_fit", "unet"))
    cfg = read_json(os.path.join(parity_dir, "unet3d_musev", "config.json"))
    boc = cfg["block_out_channels"]
    cfg = dict(cfg, block_out_channels=[boc[0]] + [c * 2 for c in boc[1:]])
    other = make_sd15_model(comfy_unet_config(cfg))
    with pytest.raises(host.MuseVInputError, match="does not fit the base model.*channels"):
        _load(comfy_host, other, "bad/motion_fit/")


def test_bad_missing_choice_and_double_install(comfy_host, parity_dir, sd15_base):
    host = comfy_host.pack("nodes.host")
    with pytest.raises(host.MuseVInputError, match="is not a model in ComfyUI.s models/musev"):
        _load(comfy_host, sd15_base, "nope/")
    model = _load_fixture(comfy_host, parity_dir, "unet3d_musev")
    with pytest.raises(host.MuseVInputError, match="already carries a MuseV motion model"):
        _load(comfy_host, model, "coverage_unet3d_musev/unet/")
