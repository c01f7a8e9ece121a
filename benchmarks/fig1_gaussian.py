"""Benchmark: the full Fig. 1 Gaussian grid through the whole engine, against a faithful
per-chain reference loop in the style of (A)'s published code, side by side.

    python benchmarks/fig1_gaussian.py                      # everything (~5 min on 2 cores)
    python benchmarks/fig1_gaussian.py --reference-seeds 0  # engine and slope only
    python benchmarks/fig1_gaussian.py --seeds 20           # a fifth of the grid's seeds

Prints:
  1. engine: `collapse-ray run sweeps/fig1_gaussian.yaml` (Ray Tune + MLflow, 7,500
     chains x 100 iterations) and `collapse-ray results` to a Parquet table, wall time,
     with its breakdown (breakdown.py: Ray, Tune, task phases, pool, MLflow, export,
     idle cores) and its floor: the same jobs through `loop.run_chain` in one plain
     process per core, no Ray, MLflow or Parquet; engine / floor;
  2. reference: (A)'s loop (numpy, one chain at a time, the pool re-stacked and
     re-fitted every iteration, `multivariate_normal` sampling) over all 75 grid cells
     for --reference-seeds seeds, extrapolated to the grid's 100 seeds, and the ratio;
  3. per-iteration cost against the iteration index for accumulate (engine vs reference),
     as a fitted slope.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import breakdown  # noqa: E402  (benchmarks/ is not a package)

breakdown.single_thread_blas()  # before numpy: one BLAS thread per process, as in a trial
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "sweeps" / "fig1_gaussian.yaml"
DIMS = (1, 3, 10, 31, 100)
NS = (10, 32, 100, 316, 1000)
WORKFLOWS = ("replace", "accumulate", "accumulate_subsample")


def reference_chain(d: int, n: int, workflow: str, iterations: int, seed: int, timings: list | None = None):
    """(A)'s per-chain loop: list of arrays, concatenated and refitted every iteration."""
    rng = np.random.default_rng(seed)
    data = [rng.multivariate_normal(np.zeros(d), np.eye(d), size=n)]
    out = []
    for _ in range(iterations):
        start = time.perf_counter()
        if workflow == "replace":
            train = data[-1]
        elif workflow == "accumulate":
            train = np.concatenate(data)
        else:
            pool = np.concatenate(data)
            train = pool[rng.choice(len(pool), size=n, replace=False)]
        mean = train.mean(axis=0)
        cov = np.atleast_2d(np.cov(train.T, bias=True))
        out.append((float(mean @ mean), float(np.trace(cov)) / d, float(np.linalg.det(cov))))
        samples = rng.multivariate_normal(mean, cov, size=n)
        data = [samples] if workflow == "replace" else data + [samples]
        if timings is not None:
            timings.append(time.perf_counter() - start)
    return out


def slope(seconds: list[float]) -> tuple[float, float, float]:
    t = np.arange(1, len(seconds) + 1)
    b, a = np.polyfit(t, np.asarray(seconds), 1)
    k = max(1, len(seconds) // 10)
    return b, float(np.mean(seconds[:k])), float(np.mean(seconds[-k:]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-seeds", type=int, default=1, help="seeds of the reference loop per grid cell (0: skip)")
    parser.add_argument("--skip-engine", action="store_true")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per grid cell (default: the spec's 100)")
    parser.add_argument("--processes", type=int, default=2, help="plain processes of the floor (default 2)")
    args = parser.parse_args()

    n_seeds = args.seeds or 100
    print(f"== Fig. 1 Gaussian grid: 5 d x 5 n x 3 workflows x {n_seeds} seeds x 100 iterations ==", flush=True)
    print(breakdown.load_average(), flush=True)
    engine_total = None
    if not args.skip_engine:
        run = breakdown.run_engine("fig1_gaussian", args.seeds)
        engine_total = run.total
        print(f"engine: Ray start {run.ray_start:.1f}s + run {run.run:.1f}s (Tune, MLflow) + results table "
              f"{run.results:.1f}s = {engine_total:.1f}s for {75 * n_seeds:,} chains ({run.rows:,} rows)", flush=True)
        print(breakdown.load_average(), flush=True)
        wall, summed, phases, floor_cpu = breakdown.floor("fig1_gaussian", args.seeds, args.processes)
        print(f"floor: the same jobs through run_chain in {args.processes} plain processes: {wall:.1f}s wall "
              f"({summed:.1f}s of chains; fit {phases['fit']:.1f}, evaluate {phases['evaluate']:.1f}, "
              f"sample {phases['sample']:.1f}, pool {phases['pool']:.1f})", flush=True)
        breakdown.print_breakdown(run, wall, floor_cpu)
        print(breakdown.load_average(), flush=True)
        if n_seeds != 100:  # fixed costs do not scale with seeds: compare with the reference at 100 only
            engine_total = None

    if args.reference_seeds > 0:
        start = time.perf_counter()
        for d, n, w in itertools.product(DIMS, NS, WORKFLOWS):
            for seed in range(args.reference_seeds):
                reference_chain(d, n, w, 100, seed)
        per_seed = (time.perf_counter() - start) / args.reference_seeds
        full = per_seed * 100
        print(f"reference ((A)'s per-chain loop, 1 process): {per_seed:.1f}s per seed over the 75 cells "
              f"-> {full / 60:.0f} min for 100 seeds ({full / 120:.0f} min ideally split over 2 processes)")
        if engine_total is not None:
            print(f"speed-up of the engine: {full / engine_total:.0f}x against 1 process, "
                  f"{full / 2 / engine_total:.0f}x against 2 ideal processes")

    print("\n== per-iteration cost vs iteration index, accumulate, d = 10, n = 100 ==")
    from collapse_ray.core.loop import run_chain
    from collapse_ray.core.chain import ChainConfig
    from collapse_ray.tasks import GaussianTask

    chain = ChainConfig(workflow="accumulate", n_real=100, n_iterations=1000).resolved()
    result = run_chain(GaussianTask(dim=10, n_test=1000), chain, range(100))
    b, first, last = slope(result.iteration_seconds)
    print(f"engine loop, 100 chains batched, 1000 iterations: {first * 1e3:.2f} ms/iteration at the start, "
          f"{last * 1e3:.2f} ms at the end; slope {b * 1e6:+.3f} us per iteration index "
          f"({b * 1000 / first * 100:+.1f}% of the first iteration's cost per 1000 iterations)")
    timings: list[float] = []
    reference_chain(10, 100, "accumulate", 300, 0, timings)
    b, first, last = slope(timings)
    print(f"reference loop, 1 chain, 300 iterations: {first * 1e3:.2f} ms/iteration at the start, "
          f"{last * 1e3:.2f} ms at the end; slope {b * 1e6:+.3f} us per iteration index")
    return 0


if __name__ == "__main__":
    sys.exit(main())
