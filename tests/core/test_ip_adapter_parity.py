"""MuseV's IP-Adapter image projection (musev_core.ip_adapter, spec §3) against the fixtures: tokens of
one and two images, loaded from the released ``.bin`` container and from plain safetensors."""
import os

import pytest
import torch
from safetensors.torch import load_file

from conftest import pack_module, parity_root

IP = pack_module("musev_core.ip_adapter")
CK = pack_module("musev_core.checkpoints")
TOL = 1e-4


def _folders():
    root = parity_root()
    if not os.path.isdir(root):
        return [pytest.param("missing", id="fixtures-missing")]
    return sorted(f for f in os.listdir(root) if os.path.isfile(os.path.join(root, f, "ip_adapter_image_proj.bin")))


def _cases(folder):
    out = [("inputs.safetensors", "outputs.safetensors")]
    for f in sorted(os.listdir(folder)):
        if f.startswith("case_") and f.endswith("_inputs.safetensors"):
            fo = f.replace("_inputs.", "_outputs.")
            if "clip_image_embeds" in load_file(os.path.join(folder, f)):
                out.append((f, fo))
    return out


@pytest.mark.parametrize("source", ["ip_adapter_image_proj.bin", "weights.safetensors"])
@pytest.mark.parametrize("folder", _folders())
def test_image_proj_tokens_parity(parity_dir, folder, source):
    path = os.path.join(parity_dir, folder)
    sd = CK.load_state_dict(os.path.join(path, source))
    proj = IP.ImageProjModel.from_state_dict(IP.image_proj_weights(sd)).eval()
    cfg_path = os.path.join(path, "config.json")
    if os.path.isfile(cfg_path):
        import json
        with open(cfg_path, "r", encoding="utf-8") as f:
            cfg = json.load(f)
        assert (proj.clip_dim, proj.cross_dim, proj.tokens) == (
            cfg["clip_embeddings_dim"], cfg["cross_attention_dim"], cfg["clip_extra_context_tokens"])
    n_checked = 0
    for fin, fout in _cases(path):
        embeds = load_file(os.path.join(path, fin))["clip_image_embeds"]
        expected = load_file(os.path.join(path, fout))
        with torch.no_grad():
            cond, uncond = proj.tokens_for(embeds)
        got = torch.cat([uncond, cond])                      # MuseV stacks [uncond; cond]
        exp = expected["image_prompt_embeds"]
        assert got.shape == exp.shape == (2, embeds.shape[0] * proj.tokens, proj.cross_dim)
        err = (got - exp).abs().max().item()
        print(f"{folder}/{fin} from {source}: max abs error {err:.3g}")
        assert err <= TOL
        n_checked += 1
    assert n_checked >= 1


def test_uncond_tokens_are_the_projection_of_zeros(parity_dir):
    """Not zero tokens: proj(0) = LayerNorm(bias) (MuseV's unconditional image prompt)."""
    path = os.path.join(parity_dir, "ip_adapter")
    proj = IP.ImageProjModel.from_state_dict(IP.image_proj_weights(CK.load_state_dict(
        os.path.join(path, "ip_adapter_image_proj.bin"))))
    embeds = load_file(os.path.join(path, "inputs.safetensors"))["clip_image_embeds"]
    with torch.no_grad():
        _, uncond = proj.tokens_for(embeds)
        direct = proj(torch.zeros(1, proj.clip_dim))
    assert torch.equal(uncond.reshape(direct.shape), direct)
    assert uncond.abs().max() > 0.1


def test_image_proj_weights_accepts_the_known_containers():
    w = {"proj.weight": torch.zeros(12, 5), "proj.bias": torch.zeros(12), "norm.weight": torch.ones(4),
         "norm.bias": torch.zeros(4)}
    nested = CK.flatten_state_dict({"image_proj": w, "ip_adapter": {"1.to_k_ip.weight": torch.zeros(4, 4)}})
    for sd in (w, nested, {"module." + k: v for k, v in w.items()}):
        out = IP.image_proj_weights(sd)
        assert set(out) == set(w)
    m = IP.ImageProjModel.from_state_dict(IP.image_proj_weights(nested))
    assert (m.clip_dim, m.tokens, m.cross_dim) == (5, 3, 4)


@pytest.mark.parametrize("sd,needle", [
    ({"image_proj.latents": torch.zeros(1, 4, 8), "image_proj.proj_in.weight": torch.zeros(8, 8)}, "IP-Adapter Plus"),
    ({"image_proj.proj.0.weight": torch.zeros(8, 4), "image_proj.proj.2.weight": torch.zeros(8, 8),
      "image_proj.norm.weight": torch.ones(4)}, "FaceID"),
    ({"conv_in.weight": torch.zeros(4, 4, 3, 3)}, "no image-projection weights"),
    ({"proj.weight": torch.zeros(8, 4), "proj.bias": torch.zeros(8), "norm.weight": torch.ones(4),
      "norm.bias": torch.zeros(4), "extra.weight": torch.zeros(1)}, "unexpected image-projection keys"),
])
def test_image_proj_weights_names_what_a_wrong_file_is(sd, needle):
    with pytest.raises(IP.ImageProjError, match=needle):
        IP.image_proj_weights(sd)
