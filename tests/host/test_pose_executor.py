"""Pose-to-video through ComfyUI's executor: a 20-frame pose clip, 12-frame windows, the
musev_referencenet_pose stand-ins with IP-Adapter, ReferenceNet and the OpenPose ControlNet; and
context windows longer than the video (MuseV's own text-to-image-to-video does that)."""
import os

import torch

from musev_testlib import fixture_musev_model


def pose2video_prompt(s, size=64, clip_frames=21):
    return {
        "ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": s.checkpoint}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": s.vae}},
        "clipv": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": s.clip_vision}},
        "cn": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": s.controlnet}},
        "cond_img": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                            "color": 0x8090A0}},
        "poses": {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": clip_frames,
                                                         "color": 0x000000}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a girl dancing"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "worst quality"}},
        "pose": {"class_type": "PoseVideoCondition", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cn", 0], "frames": ["poses", 0],
            "mode": "pose video", "video_has_condition": True, "sample_rate": 1, "frame_count": 0,
            "width": size, "height": size, "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0,
            "pose_align": "off", "detector": "auto", "condition_image": ["cond_img", 0]}},
        "motion": {"class_type": "LoadMuseVMotion", "inputs": {
            "model": ["ckpt", 0], "motion_model": s.motion["musev_referencenet_pose"],
            "frame_rate": ["pose", 4], "temporal_layers": True}},
        "ip": {"class_type": "MuseVIPAdapter", "inputs": {
            "model": ["motion", 0], "clip_vision": ["clipv", 0], "image": ["cond_img", 0],
            "image_proj": s.image_proj["musev_referencenet_pose"], "scale": 1.0, "start_percent": 0.0,
            "end_percent": 1.0}},
        "ref": {"class_type": "MuseVReferenceNet", "inputs": {
            "model": ["ip", 0], "referencenet": s.referencenet, "vae": ["vae", 0], "image": ["cond_img", 0]}},
        "sample": {"class_type": "ParallelDenoiseSampler", "inputs": {
            "model": ["ref", 0], "positive": ["pose", 0], "negative": ["pose", 1], "frames": ["pose", 3],
            "width": ["pose", 5], "height": ["pose", 6], "context_frames": 12, "context_overlap": 4,
            "context_schedule": "uniform_v2", "context_batch_size": 1, "noise_type": "video_fusion",
            "w_ind_noise": 0.5, "img_weight": 0.001, "seed": 5, "steps": 1, "cfg": 3.5, "sampler_name": "euler",
            "scheduler": "musev_linspace", "include_condition_frames": True, "vision_image": ["cond_img", 0],
            "vae": ["vae", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": "musev_pose2video"}},
    }


def test_pose2video_20_frames_12_frame_windows_in_executor(comfy_host, standins):
    import folder_paths
    from safetensors.torch import load_file
    outputs, _ = comfy_host.run_prompt(pose2video_prompt(standins))
    saved = outputs["save"]["latents"][0]
    path = os.path.join(folder_paths.get_output_directory(), saved["subfolder"], saved["filename"])
    samples = load_file(path)["latent_tensor"]
    assert samples.shape[0] == 1 + 20 and torch.isfinite(samples).all()


def test_context_frames_longer_than_video_is_one_window(comfy_host, parity_dir):
    """frames < context_frames: one window over all frames (MuseV's text2image2video generates
    11 frames with 12-frame windows) — the same result as context_frames = frames."""
    model, pos, neg, vision, _, _ = fixture_musev_model(comfy_host, parity_dir, "pipeline", tag="ctxlong")
    nodes = comfy_host.pack("nodes.sampler_nodes")

    def run(context_frames):
        return nodes.ParallelDenoiseSampler().sample(
            model, pos, neg, frames=3, width=vision.shape[3] * 8, height=vision.shape[2] * 8,
            context_frames=context_frames, context_overlap=1, context_schedule="uniform_v2", context_batch_size=1,
            noise_type="video_fusion", w_ind_noise=0.5, img_weight=1e-3, seed=2, steps=1, cfg=3.5,
            sampler_name="euler", scheduler="musev_linspace", include_condition_frames=False,
            vision_latent={"samples": vision})[0]["samples"]

    assert torch.equal(run(12), run(3))
