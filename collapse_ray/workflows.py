"""Training-workflows: which pool rows model-fitting iteration t trains on.

Semantics are (A)'s: iteration 1 fits the real rows alone (iteration of origin 0);
after fitting iteration t, n synthetic rows with iteration of origin t enter the pool.
  replace               iteration t trains on the rows of origin t-1 only
  accumulate            iteration t trains on every row in the pool
  accumulate_subsample  iteration t trains on n_train rows drawn uniformly without
                        replacement from the whole pool (not stratified by iteration)

A selection is a `slice` (the same rows for every chain: pool rows are laid out the
same way in every chain) or an int array of shape (chains, k), one row set per chain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from .tasks.protocol import AdditiveStatisticsTask, Task

Selection = slice | np.ndarray


@dataclass(frozen=True)
class PoolIndex:
    """What a workflow may look at: the iteration of origin of each row held."""

    iteration: np.ndarray  # (rows,) int


class Workflow(Protocol):
    name: ClassVar[str]
    needs_history: ClassVar[bool]
    """Does it train on rows older than the latest iteration's? If not, the pool drops them."""
    update: ClassVar[str | None]
    """How the training set at t follows from the one at t-1 and the rows added since:
    "replace" (those rows alone), "merge" (the old set plus them), or None (neither).
    Lets tasks with additive statistics skip rows altogether."""

    def select(self, index: PoolIndex, iteration: int, rngs: Sequence[np.random.Generator]) -> Selection: ...


def _contiguous(rows: np.ndarray) -> Selection:
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1:
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows  # pragma: no cover - pool rows of one iteration are always contiguous


@dataclass(frozen=True)
class Replace:
    name: ClassVar[str] = "replace"
    needs_history: ClassVar[bool] = False
    update: ClassVar[str | None] = "replace"

    def select(self, index, iteration, rngs):
        return _contiguous(np.flatnonzero(index.iteration == iteration - 1))


@dataclass(frozen=True)
class Accumulate:
    name: ClassVar[str] = "accumulate"
    needs_history: ClassVar[bool] = True
    update: ClassVar[str | None] = "merge"

    def select(self, index, iteration, rngs):
        return slice(0, len(index.iteration))


@dataclass(frozen=True)
class AccumulateSubsample:
    name: ClassVar[str] = "accumulate_subsample"
    needs_history: ClassVar[bool] = True
    update: ClassVar[str | None] = None

    n_train: int

    def select(self, index, iteration, rngs):
        n_rows = len(index.iteration)
        if self.n_train >= n_rows:
            return slice(0, n_rows)
        # Generator.choice without replacement uses Floyd's algorithm here: O(n_train).
        return np.stack([rng.choice(n_rows, self.n_train, replace=False) for rng in rngs])


WORKFLOWS: dict[str, type] = {w.name: w for w in (Replace, Accumulate, AccumulateSubsample)}
WORKFLOW_NAMES = tuple(WORKFLOWS)


def make_workflow(name: str, n_train: int | None = None) -> Workflow:
    if name == "accumulate_subsample":
        return AccumulateSubsample(n_train=n_train)
    return WORKFLOWS[name]()


def by_statistics(workflow: Workflow, task: Task) -> bool:
    """Can the chain carry the training set's statistics instead of its rows?"""
    return workflow.update is not None and isinstance(task, AdditiveStatisticsTask)


def max_rows_held(workflow: Workflow, task: Task, n_real: int, n_synthetic: int, n_iterations: int) -> int:
    """Most pool rows a chain holds in memory at once (sizes seed batches)."""
    if workflow.needs_history and not by_statistics(workflow, task):
        return n_real + n_synthetic * (n_iterations - 1)
    return n_real + n_synthetic
