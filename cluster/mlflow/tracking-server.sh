#!/usr/bin/env bash
# An MLflow tracking server for a collapse_ray cluster: runs and metrics in PostgreSQL,
# artifacts (spec.yaml, chains.parquet) in an object store, uploads and downloads
# proxied by the server (--serve-artifacts), so Ray nodes need only the server's URL,
# never the bucket's credentials. Bound to 127.0.0.1 unless MLFLOW_HOST says otherwise.
#
#   export MLFLOW_BACKEND_STORE_URI=postgresql://mlflow@DB-HOST:5432/mlflow   # no password
#   export MLFLOW_ARTIFACTS_DESTINATION=s3://BUCKET/mlflow
#   cluster/mlflow/tracking-server.sh                     # http://127.0.0.1:5000
#
# On a cluster, bind the head's private address so every node reaches it:
#   MLFLOW_HOST=$(hostname -I | awk '{print $1}') cluster/mlflow/tracking-server.sh
#
# The PostgreSQL password comes from ~/.pgpass or $PGPASSFILE (a line
# DB-HOST:5432:mlflow:mlflow:PASSWORD, mode 600) or PGPASSWORD in the environment; a
# password inside the URI is refused (it would show in process listings and logs). S3
# credentials come from boto3's usual chain (instance profile, AWS_* variables, ~/.aws).
# Needs mlflow, psycopg2-binary and boto3 in the environment that runs it.
#
# Settings (environment): MLFLOW_HOST (127.0.0.1), MLFLOW_PORT (5000), MLFLOW_WORKERS (4),
# MLFLOW_ALLOWED_HOSTS (Host headers to accept, comma-separated; MLflow's default,
# localhost and private addresses, covers a private IP; list DNS names such as
# mlflow.internal:5000 here).
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI, e.g. postgresql://mlflow@DB-HOST:5432/mlflow}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION, e.g. s3://BUCKET/mlflow}"

# user:password@ in the URI: refuse, the password belongs in PGPASSFILE or PGPASSWORD.
if [[ "$MLFLOW_BACKEND_STORE_URI" =~ ^[a-z0-9+]+://[^/@]*:[^/@]*@ ]]; then
  echo "error: MLFLOW_BACKEND_STORE_URI must not carry a password; put it in ~/.pgpass," \
    "\$PGPASSFILE or \$PGPASSWORD" >&2
  exit 2
fi
if [[ "${MLFLOW_HOST:-127.0.0.1}" == "0.0.0.0" ]]; then
  echo "warning: binding every interface; keep port ${MLFLOW_PORT:-5000} closed to the" \
    "outside (security group, firewall) or set MLFLOW_HOST to a private address" >&2
fi

allowed_hosts=()
if [[ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]]; then allowed_hosts=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS"); fi

exec mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" \
  --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-4}" \
  ${allowed_hosts[@]+"${allowed_hosts[@]}"}  # (bash 3 reads an empty array as unset)
