#!/usr/bin/env bash
# Drop-in for the launch-and-monitor step of the k0s/k0rdent bash deploy scripts.
#
# Call it where the script used to launch `az vm create` in the background and poll
# `az vm list`:   scripts/vm-launch.sh || exit 1
#
# It reads the variables those scripts export (the names are exact; see legacyplan.py):
#   RG, VM_HOSTS (space or comma separated), VM_ZONE_<HOST> / VM_SIZE_<HOST> per host
#   (<HOST> upper-cased, anything but letters and digits made "_": k0s-worker-1 ->
#   K0S_WORKER_1), AZURE_CONTROLLER_VM_SIZE / AZURE_WORKER_VM_SIZE / AZURE_VM_SIZE as the
#   fallback size, AZURE_VM_IMAGE, AZURE_VM_PRIORITY, AZURE_EVICTION_POLICY, AZURE_LOCATION,
#   SSH_USERNAME, SSH_KEY_NAME, SSH_PRIVATE_KEY, VNET_NAME, SUBNET_NAME, NSG_NAME,
#   CLOUD_INIT_DIR, VM_CREATION_TIMEOUT_MINUTES, VM_WAIT_CHECK_INTERVAL, NATS_URL, and
#   DEPLOYMENT_ID or K0RDENT_CLUSTERID (else ./.clusterid).
# Optional: VM_LAUNCH_OPTIONS, extra orchestrator options split on spaces (for example
# "--legacy-poll" or "--require-nats"); arguments given to this script are passed on too.
#
# It runs `orchestrator.py deploy --from-env --yes` with the repository's .venv python in
# the current directory, so ./state/deployment-state.yaml is the one the scripts read, and
# exits with its code: 0 every VM ready (phase: vms_ready), 1 some VM failed, 2 bad input
# (nothing launched, every problem listed), 3 NATS required (--require-nats) but unreachable.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="$repo/.venv/bin/python"
# Creates or refreshes .venv from requirements.txt when needed (a checksum when it is not).
# shellcheck source=venv.sh
source "$repo/scripts/venv.sh" >&2

read -r -a extra <<< "${VM_LAUNCH_OPTIONS:-}"
exec "$python" "$repo/orchestrator.py" deploy --from-env --yes ${extra[@]+"${extra[@]}"} "$@"
