"""Model files we are given (issue 13 classes 1, 3, 5; issue 14's dropdowns and ComfyUI's reader).

* stale weights: a motion model / ReferenceNet picked as a FOLDER reloads when a file inside it
  changes (same size, same folder mtime), config.json included, and ComfyUI's own output cache is
  told (``IS_CHANGED``);
* paths: a name that reaches a loader through a LINK (an any-typed string node, as custom node packs
  have) is resolved inside models/musev only: ``..``, absolute paths, links out of the folder, a file
  inside a picked folder that links out -- one message for all of them and for a missing name, and
  no file outside is ever opened;
* dropdowns: one entry per model, filtered by kind, read from the headers, cached;
* readers by content (a safetensors named .pth, a torch file named .safetensors, an LFS pointer);
* hostile config.json values: a clear error naming the file and the key, never another exception.
"""
import json
import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from musev_testlib import comfy_unet_config, load_tensors, make_sd15_model, read_json
from reference_fixtures import musev_root


def _base(parity_dir, folder="unet3d_musev"):
    cfg = read_json(os.path.join(parity_dir, folder, "config.json"))
    return make_sd15_model(comfy_unet_config(cfg), load_tensors(os.path.join(parity_dir, folder, "weights.safetensors")))


def _place(parity_dir, rel, folder="unet3d_musev", sub="unet"):
    dest = os.path.join(musev_root(), rel, sub)
    shutil.rmtree(os.path.join(musev_root(), rel), ignore_errors=True)
    os.makedirs(dest)
    shutil.copy(os.path.join(parity_dir, folder, "weights.safetensors"),
                os.path.join(dest, "diffusion_pytorch_model.safetensors"))
    shutil.copy(os.path.join(parity_dir, folder, "config.json"), os.path.join(dest, "config.json"))
    return os.path.join(dest, "diffusion_pytorch_model.safetensors")


