"""Headless Chromium for frontend tests: the system's Chromium driven by the playwright package.

Playwright is only the driver: the browser is the system ``chromium`` found on PATH (or
``MUSEV_CHROMIUM``); ``playwright install`` is never needed.  When either is missing, browser
tests skip with a loud reason, or FAIL when ``MUSEV_REQUIRE_BROWSER=1`` (CI).

Fixtures (registered in conftest.py, shared by all test files):

* ``chromium`` (session): a :class:`BrowserSession` (playwright + a launched Chromium, driven from
  a thread of its own so that asyncio in the test thread keeps working).
* ``frontend`` (function): a :class:`FrontendPage` with the ComfyUI frontend of the session's
  ``comfy_server`` loaded and an empty graph; console messages, page errors and failed requests
  are collected.  ``frontend.page`` is the playwright ``Page``.

Helpers: :func:`load_workflow_in_frontend` (load a UI-format workflow file, report missing node
types and errors), :meth:`FrontendPage.screenshot` (PNG under ``test-artifacts/``),
:meth:`FrontendPage.errors` / :meth:`FrontendPage.pack_errors`.
"""
import concurrent.futures
import json
import os
import queue
import re
import shutil
import threading

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PACK_DIR = os.path.dirname(TESTS_DIR)
ARTIFACTS_DIR = os.path.join(PACK_DIR, "test-artifacts")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# Flags for a root user in a container without network access or GPU.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--disable-extensions",
    "--disable-default-apps", "--mute-audio",
]
VIEWPORT = {"width": 1600, "height": 1000}
APP_READY_JS = """() => !!(window.app && window.app.vueAppReady && window.app.graph && window.app.canvas
                        && window.LiteGraph && window.LiteGraph.registered_node_types
                        && Object.keys(window.LiteGraph.registered_node_types).length > 0)"""
# Substrings that mark a console message / page error as coming from this pack.
PACK_MARKERS = ("musev",)


def _require_browser():
    return os.environ.get("MUSEV_REQUIRE_BROWSER", "") not in ("", "0", "false", "no")


def find_chromium():
    """Path of the system Chromium: ``MUSEV_CHROMIUM`` or the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get("MUSEV_CHROMIUM", "")
    if explicit:
        return explicit if os.path.isfile(explicit) else shutil.which(explicit)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_unavailable_reason():
    """None when browser tests can run, else why not."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as e:
        return f"the 'playwright' Python package is not installed ({e}); `bash scripts/test.sh` installs it"
    if find_chromium() is None:
        return ("no Chromium on PATH (looked for " + ", ".join(CHROMIUM_NAMES) + "; or set MUSEV_CHROMIUM): "
                "install Debian's 'chromium' package (scripts/setup_env.sh does when run as root)")
    return None


def require_browser():
    """Skip loudly, or fail under MUSEV_REQUIRE_BROWSER=1, when the browser cannot run."""
    reason = browser_unavailable_reason()
    if reason is None:
        return
    if _require_browser():
        pytest.fail(f"browser tests REQUIRED (MUSEV_REQUIRE_BROWSER=1) but cannot run: {reason}")
    import conftest
    msg = f"BROWSER TESTS SKIPPED: {reason}"
    conftest._HOST_SKIP_NOTE.append(msg)
    pytest.skip(msg)


class _Worker:
    """One thread that owns playwright.  Playwright's sync API marks its asyncio loop as running in
    the thread that uses it, which would break every later ``loop.run_until_complete`` /
    ``asyncio.run`` of the in-process ComfyUI tests (``comfy_host``) in the main thread; so all
    playwright calls are made here and the test thread waits for their results."""

    def __init__(self):
        self._jobs = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="musev-playwright", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, args, kwargs, future = job
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
                future.set_exception(e)

    def call(self, fn, *args, **kwargs):
        if threading.current_thread() is self._thread:
            return fn(*args, **kwargs)
        future = concurrent.futures.Future()
        args = tuple(_unwrap(a) for a in args)
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        self._jobs.put((fn, args, kwargs, future))
        return _wrap(self, future.result())

    def stop(self):
        self._jobs.put(None)
        self._thread.join(timeout=60)


def _wrap(worker, value):
    if isinstance(value, tuple):
        return tuple(_wrap(worker, v) for v in value)
    if type(value).__module__.startswith("playwright."):
        return _Proxy(worker, value)
    return value


