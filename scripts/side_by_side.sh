#!/usr/bin/env bash
# Side by side with the packs users already have (issue 11 §6): fetch AnimateDiff-Evolved,
# Advanced-ControlNet, IPAdapter_plus and VideoHelperSuite at pinned commits into a test-only
# custom_nodes folder OUTSIDE this repository (never copied into it), install their Python
# requirements into the host's venv, and run tests/host/test_side_by_side.py on each ComfyUI host.
# Needs GitHub (CI has none: there the test module skips, saying so).
#
#   bash scripts/side_by_side.sh              fetch what is missing, then test on 0.28.0 and 0.3.64
#   bash scripts/side_by_side.sh fetch        only fetch + install requirements
#   COMFYUI_PATH=/path/to/ComfyUI bash scripts/side_by_side.sh     one host: that ComfyUI
#
#   MUSEV_THIRDPARTY_ROOT   where the packs go (default ${TMPDIR:-/tmp}/musev-thirdparty); each host
#                           gets <root>/<ComfyUI version>/custom_nodes (the test's default folder)
#   MUSEV_THIRDPARTY_GIT    clone source template, {owner} and {name} replaced
#                           (default https://github.com/{owner}/{name}.git; a local mirror works too)
#
# Pins: the newest commit of each pack that imports and runs on the host.  Advanced-ControlNet and
# AnimateDiff-Evolved need ComfyUI >= 0.3.68 since 2026-03-29 (cast_bias_weight API): on older
# ComfyUI (0.3.64) their last commits before that are used.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
mode=${1:-test}
root=${MUSEV_THIRDPARTY_ROOT:-${TMPDIR:-/tmp}/musev-thirdparty}
git_tpl=${MUSEV_THIRDPARTY_GIT:-}
[ -n "$git_tpl" ] || git_tpl='https://github.com/{owner}/{name}.git'

pins_for() {   # $1 = ComfyUI version -> lines "owner/name commit"
  local newer
  newer=$(python3 -c 'import sys; v=[int(x) for x in sys.argv[1].split(".")[:3] if x.isdigit()]; print(int(v >= [0, 3, 68]))' "$1" 2>/dev/null || echo 1)
  if [ "$newer" = 1 ]; then
    echo "Kosinkadink/ComfyUI-AnimateDiff-Evolved d8d163cd90b1111f6227495e3467633676fbb346"
    echo "Kosinkadink/ComfyUI-Advanced-ControlNet 9e60d8a9c8016c5315063aa7af66b321a0444df7"
  else
    echo "Kosinkadink/ComfyUI-AnimateDiff-Evolved 90fb1331201a4b29488089e4fbffc0d82cc6d0a9"
    echo "Kosinkadink/ComfyUI-Advanced-ControlNet 2bde95a468ce5fd3959f646258606ae221fa1e17"
  fi
  echo "cubiq/ComfyUI_IPAdapter_plus 9d076a3df0d2763cef5510ec5ab807f6632c39f5"
  echo "Kosinkadink/ComfyUI-VideoHelperSuite 4ee72c065db22c9d96c2427954dc69e7b908444b"
}

fetch_pack() {   # $1 = owner/name, $2 = commit, $3 = custom_nodes dir
  local owner=${1%%/*} name=${1#*/} dest="$3/${1#*/}" url
  url=${git_tpl//\{owner\}/$owner}
  url=${url//\{name\}/$name}
  if [ "$(git -C "$dest" rev-parse HEAD 2>/dev/null)" = "$2" ]; then
    echo "[side-by-side] $name @ ${2:0:10}: present"
    return 0
  fi
  rm -rf "$dest"
  echo "[side-by-side] $name @ ${2:0:10}: fetching from $url"
  git init -q "$dest" && git -C "$dest" remote add origin "$url" &&
    { git -C "$dest" fetch -q --depth 1 origin "$2" 2>/dev/null || git -C "$dest" fetch -q origin; } &&
    git -C "$dest" -c advice.detachedHead=false checkout -q "$2" || { echo "[side-by-side] could not fetch $1 @ $2" >&2; return 1; }
}

host() {   # $1 = snapshot id or "" (COMFYUI_PATH / setup_env's choice)
  (
    if [ -n "$1" ]; then export COMFYUI_SNAPSHOT_ID=$1; unset COMFYUI_PATH; fi
    # shellcheck disable=SC1091
    source scripts/setup_env.sh || exit 3
    version=$("$MUSEV_PY" -c 'import sys; sys.path.insert(0, sys.argv[1]); import comfyui_version; print(comfyui_version.__version__)' "$COMFYUI_PATH")
    nodes="$root/$version/custom_nodes"
    mkdir -p "$nodes"
    echo "[side-by-side] === ComfyUI $version ($COMFYUI_PATH): packs in $nodes ==="
    while read -r repo commit; do
      fetch_pack "$repo" "$commit" "$nodes" || exit 4
      req="$nodes/${repo#*/}/requirements.txt"
      if [ -s "$req" ]; then "$MUSEV_PY" -m pip install -q -r "$req" || exit 5; fi
    done < <(pins_for "$version")
    [ "$mode" = fetch ] && exit 0
    MUSEV_THIRDPARTY_NODES="$nodes" "$MUSEV_PY" -m pytest tests/host/test_side_by_side.py -q -p no:cacheprovider
    rc=$?
    cat "test-artifacts/side_by_side_$version.md" 2>/dev/null
    exit $rc
  )
}

status=0
if [ -n "${COMFYUI_PATH:-}" ]; then
  host "" || status=$?
else
  host 66655153 || status=$?
  host a125cd84 || status=$?
fi
exit $status
