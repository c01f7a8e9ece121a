"""The chain loop: the one place where a task, a workflow and the pool meet.

Runs without Ray, so it can be debugged in a plain process:

    python -c "from collapse_ray.core.loop import run_chain; from collapse_ray.tasks import GaussianTask;
    from collapse_ray.core.chain import ChainConfig;
    print(run_chain(GaussianTask(dim=2), ChainConfig(workflow='replace', n_iterations=5).resolved(), seeds=[0, 1]).table)"

Per iteration t = 1..T: the workflow selects the training set, the task fits and is
evaluated on held-out real data (metrics recorded with step = t), then n_synthetic rows
are sampled from the fit into the pool with iteration of origin t.

Statistics path: when the task's fit depends only on additive statistics and the
workflow's next training set is the new rows alone (replace) or the old set plus them
(accumulate), the loop carries statistics instead of rows, and asks the task for the
statistics of the new samples directly (unless chain.persist_pool wants the rows).

Stopping: a task with a `stop_condition(metrics)` hook (protocol.py) may end chains
early, with chain.n_iterations as the cap: a chain stops at the first iteration whose
metrics meet the condition (`ChainResult.stopped_at`; its last table row), is dropped
from the batch at once (the task is asked for the statistics, test data and context of
the running chains only, so it costs nothing afterwards; it samples once more, in the
iteration it stopped), and the trial ends when every chain has stopped. In the
per-iteration records a stopped chain's final metrics are carried forward, so means over
seeds logged to the sink count it at its end state (as (A)'s notebook 13 does); the
table has no rows for it after its stop. A `records_iteration(t)` hook keeps a subset
of iterations (every stopping iteration and the last one are always kept).

Resuming: with a `checkpoint_dir`, the loop checkpoints every `chain.checkpoint_every`
iterations (pool shards first, then the state file, each written atomically) and starts
from the newest checkpoint it finds. Metrics reach the sink just before each checkpoint;
on resume the sink is asked which iteration it already holds, so an iteration logged
before a crash but after the last checkpoint is recomputed (identically: the random
state is restored) yet not logged again.

Pool on disk: a task with the PoolOnDiskTask hooks (language models) never sees rows.
Its pool is the chain's hive-partitioned Parquet (`<checkpoint_dir>/pool`, on the
storage the sweep shares), and the loop holds only its blocks (pool.DiskPool: iteration,
source and rows per block, nothing per row): it gives the task a `ShardTarget` to write
its real rows and each iteration's samples into, and a `PoolSelection` handle (the
workflow's selection made block by block: whole shards, or a subsample's row ids) to
fit on, which the task's workers stream. Toy tasks keep the in-memory ArrayPool.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from collapse_ray.core.pool import ArrayPool, DiskPool
from collapse_ray.core.shards import remove_stale_temporaries
from collapse_ray.core.chain import ChainConfig, max_rows_held, uses_statistics
from collapse_ray.core.types import (
    DrawsIterations, KeepsFiles, Metrics, PoolOnDiskTask, RealData, RecordsSubset, ReportsFitCurve, StopsEarly, Task,
)

CHECKPOINT_FILE = "checkpoint.json"  # plus the state-*.npz it names: data only (state_file.py)


class MetricSink(Protocol):
    """Where per-iteration metrics go (MLflow in sweeps)."""

    def last_logged_iteration(self) -> int:
        """Highest iteration already stored (0 if none)."""
        ...

    def log_iterations(self, seeds: Sequence[int], records: Sequence[tuple[int, Metrics]]) -> None: ...


@dataclass
class ChainResult:
    table: pd.DataFrame  # one row per (seed, iteration), a column per metric
    iteration_seconds: list[float] = field(default_factory=list)  # this process's iterations only
    resumed_from: int = 0  # iteration of the checkpoint it started from
    stopped_at: np.ndarray | None = None  # per chain, the iteration it stopped at (0: ran to the cap)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    """This process's time per phase (PHASES), for benchmarks' breakdowns: a clock read
    between phases, so it costs well under a microsecond per phase and iteration."""


PHASES = ("fit", "evaluate", "sample", "pool", "log", "checkpoint", "other")


class _Phases:
    """Seconds per phase, by laps of one clock: lap(name) books the time since the last lap."""

    def __init__(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] += now - self.last
        self.last = now


def chain_generators(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for a seed: real data (redrawn identically on resume), and
    everything the chain samples afterwards (saved in checkpoints)."""
    data, chain = np.random.SeedSequence(seed).spawn(2)
    return np.random.Generator(np.random.SFC64(data)), np.random.Generator(np.random.SFC64(chain))


