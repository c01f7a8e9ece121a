"""The chain loop's metric sink: per-iteration means and standard errors over a job's
seeds, within-fit curves and sample files, logged to the job's MLflow run exactly once."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from collapse_ray.core.aggregate import mean_and_se
from collapse_ray.core.types import Metrics

MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
SAMPLES = "samples"  # per-iteration pictures of tasks that draw them: samples/iteration_TTT/<file>
LOGGED_TAG = "collapse_ray.logged_through_iteration"


class MlflowChainSink:
    """Per-iteration mean and standard error over a job's seeds, logged exactly once.

    The record of what is logged is exact: a tag holds the last iteration whose every
    metric is stored (set after a log_iterations call's last batch), and metrics of
    later iterations already stored (a call cut short between its batches of 1,000)
    are found per metric key and not sent again.
    """

    def __init__(self, client, run_id: str, created: bool = False):
        self.client = client
        self.run_id = run_id
        self.created = created  # the run was made by this trial: nothing is logged on it yet
        self._stored: set[tuple[str, int]] = set()  # (key, step) past the tag, already stored

    def last_logged_iteration(self) -> int:
        if self.created:  # no round trip to learn that a new run holds nothing
            return 0
        run = self.client.get_run(self.run_id)
        through = int(run.data.tags.get(LOGGED_TAG, 0))
        self._stored = {(key, m.step) for key in run.data.metrics
                        for m in self.client.get_metric_history(self.run_id, key) if m.step > through}
        return through

    def log_iterations(self, seeds: Sequence[int], records: Sequence[tuple[int, Metrics]]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = []
        for iteration, values in records:
            for name, per_seed in values.items():
                mean, se = mean_and_se(per_seed)
                metrics.append(Metric(name, mean, now, iteration))
                if len(seeds) > 1:
                    metrics.append(Metric(f"{name}_se", se, now, iteration))
        metrics = [m for m in metrics if (m.key, m.step) not in self._stored]
        if not records:
            return
        # The tag rides in the last batch: MLflow's SQL store (behind a tracking server
        # too) commits a batch's metrics before its tags, so the tag is set only once every
        # metric of these iterations is stored; a crash between the two leaves metrics
        # past the tag, which last_logged_iteration finds and never sends again.
        logged = [RunTag(LOGGED_TAG, str(records[-1][0]))]
        batches = [metrics[i : i + MAX_METRICS_PER_BATCH] for i in range(0, len(metrics), MAX_METRICS_PER_BATCH)]
        if not batches or len(batches[-1]) + len(logged) > MAX_METRICS_PER_BATCH:
            # the tag alone: every metric stored before a crash, or a full last batch (a
            # batch holds 1,000 entities, and MLflow's client would split an overfull one
            # and send the tag before the metrics that did not fit)
            batches.append([])
        for i, batch in enumerate(batches):
            self.client.log_batch(self.run_id, metrics=batch, tags=logged if i == len(batches) - 1 else ())

    def log_series(self, iteration: int, series: dict[str, Sequence[tuple[int, float]]]) -> None:
        """Curves within one iteration: metric <name>/iteration_TTT with their own steps;
        a key already stored (an iteration recomputed after a crash) is not logged again."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for name, points in series.items():
            key = f"{name}/{iteration_folder(iteration)}"
            if points and not self.client.get_metric_history(self.run_id, key):
                metrics.extend(Metric(key, float(value), now, int(step)) for step, value in points)
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])

    def log_artifacts(self, iteration: int, files: dict[str, bytes]) -> None:
        """Files of one iteration under samples/iteration_TTT/ (rewriting is harmless)."""
        if not files:
            return
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / iteration_folder(iteration)
            folder.mkdir()
            for name, content in files.items():
                (folder / name).write_bytes(content)
            self.client.log_artifacts(self.run_id, str(folder), f"{SAMPLES}/{folder.name}")


def iteration_folder(iteration: int) -> str:
    return f"iteration_{iteration:03d}"
