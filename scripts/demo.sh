#!/usr/bin/env bash
# The main job: a six-VM deployment against the Azure CLI simulator, with an embedded NATS
# server and two local workers; one VM fails once (no capacity in its zone) and recovers.
# Everything it writes goes to ./demo/. Azure is simulated: nothing here needs an account.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo/scripts/venv.sh"
cd "$repo"
work="$repo/demo"
rm -rf "$work" && mkdir -p "$work"
export PATH="$repo/.venv/bin:$PATH"
export AZ_CLI="$repo/scripts/az-sim"
export AZ_SIM_STATE="$work/az-sim-state"
export AZ_SIM_SCENARIO="$repo/scripts/demo/scenario.yaml"
echo "== Simulated Azure (AZ_CLI=scripts/az-sim): six VMs, k0s-worker-2 fails once in zone 3"
status=0
python orchestrator.py deploy --plan scripts/demo/plan.yaml --yes --workers 2 \
  --state-file "$work/state/deployment-state.yaml" "$@" || status=$?
echo
echo "== $work/state/deployment-state.yaml"
cat "$work/state/deployment-state.yaml"
echo
echo "== exit code $status (0: all VMs ready)"
exit "$status"