@dataclass
class _State:
    iteration: int  # last finished iteration
    rngs: list[np.random.Generator]
    stats: Any  # statistics of the next training set on the statistics path, else None
    records: list[tuple[int, Metrics]]
    stopped_at: np.ndarray | None = None  # int per chain: iteration it stopped at, 0 while running; None: no stopping rule


def run_chain(
    task: Task,
    chain: ChainConfig,
    seeds: Sequence[int],
    checkpoint_dir: str | Path | None = None,
    sink: MetricSink | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ChainResult:
    """Run one chain per seed (batched when the task allows) for chain.n_iterations."""
    chain = chain.resolved()
    seeds = list(seeds)
    if not task.batched and len(seeds) != 1:
        raise ValueError(f"task {task.name!r} runs one chain at a time; got {len(seeds)} seeds")
    workflow = chain.policy()
    # Statistics path: the training set is tracked by its additive statistics, not rows.
    by_statistics = uses_statistics(workflow, task)
    keep_history = workflow.needs_history and not by_statistics
    capacity = max_rows_held(workflow, task, chain.n_real, chain.n_synthetic, chain.n_iterations)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    pool_dir = ckpt / "pool" if ckpt is not None else None
    if chain.persist_pool and pool_dir is None:
        raise ValueError("chain.persist_pool needs a checkpoint_dir to write the pool into")

    if ckpt is not None and isinstance(task, KeepsFiles):
        # tasks that keep files (tokenizers, fitted models) keep them with the checkpoint
        task = task.with_workdir(ckpt / "task")

    on_disk = isinstance(task, PoolOnDiskTask)
    if on_disk and (task.batched or by_statistics):
        raise ValueError(f"task {task.name!r}: the pool-on-disk hooks are for unbatched row-path tasks")
    if on_disk and pool_dir is None:  # no checkpoint folder: a throwaway one for the shards and files
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="collapse_ray-chain-"))
        pool_dir = scratch / "pool"
        if isinstance(task, KeepsFiles):
            task = task.with_workdir(scratch / "task")
    generators = [chain_generators(s) for s in seeds]
    data_rngs = [g[0] for g in generators]

    state, manifest, document = _load_checkpoint(ckpt)
    continues = state is not None and bool(document.get("continues", False))
    ended_before = state is not None and bool(document.get("ended", False))
    if state is not None and not _finished(state, chain.n_iterations) and ended_before and not continues:
        raise ValueError(f"{ckpt / CHECKPOINT_FILE}: the chain finished at iteration {state.iteration} and keeps "
                         f"no pool to continue to {chain.n_iterations} from; remove the folder to rerun it")
    if pool_dir is not None and pool_dir.exists():
        remove_stale_temporaries(pool_dir)  # left by a writer killed mid-shard
    fresh = state is None
    if fresh:
        stopping = np.zeros(len(seeds), dtype=np.int64) if isinstance(task, StopsEarly) else None
        state = _State(0, [g[1] for g in generators], None, [], stopped_at=stopping)
    # A finished chain that can run on to more iterations exactly as a longer chain would
    # (growing a sweep) also draws its last iteration's samples: a statistics-path chain
    # (its statistics and generators are all it needs; one cheap draw) or one whose pool is
    # kept anyway (chain.persist_pool; not a language model's, whose extra draw is a whole
    # generation pass). Other pools are not kept once a chain finishes.
    continuable = state.stopped_at is None and (by_statistics or (chain.persist_pool and not on_disk))
    if on_disk:  # the shards are the pool; only its blocks are held here
        if fresh or _finished(state, chain.n_iterations):
            pool = DiskPool(pool_dir, seeds, keep_history=keep_history)
        else:  # exactly the shards the checkpoint lists, each checked against its hash
            pool = DiskPool.load(pool_dir, seeds, keep_history, manifest)
        target = pool.target(0, "real") if fresh else None
        real = task.real_data_on_disk(chain.n_real, data_rngs, target)
        if target is not None:
            pool.added(target)
    else:
        real = task.real_data(chain.n_real, data_rngs)
        if fresh:
            pool = ArrayPool(seeds, keep_history=keep_history, capacity=capacity)
            pool.add(dict(real.train), iteration=0, source="real")
        elif _finished(state, chain.n_iterations) or (continues and not chain.persist_pool):  # nothing to read
            pool = ArrayPool(seeds, keep_history=keep_history, capacity=capacity)
        else:  # exactly the shards the checkpoint lists, each checked against its hash
            pool = ArrayPool.load(pool_dir, seeds, state.iteration, keep_history, capacity, manifest=manifest)
    resumed_from = state.iteration
    logged = sink.last_logged_iteration() if sink is not None else 0
    if pool_dir is not None and chain.persist_pool:
        pool.write_shards(pool_dir)

    # running chains (None: no stopping rule, all run) and the real data restricted to them
    active, live = None, real
    if state.stopped_at is not None:
        active = np.flatnonzero(state.stopped_at == 0)
        if len(active) < len(seeds):  # resumed after some stopped: the saved statistics hold the rest
            live = _take_chains(task, None, real, active)[1]
    records_iteration = task.records_iteration if isinstance(task, RecordsSubset) else None
    # decided once: isinstance on a runtime-checkable protocol is slow next to a toy iteration
    draws = sink is not None and isinstance(task, DrawsIterations) and hasattr(sink, "log_artifacts")
    curves = sink is not None and isinstance(task, ReportsFitCurve) and hasattr(sink, "log_series")
    done = _finished(state, chain.n_iterations)

    seconds = []
    phases = _Phases()
    for t in range(state.iteration + 1, chain.n_iterations + 1):
        if done:
            break
        start = time.perf_counter()
        phases.lap("other")
        rngs = state.rngs if active is None else [state.rngs[i] for i in active]
        if by_statistics:
            if state.stats is None:  # iteration 1: the real rows
                state.stats = task.statistics(pool.rows_of(0), real.context)
            model = task.fit_statistics(state.stats)
        elif on_disk:  # a handle on the selected rows; the task's workers read them
            model = task.fit_on_disk(pool.select(workflow, t, state.rngs), live.context)
        else:
            train = pool.take(workflow.select(pool.index, t, state.rngs))
            if active is not None and len(active) < len(seeds):
                train = {name: column[active] for name, column in train.items()}
            phases.lap("pool")
            model = task.fit(train, live.context)
        phases.lap("fit")
        metrics = task.evaluate(model, live.test)
        phases.lap("evaluate")
        stops_now = None
        if active is not None:
            condition = task.stop_condition(metrics)
            stops_now = np.zeros(len(active), dtype=bool) if condition is None else np.asarray(condition, dtype=bool)
            state.stopped_at[active[stops_now]] = t
            metrics = _carried_forward(metrics, active, state.records[-1][1] if state.records else None, len(seeds))
            done = bool((state.stopped_at > 0).all())
        if records_iteration is None or records_iteration(t) or t == chain.n_iterations or (stops_now is not None and stops_now.any()):
            state.records.append((t, metrics))
        if draws and t > logged:
            # pictures of this iteration's model (a recomputed iteration redraws the same ones)
            sink.log_artifacts(t, task.iteration_artifacts(model, live.context))
        if curves and t > logged:
            sink.log_series(t, task.iteration_series(model))  # a curve within the iteration's fit
        if (t < chain.n_iterations or continuable) and not done:  # else the last fit's samples would train nothing
            new = _add_rows_of_iteration(t, task, workflow, chain, model, pool, rngs, live, by_statistics,
                                         None if active is None or len(active) == len(seeds) else active, phases)
            if by_statistics:
                state.stats = new if workflow.update == "replace" else task.merge(state.stats, new)
            phases.lap("sample")
            if chain.persist_pool:
                pool.write_shards(pool_dir)
                phases.lap("checkpoint")
        if stops_now is not None and stops_now.any() and not done:  # drop the stopped chains from the batch
            running = np.flatnonzero(~stops_now)
            state.stats, live = _take_chains(task, state.stats if by_statistics else None, live, running)
            active = active[running]
        state.iteration = t
        seconds.append(time.perf_counter() - start)

        if chain.checkpoints_at(t) or done:
            phases.lap("other")
            if sink is not None:
                unlogged = [(i, m) for i, m in state.records if i > logged]
                if unlogged:
                    sink.log_iterations(seeds, unlogged)
                    logged = unlogged[-1][0]
                phases.lap("log")
            if ckpt is not None:
                ended = t >= chain.n_iterations or done
                keeps_pool = not ended or (continuable and chain.persist_pool)  # else a finished chain needs none
                if keeps_pool:
                    pool.write_shards(pool_dir)
                _save_state(ckpt, state, pool.manifest() if keeps_pool else [], ended=ended,
                            continues=ended and continuable)
                phases.lap("checkpoint")
        if progress is not None:
            progress(t, chain.n_iterations)

    table = chain_table(seeds, state.records, state.stopped_at)
    phases.lap("other")
    return ChainResult(table, seconds, resumed_from, state.stopped_at, phases.seconds)


