"""The chain loop: the one place where a task, a workflow and the pool meet.

Runs without Ray, so it can be debugged in a plain process:

    python -c "from collapse_ray.core.loop import run_chain; from collapse_ray.tasks import GaussianTask;
    from collapse_ray.core.chain import ChainConfig;
    print(run_chain(GaussianTask(dim=2), ChainConfig(workflow='replace', n_iterations=5).resolved(), seeds=[0, 1]).table)"

Per iteration t = 1..T: the workflow selects the training set, the task fits and is
evaluated on held-out real data (metrics recorded with step = t), then n_synthetic rows
are sampled from the fit into the pool with iteration of origin t. What the training
data is (statistics, rows in memory, rows on disk) is training_data.py's; which chains
still run (stopping) and which iterations are recorded, batch.py's.

Resuming: with a `checkpoint_dir`, the loop checkpoints every `chain.checkpoint_every`
iterations (pool shards first, then the state file, each written atomically: chain_state.py)
and starts from the newest checkpoint it finds. Metrics reach the sink just before each
checkpoint; on resume the sink is asked which iteration it already holds, so an iteration
logged before a crash but after the last checkpoint is recomputed (identically: the random
state is restored) yet not logged again.

Growing: a finished chain that can run on to more iterations exactly as a longer chain
would (its checkpoint "continues") also draws its last iteration's samples: a
statistics-path chain (its statistics and generators are all it needs; one cheap draw) or
one whose pool is kept anyway (chain.persist_pool; not a language model's, whose extra draw
is a whole generation pass). Other pools are not kept once a chain finishes.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from collapse_ray.core.batch import ChainBatch
from collapse_ray.core.chain import ChainConfig, uses_statistics
from collapse_ray.core.chain_state import (
    CHECKPOINT_FILE, check_checkpoint, checkpoint_continues, is_finished, load_checkpoint, save_checkpoint,
)
from collapse_ray.core.training_data import Phases, open_training_data
from collapse_ray.core.types import DrawsIterations, KeepsFiles, Metrics, PoolOnDiskTask, ReportsFitCurve, Task

__all__ = ["CHECKPOINT_FILE", "PHASES", "ChainResult", "MetricSink", "chain_generators", "chain_table",
           "check_checkpoint", "checkpoint_continues", "is_finished", "run_chain"]


class MetricSink(Protocol):
    """Where per-iteration metrics go (MLflow in sweeps)."""

    def last_logged_iteration(self) -> int:
        """Highest iteration already stored (0 if none)."""
        ...

    def log_iterations(self, seeds: Sequence[int], records: Sequence[tuple[int, Metrics]]) -> None: ...


class _NoSink:
    """The sink of a chain run without one: it holds nothing and keeps nothing."""

    def last_logged_iteration(self) -> int:
        return 0

    def log_iterations(self, seeds: Sequence[int], records: Sequence[tuple[int, Metrics]]) -> None:
        pass


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


def chain_generators(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for a seed: real data (redrawn identically on resume), and
    everything the chain samples afterwards (saved in checkpoints)."""
    data, chain = np.random.SeedSequence(seed).spawn(2)
    return np.random.Generator(np.random.SFC64(data)), np.random.Generator(np.random.SFC64(chain))


