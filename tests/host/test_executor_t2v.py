"""Text-to-video with the plain musev variant through ComfyUI's executor and stock nodes:
CheckpointLoaderSimple -> LoadMuseVMotion -> KSampler (EmptyLatentImage batch = frames) -> VAEDecode."""
import os

import torch


def t2v_prompt(s, frames=8, size=64):
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": s.checkpoint}},
        "2": {"class_type": "LoadMuseVMotion", "inputs": {"model": ["1", 0], "motion_model": s.motion["musev"],
                                                          "frame_rate": 8.0, "temporal_layers": True}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a girl dancing"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "worst quality"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": frames}},
        "6": {"class_type": "KSampler", "inputs": {"model": ["2", 0], "seed": 1, "steps": 2, "cfg": 3.5,
                                                   "sampler_name": "euler", "scheduler": "normal", "positive": ["3", 0],
                                                   "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "VAELoader", "inputs": {"vae_name": s.vae}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["7", 0]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "musev_t2v"}},
    }


def test_t2v_ksampler_in_executor(comfy_host, standins):
    import folder_paths
    outputs, _ = comfy_host.run_prompt(t2v_prompt(standins))
    images = outputs["9"]["images"]
    assert len(images) == 8
    for img in images:
        assert os.path.isfile(os.path.join(folder_paths.get_output_directory(), img["subfolder"], img["filename"]))


def test_t2v_frames_are_coupled(comfy_host, standins):
    """The temporal layers really couple the frames: changing one frame's noise changes the others
    (a plain SD1.5 batch would leave them untouched)."""
    import comfy.sample
    import comfy.sd
    import folder_paths
    motion_nodes = comfy_host.pack("nodes.motion_nodes")
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(
        folder_paths.get_full_path("checkpoints", standins.checkpoint), output_vae=False, output_clip=True)
    (musev,) = motion_nodes.LoadMuseVMotion().load(model, standins.motion["musev"], 8.0, True)
    cond = [[clip.encode_from_tokens(clip.tokenize("x")), {}]]
    latent = torch.zeros(4, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 3)
    noise2 = noise.clone()
    noise2[3] = torch.randn(noise2[3].shape, generator=torch.Generator().manual_seed(9))
    runs = []
    for m in (musev, model):
        a = comfy.sample.sample(m, noise, 1, 1.0, "euler", "normal", cond, cond, latent, disable_pbar=True, seed=3)
        b = comfy.sample.sample(m, noise2, 1, 1.0, "euler", "normal", cond, cond, latent, disable_pbar=True, seed=3)
        runs.append((a[0] - b[0]).abs().max().item())
    assert runs[1] == 0.0          # plain SD: frame 0 independent of frame 3
    assert runs[0] > 1e-4          # MuseV: frame 0 sees frame 3 through the temporal layers
