"""Image -> MuseV referencenet video through ComfyUI's executor, with the stand-in model files in
their real formats: CheckpointLoaderSimple, LoadMuseVMotion (musev_referencenet), CLIPVisionLoader,
LoadImage, MuseVIPAdapter, VAELoader, MuseVReferenceNet, ParallelDenoiseSampler (condition frame =
the same image), VAEDecode, SaveImage."""
import os

import numpy as np

from reference_fixtures import catch_log


def _input_image(name, width, height, seed=0):
    import folder_paths
    from PIL import Image
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                    rng.integers(0, 255, (height, width))], -1).astype(np.uint8)
    path = os.path.join(folder_paths.get_input_directory(), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path)
    return name


def i2v_prompt(s, image, frames=4, size=64):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": s.checkpoint}},
        "2": {"class_type": "LoadMuseVMotion", "inputs": {"model": ["1", 0], "motion_model": s.motion["musev_referencenet"],
                                                          "frame_rate": 8.0, "temporal_layers": True}},
        "3": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": s.clip_vision}},
        "4": {"class_type": "LoadImage", "inputs": {"image": image}},
        "5": {"class_type": "MuseVIPAdapter", "inputs": {"model": ["2", 0], "clip_vision": ["3", 0], "image": ["4", 0],
                                                         "image_proj": s.image_proj["musev_referencenet"], "scale": 1.0,
                                                         "start_percent": 0.0, "end_percent": 1.0}},
        "6": {"class_type": "VAELoader", "inputs": {"vae_name": s.vae}},
        "7": {"class_type": "MuseVReferenceNet", "inputs": {"model": ["5", 0], "referencenet": s.referencenet,
                                                            "vae": ["6", 0], "image": ["4", 0]}},
        "8": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a girl, eye blinks, head wave"}},
        "9": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "worst quality"}},
        "10": {"class_type": "ParallelDenoiseSampler", "inputs": {
            "model": ["7", 0], "positive": ["8", 0], "negative": ["9", 0], "frames": frames, "width": size,
            "height": size, "context_frames": 3, "context_overlap": 1, "context_schedule": "uniform_v2",
            "context_batch_size": 1, "noise_type": "video_fusion", "w_ind_noise": 0.5, "img_weight": 0.001, "seed": 3,
            "steps": 2, "cfg": 3.5, "sampler_name": "euler", "scheduler": "normal", "include_condition_frames": True,
            "vision_image": ["4", 0], "vae": ["6", 0]}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["6", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "musev_i2v_ref"}},
    }


def test_image_to_referencenet_video_in_executor(comfy_host, standins, monkeypatch):
    import folder_paths
    nodes = comfy_host.pack("nodes.reference_nodes")
    real = nodes.run_referencenet
    passes = []

    def counting(*args, **kwargs):
        passes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(nodes, "run_referencenet", counting)
    image = _input_image("musev_reference_test.png", 96, 96)           # another size than the 64x64 video
    frames = 4
    with catch_log() as records:
        outputs, _ = comfy_host.run_prompt(i2v_prompt(standins, image, frames=frames), prompt_id="ref-i2v")
    saved = outputs["12"]["images"]
    assert len(saved) == frames + 1                                     # condition frame first, as MuseV
    for img in saved:
        assert os.path.isfile(os.path.join(folder_paths.get_output_directory(), img["subfolder"], img["filename"]))
    assert len(passes) == 1, f"ReferenceNet ran {len(passes)} times in one sampling run"
    msgs = [r.getMessage() for r in records]
    assert any("MuseVReferenceNet" in m and "resiz" in m for m in msgs), msgs


def test_workflow_reports_a_wrong_image_proj_as_a_node_error(comfy_host, standins):
    """A ReferenceNet picked as image projection fails validation-free execution with our message."""
    prompt = i2v_prompt(standins, _input_image("musev_reference_test2.png", 64, 64))
    prompt["5"]["inputs"]["image_proj"] = standins.referencenet.rstrip("/") + "/diffusion_pytorch_model.safetensors"
    outputs, ex = comfy_host.run_prompt(prompt, prompt_id="ref-bad", expect_success=False)
    assert outputs is None
    text = " ".join(str(m) for m in ex.status_messages)
    assert "MuseVIPAdapter" in text and "ReferenceNet" in text and "MuseVReferenceNet" in text, text[:2000]
