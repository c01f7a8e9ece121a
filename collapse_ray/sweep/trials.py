"""The sweep's trials on Ray Tune: every job once (a grid search), or those an adaptive
search suggests; one trial runs `trainable.chain_trial`. A full or read-only disk under
the sweep folder is named as such, not left as whatever Tune failed on."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from collapse_ray.sweep.interrupts import tune_running
from collapse_ray.sweep.progress import ProgressCallback
from collapse_ray.sweep.record import OpenedSweep
from collapse_ray.sweep.trainable import chain_trial
from collapse_ray.tasks.protocol import PreparesSweep, offers


@dataclass(frozen=True)
class TrialsRan:
    """What Tune's run came to."""

    n_trials: int  # the jobs, or those an adaptive search ran
    n_failed: int
    disk_fault: str | None  # why trials failed, when it was a full or read-only disk
    n_unfinished: int  # stopped without an error: the sweep was interrupted


def run_trials(opened: OpenedSweep, sweep_started: float) -> TrialsRan:
    """Prepare the cells' shared files, then run the trials; an interrupt raises Signalled."""
    spec, folder = opened.spec, opened.plan.folder
    for point in spec.points:  # files every cell reads (e.g. sft's synthetic pools), made once, here
        if offers(point.task, PreparesSweep):
            point.task.prepare_sweep(folder.shared)
    tuner = _tuner(opened, sweep_started)
    with tune_running():
        try:
            grid = tuner.fit()
        except Exception as err:  # Tune reading back its own half-written files, say
            _raise_if_disk_fault(err, folder.path)
            raise
    errors = [r.error for r in grid if r.error is not None]
    unfinished = [r for r in grid if r.error is None and (r.metrics or {}).get("iteration") !=
                  r.config["job"]["n_iterations"]]
    n_trials = len(opened.plan.jobs) if opened.search is None else len(grid)
    return TrialsRan(n_trials, len(errors), _disk_fault_of(errors, folder.path), len(unfinished))


def _tuner(opened: OpenedSweep, sweep_started: float) -> tune.Tuner:
    """The Tuner of the sweep's trials: a grid search over its jobs, or the adaptive search's searcher."""
    from collapse_ray.tracking.params import cell_run_names

    spec, plan, jobs = opened.spec, opened.plan, opened.plan.jobs
    run_names = cell_run_names(jobs)
    job_configs = {j.key: {"key": j.key, "run_name": run_names[j.key], "n_iterations": j.point.chain.n_iterations}
                   for j in jobs}
    searcher = _searcher(opened, job_configs) if opened.search is not None else None
    jobs_space = {} if searcher else {"job": tune.grid_search([job_configs[j.key] for j in jobs])}
    search_config = {"search_alg": searcher, "num_samples": -1} if searcher else {}
    trainable = tune.with_resources(tune.with_parameters(chain_trial, jobs={j.key: j for j in jobs}),
                                    {"cpu": spec.run.cpus_per_trial})
    return tune.Tuner(
        trainable,
        param_space={**jobs_space, "sweep": _trial_context(opened)},
        tune_config=tune.TuneConfig(
            reuse_actors=True,
            max_concurrent_trials=spec.run.max_concurrent_trials or None,
            trial_name_creator=lambda t: t.config["job"]["key"],
            trial_dirname_creator=lambda t: t.trial_id,
            **search_config,
        ),
        run_config=tune.RunConfig(
            name=f"tune-{int(time.time())}",
            storage_path=str(plan.folder.tune),
            failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
            callbacks=[ProgressCallback(len(jobs), sweep_started, at_most=searcher is not None)],
            verbose=0,
        ),
    )


def _trial_context(opened: OpenedSweep) -> dict[str, Any]:
    """What every trial is told of the sweep (config["sweep"] in chain_trial)."""
    return {
        "tracking_uri": opened.plan.tracking_uri,
        "experiment_id": opened.experiment_id,
        "sweep_run_id": opened.sweep_run_id,
        "sweep_dir": str(opened.plan.folder.path),
        "datasets": [d.to_dictionary() for d in opened.datasets],
    }


def _searcher(opened: OpenedSweep, job_configs: dict[str, dict]):
    """Tune's searcher over the adaptive search's cells, fed the finished jobs' losses from MLflow."""
    from collapse_ray.sweep.contour_searcher import ContourSearcher, mlflow_losses

    return ContourSearcher(opened.search, opened.plan.folder.search_state, job_configs,
                           mlflow_losses(opened.client, opened.plan.tracking_uri, opened.experiment_id,
                                         opened.sweep_run_id))


def _disk_fault_of(errors: list, sweep_dir: Path) -> str | None:
    """One line for the first trial error that was a full or read-only disk, else None."""
    from collapse_ray.faults import disk_fault_line, is_disk_fault

    for err in errors:
        if is_disk_fault(err):
            return f"{sweep_dir}: {disk_fault_line(err)}"
    return None


def _raise_if_disk_fault(err: Exception, sweep_dir: Path) -> None:
    """StorageFault naming the folder when the disk under it is full or read-only (then
    whatever failed, failed because of it)."""
    from collapse_ray.faults import disk_fault_line, is_disk_fault, StorageFault

    if is_disk_fault(err):
        raise StorageFault(f"{sweep_dir}: {disk_fault_line(err)}") from err
    try:
        full = os.statvfs(sweep_dir).f_bavail == 0
    except OSError:
        return
    if full or not os.access(sweep_dir, os.W_OK):
        raise StorageFault(f"{sweep_dir}: the disk is full or read-only (Ray Tune failed on it: "
                           f"{type(err).__name__})") from err