def _unwrap(value):
    return object.__getattribute__(value, "_target") if isinstance(value, _Proxy) else value


class _Proxy:
    """A playwright object used from any thread: attribute reads and method calls run in the worker."""

    def __init__(self, worker, target):
        object.__setattr__(self, "_worker", worker)
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name):
        worker, target = self._worker, self._target
        value = worker.call(getattr, target, name)
        if callable(value) and not isinstance(value, _Proxy):
            return lambda *args, **kwargs: worker.call(value, *args, **kwargs)
        return value

    def __repr__(self):
        return f"<proxy of {self._target!r}>"


class BrowserSession:
    """playwright (in its own thread) + one launched Chromium; ``close()`` stops both."""

    def __init__(self, executable=None, args=None):
        self.executable = executable or find_chromium()
        self._worker = _Worker()
        try:
            self._pw, self.browser = self._worker.call(self._start, self.executable, list(args or CHROMIUM_ARGS))
        except BaseException:
            self._worker.stop()
            raise

    @staticmethod
    def _start(executable, args):
        from playwright.sync_api import sync_playwright
        pw = sync_playwright().start()
        try:
            # playwright gives every launch a fresh temporary profile (--user-data-dir)
            return pw, pw.chromium.launch(executable_path=executable, headless=True, args=args)
        except BaseException:
            pw.stop()
            raise

    def new_context(self, **kwargs):
        return self.browser.new_context(**kwargs)

    def close(self):
        try:
            self.browser.close()
        finally:
            try:
                self._pw.stop()
            finally:
                self._worker.stop()


