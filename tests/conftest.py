"""Shared fixtures for the two test tiers.

Tier 1 (core): pure torch, imports only ``musev_core``; always runs.
Tier 2 (host): a real ComfyUI imported from ``COMFYUI_PATH`` or from the ComfyUI tree the pack
sits in (``custom_nodes/<pack>``).  Without one, host tests skip with one loud line, unless
``MUSEV_REQUIRE_HOST=1`` (set by CI), where a missing host is a failure.

The pack is never put on ``sys.path`` (its ``nodes`` package would hide ComfyUI's ``nodes.py``):
it is imported under the module name ComfyUI itself gives it, so core tests and host tests share
one copy of every module.
"""
import asyncio
import atexit
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile

import pytest

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# nodes.load_custom_node names a directory pack after its path with "." replaced.
PACK_MODULE = PACK_DIR.replace(".", "_x_")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
ARTIFACTS_DIR = os.path.join(PACK_DIR, "test-artifacts")

_HOST_SKIP_NOTE = []


def _require_host():
    return os.environ.get("MUSEV_REQUIRE_HOST", "") not in ("", "0", "false", "no")


def find_comfyui_path():
    """COMFYUI_PATH if it holds a ComfyUI tree, else the tree the pack is installed in."""
    cand = os.environ.get("COMFYUI_PATH", "")
    if cand and os.path.isfile(os.path.join(cand, "nodes.py")):
        return os.path.abspath(cand)
    parent = os.path.dirname(PACK_DIR)
    if os.path.basename(parent) == "custom_nodes":
        tree = os.path.dirname(parent)
        if os.path.isfile(os.path.join(tree, "nodes.py")) and os.path.isdir(os.path.join(tree, "comfy")):
            return tree
    return None


def _bare_pack_package():
    """Register the pack as a package without running its __init__ (which needs ComfyUI)."""
    if PACK_MODULE in sys.modules:
        return sys.modules[PACK_MODULE]
    spec = importlib.util.spec_from_file_location(
        PACK_MODULE, os.path.join(PACK_DIR, "__init__.py"), submodule_search_locations=[PACK_DIR])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_MODULE] = module
    return module


def pack_module(name):
    """Import ``<pack>.<name>`` (e.g. ``musev_core.windows``) as the pack's own module."""
    _bare_pack_package()
    return importlib.import_module(f"{PACK_MODULE}.{name}")


@pytest.fixture(scope="session")
def core():
    """The pack's ``musev_core`` package (pure torch)."""
    return pack_module("musev_core")


def parity_root():
    return os.environ.get("MUSEV_PARITY_FIXTURES") or os.path.join(
        os.path.dirname(PACK_DIR), "shared", "fixtures", "musev_parity")


@pytest.fixture(scope="session")
def parity_dir():
    """The parity fixture folder; a missing folder is a failure, never a skip."""
    root = parity_root()
    if not os.path.isfile(os.path.join(root, "manifest.json")):
        pytest.fail(f"parity fixtures not found at {root!r}: set MUSEV_PARITY_FIXTURES to a fixture "
                    "folder (one with manifest.json) or place shared/ beside the checkout")
    return root


@pytest.fixture(scope="session")
def comfy_host():
    """Import the real ComfyUI once per session, configured for CPU and a temp base directory."""
    path = find_comfyui_path()
    if path is None:
        msg = ("ComfyUI host tests SKIPPED: no ComfyUI tree (set COMFYUI_PATH, or install the pack in "
               "ComfyUI/custom_nodes/); run `bash scripts/test.sh` to get one")
        if _require_host():
            pytest.fail(msg.replace("SKIPPED", "REQUIRED (MUSEV_REQUIRE_HOST=1) but missing"))
        _HOST_SKIP_NOTE.append(msg)
        pytest.skip(msg)
    if path not in sys.path:
        sys.path.insert(0, path)
    from comfy.cli_args import args
    args.cpu = True
    args.base_directory = tempfile.mkdtemp(prefix="musev-comfy-")
    atexit.register(shutil.rmtree, args.base_directory, True)
    args.disable_all_custom_nodes = False
    import utils  # noqa: F401  (before nodes: nodes.py puts comfy/ first on sys.path)
    import folder_paths  # noqa: F401
    import nodes
    import execution  # noqa: F401
    import server
    import comfy.sd  # noqa: F401
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    srv = server.PromptServer(loop)
    loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    # Load the pack exactly as ComfyUI does.  If core tests already registered a bare package
    # under the same name, drop it so that __init__ really runs (submodules are shared).
    bare = sys.modules.get(PACK_MODULE)
    if bare is not None and not hasattr(bare, "NODE_CLASS_MAPPINGS"):
        del sys.modules[PACK_MODULE]
    ok = loop.run_until_complete(nodes.load_custom_node(PACK_DIR))
    assert ok, "the pack failed to import into ComfyUI (see the logged traceback)"
    return HostHandle(path, srv, loop)


