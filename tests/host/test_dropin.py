"""The released MuseV files as users download them: MuseV's Hugging Face repo cloned into
``models/musev/`` runs the image->video graph with no renaming and no conversion.

The drop-in tree (tests/standins.py ``make_dropin``) holds stand-in weights in every format the
released repo uses: diffusers pipeline folders (.bin and safetensors), a diffusers VAE folder with
pre-0.14 attention names, a transformers CLIP vision folder (pytorch_model.bin), motion UNets as
.bin and safetensors, the ReferenceNet as safetensors, torch.save'd image projections.  The names
come from nodes/model_table.py only.
"""
import importlib.util
import os
import shutil

import pytest

from comfy_server import ComfyServer, queue_and_wait
from conftest import PACK_DIR, find_comfyui_path
from workflow_inputs import video_frame_count, write_image

SIZE = 64
FRAMES = 3


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"musev_{name}", os.path.join(PACK_DIR, "scripts", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def table(comfy_host):
    return comfy_host.pack("nodes.model_table")


@pytest.fixture(scope="module")
def loaders(comfy_host):
    return comfy_host.pack("nodes.loader_nodes")


@pytest.fixture(scope="module")
def dropin(comfy_host, tmp_path_factory):
    """The drop-in tree as one more models/musev path of the in-process host (removed afterwards,
    so other test files see the folder lists they expect)."""
    import folder_paths
    from standins import make_dropin
    models = str(tmp_path_factory.mktemp("dropin-models"))
    d = make_dropin(models)
    comfy_host.pack("nodes.paths").register()
    folder_paths.add_model_folder_path("musev", d.root)
    yield d
    folder_paths.folder_names_and_paths["musev"][0].remove(d.root)


# ------------------------------------------------------------------------------------------------
# the tree and the table agree

def test_dropin_tree_is_complete_by_the_table(table, dropin):
    assert set(dropin.names) >= set(table.JOBS["image_to_video"])
    for key, name in dropin.names.items():
        entry = table.get(key)
        assert name == entry.name
        assert table.problems(entry, dropin.root) == [], key
    # every released format is really there
    root = dropin.root
    assert os.path.isfile(os.path.join(root, "t2i/sd1.5/majicmixRealv6Fp16/unet/diffusion_pytorch_model.bin"))
    assert os.path.isfile(os.path.join(root, "t2i/sd1.5/majicmixRealv6Fp16/text_encoder/pytorch_model.bin"))
    assert os.path.isfile(os.path.join(root, "t2i/sd1.5/fantasticmix_v10/unet/diffusion_pytorch_model.safetensors"))
    assert os.path.isfile(os.path.join(root, "IP-Adapter/models/image_encoder/pytorch_model.bin"))
    assert os.path.isfile(os.path.join(root, "motion/musev_referencenet/unet/diffusion_pytorch_model.bin"))
    assert os.path.isfile(os.path.join(root, "motion/musev/unet/diffusion_pytorch_model.safetensors"))


def test_loader_lists_offer_the_released_folders(comfy_host, dropin, table):
    import nodes
    L = nodes.NODE_CLASS_MAPPINGS
    lists = {
        "MuseVCheckpointLoader": L["MuseVCheckpointLoader"].INPUT_TYPES()["required"]["ckpt_name"],
        "MuseVVAELoader": L["MuseVVAELoader"].INPUT_TYPES()["required"]["vae_name"],
        "MuseVCLIPVisionLoader": L["MuseVCLIPVisionLoader"].INPUT_TYPES()["required"]["clip_name"],
    }
    for cls, (values, opts) in lists.items():
        assert opts.get("tooltip"), cls
        assert L[cls].CATEGORY == "MuseV" and len(L[cls].OUTPUT_TOOLTIPS) == len(L[cls].RETURN_TYPES)
    ckpts, vaes, clips = (lists[c][0] for c in lists)
    assert {table.get("t2i_majicmix").name, table.get("t2i_fantasticmix").name} <= set(ckpts)
    assert table.get("vae").name in vaes
    assert table.get("clip_vision").name in clips
    # one entry per model: no pipeline sub-folders, no motion/ReferenceNet folders in these lists
    for values in (ckpts, vaes, clips):
        assert not any(v.startswith("t2i/sd1.5/majicmixRealv6Fp16/") and v != table.get("t2i_majicmix").name
                       for v in values), values
        assert not any(v.startswith("motion/") for v in values), values


def test_pipeline_folder_loads_like_the_same_checkpoint_file(comfy_host, dropin, standins, loaders):
    """The diffusers folder (.bin) gives the same UNet weights, text encoding and VAE as the
    ComfyUI-format stand-in checkpoint they were re-packed from."""
    import nodes
    import torch
    model, clip, vae = loaders.MuseVCheckpointLoader().load(dropin.names["t2i_majicmix"])
    ref_model, ref_clip, _ = nodes.CheckpointLoaderSimple().load_checkpoint(standins.checkpoint)[:3]
    a, b = model.model.diffusion_model.state_dict(), ref_model.model.diffusion_model.state_dict()
    assert set(a) == set(b)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) == 0
    e1 = clip.encode_from_tokens(clip.tokenize("a girl dancing"))
    e2 = ref_clip.encode_from_tokens(ref_clip.tokenize("a girl dancing"))
    assert torch.equal(e1, e2)
    ref_vae = nodes.VAELoader().load_vae(standins.vae)[0]
    (folder_vae,) = loaders.MuseVVAELoader().load(dropin.names["vae"])       # safetensors, old attention names
    x = torch.rand(1, 64, 64, 3)
    want = ref_vae.encode(x)
    assert torch.equal(vae.encode(x), want) and torch.equal(folder_vae.encode(x), want)
    # the safetensors pipeline folder too
    model2 = loaders.MuseVCheckpointLoader().load(dropin.names["t2i_fantasticmix"])[0]
    c = model2.model.diffusion_model.state_dict()
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_clip_vision_folder_both_formats(comfy_host, dropin, standins, loaders, tmp_path):
    """image_encoder/ with pytorch_model.bin (the drop-in tree) and with model.safetensors load the
    same model as Load CLIP Vision on the single file."""
    import folder_paths
    import nodes
    import torch
    ref = nodes.CLIPVisionLoader().load_clip(standins.clip_vision)[0]
    (from_bin,) = loaders.MuseVCLIPVisionLoader().load(dropin.names["clip_vision"])
    st = tmp_path / "musev" / "image_encoder_st"
    st.mkdir(parents=True)
    shutil.copyfile(os.path.join(dropin.root, dropin.names["clip_vision"], "config.json"), st / "config.json")
    single_file = os.path.realpath(folder_paths.get_full_path("clip_vision", standins.clip_vision))
    os.link(single_file, st / "model.safetensors")     # a real file inside the folder, not a link out of it
    folder_paths.add_model_folder_path("musev", str(tmp_path / "musev"))
    try:
        (from_st,) = loaders.MuseVCLIPVisionLoader().load("image_encoder_st/")
    finally:
        folder_paths.folder_names_and_paths["musev"][0].remove(str(tmp_path / "musev"))
    sd_ref = ref.model.state_dict()
    for got in (from_bin, from_st):
        sd = got.model.state_dict()
        assert set(sd) == set(sd_ref) and all(torch.equal(sd[k], sd_ref[k]) for k in sd)


