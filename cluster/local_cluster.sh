#!/usr/bin/env bash
# A one-machine rehearsal of the cluster path: a Ray head that accepts `ray job submit`
# and an MLflow tracking server, every server of both bound to loopback (127.0.0.1) only.
#
#   cluster/local_cluster.sh start    # start both; prints the exports to use
#   cluster/local_cluster.sh env      # print the exports again
#   cluster/local_cluster.sh stop     # stop both
#
# Then, from the repository root:
#   eval "$(cluster/local_cluster.sh env)"
#   ray job submit --address "$RAY_DASHBOARD" --working-dir . \
#     --runtime-env-json "{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"$MLFLOW_TRACKING_URI\"}}" \
#     -- collapse-ray run sweeps/quickstart.yaml --out "$COLLAPSE_RAY_SHARED/results"
#
# Ray 2.60 turns token authentication on for local clusters: this script sets
# RAY_AUTH_MODE=token and uses $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH
# (default $COLLAPSE_RAY_SHARED/ray_auth_token), which it writes when missing, readable by
# its owner only (0600), and refuses if others can read it. Other local users reach
# 127.0.0.1 too: the token is what keeps them out, so it never goes to Ray's own
# ~/.ray/auth_token (`ray get-auth-token --generate` writes that one 0644). `ray job
# submit` needs the same token (the `env` exports carry RAY_AUTH_MODE and RAY_AUTH_TOKEN_PATH).
#
# Settings (environment): COLLAPSE_RAY_SHARED (default /tmp/collapse_ray_shared: the
# results folder every node would share, the MLflow database and artifacts, logs),
# RAY_PORT (6379), DASHBOARD_PORT (8265), MLFLOW_PORT (5000), RAY_NUM_CPUS (all),
# RAY_TEMP_DIR (Ray's default), RAY_START_ARGS (more `ray start` flags for the head, e.g.
# ports), RAY_WORKERS (0: worker nodes to start beside the head, a multi-node cluster on
# one machine), RAY_WORKER_NUM_CPUS (1 each). Each worker node gets its own temp folder
# (RAY_TEMP_DIR-wN, else a fresh /tmp/ray-wN.XXXXXX) and its own free ports.
#
# Ray 2.60 has no bind option: a node's servers bind to loopback only when its node IP
# is a loopback address, and `ray start` rewrites --node-ip-address 127.0.0.1 to the
# machine's routable address (resolve_ip_for_localhost) unless
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set: a switch meant for macOS and Windows, which
# also refuses worker nodes (they start through RAY_START_WORKER below). It is
# undocumented on Linux, so `start` checks every node's IP and stops the cluster if one is
# off loopback. Clients of this cluster need it too (Ray rewrites 127.0.0.1 in their
# --address as well): the `env` exports carry it.
#
# `stop` ends only what `start` started: the process groups recorded in
# $COLLAPSE_RAY_SHARED/*.pid. It never runs `ray stop`, which would end every Ray
# cluster on the machine, other users' included.
set -euo pipefail

SHARED=${COLLAPSE_RAY_SHARED:-/tmp/collapse_ray_shared}
RAY_PORT=${RAY_PORT:-6379}
DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
MLFLOW_PORT=${MLFLOW_PORT:-5000}
LOOPBACK=127.0.0.1
export RAY_AUTH_MODE=token
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0  # every Ray process here: node IP 127.0.0.1, servers on loopback
if [[ -z "${RAY_AUTH_TOKEN:-}" ]]; then export RAY_AUTH_TOKEN_PATH=${RAY_AUTH_TOKEN_PATH:-$SHARED/ray_auth_token}; fi

temp_dir_args=()
if [[ -n "${RAY_TEMP_DIR:-}" ]]; then temp_dir_args=(--temp-dir "$RAY_TEMP_DIR"); fi

print_env() {
  echo "export RAY_AUTH_MODE=token"
  echo "export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0"
  if [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]]; then echo "export RAY_AUTH_TOKEN_PATH=$RAY_AUTH_TOKEN_PATH"; fi
  echo "export RAY_DASHBOARD=http://$LOOPBACK:$DASHBOARD_PORT"
  echo "export MLFLOW_TRACKING_URI=http://$LOOPBACK:$MLFLOW_PORT"
  echo "export COLLAPSE_RAY_SHARED=$SHARED"
}

