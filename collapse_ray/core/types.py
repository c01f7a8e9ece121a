"""The engine's types: what the chain loop needs from a task setting, and the hooks the loop asks for.

A task is a frozen, validated config that also knows how to draw its real data, fit a
model to a training set, sample synthetic rows from a fitted model and evaluate a fitted
model on held-out real data.

Everything is *batched over chains*: a training set is a mapping of column name to an
array whose first axis is the chain (one chain per seed), so cheap numpy tasks run a
hundred seeds in one vectorised call. Expensive tasks (language models) set
`batched = False` and always see exactly one chain. Randomness comes in as one
`numpy.random.Generator` per chain; a chain's results therefore do not depend on which
other chains share its batch. Tasks never import Ray.

How the language models fit the same protocol (tasks/pretraining.py, tasks/sft.py):
they are unbatched (one chain per trial) and their rows are a `text` column. `fit`
hands the selected texts to a backend in `collapse_ray.text.backends` (Ray Train's
TorchTrainer driving DeepSpeed, or in-process) and returns a saved model folder;
`sample` is batch inference over that folder (Ray Data actors, or in-process);
`evaluate` is cross-entropy on the held-out real split. The loop, workflows and
checkpoint/resume logic are the same as for every other task.

The loop-time hooks are declared here (the loop asks for them); the sweep-time ones
beside the task modules, in tasks/protocol.py, whose OPTIONAL_HOOKS lists them all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from collapse_ray.core.disk_pool import PoolSelection
    from collapse_ray.core.shards import ShardTarget

Rows = Mapping[str, np.ndarray]
"""Column name -> array of shape (n_chains, n_rows, ...)."""

Metrics = dict[str, np.ndarray]
"""Metric name -> array of shape (n_chains,). Always contains 'test_loss'."""


@dataclass(frozen=True)
class RealData:
    """A task's real data for a batch of chains."""

    train: Rows  # (n_chains, n_real, ...): iteration 1 fits these
    test: Any  # held-out real data, in whatever form `evaluate` wants
    context: Any = None
    """Fixed per-chain facts that fitting and sampling need: linear regression's design
    (rows are design-row indices with labels; synthetic labels are drawn on the same
    inputs), blobs' centres for fresh real rows, later the prompts of conditional tasks."""


@runtime_checkable
class Task(Protocol):
    name: ClassVar[str]
    batched: ClassVar[bool]  # may several chains share one call?

    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData: ...

    def fit(self, train: Rows, context: Any = None) -> Any: ...

    def sample(self, model: Any, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Rows: ...

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Rows:
        """n fresh real rows (for workflows that receive new real data every iteration)."""
        ...

    def evaluate(self, model: Any, test: Any) -> Metrics: ...

    def row_nbytes(self) -> int:
        """Bytes one pool row takes in memory (sizes seed batches)."""
        ...


@runtime_checkable
class AdditiveStatisticsTask(Task, Protocol):
    """A task whose fit depends on the training set only through additive statistics.

    For workflows whose next training set is the newest rows alone (replace) or the
    previous training set plus them (accumulate), the loop then keeps statistics
    instead of rows: it merges rather than refits (a cost flat in the iteration index),
    and draws the statistics of the new synthetic rows directly where the task can.
    """

    def statistics(self, rows: Rows, context: Any = None) -> Any: ...

    def merge(self, a: Any, b: Any) -> Any: ...

    def fit_statistics(self, stats: Any) -> Any: ...

    def sample_statistics(self, model: Any, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Any:
        """Statistics of n rows sampled from `model`, equal in distribution to
        `statistics(sample(model, n, rngs, context), context)`."""
        ...


# Loop-time hooks. Each docstring says when the loop calls it.


@runtime_checkable
class KeepsFiles(Protocol):
    def with_workdir(self, workdir: Path) -> Task:
        """The loop, at a chain's start when it checkpoints: the task that keeps its files (tokenizers, models) there."""


@runtime_checkable
class DrawsIterations(Protocol):
    def iteration_artifacts(self, model: Any, context: Any) -> dict[str, bytes]:
        """The loop, after each evaluation with a sink: pictures of the model (file name -> bytes), logged under
        samples/iteration_TTT/ of the chain's MLflow run."""


@runtime_checkable
class ReportsFitCurve(Protocol):
    def iteration_series(self, model: Any) -> dict[str, list[tuple[int, float]]]:
        """The loop, after each evaluation with a sink: a curve inside the fit (name -> [(step, value)]), logged as
        metric name/iteration_TTT (language models: held-out loss against optimiser step)."""


@runtime_checkable
class PoolOnDiskTask(Protocol):
    """The task's rows live in the pool's Parquet shards, never in the trial process (language models,
    whose pools reach tens of GB). The loop then holds only the pool's blocks (pool.DiskPool). Unbatched
    row-path tasks only."""

    def real_data_on_disk(self, n_real: int, rngs: Sequence[np.random.Generator],
                          target: ShardTarget | None) -> RealData:
        """The loop, at a chain's start: as real_data, but the training rows are written to `target`
        (shards.ShardTarget; None on resume: already there) and RealData.train is empty."""

    def fit_on_disk(self, selection: PoolSelection, context: Any) -> Any:
        """The loop, each iteration: as fit, on the rows the handle names (pool.PoolSelection: root,
        the shards and the rows taken from each, chain); the task's workers stream them from the shards."""

    def sample_on_disk(self, model: Any, n: int, rngs: Sequence[np.random.Generator], context: Any,
                       target: ShardTarget) -> None:
        """The loop, each iteration but the last: as sample, but the n rows are written to `target`
        (shards.ShardWriter: a hidden file, then a rename); the loop records the shard's sha256."""


@runtime_checkable
class StopsEarly(Protocol):
    def stop_condition(self, metrics: Metrics) -> np.ndarray | None:
        """The loop, after each evaluation: bool per running chain, true where it stops now (None: none stops);
        chain.n_iterations stays the cap."""

    def take_chains(self, stats: Any, test: Any, context: Any, index: np.ndarray) -> tuple[Any, Any, Any]:
        """The loop, when chains stop: (stats, test, context) of the chains at positions `index` only (stats is
        None on the rows path), so stopped chains leave the batch."""


@runtime_checkable
class RecordsSubset(Protocol):
    def records_iteration(self, t: int) -> bool:
        """The loop, after each evaluation: keep iteration t's metrics? (stopping iterations and the last are
        always kept)."""


LOOP_HOOKS: tuple[type, ...] = (KeepsFiles, PoolOnDiskTask, DrawsIterations, ReportsFitCurve, StopsEarly, RecordsSubset)
"""The hooks the chain loop asks a task for."""