def test_single_files_still_work(comfy_host, standins, loaders):
    """Single files of the usual ComfyUI folders go to ComfyUI's own loaders, in the same nodes."""
    model, clip, vae = loaders.MuseVCheckpointLoader().load(standins.checkpoint)
    assert model is not None and clip is not None
    assert loaders.MuseVVAELoader().load(standins.vae)[0] is not None
    assert loaders.MuseVCLIPVisionLoader().load(standins.clip_vision)[0] is not None


# ------------------------------------------------------------------------------------------------
# bad input: clear errors naming the input and the fix

@pytest.fixture
def scratch_musev(comfy_host, tmp_path):
    import folder_paths
    root = str(tmp_path / "musev")
    os.makedirs(root)
    folder_paths.add_model_folder_path("musev", root)
    yield root
    folder_paths.folder_names_and_paths["musev"][0].remove(root)


def _copy_folder(src, dst, skip=()):
    for dirpath, _, files in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        os.makedirs(os.path.join(dst, rel), exist_ok=True)
        for fn in files:
            if os.path.join(rel, fn).replace(os.sep, "/").lstrip("./") in skip:
                continue
            os.link(os.path.join(dirpath, fn), os.path.join(dst, rel, fn))


def test_errors_name_the_input_and_the_fix(comfy_host, dropin, loaders, table, scratch_musev):
    err = comfy_host.pack("nodes.host").MuseVInputError
    src = os.path.join(dropin.root, dropin.names["t2i_majicmix"])
    # an interrupted download: the UNet weights are missing
    _copy_folder(src, os.path.join(scratch_musev, "t2i/sd1.5/partial"), skip={"unet/diffusion_pytorch_model.bin"})
    with pytest.raises(err) as e:
        loaders.MuseVCheckpointLoader().load("t2i/sd1.5/partial/")
    msg = str(e.value)
    assert "MuseVCheckpointLoader" in msg and "'ckpt_name'" in msg and "unet/diffusion_pytorch_model" in msg
    assert table.get("t2i_majicmix").url in msg, msg
    # a clone without Git LFS: the weights are pointer files
    lfs = os.path.join(scratch_musev, "vae/lfs")
    os.makedirs(lfs)
    shutil.copyfile(os.path.join(dropin.root, dropin.names["vae"], "config.json"), os.path.join(lfs, "config.json"))
    with open(os.path.join(lfs, "diffusion_pytorch_model.safetensors"), "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 334643238\n")
    with pytest.raises(err) as e:
        loaders.MuseVVAELoader().load("vae/lfs/")
    assert "'vae_name'" in str(e.value) and "git lfs" in str(e.value).lower(), str(e.value)
    # the wrong kind of folder
    with pytest.raises(err) as e:
        loaders.MuseVCLIPVisionLoader().load(dropin.names["vae"])
    assert "'clip_name'" in str(e.value) and "VAE" in str(e.value) and "image_encoder" in str(e.value)
    with pytest.raises(err) as e:
        loaders.MuseVVAELoader().load(dropin.names["motion_referencenet"])
    assert "LoadMuseVMotion" in str(e.value)
    # names that lead out of the model folders, and unknown files
    for bad in ("../../etc/", "/etc/", "t2i/../../x/"):
        with pytest.raises(err) as e:
            loaders.MuseVCheckpointLoader().load(bad)
        assert "MuseVCheckpointLoader" in str(e.value) and "'ckpt_name'" in str(e.value)
        assert "from the list" in str(e.value)
    with pytest.raises(err) as e:
        loaders.MuseVVAELoader().load("no_such_vae.safetensors")
    assert "models/vae/" in str(e.value) and table.get("vae").name in str(e.value)


