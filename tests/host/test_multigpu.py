"""ComfyUI 0.28's MultiGPU work units ("MultiGPU CFG Split", comfy/multigpu.py) with a MuseV MODEL.

No second GPU here: what needs two devices runs on two *CPU* devices, ``cpu`` and ``cpu:0``
(distinct ``torch.device`` keys, the same memory), by letting ComfyUI's device enumeration return
both.  Everything else is ComfyUI's own code: ``create_multigpu_deepclones``, ``deepclone_multigpu``
(the base model and our additional models rebuilt from their loaders' factories), the work-unit
thread pool and ``_calc_cond_batch_multigpu``.  On a host without MultiGPU (0.3.64) these tests are
deselected (``host_feature`` marker, tests/conftest.py) and one test checks that the pack does not
depend on it.
"""
import pytest
import torch

FRAMES_ONE_GROUP = 6     # one window group: ComfyUI splits the CFG halves over the devices
FRAMES_GROUPS = 14       # 3 windows of 6 (overlap 2) -> each device denoises its own groups


def _host_has_multigpu(comfy_host):
    return comfy_host.pack("nodes.compat").has_multigpu()


@pytest.fixture
def two_cpu_devices(comfy_host, monkeypatch):
    import comfy.model_management as mm
    devices = [torch.device("cpu"), torch.device("cpu", 0)]
    monkeypatch.setattr(mm, "get_all_torch_devices", lambda exclude_current=False: list(devices))
    return devices


@pytest.fixture(scope="module")
def musev_chain(comfy_host, standins):
    """Base checkpoint (core loader: it registers the reload factory deep clones need) -> MuseV motion
    -> ReferenceNet through the pack's nodes, built once for the module (the IP-Adapter adds nothing
    device-specific: its tokens are tensors moved to each device; the ReferenceNet is a model)."""
    import gc
    import comfy.model_management
    import nodes
    model, clip = nodes.CheckpointLoaderSimple().load_checkpoint(standins.checkpoint)[:2]
    (vae,) = nodes.VAELoader().load_vae(standins.vae)
    motion_nodes = comfy_host.pack("nodes.motion_nodes")
    ref_nodes = comfy_host.pack("nodes.reference_nodes")
    (m,) = motion_nodes.LoadMuseVMotion().load(model, standins.motion["musev_referencenet"], 8.0, True)
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(5))
    (m,) = ref_nodes.MuseVReferenceNet().apply(m, standins.referencenet, vae, image)
    cond = [[clip.encode_from_tokens(clip.tokenize("a girl")), {}]]
    uncond = [[clip.encode_from_tokens(clip.tokenize("")), {}]]
    yield model, m, vae, image, cond, uncond
    comfy.model_management.unload_all_models()
    gc.collect()


def _sample(comfy_host, model, vae, image, cond, uncond, frames):
    sampler_nodes = comfy_host.pack("nodes.sampler_nodes")
    out = sampler_nodes.ParallelDenoiseSampler().sample(
        model, cond, uncond, frames, 64, 64, context_frames=6, context_overlap=2, context_schedule="uniform_v2",
        context_batch_size=1, noise_type="video_fusion", w_ind_noise=0.5, img_weight=0.001, seed=7, steps=2,
        cfg=3.5, sampler_name="euler", scheduler="musev_linspace", include_condition_frames=True,
        vision_image=image, vae=vae)
    return out[0]["samples"]


def _snapshot(unet):
    return ([type(m).__name__ for m in unet.modules()],
            {k: v.detach().clone() for k, v in unet.state_dict().items()})


def _same_snapshot(a, b):
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


def test_without_multigpu_the_pack_does_not_need_it(comfy_host):
    """0.3.64 has no work units: compat says so and nothing else asks for them."""
    import importlib.util
    has = importlib.util.find_spec("comfy.multigpu") is not None
    assert _host_has_multigpu(comfy_host) == has


@pytest.mark.host_feature("multigpu")
def test_deep_clone_carries_the_whole_patch(comfy_host, musev_chain):
    patch = comfy_host.pack("nodes.patch")
    base, m, *_ = musev_chain
    before = _snapshot(base.model.diffusion_model)
    device = torch.device("cpu", 0)
    clone = m.deepclone_multigpu(new_load_device=device)
    # the clone owns a fresh base UNet, a fresh motion model and a fresh ReferenceNet on its device
    assert clone.model is not m.model and clone.load_device == device
    main_motion, clone_motion = patch.motion_patcher_of(m), patch.motion_patcher_of(clone)
    assert clone_motion is not main_motion and clone_motion.load_device == device
    assert clone_motion.model.motion is not main_motion.model.motion
    sd_a, sd_b = main_motion.model.state_dict(), clone_motion.model.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    state = patch.get_state(m)
    rn_main = state.reference.patcher
    rn_clone = state.reference.patcher_for(clone)
    assert rn_clone is not rn_main and rn_clone.model is not rn_main.model and rn_clone.load_device == device
    # injecting the clone puts ITS motion modules into ITS UNet, and nothing into the base
    clone.inject_model()
    try:
        unet = clone.model.diffusion_model
        injected = [mod for mod in unet.modules() if isinstance(mod, patch.MuseVInjected)]
        assert injected and patch.injecting_patcher(unet) is clone
        clone_modules = {id(mod) for mod in clone_motion.model.motion.modules()}
        assert all(id(mod.musev_module) in clone_modules for mod in injected)
        assert patch.count_injected(base.model.diffusion_model) == 0
    finally:
        clone.eject_model()
    assert patch.count_injected(clone.model.diffusion_model) == 0
    assert _same_snapshot(before, _snapshot(base.model.diffusion_model))


