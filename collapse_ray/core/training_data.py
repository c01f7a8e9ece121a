"""The training data of a batch of chains, as the loop sees it: fit a model to iteration t's
training set, then add iteration t's new rows. Three kinds, one interface:

Statistics: when the task's fit depends only on additive statistics and the workflow's
next training set is the new rows alone (replace) or the old set plus them (accumulate),
the chain carries statistics instead of rows, and asks the task for the statistics of the
new samples directly (unless chain.persist_pool wants the rows).

Rows in memory: the pool (pool.ArrayPool) holds every row the workflow may still select;
each iteration fits the workflow's selection of it.

Rows on disk: a task with the PoolOnDiskTask hooks (language models) never sees rows.
Its pool is the chain's hive-partitioned Parquet (`<checkpoint_dir>/pool`, on the
storage the sweep shares), and the loop holds only its blocks (disk_pool.DiskPool: iteration,
source and rows per block, nothing per row): it gives the task a `ShardTarget` to write
its real rows and each iteration's samples into, and a `PoolSelection` handle (the
workflow's selection made block by block: whole shards, or a subsample's row ids) to
fit on, which the task's workers stream.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from collapse_ray.core.batch import ChainBatch
from collapse_ray.core.chain import ChainConfig, max_rows_held, uses_statistics
from collapse_ray.core.chain_state import Checkpoint
from collapse_ray.core.disk_pool import DiskPool
from collapse_ray.core.pool import ArrayPool
from collapse_ray.core.shards import remove_stale_temporaries
from collapse_ray.core.types import PoolOnDiskTask, RealData, Task


class Phases:
    """Seconds per phase, by laps of one clock: lap(name) books the time since the last lap."""

    def __init__(self, names: Sequence[str]):
        self.seconds = dict.fromkeys(names, 0.0)
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] += now - self.last
        self.last = now


class TrainingData:
    """The interface, and what the three kinds share: adding an iteration's rows, and the shards."""

    continuable = False
    """Can a finished chain run on to more iterations exactly as a longer chain would (growing
    a sweep)? It then also draws its last iteration's samples; see run_chain."""

    def __init__(self, task: Task, chain: ChainConfig, pool: ArrayPool | DiskPool, real: RealData, stats: Any,
                 pool_dir: Path | None):
        self.task, self.chain, self.workflow = task, chain, chain.policy()
        self.pool = pool
        self.real = real  # every chain's
        self.stats = stats  # the next training set's statistics (statistics path), else None
        self.pool_dir = pool_dir

    @classmethod
    def open(cls, task: Task, chain: ChainConfig, seeds: Sequence[int], data_rngs: Sequence[np.random.Generator],
             saved: Checkpoint | None, pool_dir: Path | None) -> TrainingData:
        """The real data, the pool holding its rows, and on resume what `saved` lists."""
        raise NotImplementedError

    def fit(self, t: int, batch: ChainBatch, phases: Phases) -> Any:
        """A model fitted to iteration t's training set, for each running chain."""
        raise NotImplementedError

    def _sample(self, t: int, model: Any, rngs: list[np.random.Generator], batch: ChainBatch, phases: Phases) -> Any:
        """Iteration t's synthetic rows into the pool; what `_absorb` takes of them."""
        raise NotImplementedError

    def add(self, t: int, model: Any, batch: ChainBatch, phases: Phases) -> None:
        """Iteration t's synthetic rows, sampled from `model`, and the fresh real rows the
        workflow takes, into the training data (and, with chain.persist_pool, the shards)."""
        rngs, context = batch.running_rngs(), batch.live.context
        new = self._sample(t, model, rngs, batch, phases)
        if self.workflow.n_fresh_real:  # new real data arrive alongside the synthetic rows
            fresh = self.task.sample_real(self.workflow.n_fresh_real, rngs, context)
            self.pool.add(batch.padded(fresh), iteration=t, source="real")
            new = self._with_fresh(new, fresh, context)
        self._absorb(new)
        phases.lap("sample")
        if self.chain.persist_pool:
            self.write_shards()
            phases.lap("checkpoint")

    def _with_fresh(self, new: Any, fresh: Any, context: Any) -> Any:
        return new

    def _absorb(self, new: Any) -> None:
        pass

    def write_shards(self) -> None:
        self.pool.write_shards(self.pool_dir)

    def manifest(self, keep: bool) -> list[dict]:
        """The shards a checkpoint lists, written first; none if it need not `keep` the pool."""
        if not keep:
            return []
        self.write_shards()
        return self.pool.manifest()


