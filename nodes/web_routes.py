"""HTTP routes used by the frontend extension (``web/musev_windows.js``).

``GET /musev/windows`` (also ``/api/musev/windows``, ComfyUI mirrors every route under ``/api``)
returns the context-window plan of ``musev_core.windows.describe`` so that the node widget draws
exactly what the sampler will do; Python stays the single source of truth.

Query parameters (integers unless noted; the widget names are accepted as aliases):

==================  ==========================  =========================================
parameter           alias                       default
==================  ==========================  =========================================
``schedule``        ``context_schedule``        ``uniform_v2`` (string)
``frames``          ``n_frames``                required
``context_frames``                              12
``context_overlap``                             4
``n_vis``                                       0  (vision-condition frames per window)
``batch``           ``context_batch_size``      1
``stride``          ``context_stride``          1
==================  ==========================  =========================================

Answers (JSON):

* 200 ``{"ok": true, ...describe()}``: the plan (``windows``, ``frame_counts``, ``batches``,
  ``unet_frames``, ``batch_unet_frames``, ``n_windows``, ``n_batches``, ...).
* 200 ``{"ok": false, "error": {"type", "message", "param"}}``: well-formed settings that cannot
  work.  ``type`` is ``"WindowError"`` (message from ``musev_core.windows``, naming the input and
  the fix) or ``"too_large"`` (a plan too big to preview; sampling is not limited by this).
  ``param`` names the widget at fault when known.  This is an answer, not a failed request: the
  widget shows the message while the user edits, without the browser logging failed requests.
* 400 ``{"ok": false, "error": {"type": "bad_parameter", ...}}``: a malformed query (a missing
  ``frames``, a value that is not an integer).

Cost: every parameter is bounded (the widgets' ranges, :data:`LIMITS`) and the size of the plan
(window cells + per-frame counts + per-window entries) is computed from the numbers alone
(:func:`plan_cells`, an upper bound of what :func:`musev_core.windows.describe` builds) BEFORE
anything is built; above :data:`MAX_PREVIEW_CELLS` the answer is ``too_large``.  So the largest
accepted request costs a bounded, small multiple of a normal one (tests/host/test_route_limits.py
measures the ratio), whatever the query holds.
"""
import logging

from aiohttp import web

from ..musev_core import windows as _windows

ROUTE = "/musev/windows"
# A preview of more cells (window frames + per-frame counts + per-window entries) than this is refused:
# the drawing would be unreadable and the JSON large.  Sampling itself has no such limit.
MAX_PREVIEW_CELLS = 20_000
MAX_INT = 1 << 31
MAX_DIGITS = 12                # longer integer strings are refused before int() parses them
MAX_SCHEDULE_CHARS = 32
# Upper bounds of every parameter (the widgets' ranges; frames: the longest pose clip a frame count can
# come from).  Larger values are "too_large", not built.  Lower bounds are musev_core.windows' rules.
LIMITS = {"frames": 100_000, "context_frames": 256, "context_overlap": 255, "n_vis": 64, "batch": 64, "stride": 16}

_PARAMS = (
    # (name, aliases, default)  default None = required
    ("frames", ("n_frames",), None),
    ("context_frames", (), 12),
    ("context_overlap", (), 4),
    ("n_vis", (), 0),
    ("batch", ("context_batch_size",), 1),
    ("stride", ("context_stride",), 1),
)


class ParamError(ValueError):
    def __init__(self, param, message, kind="bad_parameter"):
        super().__init__(message)
        self.param = param
        self.kind = kind


def _get(query, name, aliases):
    for key in (name,) + tuple(aliases):
        if key in query:
            return key, query[key]
    return name, None