def _finished(state: _State, n_iterations: int) -> bool:
    stopped_at = getattr(state, "stopped_at", None)
    return state.iteration >= n_iterations or (stopped_at is not None and bool((stopped_at > 0).all()))


def _take_chains(task, stats, real: RealData, index: np.ndarray):
    """Statistics and real data of the chains at positions `index` (stopping tasks' hook)."""
    stats, test, context = task.take_chains(stats, real.test, real.context, index)
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


def _in_all_chains(rows, active: np.ndarray | None, n_chains: int):
    """Rows of the running chains padded to every chain's (the pool holds all); a stopped
    chain's padding rows are zeros, never fitted."""
    if active is None:
        return rows
    out = {}
    for name, column in rows.items():
        out[name] = np.zeros((n_chains,) + column.shape[1:], dtype=column.dtype)
        out[name][active] = column
    return out


def _add_rows_of_iteration(t, task, workflow, chain, model, pool, rngs, real, by_statistics, active=None,
                           phases: _Phases | None = None):
    """Sample iteration t's synthetic rows (and fresh real rows, if the workflow takes
    them) into the pool; on the statistics path return their statistics instead, drawn
    directly unless the pool must be persisted. `active`: the running chains' positions,
    when some have stopped (rngs, model and real are then theirs alone)."""
    n_chains = len(pool.chain_ids) if active is not None else 0
    if by_statistics and not chain.persist_pool:
        new = task.sample_statistics(model, chain.n_synthetic, rngs, real.context)
    elif isinstance(pool, DiskPool):  # the samples go straight into their shard
        target = pool.target(t, "synthetic")
        task.sample_on_disk(model, chain.n_synthetic, rngs, real.context, target)
        pool.added(target)
        new = None
    else:
        rows = task.sample(model, chain.n_synthetic, rngs, real.context)
        if phases is not None:
            phases.lap("sample")
        pool.add(_in_all_chains(rows, active, n_chains), iteration=t, source="synthetic")
        if phases is not None:
            phases.lap("pool")
        new = task.statistics(rows, real.context) if by_statistics else None
    if workflow.n_fresh_real:  # new real data arrive alongside the synthetic rows
        fresh = task.sample_real(workflow.n_fresh_real, rngs, real.context)
        pool.add(_in_all_chains(fresh, active, n_chains), iteration=t, source="real")
        if by_statistics:
            new = task.merge(new, task.statistics(fresh, real.context))
    return new


