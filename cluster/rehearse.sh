#!/usr/bin/env bash
# The paper-scale specs, rehearsed on one machine: a Ray head and two worker nodes
# (`ray start` on 127.0.0.1, each node its own temp folder and ports), an MLflow
# tracking server on 127.0.0.1, and one --out folder they all share. Each paper-scale
# spec FILE goes in with `ray job submit`, changed through --set only where this
# machine forces it (no hub: same-shape local stand-ins built by tests/standins.py; no
# GPU: use_gpu false; 2 cores: sizes scaled down). From the repository root:
#
#   cluster/rehearse.sh            # start, submit the three jobs, read the results, stop
#   cluster/rehearse.sh --keep     # ... and leave the cluster up (stop it with the line printed)
#   cluster/rehearse.sh --validate # start nothing: `collapse-ray validate` each job's spec and --set
#
# What it writes, under $COLLAPSE_RAY_SHARED (default: a fresh /tmp/collapse-rehearsal.*):
# results/ (the sweeps' --out), rehearsal/<spec>.csv (`collapse-ray results`),
# rehearsal/actors.json, nodes.json and jobs.json (Ray's own record of which node ran every
# trial, Ray Train worker and sampling actor, and of each job), rehearsal/jobs.txt (job id
# per spec), rehearsal/overrides.json (spec -> its --set values), logs/.
# Settings (environment): REHEARSAL_SPECS (default all three, e.g. "sft_helpsteer2"), STANDIN_HELPSTEER2,
# STANDIN_TINYSTORIES, STANDIN_GEMMA2 (stand-ins built already), and those of
# cluster/local_cluster.sh (ports default to free ones here). It stops only
# what it started (cluster/local_cluster.sh stop: recorded process groups), never `ray stop`.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [[ -x "$ROOT/.venv/bin/ray" ]]; then export PATH="$ROOT/.venv/bin:$PATH"; fi
KEEP=0 VALIDATE=0
case "${1:-}" in
  --keep) KEEP=1 ;;
  --validate) VALIDATE=1 ;;
  "") ;;
  *) echo "usage: $0 [--keep | --validate]" >&2; exit 2 ;;
esac

