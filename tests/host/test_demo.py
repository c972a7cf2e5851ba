"""scripts/demo.sh as a new user meets it: --help, and --models on a tree with files missing.

These run the demo's own pre-flight (plain Python, before any set-up), so they need neither
ComfyUI nor the models; the graph the demo queues is run from the drop-in tree over HTTP in
test_dropin.py.
"""
import importlib.util
import os
import re
import subprocess
import sys

from conftest import PACK_DIR

DEMO = os.path.join(PACK_DIR, "scripts", "demo.sh")


def table():
    path = os.path.join(PACK_DIR, "nodes", "model_table.py")
    spec = importlib.util.spec_from_file_location("musev_model_table_t", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def demo(*args, timeout=120):
    # python3 on PATH is what demo.sh uses for the pre-flight: make it this interpreter
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("COMFYUI_PATH", None)       # the pre-flight must not need a ComfyUI
    r = subprocess.run(["bash", DEMO, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd="/")
    return r.returncode, r.stdout + r.stderr


def test_models_on_an_empty_tree_lists_what_is_missing(tmp_path):
    mt = table()
    rc, out = demo("--models", str(tmp_path))
    assert rc == 3, out
    for key in mt.JOBS["image_to_video"]:
        entry = mt.get(key)
        assert entry.url in out, (key, out)
        assert os.path.join(str(tmp_path), "musev", entry.name) in out, (key, out)
        assert entry.what in out
    assert "hf download TMElyralab/MuseV" in out and "git clone https://huggingface.co/TMElyralab/MuseV" in out
    assert not re.search(r"\{'|\"errors\"|value_not_in_list|Traceback", out), out
    assert "set-up" not in out, "the demo must stop before installing anything"


def test_models_as_the_clone_itself_and_partial_downloads(tmp_path):
    """DIR may be the HF clone itself; a partial clone (no Git LFS) names the pointer files."""
    mt = table()
    clone = tmp_path / "MuseV"
    ref = clone / "motion" / "musev_referencenet" / "referencenet"
    ref.mkdir(parents=True)
    (ref / "config.json").write_text("{}")
    (ref / "diffusion_pytorch_model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    rc, out = demo("--models", str(clone))
    assert rc == 3, out
    assert "a clone of TMElyralab/MuseV" in out
    assert "Git LFS pointer" in out and "referencenet/diffusion_pytorch_model" in out, out
    assert os.path.join(str(clone), mt.get("vae").name) in out, out          # not clone/musev/...


def test_models_complete_passes_the_check(tmp_path):
    mt = table()
    root = tmp_path / "models" / "musev"
    for key in mt.JOBS["image_to_video"]:
        entry = mt.get(key)
        base = root / entry.name
        files = [n.split("|")[0] for n in entry.needs] if entry.is_folder else [""]
        for rel in files:
            path = base / rel if rel else base
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"{}" if str(path).endswith(".json") else b"\0" * 2048)
    rc, out = demo("--check-models", "--models", str(tmp_path / "models"))
    assert rc == 0 and "all 6 found" in out and "set-up" not in out, out


def test_help_tells_the_truth():
    mt = table()
    rc, out = demo("--help")
    assert rc == 0, out
    for key in mt.JOBS["image_to_video"]:
        assert mt.get(key).name in out
    for opt in ("--models", "--image", "--frames", "--width", "--height", "--steps", "--seed", "--out"):
        assert opt in out
    # every name the help lists is one the demo's graph uses (no promises it does not keep)
    spec = importlib.util.spec_from_file_location("musev_demo_t", os.path.join(PACK_DIR, "scripts", "demo.py"))
    d = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(d)
    p = d.prompt({m.key: m.name for m in mt.MODELS}, "x.png", 12, 512, 512, 10, 1)
    widgets = {v for node in p.values() for v in node["inputs"].values() if isinstance(v, str)}
    assert {mt.get(k).name for k in mt.JOBS["image_to_video"]} == widgets & {m.name for m in mt.MODELS}


def test_validation_errors_read_as_sentences():
    spec = importlib.util.spec_from_file_location("musev_demo_t2", os.path.join(PACK_DIR, "scripts", "demo.py"))
    d = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(d)
    p = {"ckpt": {"class_type": "MuseVCheckpointLoader", "inputs": {"ckpt_name": "nope/"}}}
    errors = {"ckpt": {"class_type": "MuseVCheckpointLoader", "errors": [{
        "type": "value_not_in_list", "message": "Value not in list",
        "details": "ckpt_name: 'nope/' not in ['a/', 'b/', 'c.safetensors']",
        "extra_info": {"input_name": "ckpt_name", "input_config": [["a/", "b/", "c.safetensors"], {}],
                       "received_value": "nope/"}}]}}
    lines = d.format_node_errors(p, errors)
    assert lines == ["  SD1.5 base (MuseVCheckpointLoader), input 'ckpt_name': 'nope/' is not one of the 3 files "
                     "ComfyUI lists for this input"]


def test_readme_model_table_is_the_table():
    """README's file table is generated from nodes/model_table.py (one source)."""
    with open(os.path.join(PACK_DIR, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    mt = table()
    inside = readme[readme.index(mt.README_BEGIN) + len(mt.README_BEGIN):readme.index(mt.README_END)]
    assert inside.strip() == mt.markdown_table(), ("README's model table is out of date: run "
                                                   "`python3 nodes/model_table.py --write-readme`")