def run_chain(
    task: Task,
    chain: ChainConfig,
    seeds: Sequence[int],
    checkpoint_dir: str | Path | None = None,
    sink: MetricSink | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ChainResult:
    """Run one chain per seed (batched when the task allows) for chain.n_iterations."""
    chain, seeds = chain.resolved(), list(seeds)
    if not task.batched and len(seeds) != 1:
        raise ValueError(f"task {task.name!r} runs one chain at a time; got {len(seeds)} seeds")
    task, ckpt, pool_dir = _chain_folders(task, chain, checkpoint_dir)
    sink = sink if sink is not None else _NoSink()
    generators = [chain_generators(s) for s in seeds]

    saved = load_checkpoint(ckpt)
    if saved is not None and saved.ended and not saved.continues and not saved.state.finished(chain.n_iterations):
        raise ValueError(f"{ckpt / CHECKPOINT_FILE}: the chain finished at iteration {saved.state.iteration} and "
                         f"keeps no pool to continue to {chain.n_iterations} from; remove the folder to rerun it")
    state = saved.state if saved is not None else ChainBatch.fresh_state(task, [g[1] for g in generators])
    resumed_from = state.iteration
    data = open_training_data(task, chain, seeds, [g[0] for g in generators], saved, pool_dir)
    batch = ChainBatch(task, state, data.real, chain.n_iterations)
    continuable = data.continuable and not batch.stops_early
    logged = sink.last_logged_iteration()
    callbacks = _iteration_callbacks(task, sink, after=logged)

    seconds = []
    phases = Phases(PHASES)
    for t in range(resumed_from + 1, chain.n_iterations + 1):
        if batch.done:
            break
        start = time.perf_counter()
        phases.lap("other")
        model = data.fit(t, batch, phases)
        phases.lap("fit")
        metrics = task.evaluate(model, batch.live.test)
        phases.lap("evaluate")
        stops = batch.record(t, metrics)  # the stopping rule applied, stopped chains' metrics carried forward
        for callback in callbacks:
            callback(t, model, batch.live.context)
        if (t < chain.n_iterations or continuable) and not batch.done:  # else its samples would train nothing
            data.add(t, model, batch, phases)
        data.stats = batch.drop_stopped(stops, data.stats)
        seconds.append(time.perf_counter() - start)

        if chain.checkpoints_at(t) or batch.done:
            phases.lap("other")
            logged = _log_new(sink, seeds, batch.records, logged)
            phases.lap("log")
            ended = t >= chain.n_iterations or batch.done
            if ckpt is not None:  # a finished chain keeps its pool only if it can run on
                manifest = data.manifest(keep=not ended or (continuable and chain.persist_pool))
                save_checkpoint(ckpt, batch.state(t, data.stats), manifest, ended, continues=ended and continuable)
            phases.lap("checkpoint")
        if progress is not None:
            progress(t, chain.n_iterations)

    table = chain_table(seeds, batch.records, batch.stopped_at)
    phases.lap("other")
    return ChainResult(table, seconds, resumed_from, batch.stopped_at, phases.seconds)


def _chain_folders(task: Task, chain: ChainConfig, checkpoint_dir: str | Path | None):
    """(the task, keeping its files with the checkpoint; the checkpoint folder; the pool's folder)."""
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    pool_dir = ckpt / "pool" if ckpt is not None else None
    if chain.persist_pool and pool_dir is None:
        raise ValueError("chain.persist_pool needs a checkpoint_dir to write the pool into")
    if ckpt is not None and isinstance(task, KeepsFiles):
        # tasks that keep files (tokenizers, fitted models) keep them with the checkpoint
        task = task.with_workdir(ckpt / "task")
    if isinstance(task, PoolOnDiskTask):
        if task.batched or uses_statistics(chain.policy(), task):
            raise ValueError(f"task {task.name!r}: the pool-on-disk hooks are for unbatched row-path tasks")
        if pool_dir is None:  # no checkpoint folder: a throwaway one for the shards and files
            scratch = Path(tempfile.mkdtemp(prefix="collapse_ray-chain-"))
            pool_dir = scratch / "pool"
            if isinstance(task, KeepsFiles):
                task = task.with_workdir(scratch / "task")
    return task, ckpt, pool_dir


def _iteration_callbacks(task: Task, sink: Any, after: int) -> list[Callable[[int, Any, Any], None]]:
    """What the sink takes of each iteration's model beyond its metrics, decided once (isinstance
    on a runtime-checkable protocol is slow next to a toy iteration): pictures of it, and a curve
    within its fit. Not for iterations up to `after`, logged before a resume (and recomputed)."""
    callbacks = []
    if isinstance(task, DrawsIterations) and hasattr(sink, "log_artifacts"):
        def draw(t, model, context):
            if t > after:
                sink.log_artifacts(t, task.iteration_artifacts(model, context))
        callbacks.append(draw)
    if isinstance(task, ReportsFitCurve) and hasattr(sink, "log_series"):
        def curve(t, model, context):
            if t > after:
                sink.log_series(t, task.iteration_series(model))
        callbacks.append(curve)
    return callbacks


def _log_new(sink: MetricSink, seeds: Sequence[int], records: list[tuple[int, Metrics]], logged: int) -> int:
    """Log the records after iteration `logged` (records are in iteration order); the last one logged."""
    first = len(records)
    while first and records[first - 1][0] > logged:
        first -= 1
    if first == len(records):
        return logged
    sink.log_iterations(seeds, records[first:])
    return records[-1][0]


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
