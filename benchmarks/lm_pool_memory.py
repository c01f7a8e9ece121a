"""Memory of the processes that drive a language-model chain, as the pool grows, and
where one fit's time goes.

    python benchmarks/lm_pool_memory.py                 # 10k, 100k, 1M rows: a few minutes on 2 cores
    python benchmarks/lm_pool_memory.py --rows 10000 --fit

1. Pool memory, through the real chain loop (loop.run_chain): a 2-iteration accumulate
   chain of a stand-in text task (StandInTextTask: procedural stories, ~200 characters,
   no model) whose pool holds ROWS rows at its second fit (half real, half synthetic).
   The driver (a process that starts Ray, as `collapse-ray run` does; its peak RSS is
   restarted before each run) runs the chain in a fresh Ray worker, as Tune runs a
   trial; both peak RSS are printed:
     in_memory  the rows path: the pool in the trial's ArrayPool (the toy tasks' path,
                and the language models' before the pool went to disk)
     on_disk    the pool-on-disk hooks (loop.PoolOnDiskTask), as PretrainingTask and
                SFTTask use them: Ray tasks write the real rows and the samples into the
                shards, the fit streams the selection (pool.PoolSelection.dataset) in a
                Ray task as a Ray Train worker streams its shard; the trial holds the pool's
                blocks and the selection's (DiskPool.select: nothing per row)
   Both tables of test_loss (a stand-in: mean characters per row) must be equal, and the
   last line says whether the on-disk trial's peak RSS is flat across the sizes (grows by
   under FLAT_MB from the smallest pool to the largest).
2. --fit: one Ray Train fit of the tiny preset (2 workers, DeepSpeed ZeRO-1) on a pool
   selection streamed from the shards, held-out loss on the workers: wall time split into
   data loading (read + tokenize into the object store), training, evaluation, and the
   rest (worker start-up, process group, engine, saving).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

CHUNK = 50_000
FLAT_MB = 5  # a Ray worker's peak RSS varies by a few MB from run to run
WORDS = np.array("the a cat dog saw ran big small happy sad tree park ball sun moon and then".split())


def stories(n: int, seed: int):
    """n procedural stories (40 words, ~200 characters), CHUNK at a time."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, CHUNK):
        k = min(CHUNK, n - start)
        yield [" ".join(s) for s in WORDS[rng.integers(len(WORDS), size=(k, 40))]]


def _write_stories(n: int, seed: int, target) -> None:
    from collapse_ray.core.shards import ShardWriter

    with ShardWriter(target, ("text",)) as shard:
        for texts in stories(n, seed):
            shard.write({"text": texts})


def _mean_length_streamed(selection) -> float:
    """Stands in for the Ray Train workers: streams the selection from the shards."""
    import pyarrow.compute as pc

    from collapse_ray.text.readers import selection_dataset_of

    chars = rows = 0
    for batch in selection_dataset_of(selection, ["text"]).iter_batches(batch_size=4096, batch_format="pyarrow"):
        chars += int(pc.sum(pc.utf8_length(batch["text"])).as_py() or 0)
        rows += batch.num_rows
    return chars / rows


def _as_rows(texts: list[str]) -> dict[str, np.ndarray]:
    column = np.empty((1, len(texts)), dtype=object)
    column[0, :] = texts
    return {"text": column}