_ST_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _rewrite_same_size(path, factor, key_part):
    """Scale some tensors of a safetensors file IN PLACE (same inode, same size, new bytes, as an
    interrupted re-download or `cp new old` leaves it); the picked folder's mtime does not change."""
    import struct
    folder_mtime = os.stat(os.path.dirname(os.path.dirname(path))).st_mtime_ns
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        for key, info in header.items():
            if key == "__metadata__" or key_part not in key:
                continue
            start, stop = info["data_offsets"]
            f.seek(8 + n + start)
            raw = bytearray(f.read(stop - start))
            t = torch.frombuffer(raw, dtype=_ST_DTYPES[info["dtype"]]) * factor
            f.seek(8 + n + start)
            f.write(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert os.path.getsize(path) == size
    assert os.stat(os.path.dirname(os.path.dirname(path))).st_mtime_ns == folder_mtime
    return load_file(path)


def _motion_weights(host, model):
    return {k: v.clone() for k, v in host.pack("nodes.patch").get_state(model).motion.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# 1. stale weights

def test_motion_folder_pick_reloads_when_a_file_inside_changes(comfy_host, parity_dir):
    motion_nodes = comfy_host.pack("nodes.motion_nodes")
    choice = "stale_pick/motion/musev/"
    weights = _place(parity_dir, "stale_pick/motion/musev")
    base = _base(parity_dir)
    node = motion_nodes.LoadMuseVMotion()
    fp1 = motion_nodes.LoadMuseVMotion.IS_CHANGED(motion_model=choice)
    first = _motion_weights(comfy_host, node.load(base, choice)[0])
    assert fp1 == motion_nodes.LoadMuseVMotion.IS_CHANGED(motion_model=choice), "stable while nothing changes"
    changed = _rewrite_same_size(weights, 3.0, "temporal_weight")
    fp2 = motion_nodes.LoadMuseVMotion.IS_CHANGED(motion_model=choice)
    assert fp2 != fp1, "ComfyUI must re-run the loader: a file inside the picked folder changed"
    second = _motion_weights(comfy_host, node.load(base, choice)[0])
    keys = [k for k in first if "temporal_weight" in k]
    assert keys
    for k in keys:
        assert torch.equal(second[k], changed[k].to(second[k].dtype)) and not torch.equal(second[k], first[k]), k
    # config.json is part of the identity too
    cfg_path = os.path.join(os.path.dirname(weights), "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    with open(cfg_path, "w") as f:
        json.dump(dict(cfg, _note="edited"), f)
    assert motion_nodes.LoadMuseVMotion.IS_CHANGED(motion_model=choice) != fp2
    patcher_a = comfy_host.pack("nodes.patch").get_state(node.load(base, choice)[0]).motion_patcher
    patcher_b = comfy_host.pack("nodes.patch").get_state(node.load(base, choice)[0]).motion_patcher
    assert patcher_a is patcher_b, "unchanged files: cached"


def test_referencenet_variant_folder_pick_reloads(comfy_host, parity_dir):
    paths = comfy_host.pack("nodes.paths")
    runner = comfy_host.pack("nodes.referencenet_runner")
    nodes = comfy_host.pack("nodes.reference_nodes")
    choice = "stale_rn/motion/musev_referencenet/"        # the old workflows' value: the variant folder
    weights = _place(parity_dir, "stale_rn/motion/musev_referencenet", folder="referencenet", sub="referencenet")
    files = paths.model_files(choice, "referencenet", "test", paths.KIND_REFERENCENET)
    p1 = runner.load_referencenet_patcher(paths.full_path(choice, "referencenet", "test"), torch.float32, None,
                                          files=files)
    fp1 = nodes.MuseVReferenceNet.IS_CHANGED(referencenet=choice)
    _rewrite_same_size(weights, 2.0, "conv_in.weight")
    files = paths.model_files(choice, "referencenet", "test", paths.KIND_REFERENCENET)
    p2 = runner.load_referencenet_patcher(paths.full_path(choice, "referencenet", "test"), torch.float32, None,
                                          files=files)
    assert nodes.MuseVReferenceNet.IS_CHANGED(referencenet=choice) != fp1
    assert p2 is not p1
    w1 = p1.model.input_blocks[0][0].weight
    w2 = p2.model.input_blocks[0][0].weight
    assert torch.allclose(w2, 2.0 * w1), "the rebuilt ReferenceNet has the new weights (and the old one kept its own)"


def test_http_prompt_after_a_file_inside_the_pick_changes(comfy_server):
    """Through the real server: the same prompt queued again after a file inside the picked motion
    folder changed gives the new result (ComfyUI's output cache and ours both see it); restored, the
    first result comes back."""
    from safetensors import safe_open
    from api_prompts import t2v_prompt
    from comfy_server import queue_and_wait
    s = comfy_server.standins()
    root = os.path.join(comfy_server.base_dir, "models", "musev")
    src = os.path.join(root, s.motion["musev"], "unet")
    dest = os.path.join(root, "stale_http", "motion", "musev", "unet")
    shutil.rmtree(os.path.dirname(os.path.dirname(dest)), ignore_errors=True)
    os.makedirs(dest)
    for fn in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copyfile(os.path.join(src, fn), os.path.join(dest, fn))     # a copy: never touch the stand-ins
    weights = os.path.join(dest, "diffusion_pytorch_model.safetensors")
    original = open(weights, "rb").read()

    def run(tag):
        p = t2v_prompt(s, seed=5, prefix=f"musev_stale/{tag}", latent_only=True)
        p["motion"]["inputs"]["motion_model"] = "stale_http/motion/musev/"
        entry = queue_and_wait(comfy_server, p, timeout=300)
        with safe_open(comfy_server.output_path(entry["outputs"]["save"]["latents"][0]), "pt") as f:
            return f.get_tensor("latent_tensor")

    a = run("a")
    _rewrite_same_size(weights, 4.0, "temporal_weight")
    b = run("b")
    with open(weights, "r+b") as f:
        f.write(original)
        f.truncate()
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    c = run("c")
    assert not torch.equal(a, b), "the edited motion file was not reloaded"
    assert torch.equal(a, c)


# ------------------------------------------------------------------------------------------------
# 3. names through links

class _AnyType(str):
    def __ne__(self, other):          # what "any"-typed custom nodes return (rgthree, KJNodes...)
        return False


class AnyString:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("STRING", {"default": ""})}}

    RETURN_TYPES = (_AnyType("*"),)
    FUNCTION = "run"
    CATEGORY = "test"

    def run(self, value):
        return (value,)


@pytest.fixture
def outside(tmp_path, parity_dir):
    """A real motion model OUTSIDE the models folder, and links to it from inside."""
    out = tmp_path / "outside"
    (out / "musev" / "unet").mkdir(parents=True)
    for fn, dst in (("weights.safetensors", "diffusion_pytorch_model.safetensors"), ("config.json", "config.json")):
        shutil.copy(os.path.join(parity_dir, "unet3d_musev", fn), out / "musev" / "unet" / dst)
    shutil.copy(os.path.join(parity_dir, "unet3d_musev", "weights.safetensors"), out / "motion.safetensors")
    (out / "secret.txt").write_text("not for you")
    root = musev_root()
    links = os.path.join(root, "links_h13")
    shutil.rmtree(links, ignore_errors=True)
    os.makedirs(os.path.join(links, "inner", "unet"))
    os.symlink(str(out), os.path.join(links, "dir_out"))
    os.symlink(str(out / "motion.safetensors"), os.path.join(links, "file_out.safetensors"))
    os.symlink(str(out / "musev" / "unet" / "diffusion_pytorch_model.safetensors"),
               os.path.join(links, "inner", "unet", "diffusion_pytorch_model.safetensors"))
    yield out
    shutil.rmtree(links, ignore_errors=True)


def _bad_names(out):
    rel_up = os.path.relpath(str(out / "motion.safetensors"), musev_root())
    return ["../" * 12 + "etc/passwd", rel_up, "../checkpoints/" + "x.safetensors", str(out / "motion.safetensors"),
            str(out / "musev") + "/", str(out / "secret.txt"), "links_h13/dir_out/musev/", "links_h13/dir_out/secret.txt",
            "links_h13/file_out.safetensors", "links_h13/inner/", "nope_h13/missing/", "~/motion.safetensors",
            "C:\\\\Windows\\\\win.ini", "links_h13/../../" + rel_up, ""]


def _run_linked(comfy_host, monkeypatch, name):
    import nodes as comfy_nodes
    monkeypatch.setitem(comfy_nodes.NODE_CLASS_MAPPINGS, "MuseVTestAnyString", AnyString)
    prompt = {"name": {"class_type": "MuseVTestAnyString", "inputs": {"value": name}},
              "model": {"class_type": "MuseVTestAnyString", "inputs": {"value": "not a model"}},
              "bad": {"class_type": "LoadMuseVMotion", "inputs": {"model": ["model", 0], "motion_model": ["name", 0],
                                                                  "frame_rate": 8.0, "temporal_layers": True}},
              "out": {"class_type": "PreviewAny", "inputs": {"source": ["bad", 0]}}}
    outputs, ex = comfy_host.run_prompt(prompt, prompt_id=f"links-{abs(hash(name))}", expect_success=False)
    assert outputs is None, f"{name!r} was accepted"
    errs = [m[1] for m in ex.status_messages if m[0] == "execution_error"]
    assert errs, ex.status_messages
    return errs[0]


def test_names_through_a_link_stay_inside_the_models_folder(comfy_host, monkeypatch, outside):
    """LoadMuseVMotion's motion_model fed by an any-typed string node (validation cannot see it): every
    name that leaves models/musev gets the same message as a missing one, and nothing outside is read."""
    host = comfy_host.pack("nodes.host")
    ckpt = comfy_host.pack("musev_core.checkpoints")
    opened = []
    for mod, fn in ((host, "load_weights"), (ckpt, "sniff_format"), (ckpt, "load_state_dict"), (ckpt, "read_config")):
        real = getattr(mod, fn)
        monkeypatch.setattr(mod, fn, lambda p, *a, _real=real, **k: opened.append(os.path.realpath(p)) or _real(p, *a, **k))
    messages = {}
    for name in _bad_names(outside):
        err = _run_linked(comfy_host, monkeypatch, name)
        assert err["node_type"] == "LoadMuseVMotion" and err["exception_type"].endswith("MuseVInputError"), err
        messages[name] = err["exception_message"]
    normalised = {m.replace(repr(n), "<NAME>") if n else m.replace("''", "<NAME>") for n, m in messages.items()}
    assert len(normalised) == 1, "one message for every refused name:\n" + "\n".join(sorted(normalised))
    text = normalised.pop()
    assert "LoadMuseVMotion" in text and "'motion_model'" in text and "models/musev/" in text
    assert str(outside) not in text.replace("<NAME>", "") and "exist" not in text
    assert not [p for p in opened if p.startswith(str(outside))], f"opened outside the folder: {opened}"


def test_every_loader_resolves_names_the_same_way(comfy_host, outside):
    paths = comfy_host.pack("nodes.paths")
    host = comfy_host.pack("nodes.host")
    for name in _bad_names(outside):
        if name == "links_h13/inner/":     # a folder inside: only its unet/ file (a motion pick) links out
            continue
        texts = set()
        for kind, input_name in ((paths.KIND_MOTION, "motion_model"), (paths.KIND_REFERENCENET, "referencenet"),
                                 (paths.KIND_IMAGE_PROJ, "image_proj")):
            with pytest.raises(host.MuseVInputError) as info:
                if kind == paths.KIND_IMAGE_PROJ:
                    paths.image_proj_file(name, input_name, "Node")
                else:
                    paths.model_files(name, input_name, "Node", kind)
            texts.add(str(info.value).replace(f"'{input_name}'", "<INPUT>"))
            # a widget value (no link): refused by VALIDATE_INPUTS, before anything runs
            assert paths.validate_choice(name, input_name, "Node", kind) == str(info.value)
        assert len(texts) == 1, texts


def test_links_inside_the_folder_and_extra_model_paths_are_followed(comfy_host, parity_dir, tmp_path, monkeypatch):
    """A link that stays inside, and a folder registered under musev (extra_model_paths.yaml), work."""
    import folder_paths
    paths = comfy_host.pack("nodes.paths")
    _place(parity_dir, "links_in_h13/motion/musev")
    link = os.path.join(musev_root(), "links_in_h13", "alias")
    if not os.path.lexists(link):
        os.symlink(os.path.join(musev_root(), "links_in_h13", "motion"), link)
    weights, config = paths.model_files("links_in_h13/alias/musev/", "motion_model", "T", paths.KIND_MOTION)
    assert weights.endswith("diffusion_pytorch_model.safetensors") and config.endswith("config.json")
    extra = tmp_path / "extra_musev"
    shutil.copytree(os.path.join(musev_root(), "links_in_h13", "motion"), extra / "motion")
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "musev",
                        (list(folder_paths.folder_names_and_paths["musev"][0]) + [str(extra)],
                         folder_paths.folder_names_and_paths["musev"][1]))
    shutil.rmtree(os.path.join(musev_root(), "links_in_h13"))
    weights, _ = paths.model_files("motion/musev/", "motion_model", "T", paths.KIND_MOTION)
    assert weights.startswith(str(extra))


