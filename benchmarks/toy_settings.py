"""Benchmark: (A)'s full KDE and linear-regression grids through the whole engine, against
faithful per-chain reference loops in the style of (A)'s code, side by side.

    python benchmarks/toy_settings.py --setting linear_regression   # ~4 min on 2 cores
    python benchmarks/toy_settings.py --setting kde                 # ~25 min on 2 cores
    python benchmarks/toy_settings.py --setting kde --skip-engine   # reference and slope only
    python benchmarks/toy_settings.py --setting kde --seeds 10      # a tenth of the grid's seeds
    python benchmarks/toy_settings.py --setting kde --seeds 10 --skip-reference  # engine, breakdown, floor

Prints, for the chosen setting:
  1. engine: `collapse-ray run sweeps/<spec>.yaml` (Ray Tune + MLflow) then
     `collapse-ray results` to Parquet: wall time for the full grid, with its breakdown
     (breakdown.py: Ray, Tune, task phases, pool, MLflow, export, idle cores) and its
     floor: the same jobs through `loop.run_chain` in one plain process per core, no
     Ray, MLflow or Parquet; engine / floor; for KDE also kernel evaluations per second
     of engine and floor against the machine's (distance plus exp, numpy, one core);
  2. per-chain cost on identical cells: the engine's loop (100 seeds batched, in one
     process) against the reference loop (one chain at a time: sklearn KernelDensity
     refitted on the concatenated pool with every test point rescored, or numpy pinv on
     the stacked design), and the ratio;
  3. per-iteration cost against the iteration index under accumulate, as a fitted slope.
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
SPECS = {"kde": "fig2_kde", "linear_regression": "linear_regression"}
WORKFLOWS = ("replace", "accumulate", "accumulate_subsample")


# -- reference loops: one chain at a time, the pool re-stacked and refitted ---------------
def reference_kde_chain(dataset: str, bandwidth: float, n: int, workflow: str, iterations: int, seed: int,
                        timings: list | None = None) -> list[float]:
    from sklearn import datasets
    from sklearn.neighbors import KernelDensity

    make = {"blobs": lambda m, s: datasets.make_blobs(m, centers=3, random_state=s),
            "circles": lambda m, s: datasets.make_circles(m, noise=0.05, random_state=s),  # factor 0.8
            "moons": lambda m, s: datasets.make_moons(m, noise=0.05, random_state=s),
            "swiss_roll": lambda m, s: datasets.make_swiss_roll(m, noise=0.05, random_state=s)}[dataset]
    rng = np.random.default_rng(seed)
    data, test = [make(n, seed)[0]], make(500, seed + 2**30)[0]  # two draws, as (A)
    losses = []
    for _ in range(iterations):
        start = time.perf_counter()
        if workflow == "replace":
            train = data[-1]
        else:
            pool = np.concatenate(data)
            train = pool if workflow == "accumulate" else pool[rng.choice(len(pool), n, replace=False)]
        kde = KernelDensity(bandwidth=bandwidth).fit(train)
        losses.append(-kde.score_samples(test).mean())
        samples = kde.sample(n, random_state=int(rng.integers(2**31 - 1)))
        data = [samples] if workflow == "replace" else data + [samples]
        if timings is not None:
            timings.append(time.perf_counter() - start)
    return losses


def reference_regression_chain(d: int, n: int, sigma2: float, workflow: str, iterations: int, seed: int,
                               timings: list | None = None) -> list[float]:
    rng = np.random.default_rng(seed)
    w_true = rng.standard_normal(d)
    x = rng.standard_normal((n, d))
    x_test = rng.standard_normal((1000, d))
    labels = [x @ w_true + np.sqrt(sigma2) * rng.standard_normal(n)]
    losses = []
    for _ in range(iterations):
        start = time.perf_counter()
        if workflow == "replace":
            design, y = x, labels[-1]
        else:
            design, y = np.concatenate([x] * len(labels)), np.concatenate(labels)
            if workflow == "accumulate_subsample":
                pick = rng.choice(len(y), n, replace=False)
                design, y = design[pick], y[pick]
        w = np.linalg.pinv(design) @ y
        losses.append(float(np.mean((x_test @ (w - w_true)) ** 2)))
        new = x @ w + np.sqrt(sigma2) * rng.standard_normal(n)
        labels = [new] if workflow == "replace" else labels + [new]
        if timings is not None:
            timings.append(time.perf_counter() - start)
    return losses


# -- engine ---------------------------------------------------------------------------
def engine_per_chain(task, workflow: str, n: int, iterations: int, seeds: int = 100) -> float:
    from collapse_ray.core.loop import run_chain
    from collapse_ray.core.chain import ChainConfig

    chain = ChainConfig(workflow=workflow, n_real=n, n_iterations=iterations).resolved()
    start = time.perf_counter()
    run_chain(task, chain, range(seeds))
    return (time.perf_counter() - start) / seeds


def slope(seconds) -> tuple[float, float, float]:
    seconds = np.asarray(seconds)
    b = np.polyfit(np.arange(1, len(seconds) + 1), seconds, 1)[0]
    k = max(1, len(seconds) // 10)
    return b, float(seconds[:k].mean()), float(seconds[-k:].mean())


def compare_cells(cells, engine_cost, reference_cost) -> None:
    total_engine = total_reference = 0.0
    for cell in cells:
        e, r = engine_cost(*cell), reference_cost(*cell)
        total_engine += e
        total_reference += r
        print(f"  {str(cell):48s} engine {e * 1e3:8.1f} ms/chain   reference {r * 1e3:9.1f} ms/chain   {r / e:6.0f}x",
              flush=True)
    print(f"  all cells: engine {total_engine:.2f}s, reference {total_reference:.2f}s per chain each: "
          f"{total_reference / total_engine:.0f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setting", choices=sorted(SPECS), required=True)
    parser.add_argument("--skip-engine", action="store_true", help="skip the full grid through Ray Tune + MLflow")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per grid cell (default: the spec's 100)")
    parser.add_argument("--processes", type=int, default=2, help="plain processes of the floor (default 2)")
    parser.add_argument("--skip-reference", action="store_true", help="engine, breakdown and floor only")
    args = parser.parse_args()
    from collapse_ray.core.loop import run_chain
    from collapse_ray.core.chain import ChainConfig
    from collapse_ray.sweep.spec import load_spec
    from collapse_ray.tasks import KDETask, LinearRegressionTask

    spec = load_spec(ROOT / "sweeps" / f"{SPECS[args.setting]}.yaml", breakdown.seed_overrides(args.seeds))
    n_chains = sum(len(j.seeds) for j in spec.jobs())
    print(f"== {args.setting}: {len(spec.points)} grid points, {n_chains:,} chains x "
          f"{spec.points[0].chain.n_iterations} iterations ==", flush=True)
    print(breakdown.load_average(), flush=True)
    if not args.skip_engine:
        run = breakdown.run_engine(SPECS[args.setting], args.seeds)
        print(f"engine: Ray start {run.ray_start:.1f}s + run {run.run:.1f}s (Tune, MLflow) + results table "
              f"{run.results:.1f}s = {run.total:.1f}s ({run.rows:,} rows)", flush=True)
        print(breakdown.load_average(), flush=True)
        wall, summed, phases, floor_cpu = breakdown.floor(SPECS[args.setting], args.seeds, args.processes)
        print(f"floor: the same jobs through run_chain in {args.processes} plain processes: {wall:.1f}s wall "
              f"({summed:.1f}s of chains; fit {phases['fit']:.1f}, evaluate {phases['evaluate']:.1f}, "
              f"sample {phases['sample']:.1f}, pool {phases['pool']:.1f})", flush=True)
        breakdown.print_breakdown(run, wall, floor_cpu)
        if args.setting == "kde":
            evals = kde_kernel_evaluations(spec)
            machine = breakdown.kernel_throughput()
            print(f"kernel evaluations: {evals:.3g} (n_test x training points scored, summed over chains and "
                  f"iterations); machine, one core: float32 {machine['float32']:.3g}/s, float64 "
                  f"{machine['float64']:.3g}/s -> {evals / machine['float32'] / args.processes:.1f}s of bare "
                  f"float32 kernel on {args.processes} cores")
            own = breakdown.task_kernel_throughput()
            for precision, rates in own.items():
                print(f"  task's kernel ({precision}, kde._log_kernel_sums, 500 test points x n points, one core): "
                      + ", ".join(f"n={n} {r:.3g}/s" for n, r in rates.items()))
            print("  float32 / float64: " + ", ".join(f"n={n} {own['float32'][n] / own['float64'][n]:.2f}x"
                                                        for n in own["float32"]))
            for name, seconds, cores in (("engine", run.total, run.cores), ("floor", wall, args.processes),
                                         ("floor, evaluate only", phases["evaluate"], 1)):
                rate = evals / seconds / cores
                print(f"  {name:22s} {rate:.3g} evaluations/s per core = {rate / machine['float32']:.2f} of "
                      f"float32, {rate / machine['float64']:.2f} of float64")
        print(breakdown.load_average(), flush=True)
    if args.skip_reference:
        return 0

    iterations = 100
    print(f"\nper-chain cost on identical cells ({iterations} iterations; engine batches 100 seeds):")
    if args.setting == "kde":
        cells = list(itertools.product(["moons"], [0.5], [10, 100, 316], WORKFLOWS))
        compare_cells(
            cells,
            lambda ds, bw, n, w: engine_per_chain(KDETask(dataset=ds, bandwidth=bw), w, n, iterations),
            lambda ds, bw, n, w: _timed(reference_kde_chain, ds, bw, n, w, iterations, 0),
        )
        task, chain = KDETask(dataset="moons", bandwidth=0.5), dict(n_real=316)
        reference = lambda timings: reference_kde_chain("moons", 0.5, 316, "accumulate", 100, 0, timings)  # noqa: E731
    else:
        cells = list(itertools.product([10, 32], [100, 316], [1.0], WORKFLOWS))
        compare_cells(
            cells,
            lambda d, n, s2, w: engine_per_chain(LinearRegressionTask(dim=d, sigma2=s2), w, n, iterations),
            lambda d, n, s2, w: _timed(reference_regression_chain, d, n, s2, w, iterations, 0),
        )
        task, chain = LinearRegressionTask(dim=32), dict(n_real=316)
        reference = lambda timings: reference_regression_chain(32, 316, 1.0, "accumulate", 300, 0, timings)  # noqa: E731

    print("\nper-iteration cost vs iteration index, accumulate:")
    result = run_chain(task, ChainConfig(workflow="accumulate", n_iterations=500, **chain).resolved(), range(100))
    b, first, last = slope(result.iteration_seconds)
    print(f"  engine, 100 chains, 500 iterations: {first * 1e3:.2f} ms/iteration at the start, {last * 1e3:.2f} ms at "
          f"the end; slope {b * 1e6:+.2f} us per iteration index ({b * 500 / first * 100:+.1f}% over 500 iterations)")
    timings: list[float] = []
    reference(timings)
    b, first, last = slope(timings)
    print(f"  reference, 1 chain, {len(timings)} iterations: {first * 1e3:.2f} ms/iteration at the start, "
          f"{last * 1e3:.2f} ms at the end; slope {b * 1e6:+.2f} us per iteration index")
    return 0


def kde_kernel_evaluations(spec) -> float:
    """Kernel values the grid computes: each iteration scores n_test test points against
    the n points new to its fit (replace and subsample: a fresh fit; accumulate: the
    carried log-sum-exp takes only the new batch)."""
    return float(sum(len(j.seeds) * j.point.task.n_test * j.point.chain.n_real * j.point.chain.n_iterations
                     for j in spec.jobs()))


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
