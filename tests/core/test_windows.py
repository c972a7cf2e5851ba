"""Context-window schedules (musev_core.windows) against MuseV's own outputs and spec §5.5."""
import json
import os

import pytest

from conftest import pack_module

W = pack_module("musev_core.windows")


def _read(parity_dir, name):
    with open(os.path.join(parity_dir, name), "r", encoding="utf-8") as f:
        return json.load(f)


def _first_failures(failures, n=5):
    return "\n".join(str(f) for f in failures[:n]) + (f"\n... {len(failures)} in all" if failures else "")


# ------------------------------------------------------------------------------------------------
# parity with MuseV (fixtures)

def test_parity_global_context_grid(parity_dir):
    """Every entry of prepare_global_context over the grid, both schedules, strides, batch sizes."""
    grid = _read(parity_dir, "context/global_context_grid.json")
    assert grid, "empty grid"
    failures = []
    for e in grid:
        windows = W.get_windows(e["context_schedule"], e["time_size"], e["context_frames"],
                                e["context_overlap"], e["context_stride"])
        got = W.batch_windows(windows, e["context_batch_size"])
        if got != e["global_context"]:
            failures.append((e, got))
    assert not failures, _first_failures(failures)


def test_parity_global_context_grid_with_our_schedule_names(parity_dir):
    """MuseV's ``uniform`` is our ``uniform_looped``: the grid holds under our name too."""
    grid = _read(parity_dir, "context/global_context_grid.json")
    ours = {"uniform": "uniform_looped", "uniform_v2": "uniform_v2"}
    failures = []
    seen = set()
    for e in grid:
        name = ours[e["context_schedule"]]
        seen.add(name)
        got = W.batch_windows(W.get_windows(name, e["time_size"], e["context_frames"], e["context_overlap"],
                                            e["context_stride"]), e["context_batch_size"])
        if got != e["global_context"]:
            failures.append((e, got))
    assert not failures, _first_failures(failures)
    assert seen <= set(W.SCHEDULES)


def test_parity_uniform_raw_generator(parity_dir):
    """MuseV's raw ``uniform`` generator over steps, strides, overlaps and closed_loop."""
    raw = _read(parity_dir, "context/uniform_raw.json")
    assert raw
    failures = []
    for e in raw:
        assert e["scheduler"] == "uniform"
        got = W.uniform_looped(e["num_frames"], e["context_size"], e["context_overlap"], e["context_stride"],
                               step=e["step"], closed_loop=e["closed_loop"])
        if got != e["windows"]:
            failures.append((e, got))
    assert not failures, _first_failures(failures)


def test_parity_unet_layouts(parity_dir):
    """Per window: latent frames and the UNet frame layout with 0..n vision frames prepended."""
    layouts = _read(parity_dir, "context/unet_layouts.json")
    assert layouts
    for e in layouts:
        n_vis = e["n_vision_condition"]
        windows = W.get_windows(e["context_schedule"], e["time_size"], e["context_frames"], e["context_overlap"])
        assert windows == [w["latent_frames"] for w in e["windows"]], e
        for window, ref in zip(windows, e["windows"]):
            lay = W.unet_layout(window, n_vis)
            assert lay["unet_frames"] == ref["unet_frames"], (e, ref, lay)
            if ref["sample_index"] is None:
                # MuseV passes None without vision frames: every UNet frame is a window frame.
                assert n_vis == 0 and ref["vision_conditon_frames_sample_index"] is None
                assert lay["vision_index"] == []
                assert lay["sample_index"] == list(range(len(window)))
            else:
                assert lay["sample_index"] == ref["sample_index"], (e, ref, lay)
                assert lay["vision_index"] == ref["vision_conditon_frames_sample_index"], (e, ref, lay)