# ------------------------------------------------------------------------------------------------
# dropdowns (issue 14)

def test_dropdowns_one_entry_per_model_by_kind(comfy_host, standins, monkeypatch):
    paths = comfy_host.pack("nodes.paths")
    motion = paths.list_choices(paths.KIND_MOTION)
    refnet = paths.list_choices(paths.KIND_REFERENCENET)
    proj = paths.list_choices(paths.KIND_IMAGE_PROJ)
    for variant, folder in standins.motion.items():
        assert folder in motion and folder not in refnet + proj
        assert folder + "unet/" not in motion and folder + "unet/diffusion_pytorch_model.safetensors" not in motion
    assert standins.referencenet in refnet and standins.referencenet not in motion + proj
    assert standins.referencenet + "diffusion_pytorch_model.safetensors" not in refnet
    for f in standins.image_proj.values():
        assert f in proj and f not in motion + refnet
    assert not any(c.endswith("/") for c in proj)
    for listing in (motion, refnet, proj):
        assert len(listing) == len(set(listing))
        for a in listing:      # no entry is inside another entry of the same list
            assert not any(b != a and b.endswith("/") and a.startswith(b) for b in listing), a
    # the old workflows' values still validate and resolve to the right files
    assert paths.validate_choice(standins.motion["musev_referencenet"] + "unet/", "motion_model", "T") is True
    rn_files = paths.model_files(standins.motion["musev_referencenet"], "referencenet", "T", paths.KIND_REFERENCENET)
    assert os.path.basename(os.path.dirname(rn_files[0])) == "referencenet"
    # listings are cached on the file identity: a second listing reads no header
    reads = []
    real = paths._safetensors_keys
    monkeypatch.setattr(paths, "_safetensors_keys", lambda p: reads.append(p) or real(p))
    assert paths.list_choices(paths.KIND_MOTION) == motion
    assert reads == []


