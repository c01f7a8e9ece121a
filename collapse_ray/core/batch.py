"""The chains one trial runs together (one per seed), which of them still run, and their records.

Stopping: a task with a `stop_condition(metrics)` hook (types.StopsEarly) may end chains
early, with chain.n_iterations as the cap: a chain stops at the first iteration whose
metrics meet the condition (`ChainResult.stopped_at`; its last table row), is dropped
from the batch at once (the task is asked for the statistics, test data and context of
the running chains only, so it costs nothing afterwards; it samples once more, in the
iteration it stopped), and the trial ends when every chain has stopped. In the
per-iteration records a stopped chain's final metrics are carried forward, so means over
seeds logged to the sink count it at its end state (as (A)'s notebook 13 does); the
table has no rows for it after its stop. A `records_iteration(t)` hook (types.RecordsSubset)
keeps a subset of iterations (every stopping iteration and the last one are always kept).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from collapse_ray.core.chain_state import ChainState
from collapse_ray.core.types import Metrics, RealData, RecordsSubset, Rows, StopsEarly, Task

NO_STOPS = np.zeros(0, dtype=bool)


class ChainBatch:
    """Every chain's generators, stopping iterations and records; the running chains' real data."""

    def __init__(self, task: Task, state: ChainState, real: RealData, n_iterations: int):
        self.task = task
        self.rngs = state.rngs  # every chain's, stopped ones' too (a checkpoint keeps them all)
        self.records = state.records
        self.stopped_at = state.stopped_at  # None: the task has no stopping rule, every chain runs
        self.n_chains = len(state.rngs)
        self.n_iterations = n_iterations
        # decided once: isinstance on a runtime-checkable protocol is slow next to a toy iteration
        self._records_iteration = task.records_iteration if isinstance(task, RecordsSubset) else None
        self.active = None if self.stopped_at is None else np.flatnonzero(self.stopped_at == 0)
        self.live = real  # the real data of the running chains
        if self.some_stopped:  # resumed after some stopped: the saved statistics hold the rest
            self.live = self._take(None, self.active)[1]

    @staticmethod
    def fresh_state(task: Task, rngs: list[np.random.Generator]) -> ChainState:
        """The state before iteration 1, for chains drawing from `rngs`."""
        stopped_at = np.zeros(len(rngs), dtype=np.int64) if isinstance(task, StopsEarly) else None
        return ChainState(0, rngs, None, [], stopped_at=stopped_at)

    def state(self, iteration: int, stats: Any) -> ChainState:
        """What a checkpoint after `iteration` keeps (with the training data's statistics)."""
        return ChainState(iteration, self.rngs, stats, self.records, stopped_at=self.stopped_at)

    @property
    def stops_early(self) -> bool:
        return self.stopped_at is not None

    @property
    def done(self) -> bool:
        """Every chain has stopped (the trial ends before the cap)."""
        return self.stopped_at is not None and bool((self.stopped_at > 0).all())

    @property
    def some_stopped(self) -> bool:
        return self.active is not None and len(self.active) < self.n_chains

    def running_rngs(self) -> list[np.random.Generator]:
        return self.rngs if self.active is None else [self.rngs[i] for i in self.active]

    def running_rows(self, rows: Rows) -> Rows:
        """Rows of every chain restricted to the running ones."""
        return {name: column[self.active] for name, column in rows.items()} if self.some_stopped else rows

    def padded(self, rows: Rows) -> Rows:
        """Rows of the running chains padded to every chain's (the pool holds all); a stopped
        chain's padding rows are zeros, never fitted."""
        if not self.some_stopped:
            return rows
        out = {}
        for name, column in rows.items():
            out[name] = np.zeros((self.n_chains,) + column.shape[1:], dtype=column.dtype)
            out[name][self.active] = column
        return out

    def record(self, t: int, metrics: Metrics) -> np.ndarray:
        """Apply the stopping rule to iteration t's metrics (of the running chains) and keep them,
        every chain's, if iteration t is recorded; which running chains stop at t (bool each)."""
        stops = NO_STOPS
        if self.active is not None:
            condition = self.task.stop_condition(metrics)
            stops = np.zeros(len(self.active), dtype=bool) if condition is None else np.asarray(condition, dtype=bool)
            self.stopped_at[self.active[stops]] = t
            metrics = _carried_forward(metrics, self.active, self.records[-1][1] if self.records else None,
                                       self.n_chains)
        keeps = self._records_iteration
        if keeps is None or keeps(t) or t == self.n_iterations or stops.any():
            self.records.append((t, metrics))
        return stops

    def drop_stopped(self, stops: np.ndarray, stats: Any) -> Any:
        """Take the chains that stopped now out of the batch (unless all have: the trial ends);
        the statistics `stats` of the running chains become those of the ones still running."""
        if not stops.any() or self.done:
            return stats
        running = np.flatnonzero(~stops)
        stats, self.live = self._take(stats, running)
        self.active = self.active[running]
        return stats

    def _take(self, stats: Any, index: np.ndarray) -> tuple[Any, RealData]:
        """Statistics and real data of the running chains at positions `index` (stopping tasks' hook)."""
        stats, test, context = self.task.take_chains(stats, self.live.test, self.live.context, index)
        return stats, RealData(train={}, test=test, context=context)


def _carried_forward(metrics: Metrics, active: np.ndarray, previous: Metrics | None, n_chains: int) -> Metrics:
    """Metrics of the running chains, placed among every chain's, stopped ones keeping their last values."""
    if previous is None and len(active) == n_chains:
        return metrics
    out = {}
    for name, values in metrics.items():
        full = np.array(previous[name], dtype=np.float64) if previous is not None else np.full(n_chains, np.nan)
        full[active] = values
        out[name] = full
    return out