def test_sdxl_and_motion_folders_are_refused_as_a_base(comfy_host, dropin, loaders, scratch_musev):
    err = comfy_host.pack("nodes.host").MuseVInputError
    src = os.path.join(dropin.root, dropin.names["t2i_majicmix"])
    xl = os.path.join(scratch_musev, "t2i/sdxl")
    _copy_folder(src, xl)
    _copy_folder(os.path.join(src, "text_encoder"), os.path.join(xl, "text_encoder_2"))
    with pytest.raises(err, match="SDXL"):
        loaders.MuseVCheckpointLoader().load("t2i/sdxl/")
    # a motion UNet put where the base UNet goes
    bad = os.path.join(scratch_musev, "t2i/motion_as_base")
    _copy_folder(src, bad, skip={"unet/diffusion_pytorch_model.bin"})
    os.link(os.path.join(dropin.root, "motion/musev/unet/diffusion_pytorch_model.safetensors"),
            os.path.join(bad, "unet/diffusion_pytorch_model.safetensors"))
    with pytest.raises(err, match="LoadMuseVMotion"):
        loaders.MuseVCheckpointLoader().load("t2i/motion_as_base/")


# ------------------------------------------------------------------------------------------------
# the image->video graph from the drop-in tree, over the HTTP API of a real server

