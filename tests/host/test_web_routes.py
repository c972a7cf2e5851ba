"""GET /musev/windows (nodes/web_routes.py): the plan the frontend draws must be musev_core.windows'.

Checked twice: in-process on the pack loaded into ComfyUI (``comfy_host``: the handler's pure
``plan()`` and its registration on PromptServer), and over HTTP on the real server subprocess
(``comfy_server``), both under ``/musev/windows`` and ComfyUI's ``/api`` mirror.
"""
import urllib.parse

import pytest

from conftest import pack_module

# (schedule, N, F, O, n_vis, batch, expected windows as (first, last) runs or None = compare with core)
SPEC_CASES = [
    # spec §5.5 examples (F=12, O=4)
    ("uniform_v2", 12, 12, 4, 0, 1, [[(0, 11)]]),
    ("uniform_v2", 13, 12, 4, 0, 1, [[(0, 11)], [(8, 12)]]),
    ("uniform_v2", 20, 12, 4, 1, 1, [[(0, 11)], [(8, 19)]]),
    ("uniform_v2", 24, 12, 4, 1, 2, [[(0, 11)], [(8, 19)], [(16, 23)]]),
    ("uniform_v2", 36, 12, 4, 2, 3, [[(0, 11)], [(8, 19)], [(16, 27)], [(24, 35)]]),
    ("uniform_looped", 24, 12, 4, 1, 1, [[(0, 11)], [(8, 19)], [(16, 23), (0, 3)]]),
    # quirk: the final-window drop runs once (windows.py docstring)
    ("uniform_v2", 9, 8, 6, 0, 1, [[(0, 7)], [(2, 8)], [(4, 8)], [(6, 8)]]),
]
OTHER_CASES = [
    ("uniform_v2", 1, 12, 4, 0, 1),
    ("uniform_v2", 100, 16, 0, 1, 4),
    ("uniform_v2", 64, 12, 11, 0, 5),
    ("uniform_looped", 10, 12, 4, 1, 1),     # N <= F: one unwrapped window
    ("uniform_looped", 50, 12, 4, 0, 3),
    ("uniform_looped", 97, 16, 6, 2, 2),
]


def _id(value):
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "empty"
    return str(value)


def expand(runs):
    return [f for a, b in runs for f in range(a, b + 1)]


def query(schedule, n, f, o, n_vis, batch):
    return urllib.parse.urlencode({"schedule": schedule, "frames": n, "context_frames": f,
                                   "context_overlap": o, "n_vis": n_vis, "batch": batch})


