#!/usr/bin/env bash
# Creates or refreshes ./.venv from requirements.txt, and the simulator's native client;
# sourced by demo.sh and test.sh. Re-installs only when requirements.txt changed since the
# last install.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$repo/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Setting up $venv (one time) ..." >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$repo/requirements.txt"
  echo "$want" > "$stamp"
fi
"$repo/scripts/build-az-sim.sh"