@pytest.fixture(scope="module")
def dropin_server(comfy_host, tmp_path_factory):
    """A ComfyUI server whose models folder holds nothing but the drop-in tree."""
    from standins import make_dropin
    base = str(tmp_path_factory.mktemp("dropin-server"))
    d = make_dropin(os.path.join(base, "models"))
    srv = ComfyServer(find_comfyui_path(), base_dir=base)
    try:
        srv.start()
    except Exception as e:  # noqa: BLE001
        srv.stop(keep_dir=True)
        pytest.fail(f"could not start the ComfyUI server: {e}")
    write_image(os.path.join(srv.input_dir, "dropin_condition.png"), SIZE, SIZE)
    yield srv, d
    srv.stop()


def test_image_to_video_from_the_dropin_tree_over_http(dropin_server, table):
    srv, d = dropin_server
    assert sorted(os.listdir(os.path.join(srv.base_dir, "models"))) == ["musev"]   # nothing else to load from
    info = srv.object_info("MuseVCheckpointLoader")
    assert table.get("t2i_majicmix").name in info["input"]["required"]["ckpt_name"][0]
    demo = load_script("demo")
    names = {m.key: m.name for m in table.MODELS}          # the table's names, unchanged
    prompt = demo.prompt(names, "dropin_condition.png", FRAMES, SIZE, SIZE, 1, 7)
    for node_id in ("webp", "video", "save"):
        if "filename_prefix" in prompt[node_id]["inputs"]:
            prompt[node_id]["inputs"]["filename_prefix"] = "dropin/musev"
    entry = queue_and_wait(srv, prompt, timeout=900)
    files = entry["outputs"]["save"]["images"]
    assert len(files) == 1
    path = srv.output_path(files[0])
    assert os.path.getsize(path) > 0 and video_frame_count(path) == FRAMES + 1
    widgets = {v for node in prompt.values() for v in node["inputs"].values() if isinstance(v, str)}
    assert {table.get(k).name for k in table.JOBS["image_to_video"]} <= widgets


MODEL_INPUTS = {"ckpt_name", "vae_name", "clip_name", "motion_model", "referencenet", "image_proj"}


@pytest.mark.browser
def test_shipped_image_to_video_workflow_runs_from_the_dropin_tree(chromium, dropin_server, table):
    """example_workflows/musev_image_to_video.json as the frontend queues it, on a server whose
    models folder is the drop-in tree: every model widget keeps the shipped name (a name of the
    table); only sizes, frames and steps are shrunk."""
    from browser import FrontendPage, load_workflow_in_frontend
    srv, d = dropin_server
    path = os.path.join(PACK_DIR, "example_workflows", "musev_image_to_video.json")
    page = FrontendPage(chromium, srv)
    try:
        page.open()
        report = load_workflow_in_frontend(page, path, screenshot_name="dropin_image_to_video", fit=False)
        assert report["missing_nodes"] == [] and report["errors"] == [], report
        api = page.page.evaluate("async () => (await window.app.graphToPrompt()).output")
    finally:
        page.close()
    names = {m.name for m in table.MODELS}
    picked = {(n["class_type"], k): v for n in api.values() for k, v in n["inputs"].items() if k in MODEL_INPUTS}
    assert picked and all(v in names for v in picked.values()), picked
    assert {table.get(k).name for k in table.JOBS["image_to_video"]} == set(picked.values())
    for node in api.values():
        inputs = node["inputs"]
        if node["class_type"] == "ParallelDenoiseSampler":
            inputs.update(frames=FRAMES, width=SIZE, height=SIZE, steps=1)
        if node["class_type"] == "SaveVideo":
            inputs["filename_prefix"] = "dropin/shipped"
    entry = queue_and_wait(srv, api, timeout=900)
    saved = [f for node_id, out in entry["outputs"].items() if api[node_id]["class_type"] == "SaveVideo"
             for f in out.get("images", [])]
    assert len(saved) == 1 and video_frame_count(srv.output_path(saved[0])) == FRAMES + 1