def chain_table(seeds: Sequence[int], records: Sequence[tuple[int, Metrics]],
                stopped_at: np.ndarray | None = None) -> pd.DataFrame:
    """Long table of per-seed metrics: columns seed, iteration, <metric>...; a chain that
    stopped (stopped_at > 0) has no rows after its stopping iteration."""
    if not records:
        return pd.DataFrame({"seed": [], "iteration": []})
    n = len(seeds)
    frame = {
        "seed": np.tile(np.asarray(seeds, dtype=np.int64), len(records)),
        "iteration": np.repeat([t for t, _ in records], n).astype(np.int64),
    }
    for name in records[0][1]:
        frame[name] = np.concatenate([np.asarray(m[name], dtype=np.float64) for _, m in records])
    table = pd.DataFrame(frame)
    if stopped_at is not None and (stopped_at > 0).any():
        last = np.where(stopped_at > 0, stopped_at, np.iinfo(np.int64).max)
        table = table[table["iteration"].to_numpy() <= np.tile(last, len(records))].reset_index(drop=True)
    return table


def is_finished(checkpoint_dir: str | Path, n_iterations: int) -> bool:
    state = _load_state(Path(checkpoint_dir))
    return state is not None and _finished(state, n_iterations)


def check_checkpoint(checkpoint_dir: str | Path, seeds: Sequence[int]) -> None:
    """Raise ValueError naming the file if a chain folder cannot be resumed from exactly:
    an unreadable checkpoint, another number of chains, a pool shard that is missing,
    altered, corrupt or foreign."""
    from collapse_ray.core.shards import check_manifest, check_shards

    ckpt = Path(checkpoint_dir)
    state, manifest, _ = _load_checkpoint(ckpt)
    if state is not None and len(state.rngs) != len(seeds):
        raise ValueError(f"{ckpt / CHECKPOINT_FILE} holds {len(state.rngs)} chains, expected {len(seeds)}")
    if (ckpt / "pool").exists():
        check_shards(ckpt / "pool", seeds)
    if manifest:
        check_manifest(ckpt / "pool", manifest)


