#!/usr/bin/env bash
# One command: install what is needed and run the main job (image -> MuseV video through ComfyUI).
#   bash scripts/demo.sh [--image PATH] [--models DIR] [--frames N]   (see scripts/demo.py --help)
set -euo pipefail
cd "$(dirname "$0")/.."
export MUSEV_NO_BROWSER=1
# shellcheck disable=SC1091
source scripts/setup_env.sh
exec "$MUSEV_PY" scripts/demo.py "$@"
