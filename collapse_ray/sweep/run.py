"""Run a validated sweep: plan it (collapse_ray.sweep.plan), bring up Ray (cluster), open
its record (record: the MLflow parent run and sweep.json), run its trials on Ray Tune
(trials, one `trainable.chain_trial` each) and close the record with the sweep's
conclusion. This layer only fans out and logs.

Output layout (`--out`, default ./results), self-contained (it can be moved):
    results/mlflow.db                       the default MLflow store
    results/mlartifacts/<sweep name>/...    its artifacts (chains.parquet, spec.yaml, pictures)
    results/<sweep name>/<UTC time>/        the sweep folder (collapse_ray.sweep.layout)

Fault tolerance and growing: see trainable (a retried trial continues from its
checkpoint) and plan (`--resume`, with more seeds or iterations).

Interrupts: SIGINT or SIGTERM while a sweep runs stop Tune cleanly, mark sweep.json
"interrupted" and the MLflow sweep run KILLED, and exit 130 / 143; `--resume` continues.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collapse_ray.sweep.cluster import ray_for_sweep
from collapse_ray.sweep.interrupts import Signalled, SweepInterrupted, interrupts_recorded
from collapse_ray.sweep.plan import plan_sweep
from collapse_ray.sweep.record import OpenedSweep, close_interrupted, close_sweep, open_sweep
from collapse_ray.sweep.spec import SweepSpec
from collapse_ray.sweep.trials import TrialsRan, run_trials


@dataclass(frozen=True)
class SweepOutcome:
    """Where a finished sweep's things are, and how it went."""

    sweep_dir: Path
    tracking_uri: str
    experiment: str
    sweep_run_id: str
    n_trials: int
    n_failed: int
    seconds: float
    disk_fault: str | None = None  # why trials failed, when it was a full or read-only disk
    experiment_id: str = ""
    conclusion: Any = None  # collapse_ray.sweep.conclusion.Conclusion: the answer's lines, figures, table


def run_sweep(
    spec: SweepSpec,
    out_root: str | Path = "results",
    tracking_uri: str | None = None,
    address: str | None = None,
    resume: bool | str | Path = False,
    source: str | None = None,
) -> SweepOutcome:
    """Run every job of `spec` with Ray Tune, logging to MLflow; returns where things are.
    `source`: where the spec came from (its file), for the sweep run's Source."""
    from collapse_ray.tracking.credentials import credentials_in_environment, refuse_if_secret_in
    from collapse_ray.tracking.store import check_reachable

    started = time.perf_counter()
    plan = plan_sweep(spec, Path(out_root).resolve(), tracking_uri, resume)
    # A password in the URI moves to MLflow's own variables for the sweep's duration (the
    # embedded Ray's workers inherit them): the URI then goes into Tune's files,
    # sweep.json and output without it.
    refuse_if_secret_in(plan.tracking_uri, **{"sweep folder's path": str(plan.folder.path),
                                              "spec": json.dumps(plan.resolved),
                                              "spec's header comment": spec.description})
    with credentials_in_environment(plan.tracking_uri) as tracking_uri:
        refuse_if_secret_in(tracking_uri, **{"URI passed to the trials": tracking_uri})
        check_reachable(tracking_uri)
        plan = dataclasses.replace(plan, tracking_uri=tracking_uri)
        opened: OpenedSweep | None = None  # once it is, an interrupt leaves the sweep resumable
        try:
            with interrupts_recorded():
                with ray_for_sweep(spec, address):
                    opened = open_sweep(spec, plan, source)
                    ran = run_trials(opened, started)
                if ran.n_unfinished:  # Tune stopped trials without an error: it was interrupted
                    raise Signalled(signal.SIGINT)
                return _finished(opened, ran, started)
        except Signalled as stop:
            if opened is not None:
                close_interrupted(opened)
            raise SweepInterrupted(stop.signum, plan.folder.path, resumable=opened is not None) from None


def _finished(opened: OpenedSweep, ran: TrialsRan, started: float) -> SweepOutcome:
    conclusion = close_sweep(opened, ran.n_failed)
    plan = opened.plan
    return SweepOutcome(plan.folder.path, plan.tracking_uri, opened.spec.name, opened.sweep_run_id, ran.n_trials,
                        ran.n_failed, time.perf_counter() - started, ran.disk_fault, opened.experiment_id, conclusion)