@dataclass(frozen=True)
class StandInTextTask:
    """A language-model-shaped task without a model: rows are a `text` column of
    stories, the "fit" is their mean length (exact: integer sums), samples are fresh
    procedural stories. It offers the pool-on-disk hooks (off the trial through Ray
    tasks, as the language models); RowsPath(task) takes it down the rows path."""

    name: ClassVar[str] = "stand_in_text"
    batched: ClassVar[bool] = False

    def real_data(self, n_real, rngs):
        from collapse_ray.core.types import RealData

        texts = [t for chunk in stories(n_real, 0) for t in chunk]
        return RealData(train=_as_rows(texts), test=None, context=None)

    def fit(self, train, context=None) -> float:
        texts = train["text"][0]
        return sum(len(t) for t in texts) / len(texts)

    def sample(self, model, n, rngs, context=None):
        return _as_rows([t for chunk in stories(n, int(rngs[0].integers(2**31))) for t in chunk])

    def sample_real(self, n, rngs, context=None):
        return self.sample(None, n, rngs, context)

    def evaluate(self, model, test):
        return {"test_loss": np.array([model])}

    def row_nbytes(self) -> int:
        return 200

    # -- the pool on disk (loop.PoolOnDiskTask) --
    def real_data_on_disk(self, n_real, rngs, target):
        from collapse_ray.core.types import RealData

        if target is not None:
            _off_trial(_write_stories, n_real, 0, target)
        return RealData(train={}, test=None, context=None)

    def fit_on_disk(self, selection, context=None) -> float:
        return _off_trial(_mean_length_streamed, selection)

    def sample_on_disk(self, model, n, rngs, context, target) -> None:
        _off_trial(_write_stories, n, int(rngs[0].integers(2**31)), target)


class RowsPath:
    """A task down the loop's rows path: it offers the Task protocol's methods (and
    with_workdir) only, so the loop keeps its rows in an ArrayPool."""

    def __init__(self, task):
        self.task, self.name, self.batched = task, task.name, task.batched

    def with_workdir(self, path):
        return RowsPath(self.task.with_workdir(path)) if hasattr(self.task, "with_workdir") else self

    def real_data(self, n_real, rngs):
        return self.task.real_data(n_real, rngs)

    def fit(self, train, context=None):
        return self.task.fit(train, context)

    def sample(self, model, n, rngs, context=None):
        return self.task.sample(model, n, rngs, context)

    def sample_real(self, n, rngs, context=None):
        return self.task.sample_real(n, rngs, context)

    def evaluate(self, model, test):
        return self.task.evaluate(model, test)

    def row_nbytes(self) -> int:
        return self.task.row_nbytes()


def _off_trial(fn, *args):
    from collapse_ray.text.backends import Placement
    from collapse_ray.text.pool_steps import off_trial

    return off_trial(Placement("ray_train", 2, False, 0.9, "ray_data", 2), fn, *args)