free_port() {  # a loopback port nobody listens on right now
  python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

owners_token_file() {  # the token file: written 0600 from the start when missing; refused if others can read it
  [[ -n "${RAY_AUTH_TOKEN_PATH:-}" ]] || return 0  # the token is in $RAY_AUTH_TOKEN
  if [[ ! -e "$RAY_AUTH_TOKEN_PATH" ]]; then
    (umask 077 && python -c 'import secrets; print(secrets.token_hex(32), end="")' >"$RAY_AUTH_TOKEN_PATH")
  fi
  local mode owner
  mode=$(stat -c %a "$RAY_AUTH_TOKEN_PATH") owner=$(stat -c %u "$RAY_AUTH_TOKEN_PATH")
  if (( 8#$mode & 8#077 )) || [[ "$owner" != "$(id -u)" ]]; then
    echo "error: RAY_AUTH_TOKEN_PATH $RAY_AUTH_TOKEN_PATH can be read by other users (mode $mode," \
      "owner uid $owner); chmod 600 it, as its owner, or name a new file" >&2
    exit 2
  fi
}

# `ray start ARGS` for a worker node (python -c "$RAY_START_WORKER" ARGS). With
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 `ray start --address` refuses ("Multi-node Ray
# clusters are not supported on Windows and OSX"); that refusal is the only reader of the
# switch through the CLI module's own name for Ray's constants, so that name alone is
# shown clusters enabled, and the node IP stays on loopback.
RAY_START_WORKER='
import sys
import types

import ray._private.ray_constants as constants
import ray.scripts.scripts as scripts

scripts.ray_constants = types.SimpleNamespace(**{**vars(constants), "ENABLE_RAY_CLUSTER": True})
sys.argv = ["ray", "start", *sys.argv[1:]]
sys.exit(scripts.main())
'

check_nodes_on_loopback() {  # every node's IP is a loopback address, or one error line
  ray list nodes --address "http://$LOOPBACK:$DASHBOARD_PORT" --format json --limit 1000 | python -c '
import ipaddress, json, sys
off = sorted({n["node_ip"] for n in json.load(sys.stdin) if not ipaddress.ip_address(n["node_ip"]).is_loopback})
if off:
    sys.exit(f"error: Ray nodes on {off}, not loopback, so their servers listen on every interface "
             "(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 no longer keeps this Ray on 127.0.0.1); the cluster is stopped")
'
}

start_worker() {  # start_worker N: worker node N joins the head, with its own temp folder and ports
  local n=$1 temp
  if [[ -n "${RAY_TEMP_DIR:-}" ]]; then temp="$RAY_TEMP_DIR-w$n"; mkdir -p "$temp"; else temp=$(mktemp -d "/tmp/ray-w$n.XXXXXX"); fi
  echo "$temp" >"$SHARED/ray-worker-$n.tempdir"
  # two nodes on one machine must not share a port: every listener a node opens, chosen here
  setsid python -c "$RAY_START_WORKER" --block --address "$LOOPBACK:$RAY_PORT" --node-ip-address "$LOOPBACK" \
    --num-cpus "${RAY_WORKER_NUM_CPUS:-1}" --temp-dir "$temp" \
    --node-manager-port "$(free_port)" --object-manager-port "$(free_port)" \
    --dashboard-agent-listen-port "$(free_port)" --dashboard-agent-grpc-port "$(free_port)" \
    --runtime-env-agent-port "$(free_port)" --metrics-export-port "$(free_port)" --disable-usage-stats \
    >"$SHARED/logs/ray-worker-$n.log" 2>&1 &
  echo $! >"$SHARED/ray-worker-$n.pid"
}

wait_for_nodes() {  # wait_for_nodes COUNT SECONDS: until COUNT nodes are alive
  for _ in $(seq "$2"); do
    alive=$(ray list nodes --address "http://$LOOPBACK:$DASHBOARD_PORT" --filter "state=ALIVE" --format json 2>/dev/null \
      | python -c 'import json, sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
    if [[ "$alive" -ge "$1" ]]; then return 0; fi
    sleep 1
  done
  echo "error: $1 Ray nodes were not alive within $2 s (see $SHARED/logs)" >&2
  return 1
}

wait_for() {  # wait_for URL SECONDS NAME
  for _ in $(seq "$2"); do
    if python - "$1" <<'EOF' 2>/dev/null; then return 0; fi
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=2).read()
EOF
    sleep 1
  done
  echo "error: $3 did not answer at $1 within $2 s (see $SHARED/logs)" >&2
  return 1
}

start() {
  mkdir -p "$SHARED/results" "$SHARED/mlflow-artifacts" "$SHARED/logs"
  owners_token_file
  # Ray's own actors (Ray Train's PlacementGroupCleaner) find "their" cluster through the
  # state API; with more than one Ray on the machine auto-detection fails ("Found multiple
  # active Ray instances"), so every process of this cluster is told the address.
  export RAY_API_SERVER_ADDRESS="http://$LOOPBACK:$DASHBOARD_PORT"
  num_cpus_args=()
  if [[ -n "${RAY_NUM_CPUS:-}" ]]; then num_cpus_args=(--num-cpus "$RAY_NUM_CPUS"); fi
  # --block keeps `ray start` as the parent of the head's processes, so `stop` ends
  # exactly this head (a plain `ray stop` kills every Ray on the machine).
  # shellcheck disable=SC2086  # RAY_START_ARGS is a list of flags
  setsid ray start --head --block --node-ip-address "$LOOPBACK" --port "$RAY_PORT" \
    --dashboard-host "$LOOPBACK" --dashboard-port "$DASHBOARD_PORT" \
    "${num_cpus_args[@]}" "${temp_dir_args[@]}" ${RAY_START_ARGS:-} --disable-usage-stats \
    >"$SHARED/logs/ray-head.log" 2>&1 &
  echo $! >"$SHARED/ray.pid"

  # One worker process is plenty for a rehearsal; artifacts are proxied by the server. No
  # job runner: collapse_ray submits no MLflow jobs (GenAI evaluations), and its seven huey
  # processes took ~1.6 GB and seconds of CPU at every start.
  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false setsid mlflow server --host "$LOOPBACK" --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$SHARED/mlflow.db" \
    --artifacts-destination "$SHARED/mlflow-artifacts" \
    >"$SHARED/logs/mlflow.log" 2>&1 &
  echo $! >"$SHARED/mlflow.pid"
  wait_for "http://$LOOPBACK:$MLFLOW_PORT/health" 120 "mlflow server"
  wait_for "http://$LOOPBACK:$DASHBOARD_PORT/api/gcs_healthz" 60 "Ray dashboard"
  if [[ "${RAY_WORKERS:-0}" -gt 0 ]]; then
    for n in $(seq "$RAY_WORKERS"); do start_worker "$n"; done
    wait_for_nodes $((1 + RAY_WORKERS)) 180
  fi
  if ! check_nodes_on_loopback; then stop; exit 1; fi
  echo "Ray head (+ ${RAY_WORKERS:-0} worker nodes): $LOOPBACK:$RAY_PORT, dashboard and job server http://$LOOPBACK:$DASHBOARD_PORT" >&2
  echo "MLflow tracking server and UI: http://$LOOPBACK:$MLFLOW_PORT (store $SHARED/mlflow.db)" >&2
  echo "Use these exports:" >&2
  print_env
}

stop_group() {  # stop_group PIDFILE: TERM the process group, KILL what is left
  [[ -f "$1" ]] || return 0
  pid=$(cat "$1")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 5); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$1"
}

stop() {
  stop_group "$SHARED/mlflow.pid"
  for pidfile in "$SHARED"/ray-worker-*.pid; do
    [[ -e "$pidfile" ]] || continue
    stop_group "$pidfile"
    tempfile="${pidfile%.pid}.tempdir"
    if [[ -f "$tempfile" ]]; then rm -rf "$(cat "$tempfile")"; rm -f "$tempfile"; fi
  done
  stop_group "$SHARED/ray.pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
