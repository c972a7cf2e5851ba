#!/usr/bin/env bash
# One command: install what the tests need and run them all.   bash scripts/test.sh [pytest args]
#
# With the offline ComfyUI snapshots of ../shared (CI, development): the whole suite on ComfyUI
# 0.28.0 (what users run), then the host tier (tests/host) again on ComfyUI 0.3.64 (the oldest
# supported), each in its own venv.  With COMFYUI_PATH set (or the pack inside a ComfyUI tree's
# custom_nodes/), the whole suite runs once, on that ComfyUI.  MUSEV_HOSTS=default runs only the
# first host.  Ends with one line per host: its ComfyUI version and pass/skip/fail counts.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
pack=$(pwd)
own_host=0
if [ -n "${COMFYUI_PATH:-}" ] || { [ -f ../../nodes.py ] && [ "$(basename "$(dirname "$pack")")" = custom_nodes ]; }; then
  own_host=1
fi
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
export MUSEV_SUMMARY_FILE="$summary"
status=0

run_host() {   # $1 = snapshot id ("" = whatever setup_env finds), then pytest args
  local snap=$1; shift
  (
    if [ -n "$snap" ]; then export COMFYUI_SNAPSHOT_ID=$snap; unset COMFYUI_PATH; fi
    # shellcheck disable=SC1091
    source scripts/setup_env.sh || exit 3
    echo "[musev] === tests on ComfyUI $("$MUSEV_PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); import comfyui_version; print(comfyui_version.__version__)' "$COMFYUI_PATH" 2>/dev/null || echo '?') ($COMFYUI_PATH) ==="
    "$MUSEV_PY" -m pytest "$@"
  )
}

if [ "$own_host" = 1 ]; then
  run_host "" tests "$@" || status=$?
else
  run_host 66655153 tests "$@" || status=$?
  if [ "${MUSEV_HOSTS:-all}" != default ]; then
    run_host a125cd84 tests/host "$@" || status=$?
  fi
fi
echo "[musev] ================= summary ================="
cat "$summary"
exit $status
