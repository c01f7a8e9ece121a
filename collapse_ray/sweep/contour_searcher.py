"""The Ray Tune side of the value grid's adaptive search: a `Searcher` that hands Tune the
jobs of the cells collapse_ray.sweep.contour_search.ContourSearch picks, and feeds it each
finished job's per-seed test losses, read back from the job's MLflow run (so a trial that a
resumed sweep skips, its run finished before, counts as well).

Tune asks for a trial whenever it has room (`suggest`); the cells of one batch are queued
whole, so all pools and seeds of a cell run together, and the next batch is chosen only
when nothing is queued or running (the search's batches are synchronous). The state is
saved in the sweep folder after every change; Tune's own searcher checkpoint is skipped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from collapse_ray.sweep.contour_grid import METRIC, ValueGridCells
from collapse_ray.sweep.contour_search import ContourSearch, resolve_batch_size
from collapse_ray.core.jobs import ChainJob
from collapse_ray.sweep.spec import SweepSpec

Losses = tuple[list[int], list[float]]


class ContourSearcher(Searcher):
    """Suggests one job per trial from the search's batches; FINISHED once it has stopped."""

    def __init__(self, search: ContourSearch, state_path: Path, job_configs: Mapping[str, dict[str, Any]],
                 read_losses: Callable[[str], Losses | None]):
        super().__init__(metric=None, mode=None)
        self.search, self.state_path = search, Path(state_path)
        self.job_configs = dict(job_configs)
        self.read_losses = read_losses
        self._queue: deque[str] = deque()
        self._running: dict[str, str] = {}  # trial id -> job key

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the param space holds only the sweep's context, merged into every suggestion by Tune

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if not self._queue:
            if self._running:  # a batch is still running: the next is chosen from its results
                return None
            jobs = self.search.next_jobs()
            self.search.save(self.state_path)
            if jobs is None:
                return Searcher.FINISHED
            self._queue.extend(jobs)
        key = self._queue.popleft()
        self._running[trial_id] = key
        return {"job": self.job_configs[key]}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        key = self._running.pop(trial_id, None)
        if key is None:
            return
        if error:
            self.search.record_failure(key)
        else:
            losses = self.read_losses(key)
            if losses is None:  # stopped before its run finished (an interrupt): pending again on resume
                return
            self.search.record(key, *losses)
        self.search.save(self.state_path)

    # Tune saves searchers into its own experiment folder; this one's state is the sweep folder's
    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        return None

    def save(self, checkpoint_path: str) -> None:
        return None

    def restore(self, checkpoint_path: str) -> None:
        return None


def open_search(spec: SweepSpec, jobs: Sequence[ChainJob], state_path: Path, cpus: float) -> ContourSearch:
    """The sweep's search: saved at `state_path` (a resumed or grown sweep), else new, with
    its batch size fixed now (search.batch_size, or from the sweep's concurrency)."""
    cells = ValueGridCells.from_jobs(jobs)
    trials_per_cell = max((len(j) for j in cells.jobs), default=1)
    batch = resolve_batch_size(spec.search, spec.run.max_concurrent_trials, cpus, spec.run.cpus_per_trial,
                               trials_per_cell)
    return ContourSearch.open(state_path, cells, spec.search, batch)


def mlflow_losses(client, tracking_uri: str, experiment_id: str, sweep_run_id: str) -> Callable[[str], Losses | None]:
    """A reader of one job's per-seed test losses at its last iteration, from its finished
    MLflow chain run's chains.parquet (None while the run is not finished)."""
    import tempfile

    import pandas as pd

    from collapse_ray.tracking.layout import CHAIN_TABLE, JOB_KEY_TAG, PARENT_TAG
    from collapse_ray.tracking.results import artifact_on_disk

    def read(job_key: str) -> Losses | None:
        runs = client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{sweep_run_id}' and "
                                  f"tags.`{JOB_KEY_TAG}` = '{job_key}'", max_results=2)
        if not runs or runs[0].info.status != "FINISHED":
            return None
        run = runs[0]
        found = artifact_on_disk(tracking_uri, run.info.artifact_uri, CHAIN_TABLE)
        if found is not None:
            table = pd.read_parquet(found, columns=["seed", "iteration", METRIC])
        else:
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(run.info.run_id, CHAIN_TABLE, tmp)
                table = pd.read_parquet(local, columns=["seed", "iteration", METRIC])
        last = table[table["iteration"] == table.groupby("seed")["iteration"].transform("max")].sort_values("seed")
        return [int(s) for s in last["seed"]], [float(v) for v in last[METRIC]]

    return read
