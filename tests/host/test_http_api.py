"""The pack inside a real ComfyUI server, driven through its HTTP API (tests/comfy_server.py).

``queue_and_wait`` is the building block for the HTTP load / bad-input tests: it posts an
API-format prompt on /prompt and returns the finished /history entry.
"""
import os
import uuid

import pytest
from PIL import Image

from comfy_server import PromptFailed, PromptRejected, queue_and_wait

PACK_NODES = ("ParallelDenoiseSampler", "MuseVContextWindows")
WINDOW_WIDGETS = ("context_frames", "context_overlap", "context_schedule", "context_batch_size")


def empty_image_prompt(prefix, color=0xFF0000, width=16, height=8, batch=2):
    return {
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": width, "height": height, "batch_size": batch, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def test_queue_and_wait_saves_images(comfy_server):
    prefix = f"musev_http/{uuid.uuid4().hex[:8]}"
    entry = queue_and_wait(comfy_server, empty_image_prompt(prefix, color=0x00FF00))
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    images = entry["outputs"]["2"]["images"]
    assert len(images) == 2
    for info in images:
        assert info["type"] == "output" and info["subfolder"] == "musev_http"
        path = comfy_server.output_path(info)
        assert os.path.isfile(path), path
        assert os.path.commonpath([path, comfy_server.output_dir]) == comfy_server.output_dir
        with Image.open(path) as im:
            assert im.size == (16, 8)
            assert im.convert("RGB").getpixel((3, 3)) == (0, 255, 0)


def test_prompt_rejected_names_the_bad_input(comfy_server):
    prompt = empty_image_prompt("musev_http/bad")
    prompt["1"]["inputs"]["width"] = "wide"
    with pytest.raises(PromptRejected) as info:
        queue_and_wait(comfy_server, prompt)
    assert info.value.status == 400
    errors = info.value.body["node_errors"]
    assert list(errors) == ["1"]
    assert any(e.get("extra_info", {}).get("input_name") == "width" for e in errors["1"]["errors"]), errors


def test_failed_execution_is_reported(comfy_server):
    # valid for /prompt, fails while running (SaveImage refuses to write outside output/): the
    # helper must raise PromptFailed carrying ComfyUI's execution_error, not hang or pass
    prompt = empty_image_prompt("../musev_escape", batch=1)
    with pytest.raises(PromptFailed) as info:
        queue_and_wait(comfy_server, prompt, timeout=120)
    status = info.value.entry["status"]
    assert status["status_str"] == "error"
    errors = [m[1] for m in status["messages"] if m[0] == "execution_error"]
    assert errors and errors[0]["node_id"] == "2" and errors[0]["node_type"] == "SaveImage", status
    assert not os.path.exists(os.path.join(os.path.dirname(comfy_server.output_dir), "musev_escape_00001_.png"))


def test_object_info_lists_pack_nodes(comfy_server):
    info = comfy_server.object_info()
    for name in PACK_NODES:
        assert name in info, f"{name} missing from /object_info"
        node = info[name]
        assert node["category"] == "MuseV"
        req = node["input"]["required"]
        for w in WINDOW_WIDGETS:
            assert w in req, (name, w)
        assert req["context_schedule"][0] == ["uniform_v2", "uniform_looped"]
    assert "vision_latent" in info["ParallelDenoiseSampler"]["input"]["optional"]
    # one node at a time works too
    assert comfy_server.object_info("ParallelDenoiseSampler")["name"] == "ParallelDenoiseSampler"


def test_pack_web_directory_is_served(comfy_server):
    status, files = comfy_server.get_json("/extensions")
    assert status == 200
    ours = [f for f in files if f.startswith(comfy_server.extension_url)]
    assert comfy_server.extension_url + "musev_windows.js" in ours, files
    for f in ours:
        code, body, headers = comfy_server.request("GET", f)
        assert code == 200 and "javascript" in headers.get("Content-Type", ""), (f, code, headers)
        assert b"registerExtension" in body or b"export" in body


def test_interrupt_and_queue_endpoints(comfy_server):
    assert comfy_server.interrupt() == 200
    queue = comfy_server.queue()
    assert set(queue) == {"queue_running", "queue_pending"}
    # the server still runs prompts after an interrupt with nothing running
    entry = queue_and_wait(comfy_server, empty_image_prompt("musev_http/after_interrupt", batch=1))
    assert entry["status"]["status_str"] == "success"
