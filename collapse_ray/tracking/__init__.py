"""MLflow: the only package that imports it. One job per module:

  layout       the layout in MLflow (experiments, sweep, chain and cell runs), its tag and artifact names
  credentials  credentials in a tracking URI: split off, redacted, scrubbed, moved into the environment
  store        the tracking URI, the retrying client, reachability, the migrated-store template, experiments
  params       what a run records and is called: params, tags, run names
  runs         sweep and chain runs: made or found again, provenance, datasets, finished with their tables
  sink         the chain loop's metric sink (exactly-once logging)
  view         links into the MLflow UI and the saved view a sweep opens with
  results      the results table read back from the store

Import names from the module that holds them (`from collapse_ray.tracking.store import client_for`).
"""

# TEMPORARY (issue 29): the names collapse_ray/sweep/ still imports from `collapse_ray.tracking`,
# re-exported only until sweep/'s imports name the modules above; then these lines go.
from collapse_ray.faults import StorageFault, disk_fault_line, is_disk_fault
from collapse_ray.tracking.credentials import (
    credentials_in_environment, redact_uri, refuse_if_secret_in, split_credentials)
from collapse_ray.tracking.layout import (
    CELL_ROLE, CELL_SEEDS_TAG, CHAIN_TABLE, JOB_KEY_TAG, PARENT_TAG, ROLE_TAG)
from collapse_ray.tracking.params import N_ITERATIONS_TAG, cell_run_names, chain_run_params, job_params
from collapse_ray.tracking.results import _local_artifact, _moved_artifact, results_table
from collapse_ray.tracking.runs import (
    LOGGED_ARTIFACTS_TAG, finish_chain_run, grow_sweep_run, open_chain_run, real_data_datasets, start_sweep_run)
from collapse_ray.tracking.sink import MAX_METRICS_PER_BATCH, MlflowChainSink
from collapse_ray.tracking.store import (
    check_reachable, client_for, default_artifact_root, ensure_experiment, resolve_tracking_uri)
from collapse_ray.tracking.view import VALUE_GRID, cell_filter, save_sweep_view, sweep_view_inputs

__all__ = [  # the temporary re-exports above
    "StorageFault", "disk_fault_line", "is_disk_fault", "credentials_in_environment", "redact_uri",
    "refuse_if_secret_in", "split_credentials", "CELL_ROLE", "CELL_SEEDS_TAG", "CHAIN_TABLE", "JOB_KEY_TAG",
    "PARENT_TAG", "ROLE_TAG", "N_ITERATIONS_TAG", "cell_run_names", "chain_run_params", "job_params",
    "_local_artifact", "_moved_artifact", "results_table", "LOGGED_ARTIFACTS_TAG", "finish_chain_run",
    "grow_sweep_run", "open_chain_run", "real_data_datasets", "start_sweep_run", "MAX_METRICS_PER_BATCH",
    "MlflowChainSink", "check_reachable", "client_for", "default_artifact_root", "ensure_experiment",
    "resolve_tracking_uri", "VALUE_GRID", "cell_filter", "save_sweep_view", "sweep_view_inputs",
]
