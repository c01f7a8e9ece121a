"""The task protocol: what the chain loop needs from a task setting.

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

Optional hooks: a task may offer more than `Task`, each a small runtime-checkable
protocol below (`OPTIONAL_HOOKS` lists them all), asked with `isinstance` where it is
used; a task offers a hook by defining its methods. This file is the whole list:
tests/test_task_contract.py fails on a hook looked up anywhere else that is not declared
here, and on a task that defines part of one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from ..validation import Validated, check_min, require

if TYPE_CHECKING:  # (the chain and spec modules import this one)
    from ..chain import ChainConfig
    from ..pool import PoolSelection, ShardTarget
    from ..spec import ExecutionConfig

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


# Optional hooks. Each docstring says who calls it, and when.


@runtime_checkable
class ChecksChain(Protocol):
    def check_chain(self, chain: ChainConfig, where: str) -> None:
        """Spec time, once per grid cell, with the cell's resolved chain: task-specific size rules (SpecError)."""


@runtime_checkable
class ChecksRun(Protocol):
    def check_run(self, run: ExecutionConfig, where: str) -> None:
        """Spec time, once per grid cell: task-specific rules on the `run:` block (SpecError)."""


@runtime_checkable
class ChecksCluster(Protocol):
    def check_cluster(self, run: ExecutionConfig, cpus: float, where: str) -> None:
        """The sweep's driver, once Ray is up and before any trial: one chain must fit the cluster's CPUs (SpecError)."""


@runtime_checkable
class FitsEmptyTrainingSet(Protocol):
    fits_empty_training_set: ClassVar[bool]
    """Spec time: when true, chain.n_real = 0 is meaningful (value grids); else it is refused."""


@runtime_checkable
class SizesState(Protocol):
    def state_nbytes(self) -> int:
        """Spec time, in the memory pre-check: bytes a fitted state takes beyond the pool (e.g. a d x d covariance)."""


SHARED_FOLDER = "_shared"
"""Beside a sweep's chain folders (chains/_shared): the files its chains share (PreparesSweep, SharesFits)."""


@runtime_checkable
class PreparesSweep(Protocol):
    def prepare_sweep(self, shared_dir: Path) -> None:
        """The sweep's driver, once per grid cell before any trial: write files every cell reads (e.g. sft's pools)."""


@runtime_checkable
class KeepsFiles(Protocol):
    def with_workdir(self, workdir: Path) -> Task:
        """The loop, at a chain's start when it checkpoints: the task that keeps its files (tokenizers, models) there."""


@runtime_checkable
class SharesFits(Protocol):
    def with_shared_dir(self, shared_dir: Path) -> Task:
        """A sweep's trial, before its chain starts: the task that keeps its fits in the sweep's shared folder,
        where chains whose fits would be the same one (each workflow's iteration 1) find it."""


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
        (pool.ShardTarget; None on resume: already there) and RealData.train is empty."""

    def fit_on_disk(self, selection: PoolSelection, context: Any) -> Any:
        """The loop, each iteration: as fit, on the rows the handle names (pool.PoolSelection: root,
        the shards and the rows taken from each, chain); the task's workers stream them from the shards."""

    def sample_on_disk(self, model: Any, n: int, rngs: Sequence[np.random.Generator], context: Any,
                       target: ShardTarget) -> None:
        """The loop, each iteration but the last: as sample, but the n rows are written to `target`
        (pool.ShardWriter: a hidden file, then a rename); the loop records the shard's sha256."""


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


OPTIONAL_HOOKS: tuple[type, ...] = (
    Validated, ChecksChain, ChecksRun, ChecksCluster, FitsEmptyTrainingSet, SizesState, PreparesSweep, SharesFits,
    KeepsFiles, PoolOnDiskTask, DrawsIterations, ReportsFitCurve, StopsEarly, RecordsSubset,
)
"""Every optional hook a task may offer, in the order a sweep meets them."""


def offers(task: Any, hook: type) -> bool:
    """Does `task` offer `hook`? For FitsEmptyTrainingSet, the flag must also be true."""
    if hook is FitsEmptyTrainingSet:
        return isinstance(task, FitsEmptyTrainingSet) and bool(task.fits_empty_training_set)
    return isinstance(task, hook)


def check_value_grid(task, where: str, min_pool_real: int) -> None:
    """The value-grid fields a task shares with sft's (value_pool_size, value_pool_real,
    n_value_pools, value_pool, value_synthetic), checked once for every task that has
    them; min_pool_real: the fewest real rows the task's pool generator can be fitted on."""
    for name in ("value_pool_size", "value_pool_real", "value_synthetic", "value_pool"):
        check_min(getattr(task, name), 0, f"{where}.{name}")
    check_min(task.n_value_pools, 1, f"{where}.n_value_pools")
    require(task.value_synthetic <= task.value_pool_size, f"{where}.value_synthetic",
            f"<= value_pool_size ({task.value_pool_size})", task.value_synthetic)
    require(task.value_pool < task.n_value_pools, f"{where}.value_pool",
            f"< n_value_pools ({task.n_value_pools})", task.value_pool)
    if task.value_pool_size:
        check_min(task.value_pool_real, min_pool_real, f"{where}.value_pool_real")