def _load_state(ckpt: Path | None) -> _State | None:
    return _load_checkpoint(ckpt)[0]


def checkpoint_continues(checkpoint_dir: str | Path) -> bool:
    """Whether a finished chain's checkpoint can run on to more iterations exactly (a
    statistics-path chain's, or one with chain.persist_pool: see run_chain); others rerun
    from iteration 1 when lengthened."""
    return bool(_document(Path(checkpoint_dir)).get("continues", False))


def _document(ckpt: Path) -> dict:
    from collapse_ray.core import checkpoint as state_file

    if not (ckpt / CHECKPOINT_FILE).exists():
        return {}
    try:  # the JSON only: _load_checkpoint checks the whole checkpoint (and names the file)
        document = state_file.read_json(ckpt / CHECKPOINT_FILE, state_file.MAX_JSON_BYTES)
    except (state_file.CheckpointFormatError, ValueError, OSError):
        return {}
    return document if isinstance(document, dict) else {}


def _load_checkpoint(ckpt: Path | None) -> tuple[_State | None, list[dict] | None, dict]:
    """The chain state, the pool manifest stored with it and the whole JSON document
    (its "ended" and "continues" flags: see _save_state); (None, None, {}) if none."""
    from collapse_ray.core import checkpoint as state_file

    if ckpt is None or not (ckpt / CHECKPOINT_FILE).exists():
        for legacy in ckpt.glob("checkpoint.pkl") if ckpt is not None else ():
            raise ValueError(f"{legacy} is a pickle, which collapse_ray no longer reads (unpickling a file "
                             f"can run code); start the sweep afresh")
        return None, None, {}
    try:
        state, document = state_file.load(ckpt / CHECKPOINT_FILE)
    except state_file.CheckpointFormatError as err:
        raise ValueError(f"{ckpt / CHECKPOINT_FILE} is not a readable chain checkpoint: {err}") from None
    manifest = document.get("pool")
    if not isinstance(state, _State) or not isinstance(manifest, list):
        raise ValueError(f"{ckpt / CHECKPOINT_FILE} is not a chain checkpoint (holds {type(state).__name__})")
    return state, manifest, document


def _save_state(ckpt: Path, state: _State, manifest: list[dict], ended: bool = False, continues: bool = False) -> None:
    """Arrays first, then the JSON naming them and the pool's shards (the commit point).
    `ended`: the chain finished; `continues`: and it can run on to more iterations."""
    from collapse_ray.core import checkpoint as state_file

    document = {"pool": manifest, "ended": ended, "continues": continues}
    try:
        state_file.save(ckpt, CHECKPOINT_FILE, state, document, tag=f"{state.iteration}-{os.getpid()}")
    except TypeError as err:  # a field of a type the data-only format does not hold
        raise TypeError(f"chain state cannot be checkpointed: {err}") from None
