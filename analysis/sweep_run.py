"""A sweep in its MLflow store: its results table, and its parent run, where the
figures drawn from that table are logged so the MLflow UI shows them beside the runs.

The parent run is the one `collapse-ray run` opened for the sweep (tagged
`collapse_ray.sweep_dir`, see collapse_ray/tracking/layout.py); its chain runs point to it
with `mlflow.parentRunId`, and the results table names it in `sweep_run_id`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.tables import InputError

FIGURES_FOLDER = "figures"  # the parent run's artifact folder for them


@dataclass(frozen=True)
class Sweep:
    experiment: str
    tracking_uri: str
    parent_run_id: str
    table: pd.DataFrame


def tracking_uri_for(results_dir: str | Path, tracking_uri: str | None) -> str:
    """The store a sweep logged to: --tracking-uri, else $MLFLOW_TRACKING_URI, else
    results_dir/mlflow.db (what `collapse-ray run --out results_dir` wrote). A SQLite
    store that does not exist is refused (MLflow would create an empty one)."""
    from collapse_ray.tracking.credentials import redact_uri
    from collapse_ray.tracking.store import resolve_tracking_uri, sqlite_path
    from collapse_ray.validation import SpecError

    try:
        uri = resolve_tracking_uri(tracking_uri, results_dir)
    except SpecError as error:
        raise InputError(str(error)) from None
    path = sqlite_path(uri)
    if path is not None and not path.is_file():
        raise InputError(f"no MLflow store at {redact_uri(uri)}: pass --results-dir (the folder "
                         "`collapse-ray run --out` wrote) or --tracking-uri")
    return uri


def read_sweep(tracking_uri: str, experiment: str) -> Sweep:
    """The newest sweep of `experiment`: its results table and its parent run."""
    from collapse_ray.tracking.results import results_table
    from collapse_ray.validation import SpecError

    try:
        table = results_table(tracking_uri, experiment)
    except SpecError as error:
        raise InputError(str(error)) from None
    parents = sorted(table["sweep_run_id"].astype(str).unique())
    if len(parents) != 1:  # results_table reads one sweep unless asked for all
        raise InputError(f"experiment {experiment!r}: expected the chains of one sweep, got sweeps {parents}")
    return Sweep(experiment, tracking_uri, parents[0], table)


def log_figures(sweep: Sweep, paths: Sequence[Path], pdf: bool = False) -> list[str]:
    """Each figure (and, with `pdf`, the PDF beside it) as an artifact of the sweep's
    parent run, under figures/; returns the artifact paths."""
    from collapse_ray.tracking.layout import SWEEP_TAG
    from collapse_ray.tracking.store import client_for

    client = client_for(sweep.tracking_uri)
    if not client.get_run(sweep.parent_run_id).data.tags.get(SWEEP_TAG):
        raise InputError(f"run {sweep.parent_run_id} is not a sweep's parent run (no {SWEEP_TAG} tag)")
    logged = []
    for path in paths:
        for file in [path] + ([path.with_suffix(".pdf")] if pdf else []):
            client.log_artifact(sweep.parent_run_id, str(file), FIGURES_FOLDER)
            logged.append(f"{FIGURES_FOLDER}/{file.name}")
    return logged


def sweep_folder(sweep: Sweep, results_dir: Path) -> Path:
    """The sweep's own folder (its run's collapse_ray.sweep_dir tag), where `collapse-ray
    run` drew its figures; RESULTS_DIR/<experiment>/<run id> when that folder is not here."""
    from collapse_ray.tracking.layout import SWEEP_TAG
    from collapse_ray.tracking.store import client_for

    recorded = client_for(sweep.tracking_uri).get_run(sweep.parent_run_id).data.tags.get(SWEEP_TAG)
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return Path(results_dir) / sweep.experiment / sweep.parent_run_id