def run_trial(rows: int, on_disk: bool, folder: str) -> dict[str, Any]:
    """One chain in this process (the trial): its peak RSS and table."""
    import resource

    from collapse_ray.core.loop import run_chain
    from collapse_ray.core.chain import ChainConfig

    task = StandInTextTask() if on_disk else RowsPath(StandInTextTask())
    chain = ChainConfig(workflow="accumulate", n_real=rows // 2, n_synthetic=rows - rows // 2, n_iterations=2,
                        checkpoint_every=2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = run_chain(task, chain, [0], checkpoint_dir=folder)
    return {"test_loss": result.table["test_loss"].tolist(), "before_mb": before,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


DRIVER = r"""
import json, sys, tempfile
sys.path.insert(0, sys.argv[1])  # the repository: Ray's workers import this module by name too
import ray
import benchmarks.lm_pool_memory as bench
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
import ray.data
ray.data.DataContext.get_current().enable_progress_bars = False
for rows in map(int, sys.argv[2:]):
    for mode in ("in_memory", "on_disk"):
        # A fresh worker process per trial, as Tune starts a trial actor: max_calls=1 ends
        # it after the trial, and a runtime env of its own (inherited by the Ray tasks it
        # starts) keeps it out of the idle workers that earlier trials' Ray tasks leave,
        # whose peak RSS (a 1M-row shard writer's) it would otherwise report as its own.
        trial = ray.remote(num_cpus=0.01, max_calls=1,
                           runtime_env={"env_vars": {"LM_POOL_MEMORY_TRIAL": f"{rows}-{mode}"}})(bench.run_trial)
        bench.reset_peak_rss()
        with tempfile.TemporaryDirectory() as tmp:
            out = ray.get(trial.remote(rows, mode == "on_disk", tmp + "/chain"))
        out.update(rows=rows, mode=mode, driver_mb=bench.peak_rss_mb())
        print(json.dumps(out), flush=True)
"""


def reset_peak_rss() -> None:
    """Linux: start this process's peak RSS (VmHWM) afresh from its current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(sizes: list[int]):
    """One driver (one Ray start: a loaded machine's Ray may time out starting) runs
    both modes at every size; yields their figures as they come."""
    repo = Path(__file__).resolve().parent.parent
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(repo), *map(str, sizes)], stdout=subprocess.PIPE,
                              text=True, cwd=repo)
    for line in driver.stdout:
        if line.startswith("{"):
            yield json.loads(line)
    if driver.wait():
        raise RuntimeError(f"the benchmark's driver failed (exit {driver.returncode})")


def fit_breakdown() -> None:
    import ray

    from collapse_ray.core.loop import chain_generators
    from collapse_ray.core.disk_pool import DiskPool
    from collapse_ray.tasks import PretrainingTask
    from collapse_ray.core.workflows import make_workflow

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        task = PretrainingTask(max_length=64, vocab_size=300, n_test=50, num_workers=2, micro_batch_size=8,
                               eval_steps=5).with_workdir(Path(tmp) / "task")
        pool = DiskPool(Path(tmp) / "pool", [0])
        target = pool.target(0, "real")
        real = task.real_data_on_disk(512, [chain_generators(0)[0]], target)
        pool.added(target)
        selection = pool.select(make_workflow("replace"), 1, [np.random.default_rng(0)])
        figures = task.fit_on_disk(selection, real.context).figures
    total, data = figures["fit_seconds"], figures["data_seconds"]
    train, evaluation = figures["train_seconds"], figures["eval_seconds"]
    rest = total - data - train - evaluation
    print(f"\none Ray Train fit (tiny preset, 512 stories streamed from the pool, 2 workers, ZeRO-1, "
          f"eval every 5 of {figures['optimizer_steps']:.0f} steps):")
    print(f"  {'wall':>6} {'data loading':>13} {'training':>9} {'evaluation':>11} {'start-up etc.':>14}")
    print(f"  {total:6.1f} {data:13.1f} {train:9.1f} {evaluation:11.1f} {rest:14.1f}   seconds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--fit", action="store_true", help="also time one Ray Train fit")
    args = parser.parse_args()
    print("peak RSS (MB) of a 2-iteration accumulate chain whose second fit sees the whole pool")
    print(f"{'pool rows':>10} {'trial in_memory':>16} {'trial on_disk':>14} {'driver in_memory':>17} "
          f"{'driver on_disk':>15}")
    figures, disks = measure(args.rows), []
    for memory, disk in zip(figures, figures):  # in_memory then on_disk, per size
        assert memory["test_loss"] == disk["test_loss"], (memory["test_loss"], disk["test_loss"])
        print(f"{memory['rows']:>10} {memory['peak_mb']:>16.0f} {disk['peak_mb']:>14.0f} "
              f"{memory['driver_mb']:>17.0f} {disk['driver_mb']:>15.0f}", flush=True)
        disks.append(disk)
    if len(disks) > 1:
        first, last = disks[0], disks[-1]
        grown = last["peak_mb"] - first["peak_mb"]
        per_row = grown * 2**20 / (last["rows"] - first["rows"])
        print(f"trial on_disk: {grown:+.0f} MB from {first['rows']:,} to {last['rows']:,} rows "
              f"({per_row:.1f} B a row): {'flat' if abs(grown) < FLAT_MB else 'NOT flat'} "
              f"(driver {last['driver_mb'] - first['driver_mb']:+.0f} MB)")
    if args.fit:
        fit_breakdown()


if __name__ == "__main__":
    main()
