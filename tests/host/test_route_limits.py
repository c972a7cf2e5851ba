"""GET /musev/windows stays cheap whatever it is sent (issue 13, class 4).

Every parameter is bounded, and the plan's size is computed from the numbers before anything is
built.  Checked: the size bound really bounds what ``describe()`` builds (many settings); refused
queries never build a plan; over HTTP, the largest accepted plan and a batch of hostile queries
cost a bounded multiple of a normal request (ratios of medians measured in one run, no absolute
times), and the server answers a normal request right after them.
"""
import itertools
import statistics
import time
import urllib.parse

import pytest

HOSTILE = [
    {"frames": "9" * 4000},                                            # int() of a huge digit string
    {"frames": str(1 << 40)},
    {"frames": "100000", "context_frames": "2", "context_overlap": "1"},
    {"frames": "100000", "context_frames": "256", "context_overlap": "255"},
    {"frames": "100000", "context_frames": "3", "context_overlap": "2", "schedule": "uniform_looped", "stride": "16"},
    {"frames": "4096", "context_frames": "256", "context_overlap": "255", "batch": "64", "n_vis": "64"},
    {"frames": "24", "n_vis": "1000000000"},
    {"frames": "24", "batch": "1000000000"},
    {"frames": "24", "stride": "1000000000", "schedule": "uniform_looped"},
    {"frames": "24", "context_frames": "1000000000"},
    {"frames": "24", "schedule": "x" * 5000},
]
NORMAL = {"frames": "24", "context_frames": "12", "context_overlap": "4", "n_vis": "1"}


def largest_accepted(web_routes):
    """Settings within every bound whose plan is the biggest the route still builds."""
    best, best_cells = None, -1
    for schedule, f, o, stride in itertools.product(("uniform_v2", "uniform_looped"), (2, 3, 12, 64, 256),
                                                    (0, 1, 4, 63, 255), (1, 16)):
        if o >= f:
            continue
        lo, hi = 1, web_routes.LIMITS["frames"]
        while lo < hi:                      # the longest video of these settings that is accepted
            mid = (lo + hi + 1) // 2
            cells = web_routes.plan_cells(schedule, mid, f, o, stride)
            lo, hi = (mid, hi) if cells <= web_routes.MAX_PREVIEW_CELLS else (lo, mid - 1)
        cells = web_routes.plan_cells(schedule, lo, f, o, stride)
        if cells > best_cells:
            best_cells = cells
            best = {"schedule": schedule, "frames": str(lo), "context_frames": str(f), "context_overlap": str(o),
                    "stride": str(stride), "batch": "64", "n_vis": str(web_routes.LIMITS["n_vis"])}
    return best


def test_size_bound_holds(comfy_host):
    """plan_cells() >= what describe() really returns, over many settings (the check is an upper bound)."""
    web_routes = comfy_host.pack("nodes.web_routes")
    W = comfy_host.pack("musev_core.windows")
    n_checked = 0
    for schedule in ("uniform_v2", "uniform_looped"):
        for n, f, o, stride in itertools.product((1, 2, 5, 11, 12, 13, 24, 97, 300), (2, 3, 4, 12, 16), (0, 1, 3, 11),
                                                 (1, 2, 3, 5)):
            if o >= f:
                continue
            body = W.describe(schedule, n, f, o, 1, 2, stride)
            built = (sum(len(w) for w in body["windows"]) + len(body["frame_counts"]) + len(body["batches"])
                     + len(body["unet_frames"]) + len(body["batch_unet_frames"]))
            assert built <= web_routes.plan_cells(schedule, n, f, o, stride), (schedule, n, f, o, stride)
            n_checked += 1
    assert n_checked > 300


@pytest.mark.parametrize("query", HOSTILE, ids=lambda q: ",".join(f"{k}={v[:12]}" for k, v in q.items()))
def test_hostile_queries_are_refused_without_building(comfy_host, monkeypatch, query):
    web_routes = comfy_host.pack("nodes.web_routes")
    built = []
    real = web_routes._windows.describe
    monkeypatch.setattr(web_routes._windows, "describe", lambda *a, **k: built.append(1) or real(*a, **k))
    body, status = web_routes.plan(query)
    assert body["ok"] is False, body
    assert status in (200, 400)
    assert body["error"]["type"] in ("too_large", "bad_parameter", "WindowError"), body
    assert not built, "a refused query built a plan"
    assert len(body["error"]["message"]) < 400


def test_largest_accepted_plan_is_within_the_bound(comfy_host):
    web_routes = comfy_host.pack("nodes.web_routes")
    q = largest_accepted(web_routes)
    body, status = web_routes.plan(q)
    assert status == 200 and body["ok"] is True, body
    built = sum(len(w) for w in body["windows"]) + len(body["frame_counts"])
    assert built <= web_routes.MAX_PREVIEW_CELLS
    over = dict(q, frames=str(int(q["frames"]) + 1))
    if int(over["frames"]) <= web_routes.LIMITS["frames"]:
        body, _ = web_routes.plan(over)
        assert body["ok"] is False and body["error"]["type"] == "too_large"


def _median_seconds(server, query, repeat):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        status, body = server.get_json("/musev/windows?" + urllib.parse.urlencode(query))
        times.append(time.perf_counter() - t0)
        assert status in (200, 400), (status, body)
    return statistics.median(times)


def _inprocess_seconds(web_routes, query, repeat=20):
    t0 = time.perf_counter()
    for _ in range(repeat):
        web_routes.plan(query)
    return (time.perf_counter() - t0) / repeat


def test_cost_is_a_bounded_multiple_of_a_normal_request(comfy_host, comfy_server):
    """The largest accepted plan and hostile queries against a normal preview request: in-process (the
    route's own work) and over HTTP on the real server (medians of interleaved rounds, so machine load
    affects both alike).  Ratios, not times."""
    web_routes = comfy_host.pack("nodes.web_routes")
    big = largest_accepted(web_routes)
    status, body = comfy_server.get_json("/musev/windows?" + urllib.parse.urlencode(big))
    assert status == 200 and body["ok"] is True, body
    queries = {"normal": NORMAL, "largest": big}
    queries.update({f"hostile{i}": q for i, q in enumerate(HOSTILE)})
    local = {name: [] for name in queries}
    http = {name: [] for name in queries}
    for _ in range(5):
        for name, q in queries.items():
            local[name].append(_inprocess_seconds(web_routes, q))
            http[name].append(_median_seconds(comfy_server, q, 1))
    ratios = {}
    for where, times in (("in-process", local), ("HTTP", http)):
        med = {name: statistics.median(t) for name, t in times.items()}
        ratios[where] = (med["largest"] / med["normal"],
                         max(v for k, v in med.items() if k.startswith("hostile")) / med["normal"], med["normal"])
    print("\n/musev/windows, largest accepted plan (%s):" % big)
    for where, (r_big, r_hostile, base) in ratios.items():
        print(f"  {where}: normal {base * 1e3:.3f} ms; largest plan {r_big:.1f}x; slowest hostile query {r_hostile:.1f}x")
    # over HTTP the largest plan (20k entries; a normal one ~100) stays within a small multiple of a
    # normal request; a refused query builds nothing, so it costs no more than a normal one in-process
    assert ratios["HTTP"][0] <= 150, ratios
    assert ratios["in-process"][1] <= 2 and ratios["HTTP"][1] <= 25, ratios
    status, body = comfy_server.get_json("/musev/windows?" + urllib.parse.urlencode(NORMAL))
    assert status == 200 and body["ok"] is True
