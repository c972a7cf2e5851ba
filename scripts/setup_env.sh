#!/usr/bin/env bash
# Prepare a ComfyUI host + this pack's dependencies (idempotent; a re-run takes about a second).
# Source it:  source scripts/setup_env.sh   -> exports COMFYUI_PATH, COMFYUI_PYTHON, MUSEV_PY
#
#  * ComfyUI: $COMFYUI_PATH if it holds a ComfyUI tree, else the pack's enclosing ComfyUI tree
#    (custom_nodes/<pack>), else an offline snapshot via ../shared/tools/comfyui-env.sh:
#    COMFYUI_SNAPSHOT_ID=66655153 (ComfyUI 0.28.0, the default) or a125cd84 (0.3.64, the oldest
#    supported).
#  * Python: a venv (MUSEV_VENV overrides; default .venv for the default snapshot, .venv-<ID> for
#    another) with ComfyUI's requirements, ours and the test tools (pytest, playwright as a driver
#    for the system Chromium).
#  * Chromium: Debian's `chromium` package (installed with apt-get when missing and we are root).
#  * MUSEV_DEMO=1 (scripts/demo.sh): with a ComfyUI tree found (COMFYUI_PATH or custom_nodes/<pack>),
#    ComfyUI's own Python is used (COMFYUI_PYTHON, its venv/ or .venv/, python_embeded, the active
#    venv, python3 on PATH: the first that imports torch and ComfyUI's packages) and only the
#    pack's requirements.txt is installed into it, when something is missing; no second venv.
#    Without one, the venv above is built with the pack's runtime requirements only.

_musev_has() {   # $1 = python, then module names: are they all installed? (found, not imported: fast)
  "$1" - "${@:2}" >/dev/null 2>&1 <<'PY'
import importlib.util, sys
sys.exit(any(importlib.util.find_spec(m) is None for m in sys.argv[1:]))
PY
}

_musev_host_python() {   # $1 = pack dir; exports COMFYUI_PYTHON and MUSEV_PY on success
  local c py="" log
  for c in "${COMFYUI_PYTHON:-}" "$COMFYUI_PATH/venv/bin/python" "$COMFYUI_PATH/.venv/bin/python" \
           "$COMFYUI_PATH/../python_embeded/python.exe" "$COMFYUI_PATH/../python_embeded/python" \
           "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" "$(command -v python3 || true)" "$(command -v python || true)"; do
    [ -n "$c" ] && [ -x "$c" ] || continue
    if _musev_has "$c" torch aiohttp yaml safetensors PIL av; then py=$c; break; fi
  done
  [ -n "$py" ] || return 1
  echo "[musev] Python: ComfyUI's own, $py" >&2
  if ! _musev_has "$py" einops safetensors transformers cv2 controlnet_aux matplotlib; then
    log="$1/.cache/pip-requirements.log"
    mkdir -p "$1/.cache"
    echo "[musev] installing the pack's requirements.txt into it (log: $log)" >&2
    "$py" -m pip install -r "$1/requirements.txt" >"$log" 2>&1 || { tail -20 "$log" >&2; return 2; }
  fi
  export COMFYUI_PYTHON="$py" MUSEV_PY="$py"
  return 0
}