def check_plan(body, schedule, n, f, o, n_vis, batch, expected_runs=None):
    """The route's answer against musev_core.windows' primitives (not describe(): built here)."""
    W = pack_module("musev_core.windows")
    assert body["ok"] is True, body
    windows = W.get_windows(schedule, n, f, o)
    if expected_runs is not None:
        assert windows == [expand(r) for r in expected_runs], "musev_core.windows disagrees with the spec"
    assert body["windows"] == windows
    assert body["frame_counts"] == W.frame_counts(windows, n)
    assert body["batches"] == W.batch_windows(list(range(len(windows))), batch)
    assert body["unet_frames"] == [n_vis + len(w) for w in windows]
    assert body["batch_unet_frames"] == [sum(n_vis + len(windows[i]) for i in b) for b in body["batches"]]
    assert (body["n_windows"], body["n_batches"], body["n_vis"], body["n_frames"]) == (
        len(windows), -(-len(windows) // batch), n_vis, n)
    assert body["schedule"] == schedule and body["context_batch_size"] == batch
    # every frame is denoised by at least one window
    assert min(body["frame_counts"]) >= 1


BAD_SETTINGS = [
    # (query dict, error type, param the message must name)
    ({"frames": 12, "context_frames": 12, "context_overlap": 12}, "WindowError", "context_overlap"),
    ({"frames": 12, "context_frames": 8, "context_overlap": 9}, "WindowError", "context_overlap"),
    ({"frames": 12, "context_overlap": -1}, "WindowError", "context_overlap"),
    ({"frames": 0}, "WindowError", "frames"),
    ({"frames": 12, "context_frames": 1, "context_overlap": 0}, "WindowError", "context_frames"),
    ({"frames": 12, "batch": 0}, "WindowError", "context_batch_size"),
    ({"frames": 12, "schedule": "uniform_v3"}, "WindowError", "context_schedule"),
    ({"frames": 100000, "context_frames": 256, "context_overlap": 255}, "too_large", "frames"),
]
MALFORMED = [
    ({}, "frames"),
    ({"frames": "twelve"}, "frames"),
    ({"frames": 12, "context_frames": "1.5"}, "context_frames"),
    ({"frames": 12, "batch": ""}, None),   # empty = default: not an error
]


# ------------------------------------------------------------------------------ in-process
def test_route_registered_on_prompt_server(comfy_host):
    from server import PromptServer
    web_routes = comfy_host.pack("nodes.web_routes")
    paths = [(r.method, r.path) for r in PromptServer.instance.routes]
    assert paths.count(("GET", web_routes.ROUTE)) == 1, paths[-10:]
    # importing the module again (ComfyUI reloads, a second pack copy) must not add a duplicate
    assert web_routes.register() is False
    assert [(r.method, r.path) for r in PromptServer.instance.routes].count(("GET", web_routes.ROUTE)) == 1


@pytest.mark.parametrize("case", SPEC_CASES + [c + (None,) for c in OTHER_CASES],
                         ids=lambda c: f"{c[0]}-N{c[1]}-F{c[2]}-O{c[3]}-v{c[4]}-b{c[5]}")
def test_plan_matches_core(comfy_host, case):
    web_routes = comfy_host.pack("nodes.web_routes")
    schedule, n, f, o, n_vis, batch, runs = case
    q = dict(urllib.parse.parse_qsl(query(schedule, n, f, o, n_vis, batch)))
    body, status = web_routes.plan(q)
    assert status == 200
    check_plan(body, schedule, n, f, o, n_vis, batch, runs)


def test_plan_accepts_widget_names(comfy_host):
    web_routes = comfy_host.pack("nodes.web_routes")
    body, status = web_routes.plan({"context_schedule": "uniform_looped", "n_frames": "24",
                                    "context_frames": "12", "context_overlap": "4", "context_batch_size": "2"})
    assert status == 200
    check_plan(body, "uniform_looped", 24, 12, 4, 0, 2)


@pytest.mark.parametrize("params,kind,param", BAD_SETTINGS, ids=_id)
def test_plan_errors(comfy_host, params, kind, param):
    web_routes = comfy_host.pack("nodes.web_routes")
    body, status = web_routes.plan({k: str(v) for k, v in params.items()})
    assert status == 200 and body["ok"] is False, body
    assert body["error"]["type"] == kind
    assert body["error"]["param"] == param
    assert len(body["error"]["message"]) > 20


# ------------------------------------------------------------------------------ over HTTP
@pytest.mark.parametrize("prefix", ["", "/api"])
@pytest.mark.parametrize("case", SPEC_CASES + [c + (None,) for c in OTHER_CASES],
                         ids=lambda c: f"{c[0]}-N{c[1]}-F{c[2]}-O{c[3]}-v{c[4]}-b{c[5]}" if isinstance(c, tuple) else c)
def test_http_plan_matches_core(comfy_server, prefix, case):
    schedule, n, f, o, n_vis, batch, runs = case
    status, body = comfy_server.get_json(f"{prefix}/musev/windows?{query(schedule, n, f, o, n_vis, batch)}")
    assert status == 200, body
    check_plan(body, schedule, n, f, o, n_vis, batch, runs)


@pytest.mark.parametrize("params,kind,param", BAD_SETTINGS, ids=_id)
def test_http_bad_settings(comfy_server, params, kind, param):
    status, body = comfy_server.get_json("/api/musev/windows?" + urllib.parse.urlencode(params))
    assert status == 200 and body["ok"] is False, body
    assert (body["error"]["type"], body["error"]["param"]) == (kind, param)
    W = pack_module("musev_core.windows")
    if kind == "WindowError":   # the very message musev_core.windows raises
        with pytest.raises(W.WindowError) as info:
            W.describe(params.get("schedule", "uniform_v2"), params["frames"], params.get("context_frames", 12),
                       params.get("context_overlap", 4), 0, params.get("batch", 1))
        assert body["error"]["message"] == str(info.value)


@pytest.mark.parametrize("params,param", MALFORMED, ids=_id)
def test_http_malformed_query(comfy_server, params, param):
    status, body = comfy_server.get_json("/musev/windows?" + urllib.parse.urlencode(params))
    if param is None:
        assert status == 200 and body["ok"] is True, body
        return
    assert status == 400, body
    assert body["ok"] is False and body["error"]["type"] == "bad_parameter"
    assert body["error"]["param"] == param and param in body["error"]["message"]
