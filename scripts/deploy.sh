#!/usr/bin/env bash
# Example: a k0rdent deploy script that hands VM creation to the VM Launch Manager.
#
# Run it from the deployment directory (the one with ./state, ./cloud-init-yaml and
# ./.clusterid), as the existing scripts are. Every setting below can be overridden from the
# environment; the defaults are what the bash config loader would export for a small cluster.
# See docs/migration.md for the steps to change an existing script the same way.
set -euo pipefail

launcher_repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_FILE="${STATE_FILE:-./state/deployment-state.yaml}"

# --- 1. What the config loader already exports (from config/k0rdent.yaml) -----------------
K0RDENT_CLUSTERID="${K0RDENT_CLUSTERID:-$(cat .clusterid 2>/dev/null || echo k0rdent-example1)}"
export K0RDENT_CLUSTERID
export RG="${RG:-$K0RDENT_CLUSTERID-resgrp}"
export AZURE_LOCATION="${AZURE_LOCATION:-westus2}"
export AZURE_VM_IMAGE="${AZURE_VM_IMAGE:-Debian:debian-12:12-gen2:latest}"
export AZURE_VM_PRIORITY="${AZURE_VM_PRIORITY:-Regular}"
export AZURE_EVICTION_POLICY="${AZURE_EVICTION_POLICY:-Deallocate}"
export AZURE_CONTROLLER_VM_SIZE="${AZURE_CONTROLLER_VM_SIZE:-Standard_D2s_v5}"
export AZURE_WORKER_VM_SIZE="${AZURE_WORKER_VM_SIZE:-Standard_D4s_v5}"
export SSH_USERNAME="${SSH_USERNAME:-k0rdent}"
export SSH_KEY_NAME="${SSH_KEY_NAME:-$K0RDENT_CLUSTERID-admin}"
export SSH_PRIVATE_KEY="${SSH_PRIVATE_KEY:-./azure-resources/$K0RDENT_CLUSTERID-ssh-key}"
export VNET_NAME="${VNET_NAME:-$K0RDENT_CLUSTERID-vnet}"
export SUBNET_NAME="${SUBNET_NAME:-$K0RDENT_CLUSTERID-subnet}"
export NSG_NAME="${NSG_NAME:-$K0RDENT_CLUSTERID-nsg}"
export CLOUD_INIT_DIR="${CLOUD_INIT_DIR:-./cloud-init-yaml}"
export VM_CREATION_TIMEOUT_MINUTES="${VM_CREATION_TIMEOUT_MINUTES:-15}"
export VM_WAIT_CHECK_INTERVAL="${VM_WAIT_CHECK_INTERVAL:-30}"
# NATS_URL: left as the environment has it. Unset: embedded NATS and local workers when
# nats-server is available, else polling; unreachable: a warning, then polling.
K0S_CONTROLLER_COUNT="${K0S_CONTROLLER_COUNT:-1}"
K0S_WORKER_COUNT="${K0S_WORKER_COUNT:-2}"
read -r -a CONTROLLER_ZONES <<< "${CONTROLLER_ZONES:-1 2 3}"
read -r -a WORKER_ZONES <<< "${WORKER_ZONES:-1 2 3}"

# --- 2. New: the hosts and their zone and size as plain variables --------------------------
# Bash arrays cannot be exported, so each host gets VM_ZONE_<HOST> and VM_SIZE_<HOST>.
host_key() { printf '%s' "$1" | tr -c 'A-Za-z0-9' '_' | tr 'a-z' 'A-Z'; }

hosts=()
add_hosts() {  # add_hosts ROLE COUNT SIZE ZONE...
  local role=$1 count=$2 size=$3 i host key
  shift 3
  for ((i = 0; i < count; i++)); do
    host="k0s-$role-$((i + 1))"
    key="$(host_key "$host")"
    hosts+=("$host")
    export "VM_ZONE_$key=${*:$((i % $# + 1)):1}"
    export "VM_SIZE_$key=$size"
  done
}
add_hosts controller "$K0S_CONTROLLER_COUNT" "$AZURE_CONTROLLER_VM_SIZE" "${CONTROLLER_ZONES[@]}"
add_hosts worker "$K0S_WORKER_COUNT" "$AZURE_WORKER_VM_SIZE" "${WORKER_ZONES[@]}"
export VM_HOSTS="${hosts[*]}"

# --- 3. Replaces the old launch-and-monitor function ---------------------------------------
status=0
"$launcher_repo/scripts/vm-launch.sh" "$@" || status=$?

# --- 4. Unchanged: the rest of the scripts read the state file ----------------------------
# state_get KEY_PATH: one value of the state file ("" when absent), like `yq '.a.b'`.
state_get() {
  "$launcher_repo/.venv/bin/python" - "$STATE_FILE" "$1" <<'PY'
import sys

import yaml

with open(sys.argv[1], encoding="utf-8") as file:
    node = yaml.safe_load(file)
for key in sys.argv[2].strip(".").split("."):
    node = node.get(key) if isinstance(node, dict) else None
print("" if node is None else node)
PY
}

echo "VM launch finished with exit code $status; phase: $(state_get .phase)"
for host in "${hosts[@]}"; do
  printf '  %-20s %-10s %s\n' "$host" "$(state_get ".vm_states.$host.state")" \
    "$(state_get ".vm_states.$host.public_ip")"
done
if [ "$status" -ne 0 ] || [ "$(state_get .phase)" != "vms_ready" ]; then
  echo "Not every VM is ready; see ./state/deployment-events.yaml" >&2
  exit 1
fi
# ... the WireGuard and k0s steps follow here, using .vm_states.<host>.public_ip