class RowsInMemory(TrainingData):
    """The pool (pool.ArrayPool) holds every row the workflow may still select."""

    @property
    def continuable(self) -> bool:  # when its pool is kept anyway
        return self.chain.persist_pool

    @classmethod
    def keeps_history(cls, chain: ChainConfig) -> bool:
        return chain.policy().needs_history

    @classmethod
    def open(cls, task, chain, seeds, data_rngs, saved, pool_dir) -> TrainingData:
        keep_history = cls.keeps_history(chain)
        capacity = max_rows_held(chain.policy(), task, chain.n_real, chain.n_synthetic, chain.n_iterations)
        real = task.real_data(chain.n_real, data_rngs)
        if saved is None:
            pool = ArrayPool(seeds, keep_history=keep_history, capacity=capacity)
            pool.add(dict(real.train), iteration=0, source="real")
        elif saved.state.finished(chain.n_iterations) or (saved.continues and not chain.persist_pool):
            pool = ArrayPool(seeds, keep_history=keep_history, capacity=capacity)  # nothing to read
        else:  # exactly the shards the checkpoint lists, each checked against its hash
            pool = ArrayPool.load(pool_dir, seeds, saved.state.iteration, keep_history, capacity,
                                  manifest=saved.manifest)
        return cls(task, chain, pool, real, saved.state.stats if saved is not None else None, pool_dir)

    def fit(self, t: int, batch: ChainBatch, phases: Phases) -> Any:
        train = batch.running_rows(self.pool.take(self.workflow.select(self.pool.index, t, batch.rngs)))
        phases.lap("pool")
        return self.task.fit(train, batch.live.context)

    def _sample(self, t, model, rngs, batch, phases) -> Any:
        rows = self.task.sample(model, self.chain.n_synthetic, rngs, batch.live.context)
        phases.lap("sample")
        self.pool.add(batch.padded(rows), iteration=t, source="synthetic")
        phases.lap("pool")
        return rows


class Statistics(RowsInMemory):
    """Statistics carried instead of rows; the pool holds only the real rows and the newest
    iteration's fresh ones (and its samples, with chain.persist_pool)."""

    continuable = True  # its statistics and generators are all it needs (one cheap draw)

    @classmethod
    def keeps_history(cls, chain: ChainConfig) -> bool:
        return False

    def fit(self, t: int, batch: ChainBatch, phases: Phases) -> Any:
        if self.stats is None:  # iteration 1: the real rows
            self.stats = self.task.statistics(self.pool.rows_of(0), self.real.context)
        return self.task.fit_statistics(self.stats)

    def _sample(self, t, model, rngs, batch, phases) -> Any:
        if not self.chain.persist_pool:  # drawn directly
            return self.task.sample_statistics(model, self.chain.n_synthetic, rngs, batch.live.context)
        return self.task.statistics(super()._sample(t, model, rngs, batch, phases), batch.live.context)

    def _with_fresh(self, new: Any, fresh: Any, context: Any) -> Any:
        return self.task.merge(new, self.task.statistics(fresh, context))

    def _absorb(self, new: Any) -> None:
        self.stats = new if self.workflow.update == "replace" else self.task.merge(self.stats, new)


class RowsOnDisk(TrainingData):
    """The pool's shards are the rows; only its blocks are held here (not continuable: a
    language model's extra draw would be a whole generation pass)."""

    @classmethod
    def open(cls, task, chain, seeds, data_rngs, saved, pool_dir) -> TrainingData:
        keep_history = chain.policy().needs_history
        if saved is None or saved.state.finished(chain.n_iterations):
            pool = DiskPool(pool_dir, seeds, keep_history=keep_history)
        else:  # exactly the shards the checkpoint lists, each checked against its hash
            pool = DiskPool.load(pool_dir, seeds, keep_history, saved.manifest)
        target = pool.target(0, "real") if saved is None else None
        real = task.real_data_on_disk(chain.n_real, data_rngs, target)
        if target is not None:
            pool.added(target)
        return cls(task, chain, pool, real, saved.state.stats if saved is not None else None, pool_dir)

    def fit(self, t: int, batch: ChainBatch, phases: Phases) -> Any:
        # a handle on the selected rows; the task's workers read them
        return self.task.fit_on_disk(self.pool.select(self.workflow, t, batch.rngs), batch.live.context)

    def _sample(self, t, model, rngs, batch, phases) -> None:
        target = self.pool.target(t, "synthetic")  # the samples go straight into their shard
        self.task.sample_on_disk(model, self.chain.n_synthetic, rngs, batch.live.context, target)
        self.pool.added(target)


def open_training_data(task: Task, chain: ChainConfig, seeds: Sequence[int], data_rngs: Sequence[np.random.Generator],
                       saved: Checkpoint | None, pool_dir: Path | None) -> TrainingData:
    """The chains' training data at the start of a run: the real rows, and on resume what `saved` lists."""
    if pool_dir is not None and pool_dir.exists():
        remove_stale_temporaries(pool_dir)  # left by a writer killed mid-shard
    kind = (RowsOnDisk if isinstance(task, PoolOnDiskTask)
            else Statistics if uses_statistics(chain.policy(), task) else RowsInMemory)
    data = kind.open(task, chain, seeds, data_rngs, saved, pool_dir)
    if chain.persist_pool:
        data.write_shards()
    return data
