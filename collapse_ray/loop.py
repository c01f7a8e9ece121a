"""The chain loop: the one place where a task, a workflow and the pool meet.

Runs without Ray, so it can be debugged in a plain process:

    python -c "from collapse_ray.loop import run_chain; from collapse_ray.tasks import GaussianTask;
    from collapse_ray.spec import ChainConfig;
    print(run_chain(GaussianTask(dim=2), ChainConfig(workflow='replace', n_iterations=5).resolved(), seeds=[0, 1]).table)"

Per iteration t = 1..T: the workflow selects the training set, the task fits and is
evaluated on held-out real data (metrics recorded with step = t), then n_synthetic rows
are sampled from the fit into the pool with iteration of origin t.

Statistics path: when the task's fit depends only on additive statistics and the
workflow's next training set is the new rows alone (replace) or the old set plus them
(accumulate), the loop carries statistics instead of rows, and asks the task for the
statistics of the new samples directly (unless chain.persist_pool wants the rows).

Resuming: with a `checkpoint_dir`, the loop checkpoints every `chain.checkpoint_every`
iterations (pool shards first, then the state file, each written atomically) and starts
from the newest checkpoint it finds. Metrics reach the sink just before each checkpoint;
on resume the sink is asked which iteration it already holds, so an iteration logged
before a crash but after the last checkpoint is recomputed (identically: the random
state is restored) yet not logged again.
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

from .pool import ArrayPool, remove_stale_temporaries
from .spec import ChainConfig
from .tasks import Metrics, Task
from .workflows import by_statistics as uses_statistics
from .workflows import max_rows_held

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

    if ckpt is not None and hasattr(task, "with_workdir"):
        # tasks that keep files (tokenizers, fitted models) keep them with the checkpoint
        task = task.with_workdir(ckpt / "task")

    generators = [chain_generators(s) for s in seeds]
    real = task.real_data(chain.n_real, [g[0] for g in generators])

    state, manifest = _load_checkpoint(ckpt)
    if pool_dir is not None and pool_dir.exists():
        remove_stale_temporaries(pool_dir)  # left by a writer killed mid-shard
    if state is None:
        state = _State(0, [g[1] for g in generators], None, [])
        pool = ArrayPool(seeds, keep_history=keep_history, capacity=capacity)
        pool.add(dict(real.train), iteration=0, source="real")
    elif state.iteration >= chain.n_iterations:  # finished: no iteration left to train
        pool = ArrayPool(seeds, keep_history=keep_history, capacity=capacity)
    else:  # exactly the shards the checkpoint lists, each checked against its hash
        pool = ArrayPool.load(pool_dir, seeds, state.iteration, keep_history, capacity, manifest=manifest)
    resumed_from = state.iteration
    logged = sink.last_logged_iteration() if sink is not None else 0
    if pool_dir is not None and chain.persist_pool:
        pool.write_shards(pool_dir)

    seconds = []
    for t in range(state.iteration + 1, chain.n_iterations + 1):
        start = time.perf_counter()
        if by_statistics:
            if state.stats is None:  # iteration 1: the real rows
                state.stats = task.statistics(pool.rows_of(0), real.context)
            model = task.fit_statistics(state.stats)
        else:
            model = task.fit(pool.take(workflow.select(pool.index, t, state.rngs)), real.context)
        state.records.append((t, task.evaluate(model, real.test)))
        if sink is not None and t > logged and hasattr(task, "iteration_artifacts") and hasattr(sink, "log_artifacts"):
            # pictures of this iteration's model (a recomputed iteration redraws the same ones)
            sink.log_artifacts(t, task.iteration_artifacts(model, real.context))
        if t < chain.n_iterations:  # the last fit's samples would train nothing
            new = _add_rows_of_iteration(t, task, workflow, chain, model, pool, state.rngs, real, by_statistics)
            if by_statistics:
                state.stats = new if workflow.update == "replace" else task.merge(state.stats, new)
            if chain.persist_pool:
                pool.write_shards(pool_dir)
        state.iteration = t
        seconds.append(time.perf_counter() - start)

        if chain.checkpoints_at(t):
            if sink is not None:
                unlogged = [(i, m) for i, m in state.records if i > logged]
                if unlogged:
                    sink.log_iterations(seeds, unlogged)
                    logged = unlogged[-1][0]
            if ckpt is not None:
                if t < chain.n_iterations:  # a finished chain resumes nothing from its pool
                    pool.write_shards(pool_dir)
                _save_state(ckpt, state, pool.manifest() if t < chain.n_iterations else [])
        if progress is not None:
            progress(t, chain.n_iterations)

    return ChainResult(chain_table(seeds, state.records), seconds, resumed_from)


def _add_rows_of_iteration(t, task, workflow, chain, model, pool, rngs, real, by_statistics):
    """Sample iteration t's synthetic rows (and fresh real rows, if the workflow takes
    them) into the pool; on the statistics path return their statistics instead, drawn
    directly unless the pool must be persisted."""
    if by_statistics and not chain.persist_pool:
        new = task.sample_statistics(model, chain.n_synthetic, rngs, real.context)
    else:
        rows = task.sample(model, chain.n_synthetic, rngs, real.context)
        pool.add(rows, iteration=t, source="synthetic")
        new = task.statistics(rows, real.context) if by_statistics else None
    if workflow.n_fresh_real:  # new real data arrive alongside the synthetic rows
        fresh = task.sample_real(workflow.n_fresh_real, rngs, real.context)
        pool.add(fresh, iteration=t, source="real")
        if by_statistics:
            new = task.merge(new, task.statistics(fresh, real.context))
    return new


def chain_table(seeds: Sequence[int], records: Sequence[tuple[int, Metrics]]) -> pd.DataFrame:
    """Long table of per-seed metrics: columns seed, iteration, <metric>..."""
    if not records:
        return pd.DataFrame({"seed": [], "iteration": []})
    n = len(seeds)
    frame = {
        "seed": np.tile(np.asarray(seeds, dtype=np.int64), len(records)),
        "iteration": np.repeat([t for t, _ in records], n).astype(np.int64),
    }
    for name in records[0][1]:
        frame[name] = np.concatenate([np.asarray(m[name], dtype=np.float64) for _, m in records])
    return pd.DataFrame(frame)


def is_finished(checkpoint_dir: str | Path, n_iterations: int) -> bool:
    state = _load_state(Path(checkpoint_dir))
    return state is not None and state.iteration >= n_iterations


def check_checkpoint(checkpoint_dir: str | Path, seeds: Sequence[int]) -> None:
    """Raise ValueError naming the file if a chain folder cannot be resumed from exactly:
    an unreadable checkpoint, another number of chains, a pool shard that is missing,
    altered, corrupt or foreign."""
    from .pool import check_manifest, check_shards

    ckpt = Path(checkpoint_dir)
    state, manifest = _load_checkpoint(ckpt)
    if state is not None and len(state.rngs) != len(seeds):
        raise ValueError(f"{ckpt / CHECKPOINT_FILE} holds {len(state.rngs)} chains, expected {len(seeds)}")
    if (ckpt / "pool").exists():
        check_shards(ckpt / "pool", seeds)
    if manifest:
        check_manifest(ckpt / "pool", manifest)


def _load_state(ckpt: Path | None) -> _State | None:
    return _load_checkpoint(ckpt)[0]


def _load_checkpoint(ckpt: Path | None) -> tuple[_State | None, list[dict] | None]:
    """The chain state and the pool manifest stored with it ((None, None) if none)."""
    from . import state_file

    if ckpt is None or not (ckpt / CHECKPOINT_FILE).exists():
        for legacy in ckpt.glob("checkpoint.pkl") if ckpt is not None else ():
            raise ValueError(f"{legacy} is a pickle, which collapse_ray no longer reads (unpickling a file "
                             f"can run code); start the sweep afresh")
        return None, None
    try:
        state, document = state_file.load(ckpt / CHECKPOINT_FILE)
    except state_file.CheckpointFormatError as err:
        raise ValueError(f"{ckpt / CHECKPOINT_FILE} is not a readable chain checkpoint: {err}") from None
    manifest = document.get("pool")
    if not isinstance(state, _State) or not isinstance(manifest, list):
        raise ValueError(f"{ckpt / CHECKPOINT_FILE} is not a chain checkpoint (holds {type(state).__name__})")
    return state, manifest


def _save_state(ckpt: Path, state: _State, manifest: list[dict]) -> None:
    """Arrays first, then the JSON naming them and the pool's shards (the commit point)."""
    from . import state_file

    try:
        state_file.save(ckpt, CHECKPOINT_FILE, state, {"pool": manifest}, tag=f"{state.iteration}-{os.getpid()}")
    except TypeError as err:  # a field of a type the data-only format does not hold
        raise TypeError(f"chain state cannot be checkpointed: {err}") from None
