#!/usr/bin/env bash
# Image -> MuseV video through ComfyUI, in one command:
#
#   bash scripts/demo.sh --models DIR      # MuseV's released files, as downloaded
#   bash scripts/demo.sh                   # tiny random stand-ins: proves the install, the video is noise
#
# DIR is a ComfyUI models folder with MuseV's Hugging Face repo cloned into DIR/musev/ (e.g.
# ComfyUI/models), or the clone itself.  Missing files are listed (what, where it goes, where to
# get it) before anything is installed, and the demo exits with code 3.  Inside
# ComfyUI/custom_nodes/<pack> it runs on that ComfyUI with ComfyUI's own Python.
# All options and the list of files: bash scripts/demo.sh --help
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
pack=$(pwd)
t0=$(date +%s)
say() { echo "[musev-demo] $*"; }
took() { echo "$(( $(date +%s) - $1 )) s"; }

# 1. arguments and model files, with any Python (the check is plain Python), before any set-up
py0=$(command -v python3 || command -v python || true)
for arg in "$@"; do
  case "$arg" in -h|--help|--check-models) exec "${py0:-python3}" scripts/demo.py "$@" ;; esac
done
if [ -n "$py0" ]; then
  "$py0" scripts/demo.py --check-models "$@" || exit $?
fi

# 2. ComfyUI and a Python for it (ComfyUI's own when the pack sits in its custom_nodes/)
t=$(date +%s)
say "set-up: ComfyUI and its Python"
export MUSEV_DEMO=1 MUSEV_NO_BROWSER=1
# shellcheck disable=SC1091
if ! source scripts/setup_env.sh; then
  say "set-up failed (see the lines above)"
  exit 1
fi
say "    ComfyUI $COMFYUI_PATH, Python $MUSEV_PY ($(took "$t"))"

# 3. the run
"$MUSEV_PY" scripts/demo.py "$@"
rc=$?

# 4. where the space went
say "caches of this checkout (delete to reclaim; kept to make the next run fast):"
for d in "$pack/.venv" "$pack/.cache/standins" "$pack/.cache/demo" "$pack/demo-output"; do
  [ -e "$d" ] && say "    $(du -sh "$d" 2>/dev/null | cut -f1)	$d"
done
case "$COMFYUI_PATH" in
  "$pack"/*) ;;
  *) say "    (ComfyUI itself: $COMFYUI_PATH, read only: the demo writes into a temporary folder)" ;;
esac
say "set-up + run: $(took "$t0"), exit code $rc"
exit $rc
