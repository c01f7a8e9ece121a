"""The layout in MLflow, its names spelled once.

One experiment per sweep name; one parent run per `collapse-ray run` (the resolved spec
is its artifact `spec.yaml`); one child run per Ray Tune trial (a grid point for a block
of seeds). A child run's metric charts show, per iteration, the mean over its seeds
(`test_loss`) and its standard error (`test_loss_se`); the per-seed rows are its Parquet
artifact `chains.parquet`, which is what `results_table` reads, and the same rows as
`per_seed.json`, which MLflow's artifact view shows as a table. Cell runs
(collapse_ray.sweep.cells) are children of the sweep run tagged collapse_ray.role = cell;
they hold means only, so `results_table` reads the chain runs alone.
"""

from __future__ import annotations

JOB_KEY_TAG = "collapse_ray.job_key"
SWEEP_TAG = "collapse_ray.sweep_dir"
PARENT_TAG = "mlflow.parentRunId"
CHAIN_TABLE = "chains.parquet"
ROLE_TAG = "collapse_ray.role"  # "cell" on a sweep's cell runs (chain runs have a job key instead)
CELL_ROLE = "cell"
CELL_SEEDS_TAG = "collapse_ray.seeds_in_cell"  # how many chains (seeds x pools) a cell run's means are over
