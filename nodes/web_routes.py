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
"""
import logging

from aiohttp import web

from ..musev_core import windows as _windows

ROUTE = "/musev/windows"
# A preview of more cells (sum of window lengths) than this is refused: the JSON would be megabytes
# and the drawing unreadable.  Sampling itself has no such limit.
MAX_PREVIEW_CELLS = 200_000
MAX_INT = 1 << 31

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
    _, schedule = _get(query, "schedule", ("context_schedule",))
    schedule = (schedule or "uniform_v2").strip()
    values = {}
    for name, aliases, default in _PARAMS:
        key, raw = _get(query, name, aliases)
        if raw is None or raw.strip() == "":
            if default is None:
                raise ParamError(key, f"parameter '{key}' is required (an integer)")
            values[name] = default
            continue
        try:
            value = int(raw.strip(), 10)
        except ValueError:
            raise ParamError(key, f"parameter '{key}' must be an integer, got {raw!r}") from None
        if abs(value) > MAX_INT:
            raise ParamError(key, f"parameter '{key}' is out of range: {value}")
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


def plan(query):
    """The JSON body and HTTP status for a query mapping (no aiohttp needed: used by tests too)."""
    try:
        kwargs = parse_query(query)
        # Cheap size estimate before building the lists (uniform_v2 and looped with stride 1 are
        # both about ceil(N / (F - O)) windows of F frames).
        n, f, o = kwargs["n_frames"], kwargs["context_frames"], kwargs["context_overlap"]
        if n >= 1 and 2 <= f and 0 <= o < f:
            est = -(-n // (f - o)) * min(f, n) * max(1, kwargs["context_stride"])
            if est > MAX_PREVIEW_CELLS:
                raise ParamError("frames", (
                    f"this plan has about {est} window frames ({n} frames, windows of {f} advancing by {f - o}): "
                    "too large to preview (sampling is not limited by this)"), kind="too_large")
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
