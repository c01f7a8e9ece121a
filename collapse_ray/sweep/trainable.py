"""What one Ray Tune trial runs: the chain of one ChainJob, logged to its own MLflow run.

The trial opens its MLflow child run, hands a sink and a checkpoint folder to
`loop.run_chain`, and uploads the per-seed table at the end. Its checkpoint folder and
run are keyed by its job key, so a retried trial (Tune's FailureConfig) or a re-run
sweep (`--resume`) continues from the last checkpoint, and a trial whose run already
finished returns at once.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ray
from ray import tune

from collapse_ray.sweep.layout import SweepFolder
from collapse_ray.core.jobs import ChainJob
from collapse_ray.tasks.protocol import SharesFits, offers

RESUMED_TAG = "collapse_ray.resumed_from_iteration"
NODE_TAG = "collapse_ray.ray_node_id"  # the Ray node the chain (last) ran on: a bad node shows in the UI


def chain_trial(config: dict[str, Any], jobs: Mapping[str, ChainJob]) -> None:
    """Ray Tune function trainable for one ChainJob (Tune's config names it by key, and
    holds the sweep's context under "sweep"; the jobs themselves come through
    tune.with_parameters, as the spec built them)."""
    from mlflow.entities import Dataset

    from collapse_ray.core.chain_state import checkpoint_continues
    from collapse_ray.core.loop import run_chain
    from collapse_ray.tracking.params import N_ITERATIONS_TAG
    from collapse_ray.tracking.runs import finish_chain_run, open_chain_run
    from collapse_ray.tracking.sink import MlflowChainSink
    from collapse_ray.tracking.store import client_for

    started = time.time()  # wall clock: benchmarks line trials up against the driver's
    job = jobs[config["job"]["key"]]
    ctx = config["sweep"]
    chain = job.point.chain
    client = client_for(ctx["tracking_uri"])
    datasets = [Dataset(**d) for d in ctx.get("datasets", [])]
    # the node tag is set again on a retry elsewhere
    opened_run = open_chain_run(client, ctx["experiment_id"], ctx["sweep_run_id"], job,
                                run_name=config["job"].get("run_name"), datasets=datasets,
                                tags={NODE_TAG: ray.get_runtime_context().get_node_id()})
    run_id, grown = opened_run.run_id, opened_run.grown
    opened = time.time()
    if opened_run.finished:  # done before a resume: nothing to redo or relog
        tune.report({"iteration": chain.n_iterations, "skipped": 1})
        return
    folder = SweepFolder(Path(ctx["sweep_dir"]))
    checkpoint_dir = folder.chain(job.key)
    if grown and not checkpoint_continues(checkpoint_dir):
        # a finished row-path chain keeps no pool: run it again from iteration 1 (identically);
        # a statistics-path chain runs on from where it finished
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if grown:
        client.set_tag(run_id, N_ITERATIONS_TAG, str(chain.n_iterations))

    task = job.point.task
    if offers(task, SharesFits):  # fits kept where the sweep's other chains find them
        task = task.with_shared_dir(folder.shared)
    result = run_chain(task, chain, job.seeds, checkpoint_dir=checkpoint_dir,
                       sink=MlflowChainSink(client, run_id, created=opened_run.created),
                       progress=_reported_at_checkpoints(chain))
    ran = time.time()
    if result.resumed_from:  # shows in the UI, and lets tests check where a retry started
        client.set_tag(run_id, RESUMED_TAG, str(result.resumed_from))
    finish_chain_run(client, run_id, job, result.table)
    # where the trial's time went (Tune's result.json keeps it; benchmarks/breakdown.py reads it)
    timing = {f"seconds_{name}": s for name, s in result.phase_seconds.items()}
    timing.update(seconds_open_run=opened - started, seconds_chain=ran - opened,
                  seconds_finish_run=time.time() - ran, trial_started=started, trial_ended=time.time(),
                  worker_pid=os.getpid())
    tune.report({"iteration": chain.n_iterations, "skipped": 0, "resumed_from": result.resumed_from, **timing})


def _reported_at_checkpoints(chain) -> Callable[[int, int], None]:
    """The chain's progress hook: a Tune result at each checkpoint before the last iteration
    (the driver's ProgressCallback prints it)."""

    def progress(t: int, total: int) -> None:
        if chain.checkpoints_at(t) and t < total:
            tune.report({"iteration": t, "skipped": 0})

    return progress