class FrontendPage:
    """A page with the ComfyUI frontend of ``server`` and everything it logged."""

    def __init__(self, browser, server, viewport=None):
        self.server = server
        # A new context = a fresh profile (no localStorage/sessionStorage from other tests).
        self.context = browser.new_context(viewport=viewport or VIEWPORT, device_scale_factor=1)
        self.page = self.context.new_page()
        self.console = []        # {"type", "text", "url", "line"}
        self.page_errors = []    # {"message", "stack"}
        self.failed = []         # {"url", "status" or "failure"}
        self.page.on("console", self._on_console)
        self.page.on("pageerror", self._on_pageerror)
        self.page.on("response", self._on_response)
        self.page.on("requestfailed", self._on_requestfailed)

    # -- event collection ----------------------------------------------------------------
    def _on_console(self, msg):
        try:
            loc = msg.location or {}
        except Exception:   # noqa: BLE001  (location is best effort)
            loc = {}
        self.console.append({"type": msg.type, "text": msg.text, "url": loc.get("url", ""),
                             "line": loc.get("lineNumber")})

    def _on_pageerror(self, err):
        self.page_errors.append({"message": str(err), "stack": getattr(err, "stack", "") or ""})

    def _on_response(self, response):
        if response.status >= 400:
            self.failed.append({"url": response.url, "status": response.status})

    def _on_requestfailed(self, request):
        self.failed.append({"url": request.url, "failure": request.failure})

    def mark(self):
        """A bookmark for :meth:`errors` (counts of what was collected so far)."""
        return (len(self.console), len(self.page_errors), len(self.failed))

    def errors(self, since=(0, 0, 0), pack_only=False):
        """Console errors, page errors and failed requests (HTTP >= 400) after ``since`` as strings.

        Requests to other hosts that fail because the machine is offline (the 1.4x frontend asks
        model and node-registry hosts, e.g. huggingface.co or api.comfy.org, for file sizes and pack
        metadata, also for node types it does not know) are not errors of ours: our extension only
        talks to the local server.  They are kept in :meth:`offline_requests` and left out here.
        Anything from the local server or from our extension still counts."""
        out = []
        offline = bool(self.offline_requests(since))
        for m in self.console[since[0]:]:
            if m["type"] != "error" or self._is_offline_noise(m["text"], m["url"]):
                continue
            if offline and self._is_frontend_fetch_failure(m["text"], m["url"]):
                continue
            if not pack_only or self._is_pack(m["text"] + " " + m["url"]):
                out.append(f"console.error: {m['text']} ({m['url']}:{m['line']})")
        for e in self.page_errors[since[1]:]:
            if not pack_only or self._is_pack(e["message"] + " " + e["stack"]):
                out.append(f"page error: {e['message']}\n{e['stack']}")
        for f in self.failed[since[2]:]:
            if self._is_offline_noise("", f["url"]):
                continue
            if not pack_only or self._is_pack(f["url"]):
                out.append(f"request failed: {f['url']} ({f.get('status') or f.get('failure')})")
        return out

    def offline_requests(self, since=(0, 0, 0)):
        """Failed requests to hosts other than the local server (left out of :meth:`errors`)."""
        return [f["url"] for f in self.failed[since[2]:] if self._is_external(f["url"])]

    LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")

    def _is_external(self, url):
        import urllib.parse
        try:
            parts = urllib.parse.urlsplit(url or "")
        except ValueError:
            return False
        host = (parts.hostname or "").lower()
        return parts.scheme in ("http", "https", "ws", "wss") and host not in self.LOCAL_HOSTS + (self.server.host,)

    # what the frontend's own code logs when such a request fails (1.27: "Error fetching file size:
    # TypeError: Failed to fetch" for a workflow's model URLs)
    FETCH_FAILURES = ("failed to fetch", "networkerror", "err_name_not_resolved", "err_internet_disconnected",
                      "err_connection_refused")

    def _is_frontend_fetch_failure(self, text, url):
        """A console error of the frontend's bundle (not our extension) about a failed fetch, logged
        while requests to other hosts failed."""
        low, where = text.lower(), (url or "").lower()
        return (any(f in low for f in self.FETCH_FAILURES) and "/assets/" in where and not self._is_pack(text + " " + url))

    def _is_offline_noise(self, text, url):
        """A request to another host that failed (offline): the frontend's, never this pack's."""
        if not self._is_external(url):
            return False
        return text == "" or text.startswith("Failed to load resource")

    def pack_errors(self, since=(0, 0, 0)):
        """Errors that come from this pack: its extension files, its routes or its messages."""
        return self.errors(since, pack_only=True)

    def _is_pack(self, text):
        low = text.lower()
        return self.server.extension_url.lower() in low or any(m in low for m in PACK_MARKERS)

    def warnings(self, since=(0, 0, 0)):
        return [m["text"] for m in self.console[since[0]:] if m["type"] == "warning"]

    # -- page helpers ----------------------------------------------------------------------
    def open(self, timeout_ms=90_000):
        self.page.goto(self.server.url + "/", wait_until="domcontentloaded", timeout=timeout_ms)
        self.page.wait_for_function(APP_READY_JS, timeout=timeout_ms)
        # the frontend loads its start-up workflow asynchronously: wait for it, then start empty
        self.page.wait_for_function("() => window.app.graph.nodes !== undefined", timeout=timeout_ms)
        self.close_dialogs()
        self.clear_graph()
        return self

    def extension_loaded(self, name):
        return self.page.evaluate("(n) => (window.app.extensions || []).some(e => e.name === n)", name)

    def close_dialogs(self):
        """Close PrimeVue dialogs the frontend may open (templates, missing nodes...)."""
        self.page.evaluate("""() => {
            for (const b of document.querySelectorAll('.p-dialog .p-dialog-close-button, .p-dialog-header-close'))
                b.click();
        }""")

    def clear_graph(self):
        self.page.evaluate("() => { window.app.graph.clear(); window.app.graph.setDirtyCanvas(true, true); }")

    def add_node(self, node_type, pos=(80, 80), size=None):
        """Create a node via LiteGraph and add it to the graph; returns its id."""
        return self.page.evaluate("""([type, pos, size]) => {
            const node = window.LiteGraph.createNode(type);
            if (!node) throw new Error('unknown node type ' + type);
            node.pos = pos;
            window.app.graph.add(node);
            if (size) node.setSize(size);
            window.app.graph.setDirtyCanvas(true, true);
            return node.id;
        }""", [node_type, list(pos), list(size) if size else None])

    def set_widget(self, node_id, name, value):
        """Change a widget as a user does (value, callback, onWidgetChanged) and redraw."""
        return self.page.evaluate("""([id, name, value]) => {
            const node = window.app.graph.getNodeById(id);
            const w = node.widgets.find(w => w.name === name);
            if (!w) throw new Error('no widget ' + name + ' on node ' + id);
            if (typeof w.setValue === 'function') w.setValue(value, {node, canvas: window.app.canvas});
            else { w.value = value; w.callback?.(value, window.app.canvas, node); }
            window.app.graph.setDirtyCanvas(true, true);
            return w.value;
        }""", [node_id, name, value])

    def fit_view(self):
        self.page.evaluate("""() => {
            const c = window.app.canvas;
            if (window.app.graph.nodes.length) {
                const b = [Infinity, Infinity, -Infinity, -Infinity];
                for (const n of window.app.graph.nodes) {
                    const r = n.boundingRect;
                    b[0] = Math.min(b[0], r[0]); b[1] = Math.min(b[1], r[1]);
                    b[2] = Math.max(b[2], r[0] + r[2]); b[3] = Math.max(b[3], r[1] + r[3]);
                }
                c.ds.fitToBounds([b[0], b[1], b[2] - b[0], b[3] - b[1]], {zoom: 0.9});
            }
            c.setDirty(true, true);
        }""")

    def screenshot(self, name, clip=None):
        """Save a PNG as test-artifacts/<name>.png (name sanitised; ``clip`` = page region); returns the path."""
        os.makedirs(ARTIFACTS_DIR, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "screenshot"
        path = os.path.join(ARTIFACTS_DIR, safe + ".png")
        # two animation frames: the canvas has drawn what the last evaluate() changed
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        self.page.screenshot(path=path, clip=clip)
        return path

    _RECT_JS = """(node, wname) => {
            if (!wname) return node.boundingRect;
            const wd = node.widgets.find(v => v.name === wname);
            if (!wd) throw new Error('no widget ' + wname);
            return [node.pos[0], node.pos[1] + wd.y, node.size[0],
                    wd.computedHeight ?? window.LiteGraph.NODE_WIDGET_HEIGHT];
        }"""

    def node_rect(self, node_id, widget=None, margin=10):
        """Page rectangle (CSS px, a playwright ``clip``) of a node, title included, or of one of its
        widgets (``widget`` = its name), cut to the viewport."""
        r = self.page.evaluate("""([id, wname, m]) => {
            const rectOf = %s;
            const c = window.app.canvas, node = window.app.graph.getNodeById(id);
            const [x, y, w, h] = rectOf(node, wname);
            const box = c.canvas.getBoundingClientRect();
            const dpr = c.canvas.width / box.width, s = c.ds.scale;
            const [sx, sy] = c.ds.convertOffsetToCanvas([x, y]);
            return {x: box.left + sx / dpr - m, y: box.top + sy / dpr - m,
                    width: w * s / dpr + 2 * m, height: h * s / dpr + 2 * m};
        }""" % self._RECT_JS, [node_id, widget, margin])
        vw, vh = self.page.viewport_size["width"], self.page.viewport_size["height"]
        x, y = max(0.0, r["x"]), max(0.0, r["y"])
        return {"x": x, "y": y, "width": max(1.0, min(vw - x, r["width"] - (x - r["x"]))),
                "height": max(1.0, min(vh - y, r["height"] - (y - r["y"])))}

    def show_node(self, node_id, scale=None, widget=None, margin=120):
        """Pan/zoom so that the node (or its widget ``widget``) sits at the top left of the canvas,
        fully visible (``scale`` None: as large as fits, at most 2), ``margin`` px clear of the
        frontend's bars (1.45 draws its sidebar and breadcrumb over the canvas)."""
        self.page.evaluate("""([id, s, wname, m]) => {
            const rectOf = %s;
            const c = window.app.canvas, node = window.app.graph.getNodeById(id);
            const [x, y, w, h] = rectOf(node, wname);
            const box = c.canvas.getBoundingClientRect();
            const dpr = c.canvas.width / box.width;
            if (!s) s = Math.min(2, (box.width - 2 * m) / w, (box.height - 2 * m) / h);
            c.ds.scale = s;
            c.ds.offset = [m * dpr / s - x, m * dpr / s - y];
            c.setDirty(true, true);
        }""" % self._RECT_JS, [node_id, scale, widget, margin])

    def screenshot_node(self, node_id, name, scale=None, widget=None):
        """PNG of one node (or one of its widgets) under test-artifacts/; returns the path."""
        self.show_node(node_id, scale, widget)
        self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        return self.screenshot(name, clip=self.node_rect(node_id, widget))

    def close(self):
        self.context.close()


def load_workflow_in_frontend(page, path, screenshot_name=None, settle_ms=500, fit=True):
    """Load a UI-format workflow file into the frontend as a user would (``app.loadGraphData``).

    ``page`` is a :class:`FrontendPage` (open).  Returns a dict:

    * ``missing_nodes``: sorted node types of the workflow (incl. subgraph definitions) that the
      frontend does not know (what ComfyUI's "missing nodes" dialog would list);
    * ``errors``: console errors, page errors and failed requests during the load, plus a failure to
      build the API prompt from the loaded graph (``app.graphToPrompt``);
    * ``pack_errors``: the subset of ``errors`` coming from this pack;
    * ``screenshot``: PNG path under test-artifacts/;
    * ``node_count``: nodes in the loaded graph.

    ``fit``: fit the view to the graph before the screenshot (False: keep the view the workflow
    was saved with, as the frontend restores it).
    """
    with open(path, "r", encoding="utf-8") as f:
        workflow = json.load(f)
    if not isinstance(workflow, dict) or "nodes" not in workflow:
        raise ValueError(f"{path}: not a UI-format workflow (no 'nodes'); API-format prompts go to /prompt")
    since = page.mark()
    result = page.page.evaluate("""async ([wf, name]) => {
        const known = window.LiteGraph.registered_node_types;
        const subgraphIds = new Set(((wf.definitions || {}).subgraphs || []).map(s => s.id));
        const missing = new Set();
        const scan = (nodes) => { for (const n of nodes || [])
            if (!(n.type in known) && !subgraphIds.has(n.type)) missing.add(n.type); };
        scan(wf.nodes);
        for (const sg of ((wf.definitions || {}).subgraphs || [])) scan(sg.nodes);
        let loadError = null, promptError = null;
        try {
            await window.app.loadGraphData(wf, true, true, name,
                {showMissingNodesDialog: false, showMissingModelsDialog: false});
        } catch (e) { loadError = String(e && e.stack || e); }
        if (!loadError) {
            try { await window.app.graphToPrompt(); }
            catch (e) { promptError = String(e && e.stack || e); }
        }
        return {missing: [...missing].sort(), loadError, promptError,
                nodeCount: window.app.graph.nodes.length};
    }""", [workflow, os.path.basename(path)])
    page.page.wait_for_timeout(settle_ms)   # let async draws/fetches of extensions run and log
    page.close_dialogs()
    if fit:
        page.fit_view()
    shot = page.screenshot(screenshot_name or ("workflow_" + os.path.splitext(os.path.basename(path))[0]))
    errors = page.errors(since)
    if result["loadError"]:
        errors.append("loadGraphData raised: " + result["loadError"])
    if result["promptError"]:
        errors.append("graphToPrompt raised: " + result["promptError"])
    return {
        "missing_nodes": result["missing"],
        "errors": errors,
        "pack_errors": [e for e in errors if page._is_pack(e)],
        "screenshot": shot,
        "node_count": result["nodeCount"],
    }


@pytest.fixture(scope="session")
def chromium():
    """A launched headless Chromium (:class:`BrowserSession`) for the whole session."""
    require_browser()
    try:
        session = BrowserSession()
    except Exception as e:  # noqa: BLE001
        msg = f"could not launch Chromium ({find_chromium()}): {e}"
        if _require_browser():
            pytest.fail(msg)
        pytest.skip("BROWSER TESTS SKIPPED: " + msg)
    yield session
    session.close()


@pytest.fixture
def frontend(comfy_server, chromium):
    """The ComfyUI frontend in a fresh browser context, graph cleared."""
    fp = FrontendPage(chromium, comfy_server)
    try:
        fp.open()
        yield fp
    finally:
        fp.close()


WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def widget_inputs(node_def):
    """``(name, kind, options)`` of a node type's widget inputs (/object_info definition), in the order
    the frontend lays them out and saves their ``widgets_values`` (sockets skipped; a seed's
    ``control_after_generate`` companion follows its input there: see ``options``)."""
    order = node_def.get("input_order") or {k: list(v) for k, v in node_def["input"].items()}
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = node_def["input"][section][name]
            kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(kind, list) or kind in WIDGET_KINDS:
                yield name, kind, opts