class HostHandle:
    def __init__(self, path, server, loop):
        self.path = path
        self.server = server
        self.loop = loop

    def pack(self, name=""):
        mod = sys.modules[PACK_MODULE]
        return importlib.import_module(f"{PACK_MODULE}.{name}") if name else mod

    def run_prompt(self, prompt, prompt_id="test", expect_success=True):
        """Validate and execute an API-format prompt with ComfyUI's own executor."""
        import execution
        ok, err, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
        if not ok:
            if expect_success:
                raise AssertionError(f"prompt invalid: {err} {node_errors}")
            return None, {"validation": (err, node_errors)}
        ex = self.pack("nodes.compat").prompt_executor(self.server)
        ex.execute(prompt, prompt_id, {}, outputs)
        if expect_success:
            assert ex.success, ex.status_messages
        return ex.history_result.get("outputs", {}) if ex.success else None, ex


# Host features a test needs (``@pytest.mark.host_feature("multigpu")``): tests for a feature the
# host lacks are *deselected* at collection (not skipped), since the whole tier must run without
# skips on every supported host.  The ComfyUI tree's files tell whether it has the feature.
def _frontend_version(path):
    """The frontend package version the ComfyUI tree pins (requirements.txt), as a tuple."""
    try:
        with open(os.path.join(path, "requirements.txt")) as f:
            for line in f:
                if line.strip().startswith("comfyui-frontend-package=="):
                    return tuple(int(p) for p in line.split("==", 1)[1].strip().split(".")[:3])
    except (OSError, ValueError):
        pass
    return (0,)


HOST_FEATURES = {
    "multigpu": lambda path: os.path.isfile(os.path.join(path, "comfy", "multigpu.py")),
    # per-input "advanced" widgets: the 1.45 frontend (ComfyUI 0.28) has them, 1.27 (0.3.64) not
    "frontend_advanced_inputs": lambda path: _frontend_version(path) >= (1, 40),
    # core's If/Else switch with an any-typed output (links a STRING into a model dropdown): 0.28, not 0.3.64
    "any_type_switch": lambda path: _source_has(os.path.join(path, "comfy_extras", "nodes_logic.py"), "ComfySwitchNode"),
}


def _source_has(path, text):
    try:
        with open(path, encoding="utf-8") as f:
            return text in f.read()
    except OSError:
        return False


def pytest_configure(config):
    config.addinivalue_line("markers", "host_feature(name): needs a feature only some ComfyUI versions have")


def pytest_collection_modifyitems(config, items):
    path = find_comfyui_path()
    keep, drop = [], []
    for item in items:
        marker = item.get_closest_marker("host_feature")
        if marker is not None and path is not None and not HOST_FEATURES[marker.args[0]](path):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _host_version():
    path = find_comfyui_path()
    if path is None:
        return "no ComfyUI host"
    try:
        with open(os.path.join(path, "comfyui_version.py")) as f:
            text = f.read()
        version = text.split("__version__", 1)[1].split("=", 1)[1].strip().split()[0].strip("\"'")
    except (OSError, IndexError):
        version = "?"
    return f"ComfyUI {version}"


def pytest_terminal_summary(terminalreporter):
    stats = terminalreporter.stats
    counts = {k: len([r for r in stats.get(k, []) if getattr(r, "when", "call") in ("call", "setup")])
              for k in ("passed", "skipped", "failed", "error")}
    line = (f"[musev] {_host_version()}: {counts['passed']} passed, {counts['skipped']} skipped, "
            f"{counts['failed']} failed, {counts['error']} errors")
    terminalreporter.write_line(line, bold=True)
    summary_file = os.environ.get("MUSEV_SUMMARY_FILE")
    if summary_file:
        with open(summary_file, "a") as f:
            f.write(line + "\n")
    if _HOST_SKIP_NOTE:
        terminalreporter.write_line("!" * 100, red=True)
        for note in dict.fromkeys(_HOST_SKIP_NOTE):   # each distinct note once
            terminalreporter.write_line(note, red=True, bold=True)
        terminalreporter.write_line("!" * 100, red=True)


# Session fixtures of the real-server / browser harness (one ComfyUI subprocess and one Chromium per
# run, shared by every test file): ``comfy_server`` (tests/comfy_server.py), ``chromium`` and
# ``frontend`` (tests/browser.py).
from comfy_server import comfy_server  # noqa: E402,F401
from browser import chromium, frontend  # noqa: E402,F401


@pytest.fixture(scope="session")
def standins(comfy_host):
    """Stand-in model files (real formats, tiny/random) linked into the host's models folder."""
    import folder_paths
    from standins import make_standins
    return make_standins(folder_paths.models_dir)