@pytest.mark.host_feature("multigpu")
@pytest.mark.parametrize("frames", [FRAMES_ONE_GROUP, FRAMES_GROUPS], ids=["cfg_split", "window_groups"])
def test_multigpu_work_units_give_the_one_device_result(comfy_host, musev_chain, two_cpu_devices, frames):
    import comfy.multigpu
    patch = comfy_host.pack("nodes.patch")
    base, m, vae, image, cond, uncond = musev_chain
    before = _snapshot(base.model.diffusion_model)
    single = _sample(comfy_host, m, vae, image, cond, uncond, frames)

    split = comfy.multigpu.create_multigpu_deepclones(m, 2)
    clones = split.get_additional_models_with_key("multigpu")
    assert [c.load_device for c in clones] == [two_cpu_devices[1]]
    clone_motion = patch.motion_patcher_of(clones[0]).model.motion
    assert clone_motion is not patch.motion_patcher_of(m).model.motion
    calls = {"clone": 0}
    spies = [mod.register_forward_hook(lambda *a: calls.__setitem__("clone", calls["clone"] + 1))
             for mod in clone_motion.modules() if getattr(mod, "musev_kind", None) == "temp_conv"]
    try:
        multi = _sample(comfy_host, split, vae, image, cond, uncond, frames)
    finally:
        for s in spies:
            s.remove()
    assert calls["clone"] > 0, "the second device never ran its own motion model"
    assert multi.shape == single.shape
    # The same maths on the same CPU in other batch compositions: with one window group ComfyUI runs
    # cond and uncond as separate UNet (and ReferenceNet) calls on the two devices; with window groups
    # each device runs whole groups.  Float rounding, amplified by CFG 3.5 over the Euler steps at
    # |x| ~ 260 (random stand-in weights): measured 3.1e-4 (CFG split) and below 2e-4 (groups) of
    # max|x|.  A piece missing on the clone (motion, vision frame, ReferenceNet) moves it by O(max|x|).
    rel = (multi - single).abs().max().item() / single.abs().max().item()
    print(f"\nMultiGPU ({frames} frames) vs one device: max |diff| = {rel:.2e} of max |latent|")
    assert rel <= 1e-3
    assert _same_snapshot(before, _snapshot(base.model.diffusion_model))
    for c in [m, split] + clones:
        assert patch.count_injected(c.model.diffusion_model) == 0
    del split, clones
    import comfy.model_management
    comfy.model_management.unload_all_models()


def test_window_groups_are_split_over_devices(comfy_host):
    context = comfy_host.pack("nodes.context")
    a, b, c = torch.device("cpu"), torch.device("cpu", 0), torch.device("cpu", 1)
    assert context.multigpu_lanes({}, 5) is None
    assert context.multigpu_lanes({"multigpu_clones": {a: 1, b: 2}}, 1) is None   # one group: CFG split
    assert context.multigpu_lanes({"multigpu_clones": {a: 1, b: 2}}, 3) == [{a: 1}, {b: 2}]
    assert context.multigpu_lanes({"multigpu_clones": {a: 1, b: 2, c: 3}}, 2) == [{a: 1, c: 3}, {b: 2}]
    seen = []

    def run(group, options):
        seen.append((group[0][0], tuple(options.get("multigpu_clones", {}))))
        return group[0][0]

    groups = [[[i]] for i in range(5)]
    out = list(context.evaluate_groups(groups, run, {"multigpu_clones": {a: 1, b: 2}}))
    assert out == [0, 1, 2, 3, 4]                     # results in window order
    lanes = {g: devs for g, devs in seen}
    assert {lanes[0], lanes[1]} == {(a,)} and {lanes[2], lanes[3], lanes[4]} == {(b,)}


def test_lane_errors_reach_the_sampler(comfy_host):
    import comfy.model_management
    context = comfy_host.pack("nodes.context")
    a, b = torch.device("cpu"), torch.device("cpu", 0)

    def run(group, options):
        if group == 3:
            raise comfy.model_management.InterruptProcessingException()
        return group

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        list(context.evaluate_groups([0, 1, 2, 3], run, {"multigpu_clones": {a: 1, b: 2}}))


@pytest.mark.host_feature("multigpu")
def test_workflow_with_multigpu_node_runs_on_one_cpu(comfy_host, standins):
    """A graph with ComfyUI's "MultiGPU CFG Split" in front of the MuseV MODEL, on a machine with one
    device: the node finds no extra device and the run is the plain one."""
    from test_executor_t2v import t2v_prompt
    prompt = t2v_prompt(standins, frames=6)
    plain, _ = comfy_host.run_prompt(prompt, prompt_id="mgpu-plain")
    prompt["10"] = {"class_type": "MultiGPU_WorkUnits", "inputs": {"model": ["2", 0], "max_gpus": 2}}
    prompt["6"]["inputs"]["model"] = ["10", 0]
    split, _ = comfy_host.run_prompt(prompt, prompt_id="mgpu-split")
    assert len(split["9"]["images"]) == len(plain["9"]["images"]) == 6
