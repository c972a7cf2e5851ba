"""A real ComfyUI server in a subprocess, for tests that need HTTP or the frontend.

The server runs ComfyUI's own ``main.py`` (``--cpu``) from the host tree that
``conftest.find_comfyui_path`` finds, on a free port of 127.0.0.1, with a temporary
``--base-directory`` (models/, input/ -- with the small files the shipped workflows name --,
output/, temp/, user/, custom_nodes/) and its own sqlite
database, so nothing is written into the ComfyUI tree or the checkout.  The pack is linked into
``<base>/custom_nodes/comfyui-musev`` and loaded exactly as a user's install would load it.

Use the session fixture ``comfy_server`` (one server for the whole test session, ~5-10 s to start)
and the helpers::

    def test_x(comfy_server):
        entry = queue_and_wait(comfy_server, {"1": {...}, "2": {...}})   # /prompt + /history
        info = comfy_server.object_info("ParallelDenoiseSampler")
        status, body = comfy_server.get_json("/musev/windows?frames=24")

``ComfyServer`` can also be started by hand (``with ComfyServer(path) as srv: ...``).
Set ``MUSEV_KEEP_SERVER_DIR=1`` to keep the base directory (log, outputs) after the run.
"""
import atexit
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
PACK_DIR = os.path.dirname(TESTS_DIR)
PACK_LINK_NAME = "comfyui-musev"   # the folder name ComfyUI sees (and serves web/ under /extensions/<name>/)

# Frontend settings for a fresh user: no template browser on first start, no update checks.
DEFAULT_FRONTEND_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Notification.ShowVersionUpdates": False,
    "Comfy.Minimap.Visible": False,   # it would cover part of the graph in screenshots
}


class ServerError(RuntimeError):
    """The server did not start, died, or answered something unexpected."""


