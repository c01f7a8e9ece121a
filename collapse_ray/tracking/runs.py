"""Sweep and chain runs in MLflow: made (or found again when a trial comes back) with
their provenance, params, spec and datasets, and a chain run finished with its per-seed
table."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from collapse_ray.core.jobs import ChainJob
from collapse_ray.tracking.layout import CHAIN_TABLE, JOB_KEY_TAG, PARENT_TAG, SWEEP_TAG
from collapse_ray.tracking.params import (N_ITERATIONS_TAG, chain_run_params, chain_run_tags, job_params, sweep_params,
                                         sweep_tags)

SOURCE_TAGS = {"mlflow.source.type": "LOCAL"}
VERSION_TAG = "collapse_ray.version"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
PER_SEED_TABLE = "per_seed.json"  # chains.parquet's rows as a table MLflow's artifact view renders
MAX_TABLE_ROWS = 50_000  # larger chain tables (very long chains) stay Parquet only
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the git checkout the package runs from (None when it is installed
    elsewhere or git is missing); ' (dirty)' is not added: the tag holds a hash."""
    folder = folder or Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def run_provenance(source: str | None) -> dict[str, str]:
    """Tags every sweep run gets: package version, git commit, source (the spec file)."""
    from collapse_ray import __version__

    tags = {VERSION_TAG: __version__, **SOURCE_TAGS}
    if source:
        tags["mlflow.source.name"] = source
    commit = git_commit()
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    return tags


def start_sweep_run(client, experiment_id: str, run_name: str, sweep_dir: Path, resolved_spec: dict,
                    description: str = "", source: str | None = None, datasets: Sequence = ()) -> str:
    tags = {SWEEP_TAG: str(sweep_dir), **run_provenance(source), **sweep_tags(resolved_spec)}
    if description:  # the spec's header comment: the UI shows it as the run's description
        tags["mlflow.note.content"] = description
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    _log_params(client, run.info.run_id, sweep_params(resolved_spec))
    log_spec(client, run.info.run_id, resolved_spec)
    log_datasets(client, run.info.run_id, datasets)
    return run.info.run_id


def log_spec(client, run_id: str, resolved_spec: dict) -> None:
    import yaml

    client.log_text(run_id, yaml.safe_dump(resolved_spec, sort_keys=False), "spec.yaml")


def grow_sweep_run(client, run_id: str, resolved_spec: dict) -> None:
    """The sweep run after --resume grew it: the new spec.yaml, seeds and iteration count."""
    log_spec(client, run_id, resolved_spec)
    for key, value in sweep_tags(resolved_spec).items():
        client.set_tag(run_id, key, value)


def real_data_datasets(points: Sequence) -> list:
    """MLflow dataset entities for the real data of the sweep's cells, one per distinct
    source: a local file or folder, a Hugging Face hub dataset, or data the task draws
    or bundles itself (a code source naming the task and its `source`)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    found: dict[tuple[str, str], Any] = {}
    for point in points:
        task = point.task
        source = getattr(task, "source", None)
        key = (task.name, str(source))
        if key in found:
            continue
        if isinstance(source, str) and source and Path(source).expanduser().exists():
            import warnings

            from mlflow.data.dataset_source_registry import resolve_dataset_source

            # MLflow registers its local source class at import (there is no importable name),
            # twice, and warns that a path could be either: it is the same class
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                origin = resolve_dataset_source(str(Path(source).expanduser().resolve()))
            name = Path(source).name
        elif isinstance(source, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", source):
            origin, name = HuggingFaceDatasetSource(path=source), source
        else:
            what = {"task": task.name, **({"source": str(source)} if source is not None else {})}
            origin = CodeDatasetSource(tags={"collapse_ray.task": json.dumps(what)})
            name = f"{task.name}: {source}" if source is not None else f"{task.name} (drawn by the task)"
        found[key] = MetaDataset(origin, name=name)._to_mlflow_entity()
    return list(found.values())


def log_datasets(client, run_id: str, datasets: Sequence) -> None:
    from mlflow.entities import DatasetInput, InputTag

    if datasets:
        client.log_inputs(run_id, datasets=[DatasetInput(d, tags=[InputTag("mlflow.data.context", "real data")])
                                            for d in datasets])


@dataclass(frozen=True)
class ChainRun:
    """A job's child run as open_chain_run found or made it."""

    run_id: str
    finished: bool  # it already holds every iteration of the job
    grown: bool  # a finished run that a grown sweep lengthened (opened again)
    created: bool  # made just now: nothing is logged on it yet


def open_chain_run(client, experiment_id: str, parent_run_id: str, job: ChainJob,
                   run_name: str | None = None, datasets: Sequence = (),
                   tags: Mapping[str, str] | None = None) -> ChainRun:
    """The job's child run, reused when a retried or resumed trial comes back.
    `run_name`: see cell_run_names (default: the job's key). `tags` go on the run either
    way (in the creating call for a new run: one round trip fewer)."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{JOB_KEY_TAG}` = '{job.key}'",
        max_results=2,
    )
    tags = dict(tags or {})
    if found:
        run = found[0]
        through = int(run.data.tags.get(N_ITERATIONS_TAG, job.point.chain.n_iterations))
        if run.info.status == "FINISHED" and through >= job.point.chain.n_iterations:
            return ChainRun(run.info.run_id, finished=True, grown=False, created=False)
        grown = through < job.point.chain.n_iterations
        if run.info.status == "FINISHED":  # grown: more iterations than it ran
            client.update_run(run.info.run_id, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(run.info.run_id, key, value)
        # (the caller sets the new N_ITERATIONS_TAG once the short chain's checkpoint is gone)
        return ChainRun(run.info.run_id, finished=False, grown=grown, created=False)
    run = client.create_run(
        experiment_id,
        run_name=run_name or job.key,
        tags={PARENT_TAG: parent_run_id, JOB_KEY_TAG: job.key, "workflow": job.point.chain.workflow,
              **chain_run_tags(job), **tags},
    )
    _log_params(client, run.info.run_id, chain_run_params(job))
    log_datasets(client, run.info.run_id, datasets)
    return ChainRun(run.info.run_id, finished=False, grown=False, created=True)


def finish_chain_run(client, run_id: str, job: ChainJob, table: pd.DataFrame) -> None:
    """`table`: the loop's per-seed rows (seed, iteration, metrics)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CHAIN_TABLE
        table.assign(**{k: v for k, v in job_params(job).items()}, run_id=run_id).to_parquet(path, index=False)
        client.log_artifact(run_id, str(path))
        if len(table) <= MAX_TABLE_ROWS:
            log_per_seed_table(client, run_id, table, Path(tmp))
    client.set_terminated(run_id, "FINISHED")


def log_per_seed_table(client, run_id: str, table: pd.DataFrame, tmp: Path) -> None:
    """The per-seed rows (seed, iteration, metrics) as a JSON table in MLflow's own
    log_table format, which the run's artifact view shows as a table. Written whole
    (client.log_table would append to a grown run's earlier table)."""
    path = tmp / PER_SEED_TABLE
    table.to_json(path, orient="split", index=False)
    client.log_artifact(run_id, str(path))
    logged = json.loads(client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    entry = {"path": PER_SEED_TABLE, "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps([*logged, entry]))


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