def test_parity_pipeline_windows_and_unet_calls(parity_dir):
    """The windows and per-call layouts MuseV's pipeline actually used (manifest pipelines)."""
    manifest = _read(parity_dir, "manifest.json")
    assert manifest["pipelines"]
    for folder, rec in manifest["pipelines"].items():
        a = rec["call_args"]
        windows = W.get_windows(a["context_schedule"], a["video_length"], a["context_frames"],
                                a["context_overlap"], a["context_stride"])
        batches = W.batch_windows(windows, a["context_batch_size"])
        assert batches == rec["global_context"], folder
        calls = [rec["unet_calls"][k] for k in sorted(rec["unet_calls"])]
        n_steps = a["num_inference_steps"]
        assert len(calls) == n_steps * len(batches), folder
        n_vis = rec["n_vision_condition"]
        for i, call in enumerate(calls):
            assert call["step"] == i // len(batches)
            for window in batches[i % len(batches)]:   # MuseV concatenates a batch's windows
                lay = W.unet_layout(window, n_vis)
                assert call["frames"] == lay["unet_frames"], (folder, i)
                if n_vis:
                    assert call["sample_index"] == lay["sample_index"], (folder, i)
                    assert call["vision_conditon_frames_sample_index"] == lay["vision_index"], (folder, i)
                else:
                    assert call["sample_index"] is None, (folder, i)


# ------------------------------------------------------------------------------------------------
# spec §5.5 examples and MuseV quirks

@pytest.mark.parametrize("n, expected", [
    (12, [(0, 11)]),
    (13, [(0, 11), (8, 12)]),
    (20, [(0, 11), (8, 19)]),
    (24, [(0, 11), (8, 19), (16, 23)]),
    (36, [(0, 11), (8, 19), (16, 27), (24, 35)]),
])
def test_uniform_v2_spec_examples(n, expected):
    want = [list(range(a, b + 1)) for a, b in expected]
    assert W.uniform_v2(n, 12, 4) == want
    assert W.get_windows("uniform_v2", n, 12, 4) == want


def test_uniform_looped_spec_example():
    assert W.get_windows("uniform_looped", 24, 12, 4) == [
        list(range(0, 12)), list(range(8, 20)), list(range(16, 24)) + [0, 1, 2, 3]]


def test_uniform_looped_short_video_is_one_unwrapped_window():
    for n in range(1, 13):
        assert W.get_windows("uniform_looped", n, 12, 4, context_stride=3) == [list(range(n))]


def test_uniform_v2_drops_only_one_trailing_window():
    # starts 0,2,4,6,8: [8] ends like [6..8] and is dropped; [4..8], [6..8] stay (MuseV drops once)
    assert W.uniform_v2(9, 8, 6) == [list(range(0, 8)), list(range(2, 9)), list(range(4, 9)), list(range(6, 9))]


def test_uniform_v2_ignores_stride():
    for stride in (1, 2, 3, 5):
        assert W.get_windows("uniform_v2", 30, 8, 2, stride) == W.get_windows("uniform_v2", 30, 8, 2)


def test_uniform_looped_dilated_windows_and_repeated_frames():
    # N=8, F=5, O=0, stride 2: plain windows then one window of every 2nd frame, wrapping
    windows = W.get_windows("uniform_looped", 8, 5, 0, 2)
    assert windows == [[0, 1, 2, 3, 4], [5, 6, 7, 0, 1], [0, 2, 4, 6, 0]]
    # frame 0 appears twice in the dilated window but that window counts once for it
    assert W.frame_counts(windows, 8) == [3, 2, 2, 1, 2, 1, 2, 1]


def test_musev_name_alias():
    assert W.get_windows("uniform", 30, 12, 4, 2) == W.get_windows("uniform_looped", 30, 12, 4, 2)


# ------------------------------------------------------------------------------------------------
# properties

GRID = [(n, f, o, s) for n in (1, 2, 5, 11, 12, 13, 17, 24, 31, 50)
        for f in (2, 3, 4, 8, 12) for o in range(0, f) for s in (1, 2, 3)]


