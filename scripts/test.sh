#!/usr/bin/env bash
# One command: install what the tests need and run them all.   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source scripts/setup_env.sh
exec "$MUSEV_PY" -m pytest tests "$@"
