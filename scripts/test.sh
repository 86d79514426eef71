#!/usr/bin/env bash
# Runs the whole test suite (and ruff) in the project's own virtual environment.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/venv.sh"
cd "$repo"
.venv/bin/ruff check .
exec .venv/bin/pytest "$@"