free_port() {
  python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

export COLLAPSE_RAY_SHARED=${COLLAPSE_RAY_SHARED:-$(mktemp -d /tmp/collapse-rehearsal.XXXXXX)}
export RAY_PORT=${RAY_PORT:-$(free_port)} DASHBOARD_PORT=${DASHBOARD_PORT:-$(free_port)}
export MLFLOW_PORT=${MLFLOW_PORT:-$(free_port)}
export RAY_TEMP_DIR=${RAY_TEMP_DIR:-$(mktemp -d /tmp/crh.XXXXXX)}  # short: Ray's socket paths have a length limit
# 2 logical CPUs a node: a 2-worker fit (0.9 CPU a worker) fills one node, so concurrent fits
# land on different nodes, and a node keeps a whole CPU free for Ray Data's 1-CPU tasks
# beside the trials' 0.01 (with 1 CPU a node, 0.99 was left everywhere and the fits' data
# tasks waited forever).
export RAY_NUM_CPUS=${RAY_NUM_CPUS:-2} RAY_WORKERS=${RAY_WORKERS:-2} RAY_WORKER_NUM_CPUS=${RAY_WORKER_NUM_CPUS:-2}
export RAY_START_ARGS=${RAY_START_ARGS:-"--ray-client-server-port $(free_port) --dashboard-agent-listen-port $(free_port) \
--dashboard-agent-grpc-port $(free_port) --runtime-env-agent-port $(free_port) --metrics-export-port $(free_port) \
--node-manager-port $(free_port) --object-manager-port $(free_port)"}
SPECS=${REHEARSAL_SPECS:-"fig5_value_grid sft_helpsteer2 pretraining_tinystories"}
SHARED=$COLLAPSE_RAY_SHARED
REPORT=$SHARED/rehearsal
mkdir -p "$REPORT" "$SHARED/logs"

stop_cluster() { cluster/local_cluster.sh stop; rm -rf "$RAY_TEMP_DIR"; }
if [[ $VALIDATE == 1 ]]; then trap 'rm -rf "$RAY_TEMP_DIR"' EXIT
elif [[ $KEEP == 0 ]]; then trap stop_cluster EXIT; fi

if [[ -z "${STANDIN_HELPSTEER2:-}" || -z "${STANDIN_TINYSTORIES:-}" || -z "${STANDIN_GEMMA2:-}" ]]; then
  echo "building the hub stand-ins under $SHARED/standins" >&2
  eval "$(python -m tests.standins "$SHARED/standins")"  # STANDIN_HELPSTEER2, STANDIN_TINYSTORIES, STANDIN_GEMMA2
fi

# Only what this machine forces, per spec (named in cluster/README.md, with the paper's sizes).
# One sampling engine: vLLM's CPU build pins its threads to the first core it may use
# (auto binding), so on one machine a second engine shares that core and only adds its
# ~1 min start-up.
COMMON=(task.use_gpu=false task.num_workers=2 task.sampling_concurrency=1 seeds=1)
fig5_value_grid=(task.source="$STANDIN_HELPSTEER2" task.model="$STANDIN_GEMMA2" task.grad_accum_steps=1
  task.value_pool_size=40 task.value_pool_real=64 task.n_value_pools=1
  "grid.chain.n_real=[64]" "grid.task.value_synthetic=[0, 32]" "grid.task.value_pool=[0]")
sft_helpsteer2=(task.source="$STANDIN_HELPSTEER2" "cases=[{task.model: [$STANDIN_GEMMA2]}]"
  task.grad_accum_steps=1 task.sampling_batch_size=32 chain.n_real=64 chain.n_iterations=2)
pretraining_tinystories=(task.source="$STANDIN_TINYSTORIES" "grid.task.model=[tiny]" task.vocab_size=512
  task.max_length=128 task.n_test=50 task.micro_batch_size=8 task.sampling_batch_size=32
  chain.n_real=64 chain.n_iterations=2)

set_args() {  # set_args SPEC: fills SETS with the --set pairs of SPEC's job
  local kv
  local -n spec_sets=$1
  SETS=()
  for kv in "${spec_sets[@]}" "${COMMON[@]}"; do SETS+=(--set "$kv"); done
}

if [[ $VALIDATE == 1 ]]; then  # the fast test lane's check of these jobs (tests/test_cluster_configs.py)
  for spec in $SPECS; do
    set_args "$spec"
    collapse-ray validate "sweeps/$spec.yaml" "${SETS[@]}"
  done
  exit 0
fi

cluster/local_cluster.sh start >"$REPORT/exports.sh"
# shellcheck disable=SC1091
source "$REPORT/exports.sh"  # RAY_AUTH_MODE, RAY_DASHBOARD, MLFLOW_TRACKING_URI, COLLAPSE_RAY_SHARED

submit() {  # submit SPEC: one `ray job submit` of the spec file named SPEC, its output in logs/job-SPEC.log
  local spec=$1 id rc sets
  set_args "$spec"
  sets=("${SETS[@]}")
  id="rehearsal-$spec-$(python -c 'import secrets; print(secrets.token_hex(4))')"
  echo "$spec $id" >>"$REPORT/jobs.txt"
  local -n spec_sets=$spec
  python -c 'import json, sys; print(json.dumps({sys.argv[1]: sys.argv[2:]}))' "$spec" "${spec_sets[@]}" "${COMMON[@]}" \
    >"$REPORT/overrides-$spec.json"
  for _ in 1 2 3 4 5; do  # right after start the job agent can lag the dashboard by a few seconds
    rc=0
    ray job submit --address "$RAY_DASHBOARD" --submission-id "$id" --runtime-env cluster/runtime_env.yaml \
      -- collapse-ray run "sweeps/$spec.yaml" --out "$COLLAPSE_RAY_SHARED/results" \
      --tracking-uri "$MLFLOW_TRACKING_URI" "${sets[@]}" >"$SHARED/logs/job-$spec.log" 2>&1 || rc=$?
    grep -q "No available agent" "$SHARED/logs/job-$spec.log" || break
    sleep 3
  done
  return "$rc"
}

: >"$REPORT/jobs.txt"
started=$SECONDS
# One job after another: on 2 cores, all three at once took as long (730 s against 696 s
# for the whole test) and held ~12 GB, and a machine with less spare memory has Ray's
# memory monitor kill workers.
failed=0
report_job() {  # report_job SPEC RC
  if [[ $2 == 0 ]]; then echo "$1: job succeeded" >&2
  else failed=1; echo "$1: job FAILED; its log: $SHARED/logs/job-$1.log" >&2; tail -n 30 "$SHARED/logs/job-$1.log" >&2; fi
}
for spec in $SPECS; do rc=0; submit "$spec" || rc=$?; report_job "$spec" "$rc"; done
echo "jobs took $((SECONDS - started)) s" >&2

# Ray's own record of where everything ran (while the cluster is still up), and the tables
python -c 'import json, sys; print(json.dumps({k: v for f in sys.argv[1:] for k, v in json.load(open(f)).items()}))' \
  "$REPORT"/overrides-*.json >"$REPORT/overrides.json"  # spec -> its --set values
ray list jobs --address "$RAY_DASHBOARD" --format json --limit 100 >"$REPORT/jobs.json"
ray list nodes --address "$RAY_DASHBOARD" --format json --limit 100 >"$REPORT/nodes.json"
ray list actors --address "$RAY_DASHBOARD" --format json --detail --limit 10000 >"$REPORT/actors.json"
for spec in $SPECS; do
  collapse-ray results "$spec" --out "$REPORT/$spec.csv" --tracking-uri "$MLFLOW_TRACKING_URI" >&2 || failed=1
done
if [[ $KEEP == 1 ]]; then
  echo "cluster left up; stop it with: COLLAPSE_RAY_SHARED=$SHARED cluster/local_cluster.sh stop; rm -rf $RAY_TEMP_DIR" >&2
fi
echo "rehearsal: $SHARED (tables, node and actor records in $REPORT)" >&2
exit "$failed"