_musev_share_venv() {   # $1 = pack dir, $2 = venv about to be built for a second snapshot
  # The torch pair is a CUDA build of about 6 GB; a second full copy for the 0.3.64 host filled CI's disk.
  # A new venv for another snapshot therefore sees the default venv's packages through a .pth file (after
  # its own site-packages, so whatever the second ComfyUI pins differently is installed into it and wins;
  # pip never uninstalls outside its own venv).  MUSEV_SHARE_VENV=0: a full, separate venv.
  local pack=$1 venv=$2 base="${MUSEV_VENV_DEFAULT:-$1/.venv}" site
  [ "${MUSEV_SHARE_VENV:-1}" != 0 ] || return 0
  [ "$COMFYUI_SNAPSHOT_ID" != 66655153 ] || return 0
  [ ! -e "$venv" ] || return 0
  [ -x "$base/bin/python" ] || return 0
  site=$("$base/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 0
  "$base/bin/python" -c 'import torch' >/dev/null 2>&1 || return 0
  "${COMFYUI_ENV_PYTHON:-python3}" -m venv "$venv" || return 0
  if [ "$("$venv/bin/python" -c 'import sys; print(sys.version_info[:2])')" != \
       "$("$base/bin/python" -c 'import sys; print(sys.version_info[:2])')" ]; then
    return 0   # another Python: nothing to share
  fi
  echo "$site" > "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/musev-shared-venv.pth"
  echo "[musev] $venv shares the packages of $base (torch & co.); its own pins install on top" >&2
}

_musev_setup() {
  local pack venv tools stamp want
  pack="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  export COMFYUI_SNAPSHOT_ID="${COMFYUI_SNAPSHOT_ID:-66655153}"
  if [ "$COMFYUI_SNAPSHOT_ID" = 66655153 ]; then venv="${MUSEV_VENV:-$pack/.venv}"; else venv="${MUSEV_VENV:-$pack/.venv-$COMFYUI_SNAPSHOT_ID}"; fi
  tools="$pack/../shared/tools/comfyui-env.sh"
  if [ -z "${COMFYUI_PATH:-}" ] && [ -f "$pack/../../nodes.py" ] && [ "$(basename "$(dirname "$pack")")" = custom_nodes ]; then
    export COMFYUI_PATH="$(cd "$pack/../.." && pwd)"
  fi
  if [ "${MUSEV_DEMO:-0}" = 1 ] && [ -n "${COMFYUI_PATH:-}" ] && [ -f "$COMFYUI_PATH/nodes.py" ]; then
    _musev_host_python "$pack"
    case $? in
      0) return 0 ;;
      2) return 1 ;;
    esac
    echo "[musev] no Python with ComfyUI's packages found for $COMFYUI_PATH (set COMFYUI_PYTHON=...): using $venv" >&2
  fi
  if [ -f "$tools" ]; then
    _musev_share_venv "$pack" "$venv"
    # shellcheck disable=SC1090
    source "$tools" --venv "$venv" || return 1
  elif [ -n "${COMFYUI_PATH:-}" ] && [ -f "$COMFYUI_PATH/nodes.py" ]; then
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || return 1
    "$venv/bin/python" -m pip install -q -r "$COMFYUI_PATH/requirements.txt" || return 1
    export COMFYUI_PYTHON="$venv/bin/python"
  else
    echo "setup_env: no ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout (or place shared/ beside this checkout)" >&2
    return 1
  fi
  export MUSEV_PY="$COMFYUI_PYTHON"
  stamp="$venv/.musev-deps"
  local reqs=(-r "$pack/requirements.txt" -r "$pack/tests/requirements.txt") what="pack + test" log
  if [ "${MUSEV_DEMO:-0}" = 1 ]; then reqs=(-r "$pack/requirements.txt"); what="pack"; stamp="$venv/.musev-deps-demo"; fi
  want="$(cat "$pack/requirements.txt" "$pack/tests/requirements.txt" | sha256sum | cut -c1-16)"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log="$venv/.musev-pip.log"
    echo "[musev] installing $what requirements into $venv (log: $log)" >&2
    "$MUSEV_PY" -m pip install -q "${reqs[@]}" >"$log" 2>&1 || { tail -20 "$log" >&2; return 1; }
    echo "$want" > "$stamp"
  fi
  if ! command -v chromium >/dev/null 2>&1 && [ "${MUSEV_NO_BROWSER:-0}" != 1 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "[musev] installing Debian chromium for the frontend tests" >&2
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
        || echo "[musev] could not install chromium: browser tests will skip" >&2
    else
      echo "[musev] chromium not found (install Debian's 'chromium'): browser tests will skip" >&2
    fi
  fi
  return 0
}
_musev_setup
