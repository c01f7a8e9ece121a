"""A sweep's record, kept in step: its MLflow parent run and its sweep.json. Opened once
Ray is up (a new run, or the resumed sweep's again), closed as finished, failed or
interrupted, each close drawing the sweep's conclusion (collapse_ray.sweep.conclusion)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import ray

from collapse_ray.sweep.plan import SweepPlan, planned_trials, write_sweep_file
from collapse_ray.sweep.progress import say
from collapse_ray.sweep.spec import SweepSpec

FIGURES_ENV = "COLLAPSE_RAY_SWEEP_FIGURES"  # 0: a sweep's end draws no figures (its table and view stay)


@dataclass(frozen=True)
class OpenedSweep:
    """A sweep whose parent run is open and whose sweep.json says "running": from here on an
    interrupt leaves it resumable."""

    spec: SweepSpec
    plan: SweepPlan  # its tracking URI the one the trials are given (credentials moved to the environment)
    client: Any  # MlflowClient
    experiment_id: str
    sweep_run_id: str
    datasets: list  # mlflow Datasets of the sweep's real data, for every chain run
    state: dict[str, Any]  # sweep.json as written
    search: Any = None  # an adaptive search's ContourSearch; None: every job runs


def open_sweep(spec: SweepSpec, plan: SweepPlan, source: str | None) -> OpenedSweep:
    """The parent run (new, or the resumed one running again and grown to the spec), then
    sweep.json, then an adaptive search's state; says what the sweep will run."""
    from collapse_ray.tracking.runs import grow_sweep_run, real_data_datasets, start_sweep_run
    from collapse_ray.tracking.store import client_for, default_artifact_root, ensure_experiment

    client = client_for(plan.tracking_uri)
    experiment_id = ensure_experiment(client, spec.name, default_artifact_root(plan.tracking_uri))
    datasets = real_data_datasets(spec.points)
    folder = plan.folder
    if plan.resumed_run_id is not None:
        sweep_run_id = plan.resumed_run_id
        client.update_run(sweep_run_id, status="RUNNING")
        grow_sweep_run(client, sweep_run_id, plan.resolved)  # (the same spec again when not grown)
    else:
        folder.path.mkdir(parents=True)
        stamp = folder.path.name  # e.g. 20261201T104430149429Z: the run is "quickstart 1201-104430"
        sweep_run_id = start_sweep_run(client, experiment_id, f"{spec.name} {stamp[4:8]}-{stamp[9:15]}", folder.path,
                                       plan.resolved, description=spec.description, source=source, datasets=datasets)
    state = {"spec": plan.resolved, "tracking_uri": plan.tracking_uri, "experiment": spec.name,
             "sweep_run_id": sweep_run_id, "status": "running", "trials": planned_trials(plan.jobs)}
    write_sweep_file(folder, state)
    opened = OpenedSweep(spec, plan, client, experiment_id, sweep_run_id, datasets, state)
    if not spec.search.adaptive:
        say(f"sweep {spec.name}: {len(plan.jobs)} trials ({len(spec.points)} grid points x {len(spec.seeds)} seeds) "
            f"-> {folder.path}")
        return opened
    # the cells an adaptive search picks, a batch at a time (collapse_ray/sweep/contour_searcher.py)
    from collapse_ray.sweep.contour_searcher import open_search

    search = open_search(spec, plan.jobs, folder.search_state, ray.cluster_resources().get("CPU", 1))
    say(f"sweep {spec.name}: contour search ({spec.search.acquisition}, {search.batch_size} cells a batch) over "
        f"{len(search.cells)} cells, {len(plan.jobs)} trials at most -> {folder.path}")
    return OpenedSweep(spec, plan, client, experiment_id, sweep_run_id, datasets, state, search)


def close_sweep(opened: OpenedSweep, n_failed: int) -> Any:
    """sweep.json and the parent run say finished (or failed); returns the conclusion."""
    write_sweep_file(opened.plan.folder, {**opened.state, "status": "finished" if n_failed == 0 else "failed"})
    conclusion = _conclude(opened)
    opened.client.set_terminated(opened.sweep_run_id, "FINISHED" if n_failed == 0 else "FAILED")
    return conclusion


def close_interrupted(opened: OpenedSweep) -> None:
    """sweep.json and the parent run say "interrupted" / KILLED (the chains' own runs
    stay open: a resume reuses them)."""
    write_sweep_file(opened.plan.folder, {**opened.state, "status": "interrupted"})
    _conclude(opened)  # the chains finished so far, on the sweep run
    try:
        opened.client.set_terminated(opened.sweep_run_id, "KILLED")
    except Exception as err:  # noqa: BLE001 - the store may be what is away; sweep.json says it
        say(f"  (could not mark MLflow run {opened.sweep_run_id} KILLED: {str(err).splitlines()[0][:200]})")


def _conclude(opened: OpenedSweep):
    """The sweep's cell runs, saved view, per-cell table and figures (collapse_ray.sweep.conclusion): a
    convenience, which never fails a sweep; None when it could not be made."""
    from collapse_ray.sweep.conclusion import conclude_sweep

    spec, folder = opened.spec, opened.plan.folder
    jobs, contour = opened.plan.jobs, None
    try:
        if opened.search is not None:  # an adaptive search: the cells it ran, and its estimate over every cell
            jobs = [job for job in jobs if job.key in opened.search.results]
            contour = opened.search.estimate()
            opened.search.save(folder.search_state)  # with the model the estimate fitted
        return conclude_sweep(opened.client, opened.plan.tracking_uri, opened.experiment_id, spec.name,
                              opened.sweep_run_id, jobs,
                              list(dict.fromkeys(key for point in spec.points for key, _ in point.swept)),
                              folder, spec.description,
                              figures=os.environ.get(FIGURES_ENV, "1") != "0", contour=contour)
    except Exception as err:  # noqa: BLE001
        say(f"  (could not summarise the sweep on its MLflow run: {str(err).splitlines()[0][:200]})")
        return None