@pytest.mark.parametrize("schedule", W.SCHEDULES)
def test_window_properties(schedule):
    for n, f, o, s in GRID:
        windows = W.get_windows(schedule, n, f, o, s)
        assert windows, (schedule, n, f, o, s)
        covered = set()
        for w in windows:
            assert 1 <= len(w) <= f, (schedule, n, f, o, s, w)
            assert all(isinstance(i, int) and 0 <= i < n for i in w), (schedule, n, f, o, s, w)
            covered.update(w)
        assert covered == set(range(n)), (schedule, n, f, o, s)
        counts = W.frame_counts(windows, n)
        assert min(counts) >= 1 and len(counts) == n
        assert sum(counts) == sum(len(set(w)) for w in windows)
        if schedule == "uniform_v2":
            step = f - o
            for k, w in enumerate(windows):
                assert w == list(range(w[0], w[0] + len(w))), "contiguous and increasing"
                assert w[0] == k * step
                assert len(w) == f or w[-1] == n - 1, "only windows reaching the end are short"
        else:
            if n <= f:
                assert windows == [list(range(n))]
            else:
                assert all(len(w) == f for w in windows)
                assert windows[0] == list(range(f))


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7])
def test_batch_windows(batch_size):
    windows = W.get_windows("uniform_v2", 50, 8, 3)
    batches = W.batch_windows(windows, batch_size)
    assert [w for b in batches for w in b] == windows
    assert all(len(b) == batch_size for b in batches[:-1]) and 1 <= len(batches[-1]) <= batch_size
    assert len(batches) == -(-len(windows) // batch_size)


def test_unet_layout():
    assert W.unet_layout([4, 5, 6], 2) == {"sample_index": [2, 3, 4], "vision_index": [0, 1], "unet_frames": 5}
    assert W.unet_layout([4, 5, 6], 0) == {"sample_index": [0, 1, 2], "vision_index": [], "unet_frames": 3}
    with pytest.raises(W.WindowError):
        W.unet_layout([], 1)
    with pytest.raises(W.WindowError):
        W.unet_layout([0, 1], -1)


def test_describe_is_json_and_consistent():
    d = W.describe("uniform_v2", 20, 8, 3, n_vis=1, context_batch_size=2)
    json.dumps(d)  # JSON-able
    windows = W.get_windows("uniform_v2", 20, 8, 3)
    assert d["schedule"] == "uniform_v2" and d["windows"] == windows
    assert d["frame_counts"] == W.frame_counts(windows, 20)
    assert [[windows[i] for i in b] for b in d["batches"]] == W.batch_windows(windows, 2)
    assert d["unet_frames"] == [len(w) + 1 for w in windows]
    assert d["batch_unet_frames"] == [sum(len(windows[i]) + 1 for i in b) for b in d["batches"]]
    assert d["n_windows"] == len(windows) and d["n_batches"] == len(d["batches"])
    assert d["min_count"] == min(d["frame_counts"]) and d["max_count"] == max(d["frame_counts"])
    looped = W.describe("uniform", 20, 8, 3, n_vis=0)
    assert looped["schedule"] == "uniform_looped" and looped["unet_frames"] == [8] * looped["n_windows"]


# ------------------------------------------------------------------------------------------------
# validation

@pytest.mark.parametrize("args, words", [
    ((0, 12, 4), ["n_frames"]),
    ((-3, 12, 4), ["n_frames"]),
    ((10, 1, 0), ["context_frames", "2"]),
    ((10, 0, 0), ["context_frames"]),
    ((10, 12, -1), ["context_overlap", "negative"]),
    ((10, 12, 12), ["context_overlap", "smaller than context_frames", "11"]),
    ((10, 4, 7), ["context_overlap", "smaller than context_frames", "3"]),
    ((10, 12, 4, 0), ["context_batch_size"]),
    ((10, 12, 4, 1, 0), ["context_stride"]),
    ((10.0, 12, 4), ["n_frames", "integer"]),
    ((10, 12, True), ["context_overlap", "integer"]),
])
def test_validation_errors(args, words):
    with pytest.raises(W.WindowError) as info:
        W.validate(*args)
    assert isinstance(info.value, ValueError)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_validation_is_applied_everywhere():
    with pytest.raises(W.WindowError, match="context_overlap"):
        W.get_windows("uniform_v2", 10, 4, 4)
    with pytest.raises(W.WindowError, match="context_overlap"):
        W.get_windows("uniform_looped", 10, 4, 5)
    with pytest.raises(W.WindowError, match="context_batch_size"):
        W.batch_windows([[0]], 0)
    with pytest.raises(W.WindowError, match="context_batch_size"):
        W.describe("uniform_v2", 10, 4, 1, 1, 0)
    with pytest.raises(W.WindowError, match="uniform_v2"):
        W.get_windows("fancy", 10, 4, 1)
    with pytest.raises(W.WindowError, match="outside"):
        W.frame_counts([[0, 5]], 5)


def test_valid_settings_pass():
    W.validate(1, 2, 0)
    W.validate(100, 12, 11, 64, 3)
