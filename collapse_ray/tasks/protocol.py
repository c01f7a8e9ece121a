"""The task protocol as task modules and the sweep see it: the engine's types and loop-time
hooks (collapse_ray/core/types.py), the sweep-time hooks declared here, and the whole list.

Optional hooks: a task may offer more than `Task`, each a small runtime-checkable
protocol (`OPTIONAL_HOOKS` lists them all), asked with `isinstance` where it is used; a
task offers a hook by defining its methods. The loop's hooks live in core/types.py, the
sweep's here: tests/test_task_contract.py fails on a hook looked up anywhere else that is
not declared in one of the two, and on a task that defines part of one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from collapse_ray.core.types import (
    LOOP_HOOKS, AdditiveStatisticsTask, DrawsIterations, KeepsFiles, Metrics, PoolOnDiskTask, RealData,
    RecordsSubset, ReportsFitCurve, Rows, StopsEarly, Task,
)
from collapse_ray.validation import Validated, check_min, require

if TYPE_CHECKING:
    from collapse_ray.core.chain import ChainConfig, ExecutionConfig

__all__ = [
    "OPTIONAL_HOOKS", "AdditiveStatisticsTask", "ChecksChain", "ChecksCluster", "ChecksRun",
    "DrawsIterations", "FitsEmptyTrainingSet", "KeepsFiles", "Metrics", "PoolOnDiskTask", "PreparesSweep",
    "RealData", "RecordsSubset", "ReportsFitCurve", "Rows", "SharesFits", "SizesState", "StopsEarly", "Task",
    "check_value_grid", "offers",
]


# Sweep-time hooks. Each docstring says who calls it, and when.


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


@runtime_checkable
class PreparesSweep(Protocol):
    def prepare_sweep(self, shared_dir: Path) -> None:
        """The sweep's driver, once per grid cell before any trial: write files every cell reads (e.g. sft's pools)
        into `shared_dir`, the folder the sweep gives its chains to share (the task never derives it)."""


@runtime_checkable
class SharesFits(Protocol):
    def with_shared_dir(self, shared_dir: Path) -> Task:
        """A sweep's trial, before its chain starts: the task that keeps its fits, and reads what prepare_sweep
        wrote, in `shared_dir`, the folder the sweep gives its chains to share, where chains whose fits would be
        the same one (each workflow's iteration 1) find it. A task never given one keeps them in its workdir."""


OPTIONAL_HOOKS: tuple[type, ...] = (
    Validated, ChecksChain, ChecksRun, ChecksCluster, FitsEmptyTrainingSet, SizesState, PreparesSweep, SharesFits,
) + LOOP_HOOKS
"""Every optional hook a task may offer: the sweep's, in the order a sweep meets them, then the loop's."""


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
