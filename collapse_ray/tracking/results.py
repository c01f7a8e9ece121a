"""The results table: every finished chain run's per-seed rows, read back from the store
(in place where the artifacts are on this machine), and written as CSV or Parquet."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from collapse_ray.tracking.credentials import redact_uri
from collapse_ray.tracking.layout import CELL_ROLE, CHAIN_TABLE, PARENT_TAG, ROLE_TAG, SWEEP_TAG
from collapse_ray.tracking.store import ARTIFACTS_DIR, client_for, default_artifact_root
from collapse_ray.validation import SpecError


def results_table(tracking_uri: str, experiment: str, sweep_run_id: str | None = None, all_sweeps: bool = False) -> pd.DataFrame:
    """One row per (run, seed, iteration): swept parameters, workflow, seed, iteration, metrics.

    Reads the newest sweep of the experiment unless `sweep_run_id` or `all_sweeps` says otherwise.
    """
    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise SpecError(f"experiment must be one of {{{', '.join(names)}}} (the experiments in "
                        f"{redact_uri(tracking_uri)}); got {experiment!r}: for another store pass --results-dir "
                        "(the folder `run --out` wrote) or --tracking-uri")
    sweeps = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` != ''", order_by=["attributes.start_time DESC"]
    )
    if sweep_run_id is not None:
        chosen = [sweep_run_id]
    elif all_sweeps:
        chosen = [r.info.run_id for r in sweeps]
    else:
        chosen = [r.info.run_id for r in sweeps[:1]]
    frames = []
    for parent in chosen:
        children = client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'", max_results=50000
        )
        for run in children:
            if run.info.status != "FINISHED" or run.data.tags.get(ROLE_TAG) == CELL_ROLE:  # cells hold means only
                continue
            found = artifact_on_disk(tracking_uri, run.info.artifact_uri, CHAIN_TABLE)
            if found is not None:
                frames.append(pd.read_parquet(found).assign(sweep_run_id=parent))
                continue
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(run.info.run_id, CHAIN_TABLE, tmp)
                frames.append(pd.read_parquet(local).assign(sweep_run_id=parent))
    if not frames:
        raise SpecError(f"experiment {experiment!r} has no finished chain runs yet")
    table = pd.concat(frames, ignore_index=True)
    for column in table.columns[table.dtypes == object]:
        if table[column].map(type).nunique() > 1:  # e.g. bandwidth: 0.5 in one run, "scott" in another
            table[column] = table[column].map(lambda v: None if v is None else str(v))
    return table.sort_values(["run_key", "seed", "iteration"], ignore_index=True)


def artifact_on_disk(tracking_uri: str, artifact_uri: str, name: str) -> Path | None:
    """A run's artifact in a file store on this machine, to read in place (no download
    copy): where the run recorded it, or beside a moved SQLite store; else None."""
    return _local_artifact(artifact_uri, name) or _moved_artifact(tracking_uri, artifact_uri, name)


def _local_artifact(artifact_uri: str, name: str) -> Path | None:
    """A file-store artifact where the run recorded it, else None."""
    from urllib.parse import unquote, urlsplit

    if not artifact_uri.startswith("file:"):
        return None
    path = Path(unquote(urlsplit(artifact_uri).path)) / name
    return path if path.is_file() else None


def _moved_artifact(tracking_uri: str, artifact_uri: str, name: str) -> Path | None:
    """A SQLite store's artifact found beside the database when the results folder was
    moved after the run recorded its (absolute) artifact location; else None."""
    from urllib.parse import unquote, urlsplit

    root = default_artifact_root(tracking_uri)
    if root is None or not artifact_uri.startswith("file:"):
        return None
    recorded = Path(unquote(urlsplit(artifact_uri).path))
    if (recorded / name).exists() or ARTIFACTS_DIR not in recorded.parts:
        return None
    parts = recorded.parts
    rebased = root.joinpath(*parts[len(parts) - 1 - parts[::-1].index(ARTIFACTS_DIR) + 1:]) / name
    return rebased if rebased.exists() else None


def write_table(table: pd.DataFrame, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        table.to_csv(out, index=False)
    elif out.suffix == ".parquet":
        table.to_parquet(out, index=False)
    else:
        raise SpecError(f"--out must end in one of {{.csv, .parquet}}; got {str(out)!r}")
    return out
