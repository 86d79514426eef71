#!/usr/bin/env bash
# Runs the fleet benchmark (bench/fleet.py) in its own venv, bench/.venv, made on first use
# from requirements.txt + bench/requirements.txt (the plots need matplotlib, the tool does not).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/bench/.venv"
stamp="$venv/.requirements.sha256"
want="$(cat "$repo/requirements.txt" "$repo/bench/requirements.txt" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Setting up $venv (one time) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$repo/requirements.txt" -r "$repo/bench/requirements.txt"
  echo "$want" > "$stamp"
fi
"$repo/scripts/build-az-sim.sh"
exec "$venv/bin/python" "$repo/bench/fleet.py" "$@"
