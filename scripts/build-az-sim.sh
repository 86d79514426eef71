#!/usr/bin/env bash
# Builds the simulator's native client (scripts/azsim/client.c -> scripts/.build/az-sim)
# unless it is up to date. Without a C compiler scripts/az-sim runs the Python client:
# the same calls and answers, ~10-25 ms more CPU each. Run by venv.sh and bench.sh.
set -euo pipefail
scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src="$scripts/azsim/client.c" out="$scripts/.build/az-sim"
build() {
  mkdir -p "$scripts/.build" && "$cc" -O2 -Wall -Wextra -o "$out.tmp.$$" "$src" &&
    mv "$out.tmp.$$" "$out"
}
if [ ! -x "$out" ] || [ "$src" -nt "$out" ]; then
  if ! cc="$(command -v cc || command -v gcc)"; then
    echo "No C compiler: scripts/az-sim uses its Python client (slower, same answers)." >&2
  elif ! build; then  # best effort: a failed build leaves the Python client, never a failure
    rm -f "$out.tmp.$$" 2>/dev/null || true
    echo "Could not build $out: scripts/az-sim uses its Python client." >&2
  fi
fi