# ------------------------------------------------------------------------------------------------
# 5. readers by content, hostile config.json

def test_reader_by_content_not_extension(comfy_host, parity_dir):
    motion_nodes = comfy_host.pack("nodes.motion_nodes")
    host = comfy_host.pack("nodes.host")
    root = os.path.join(musev_root(), "content_h13")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    src = os.path.join(parity_dir, "unet3d_musev", "weights.safetensors")
    shutil.copy(src, os.path.join(root, "renamed.pth"))
    torch.save(load_file(src), os.path.join(root, "torchzip.safetensors"))
    with open(os.path.join(root, "pointer.safetensors"), "w") as f:
        f.write("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    data = open(src, "rb").read()
    with open(os.path.join(root, "cut.pth"), "wb") as f:
        f.write(data[:len(data) // 3])
    base = _base(parity_dir)
    ref = _motion_weights(comfy_host, motion_nodes.LoadMuseVMotion().load(base, "content_h13/renamed.pth")[0])
    again = _motion_weights(comfy_host, motion_nodes.LoadMuseVMotion().load(base, "content_h13/torchzip.safetensors")[0])
    assert ref and all(torch.equal(ref[k], again[k]) for k in ref)
    with pytest.raises(host.MuseVInputError, match="LFS pointer"):
        motion_nodes.LoadMuseVMotion().load(base, "content_h13/pointer.safetensors")
    with pytest.raises(host.MuseVInputError, match="safetensors file .*(cut short|truncated)") as info:
        motion_nodes.LoadMuseVMotion().load(base, "content_h13/cut.pth")
    assert "'motion_model'" in str(info.value) and "LoadMuseVMotion" in str(info.value)


HOSTILE_VALUES = [0, -1, 7, 3, 10 ** 9, 1.5, "8", "eight", "", True, [], [0], [8] * 40, [8, "x"], {"a": 1},
                  float("nan"), float("inf"), -float("inf"), 1e400, 2 ** 70, None]


def _write_config(path, key, value):
    with open(path) as f:
        cfg = json.load(f)
    cfg[key] = value
    with open(path, "w") as f:
        f.write(json.dumps(cfg, allow_nan=True))     # NaN / Infinity as Python's json writes (and reads) them


@pytest.mark.parametrize("key", ["attention_head_dim", "layers_per_block"])
def test_hostile_motion_config_values(comfy_host, parity_dir, key):
    motion_nodes = comfy_host.pack("nodes.motion_nodes")
    host = comfy_host.pack("nodes.host")
    base = _base(parity_dir)
    weights = _place(parity_dir, f"cfg_h13_{key}/motion/musev")
    cfg_path = os.path.join(os.path.dirname(weights), "config.json")
    original = open(cfg_path).read()
    good = 0
    for value in HOSTILE_VALUES:
        with open(cfg_path, "w") as f:
            f.write(original)
        _write_config(cfg_path, key, value)
        try:
            motion_nodes.LoadMuseVMotion().load(base, f"cfg_h13_{key}/motion/musev/")
            good += 1          # a value that happens to fit (e.g. the real one, or null = default)
        except host.MuseVInputError as e:
            text = str(e)
            assert text.startswith("LoadMuseVMotion: 'motion_model'"), text
            assert "config.json" in text and key in text, text
        # any other exception type fails the test here
    assert good < len(HOSTILE_VALUES) // 2


@pytest.mark.parametrize("key", ["attention_head_dim", "flip_sin_to_cos", "freq_shift"])
def test_hostile_referencenet_config_values(comfy_host, parity_dir, key):
    paths = comfy_host.pack("nodes.paths")
    runner = comfy_host.pack("nodes.referencenet_runner")
    host = comfy_host.pack("nodes.host")
    weights = _place(parity_dir, f"cfg_h13_rn_{key}/motion/musev_referencenet", folder="referencenet",
                     sub="referencenet")
    cfg_path = os.path.join(os.path.dirname(weights), "config.json")
    original = open(cfg_path).read()
    choice = f"cfg_h13_rn_{key}/motion/musev_referencenet/"
    for value in HOSTILE_VALUES + ["yes", 0.5, 1]:
        with open(cfg_path, "w") as f:
            f.write(original)
        _write_config(cfg_path, key, value)
        files = paths.model_files(choice, "referencenet", "MuseVReferenceNet", paths.KIND_REFERENCENET)
        try:
            runner.load_referencenet_patcher(paths.full_path(choice, "referencenet", "MuseVReferenceNet"),
                                             torch.float32, None, files=files)
        except host.MuseVInputError as e:
            text = str(e)
            assert text.startswith("MuseVReferenceNet: 'referencenet'"), text
            assert "config.json" in text and (key in text or "attention_head_dim" in text), text


@pytest.mark.parametrize("text", ["[1, 2]", '"a string"', "{not json", "", "null", "1e999"])
def test_config_json_that_is_not_settings(comfy_host, parity_dir, text):
    motion_nodes = comfy_host.pack("nodes.motion_nodes")
    host = comfy_host.pack("nodes.host")
    weights = _place(parity_dir, "cfg_h13_json/motion/musev")
    with open(os.path.join(os.path.dirname(weights), "config.json"), "w") as f:
        f.write(text)
    with pytest.raises(host.MuseVInputError, match=r"LoadMuseVMotion: 'motion_model': unet/config\.json"):
        motion_nodes.LoadMuseVMotion().load(_base(parity_dir), "cfg_h13_json/motion/musev/")


def test_nan_weights_are_refused_at_load(comfy_host, parity_dir):
    motion_nodes = comfy_host.pack("nodes.motion_nodes")
    host = comfy_host.pack("nodes.host")
    weights = _place(parity_dir, "nan_h13/motion/musev")
    sd = load_file(weights)
    key = next(k for k in sd if "temp_convs" in k and k.endswith("weight"))
    sd[key] = sd[key].clone()
    sd[key].view(-1)[0] = math.nan
    save_file(sd, weights)
    with pytest.raises(host.MuseVInputError, match="NaN/inf values .*damaged"):
        motion_nodes.LoadMuseVMotion().load(_base(parity_dir), "nan_h13/motion/musev/")