class PromptRejected(AssertionError):
    """/prompt answered 400: ``body`` holds ComfyUI's ``error`` and ``node_errors``."""

    def __init__(self, status, body):
        super().__init__(f"/prompt rejected the prompt (HTTP {status}): {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body


class PromptFailed(AssertionError):
    """The prompt ran and ended with an error (``entry`` is its /history entry)."""

    def __init__(self, prompt_id, entry):
        msgs = (entry.get("status") or {}).get("messages") or []
        errs = [m[1] for m in msgs if m and m[0] in ("execution_error", "execution_interrupted")]
        super().__init__(f"prompt {prompt_id} failed: {json.dumps(errs)[:3000]}")
        self.prompt_id = prompt_id
        self.entry = entry


def _libc_prctl():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        return ctypes.CDLL(None).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()   # looked up before any fork: the child only calls it


def _die_with_parent():
    """preexec_fn (Linux): SIGTERM the server when the test process dies, even by SIGKILL."""
    _PRCTL(1, 15)   # PR_SET_PDEATHSIG, SIGTERM


_RUNNING = set()


@atexit.register
def _stop_all():
    for srv in list(_RUNNING):
        srv.stop()


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ComfyServer:
    """Start/stop ``ComfyUI/main.py`` in a subprocess and talk to it over HTTP."""

    def __init__(self, comfy_path, python=None, pack_dir=PACK_DIR, pack_name=PACK_LINK_NAME,
                 extra_args=(), settings=None, base_dir=None):
        self.comfy_path = comfy_path
        self.python = python or sys.executable
        self.pack_dir = pack_dir
        self.pack_name = pack_name
        self.extra_args = list(extra_args)
        self.settings = dict(DEFAULT_FRONTEND_SETTINGS if settings is None else settings)
        self._own_base = base_dir is None
        self.base_dir = base_dir
        self.host = "127.0.0.1"
        self.port = None
        self.proc = None
        self._log_file = None

    # ----------------------------------------------------------------------------- lifecycle
    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self):
        return os.path.join(self.base_dir, "comfyui.log")

    @property
    def output_dir(self):
        return os.path.join(self.base_dir, "output")

    @property
    def input_dir(self):
        return os.path.join(self.base_dir, "input")

    @property
    def extension_url(self):
        """Where ComfyUI serves the pack's web/ folder."""
        return f"/extensions/{urllib.parse.quote(self.pack_name)}/"

    def _prepare_base(self):
        if self.base_dir is None:
            self.base_dir = tempfile.mkdtemp(prefix="musev-comfy-server-")
        for sub in ("custom_nodes", "user/default", "input", "output", "models"):
            os.makedirs(os.path.join(self.base_dir, sub), exist_ok=True)
        link = os.path.join(self.base_dir, "custom_nodes", self.pack_name)
        if not os.path.lexists(link):
            try:
                os.symlink(self.pack_dir, link, target_is_directory=True)
            except OSError:   # no symlinks (Windows without rights): ComfyUI then loads a copy
                shutil.copytree(self.pack_dir, link, ignore=shutil.ignore_patterns(
                    ".git", ".venv", "test-artifacts", "__pycache__"))
        # like a fresh install's input/ (ComfyUI ships input/example.png): the files the shipped
        # workflows name, else the frontend's previews of a loaded workflow answer 404
        from workflow_inputs import write_workflow_inputs
        write_workflow_inputs(os.path.join(self.base_dir, "input"), overwrite=False)
        settings_path = os.path.join(self.base_dir, "user", "default", "comfy.settings.json")
        if self.settings and not os.path.exists(settings_path):
            with open(settings_path, "w", encoding="utf-8") as f:
                json.dump(self.settings, f)

    def start(self, timeout=180):
        """Start the server and wait until it answers /system_stats (raises ServerError)."""
        if self.proc is not None:
            return self
        self._prepare_base()
        last_error = None
        for _attempt in range(3):   # a port taken between free_port() and bind: try another one
            self.port = free_port(self.host)
            db = os.path.join(self.base_dir, "user", "comfyui.db")
            cmd = [self.python, os.path.join(self.comfy_path, "main.py"), "--cpu",
                   "--listen", self.host, "--port", str(self.port),
                   "--base-directory", self.base_dir, "--database-url", "sqlite:///" + db,
                   ] + self.extra_args
            env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
            self._log_file = open(self.log_path, "ab")
            self.proc = subprocess.Popen(cmd, cwd=self.base_dir, env=env, stdin=subprocess.DEVNULL,
                                         stdout=self._log_file, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent if _PRCTL is not None else None)
            _RUNNING.add(self)
            try:
                self._wait_ready(timeout)
                return self
            except ServerError as e:
                last_error = e
                self._terminate()
                if "address already in use" not in self.log_tail(4000).lower():
                    break
        raise last_error

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ServerError(f"ComfyUI exited with code {self.proc.returncode} during start-up; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/system_stats", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"ComfyUI did not answer on {self.url} within {timeout} s; "
                                  f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.2)

    def _terminate(self):
        _RUNNING.discard(self)
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=15)
            self.proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def stop(self, keep_dir=None):
        self._terminate()
        if keep_dir is None:
            keep_dir = os.environ.get("MUSEV_KEEP_SERVER_DIR", "") not in ("", "0")
        if self._own_base and not keep_dir and self.base_dir and os.path.isdir(self.base_dir):
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, n_chars=6000):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - n_chars))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    # ----------------------------------------------------------------------------- HTTP
    def request(self, method, path, data=None, timeout=30):
        """-> (status, body bytes, headers).  HTTP errors are returned, not raised."""
        body = None
        headers = {}
        if data is not None:
            body = json.dumps(data).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers or {})
        except (urllib.error.URLError, ConnectionError) as e:
            raise ServerError(f"{method} {path}: {e}; server alive={self.alive()}; log:\n{self.log_tail(3000)}")

    def get_json(self, path, timeout=30):
        status, raw, _ = self.request("GET", path, timeout=timeout)
        return status, _loads(raw, path)

    def post_json(self, path, data, timeout=30):
        status, raw, _ = self.request("POST", path, data=data, timeout=timeout)
        return status, (_loads(raw, path) if raw else None)

    def object_info(self, node_class=None):
        path = "/object_info" + (f"/{urllib.parse.quote(node_class)}" if node_class else "")
        status, body = self.get_json(path, timeout=60)
        if status != 200:
            raise ServerError(f"GET {path} -> {status}")
        return body[node_class] if node_class else body

    def queue_prompt(self, prompt, client_id=None, prompt_id=None, extra_data=None):
        """POST /prompt; returns ``{"prompt_id", "number", "node_errors"}`` or raises PromptRejected."""
        payload = {"prompt": prompt, "client_id": client_id or "musev-tests"}
        if prompt_id:
            payload["prompt_id"] = prompt_id
        if extra_data:
            payload["extra_data"] = extra_data
        status, body = self.post_json("/prompt", payload)
        if status != 200:
            raise PromptRejected(status, body)
        return body

    def history(self, prompt_id):
        """The /history entry of a prompt, or None while it is not finished."""
        status, body = self.get_json(f"/history/{urllib.parse.quote(prompt_id)}")
        if status != 200:
            raise ServerError(f"GET /history/{prompt_id} -> {status}")
        return body.get(prompt_id)

    def wait_history(self, prompt_id, timeout=300, poll=0.1):
        deadline = time.monotonic() + timeout
        while True:
            try:
                entry = self.history(prompt_id)
            except TimeoutError:        # a busy server (a run hogging the CPU) may answer late: ask again
                entry = None
            if entry is not None and (entry.get("status") or {}).get("completed") is not None:
                return entry
            if not self.alive():
                raise ServerError(f"ComfyUI died while running {prompt_id}; log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServerError(f"prompt {prompt_id} not finished after {timeout} s; queue: "
                                  f"{self.get_json('/queue')[1]}")
            time.sleep(poll)

    def interrupt(self, prompt_id=None):
        status, _ = self.post_json("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
        return status

    def queue(self):
        return self.get_json("/queue")[1]

    def standins(self):
        """The stand-in model files (tests/standins.py) linked into this server's models folder
        (generated once, cached); needs ComfyUI importable in the test process (``comfy_host``)."""
        if getattr(self, "_standins", None) is None:
            from standins import make_standins
            self._prepare_base()
            self._standins = make_standins(os.path.join(self.base_dir, "models"))
        return self._standins

    def output_path(self, file_info):
        """Absolute path of an output image/video entry (``{"filename", "subfolder", "type"}``)."""
        kind = file_info.get("type", "output")
        root = {"output": self.output_dir, "input": self.input_dir,
                "temp": os.path.join(self.base_dir, "temp")}[kind]
        return os.path.join(root, file_info.get("subfolder", ""), file_info["filename"])


def _loads(raw, path):
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise ServerError(f"{path}: not JSON: {raw[:300]!r}") from None


def queue_and_wait(server, prompt, timeout=300, expect_success=True, prompt_id=None, client_id=None):
    """Queue an API-format prompt on /prompt and wait for its /history entry.

    Returns the history entry (``{"prompt", "outputs", "status", "meta"}``).  Raises PromptRejected
    when /prompt refuses it (validation errors) and, with ``expect_success``, PromptFailed when
    it ran into an error."""
    prompt_id = prompt_id or str(uuid.uuid4())
    server.queue_prompt(prompt, client_id=client_id, prompt_id=prompt_id)
    entry = server.wait_history(prompt_id, timeout=timeout)
    if expect_success and (entry.get("status") or {}).get("status_str") != "success":
        raise PromptFailed(prompt_id, entry)
    return entry


def start_session_server():
    """Start the shared server (pytest: skip or fail when no ComfyUI tree is found)."""
    import conftest
    path = conftest.find_comfyui_path()
    if path is None:
        msg = ("ComfyUI server tests SKIPPED: no ComfyUI tree (set COMFYUI_PATH, or install the pack in "
               "ComfyUI/custom_nodes/); run `bash scripts/test.sh` to get one")
        if conftest._require_host():
            pytest.fail(msg.replace("SKIPPED", "REQUIRED (MUSEV_REQUIRE_HOST=1) but missing"))
        conftest._HOST_SKIP_NOTE.append(msg)
        pytest.skip(msg)
    srv = ComfyServer(path)
    try:
        srv.start()
    except ServerError as e:
        srv.stop(keep_dir=True)
        pytest.fail(f"could not start the ComfyUI server: {e}")
    return srv


@pytest.fixture(scope="session")
def comfy_server():
    """One real ComfyUI server (subprocess) for the whole test session."""
    srv = start_session_server()
    yield srv
    srv.stop()