def parse_query(query):
    """Query mapping -> keyword arguments of :func:`musev_core.windows.describe` (raises ParamError)."""
    key, schedule = _get(query, "schedule", ("context_schedule",))
    schedule = (schedule or "uniform_v2").strip()
    if len(schedule) > MAX_SCHEDULE_CHARS:
        raise ParamError(key, f"parameter '{key}' is not a schedule name ({len(schedule)} characters)")
    values = {}
    for name, aliases, default in _PARAMS:
        key, raw = _get(query, name, aliases)
        if raw is None or raw.strip() == "":
            if default is None:
                raise ParamError(key, f"parameter '{key}' is required (an integer)")
            values[name] = default
            continue
        text = raw.strip()
        if len(text.lstrip("+-")) > MAX_DIGITS:
            raise ParamError(key, f"parameter '{key}' is out of range ({len(text)} characters)")
        try:
            value = int(text, 10)
        except ValueError:
            raise ParamError(key, f"parameter '{key}' must be an integer, got {raw[:40]!r}") from None
        if abs(value) > MAX_INT:
            raise ParamError(key, f"parameter '{key}' is out of range: {value}")
        if value > LIMITS[name]:
            raise ParamError(key, f"'{key}' is {value}: the preview takes at most {LIMITS[name]} (sampling is not "
                                  "limited by this)", kind="too_large")
        values[name] = value
    return {
        "schedule": schedule,
        "n_frames": values["frames"],
        "context_frames": values["context_frames"],
        "context_overlap": values["context_overlap"],
        "n_vis": values["n_vis"],
        "context_batch_size": values["batch"],
        "context_stride": values["stride"],
    }


def plan_cells(schedule, n_frames, context_frames, context_overlap, context_stride=1, **_):
    """An upper bound of the entries :func:`musev_core.windows.describe` returns for valid settings
    (window frames + one count per frame + four per-window lists), from the numbers alone: O(levels)."""
    n, f, o = n_frames, context_frames, context_overlap
    if _windows._ALIASES.get(schedule, schedule) == "uniform_looped":
        if n <= f:
            windows, cells = 1, n
        else:
            windows = cells = 0
            for level in range(min(context_stride, _windows._n_dilations(n, f))):
                count = -(-n // (f * (1 << level) - o))
                windows += count
                cells += count * f
    else:                              # starts 0, F-O, ... < N, each window at most min(F, N) frames
        windows = -(-n // (f - o))
        cells = windows * min(f, n)
    return cells + n + 4 * windows


def plan(query):
    """The JSON body and HTTP status for a query mapping (no aiohttp needed: used by tests too)."""
    try:
        kwargs = parse_query(query)
        _windows._schedule_name(kwargs["schedule"])      # the checks describe() makes, in its order
        _windows.validate(kwargs["n_frames"], kwargs["context_frames"], kwargs["context_overlap"],
                          kwargs["context_batch_size"], kwargs["context_stride"])
        if kwargs["n_vis"] < 0:
            raise ParamError("n_vis", f"n_vis is {kwargs['n_vis']}: the number of vision-condition frames must be "
                                      ">= 0", kind="WindowError")
        cells = plan_cells(**kwargs)
        if cells > MAX_PREVIEW_CELLS:
            n, f, o = kwargs["n_frames"], kwargs["context_frames"], kwargs["context_overlap"]
            raise ParamError("frames", (
                f"this plan has up to {cells} entries ({n} frames, windows of {f} advancing by {f - o}): too large "
                f"to preview (at most {MAX_PREVIEW_CELLS}; sampling is not limited by this)"), kind="too_large")
        body = _windows.describe(**kwargs)
    except ParamError as e:
        status = 400 if e.kind == "bad_parameter" else 200
        return {"ok": False, "error": {"type": e.kind, "message": str(e), "param": e.param}}, status
    except _windows.WindowError as e:
        return {"ok": False, "error": {"type": "WindowError", "message": str(e), "param": _param_of(str(e))}}, 200
    out = {"ok": True}
    out.update(body)
    return out, 200


def _param_of(message):
    """The widget a WindowError message is about (its messages start with the input name)."""
    head = message.split(" ", 1)[0]
    mapping = {"n_frames": "frames", "context_frames": "context_frames", "context_overlap": "context_overlap",
               "context_batch_size": "context_batch_size", "context_stride": "context_stride",
               "context_schedule": "context_schedule"}
    return mapping.get(head)


async def handle_windows(request):
    body, status = plan(request.rel_url.query)
    return web.json_response(body, status=status, headers={"Cache-Control": "no-store"})


def register(server=None):
    """Add the routes to ComfyUI's PromptServer (once).  Returns True when added now."""
    if server is None:
        try:
            from server import PromptServer  # ComfyUI's top-level module
        except ImportError:
            logging.info("[MuseV] no ComfyUI PromptServer: web routes not registered")
            return False
        server = getattr(PromptServer, "instance", None)
        if server is None:
            logging.info("[MuseV] PromptServer not created yet: web routes not registered")
            return False
    if getattr(server, "_musev_web_routes", False):
        return False
    server.routes.get(ROUTE)(handle_windows)
    server._musev_web_routes = True
    return True


register()
