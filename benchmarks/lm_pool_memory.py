"""Memory of the process that drives a language-model chain, as the pool grows, and
where one fit's time goes.

    python benchmarks/lm_pool_memory.py                 # 10k, 100k, 1M rows: ~3 min on 2 cores
    python benchmarks/lm_pool_memory.py --rows 10000 --fit

1. Pool memory. A stand-in sampler (procedural stories, ~190 characters, no model)
   fills a pool on disk in the pool's own layout: half real rows (iteration 0), half
   synthetic (iteration 1), as an accumulate chain at its second fit. Each way of
   reading the fit's training set runs in a fresh process, whose peak RSS is printed:
     in_memory  ArrayPool.load + take(selection): the pool in the trial process (today)
     streamed   the index from the shards' row counts, then the selection as a Ray Data
                read (pool.selection_dataset) that a Ray task iterates in batches, as a
                Ray Train worker streams its shard: the trial holds the index, not the rows
   (the streamed process's figure includes Ray's driver state, ~the same at every size).
2. --fit: one Ray Train fit of the tiny preset (2 workers, DeepSpeed ZeRO-1) with the
   held-out loss on the workers: its wall time against the training loop's, the
   evaluation's, and the rest (worker start-up, process group, engine, data loading).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CHUNK = 50_000


def write_stand_in_pool(root: Path, rows: int) -> None:
    """Shards as ArrayPool.write_shards lays them out (chain 0), written in chunks."""
    from collapse_ray.pool import SHARD_NAME

    rng = np.random.default_rng(0)
    words = np.array("the a cat dog saw ran big small happy sad tree park ball sun moon and then".split())
    for iteration, source, n in ((0, "real", rows // 2), (1, "synthetic", rows - rows // 2)):
        path = root / f"iteration={iteration}" / f"source={source}" / SHARD_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        schema = pa.schema([("chain", pa.int64()), ("row", pa.int64()), ("text", pa.string())],
                           metadata={"collapse_ray.shapes": json.dumps({"text": []})})
        with pq.ParquetWriter(path, schema) as writer:
            for start in range(0, n, CHUNK):
                k = min(CHUNK, n - start)
                text = [" ".join(s) for s in words[rng.integers(len(words), size=(k, 40))]]
                writer.write_table(pa.table({"chain": np.zeros(k, np.int64), "row": np.arange(start, start + k),
                                             "text": text}, schema=schema))


READER = r"""
import resource, sys
from pathlib import Path
import numpy as np
import pyarrow.parquet as pq
from collapse_ray.pool import ArrayPool, SHARD_NAME, selection_dataset
from collapse_ray.workflows import PoolIndex, make_workflow

root, mode = Path(sys.argv[1]), sys.argv[2]
workflow = make_workflow("accumulate")
if mode == "in_memory":
    pool = ArrayPool.load(root, [0], 1)
    train = pool.take(workflow.select(pool.index, 2, [np.random.default_rng(0)]))
    n = train["text"].shape[1]
else:
    import ray
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    import ray.data
    ray.data.DataContext.get_current().enable_progress_bars = False
    counts = [pq.read_metadata(root / f"iteration={t}" / f"source={s}" / SHARD_NAME).num_rows
              for t, s in ((0, "real"), (1, "synthetic"))]
    index = PoolIndex(np.repeat([0, 1], counts), np.repeat(np.array([0, 1], np.int8), counts))
    dataset = selection_dataset(root, index, workflow.select(index, 2, [np.random.default_rng(0)]), 0, ["text"])

    @ray.remote(num_cpus=1)
    def worker(dataset):  # stands in for a Ray Train worker streaming its shard
        return sum(len(b["text"]) for b in dataset.iter_batches(batch_size=4096, batch_format="pyarrow"))

    n = ray.get(worker.remote(dataset))
print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_rss_mb(root: Path, mode: str) -> tuple[int, float]:
    done = subprocess.run([sys.executable, "-c", READER, str(root), mode], capture_output=True, text=True, check=True)
    n, mb = done.stdout.split()[-2:]
    return int(n), float(mb)


def fit_breakdown() -> None:
    import ray

    from collapse_ray.loop import chain_generators
    from collapse_ray.tasks import PretrainingTask

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        task = PretrainingTask(max_length=64, vocab_size=300, n_test=50, num_workers=2, micro_batch_size=8,
                               eval_steps=5).with_workdir(tmp)
        real = task.real_data(512, [chain_generators(0)[0]])
        figures = task.fit(real.train, real.context).figures
    total, train, evaluation = figures["fit_seconds"], figures["train_seconds"], figures["eval_seconds"]
    print(f"\none Ray Train fit (tiny preset, 512 stories, 2 workers, ZeRO-1, eval every 5 of "
          f"{figures['optimizer_steps']:.0f} steps):")
    print(f"  wall {total:6.1f} s = training {train:5.1f} s + evaluation on the workers {evaluation:4.1f} s "
          f"+ start-up and data loading {total - train - evaluation:5.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--fit", action="store_true", help="also time one Ray Train fit")
    args = parser.parse_args()
    print(f"{'pool rows':>10} {'in_memory MB':>13} {'streamed MB':>12}")
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "pool"
            write_stand_in_pool(root, rows)
            n_memory, memory = peak_rss_mb(root, "in_memory")
            n_streamed, streamed = peak_rss_mb(root, "streamed")
            assert n_memory == n_streamed == rows, (n_memory, n_streamed, rows)
            print(f"{rows:>10} {memory:>13.0f} {streamed:>12.0f}", flush=True)
    if args.fit:
        fit_breakdown()


if __name__ == "__main__":
    main()
