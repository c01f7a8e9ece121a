"""Benchmark: the value grid's adaptive contour search (issue 28, 2) against the answers it
is meant to find, through the whole engine (`collapse-ray run`: Ray Tune, MLflow).

    nice -n 10 python benchmarks/adaptive_search.py                                # both checks
    nice -n 10 python benchmarks/adaptive_search.py --only linear_regression      # ~10-20 min on 2 cores
    nice -n 10 python benchmarks/adaptive_search.py --only fig5 --out /tmp/bench  # ~1 h on 2 busy cores
    python benchmarks/adaptive_search.py --only fig5 --full-grid /tmp/bench/fig5_full --replay  # seconds
    python benchmarks/adaptive_search.py --only fig5 --full-grid /tmp/bench/fig5_full --replay --set search.budget=22

1. linear regression: sweeps/linear_regression_value_contour.yaml (the axes, pools and seeds
   of sweeps/linear_regression_value_grid.yaml, `search: level_set`), its estimated side
   of every cell against the closed form's (theory.linear_regression_value);
2. the language-model value grid: sweeps/fig5_value_grid_dense.yaml run twice, the full
   grid (the reference: the sign of each cell's paired L(n, s) - L(n, 0)) and with
   `--set search.method=level_set`; the adaptive run's estimated side against the full
   grid's observed one (`--replay`: the search run in-process on the full grid's own losses,
   which is what the engine proposes on them, tests/test_contour_sweep.py; `--full-grid`:
   read a full grid run before).

Each prints: the agreement (cells with a side whose estimated side is right), the cells run
as a fraction of the grid's cells (baselines and the n_real = 0 column counted in the
grid), the trials run as a fraction of the full grid's, the stopping reason and wall times.
The issue's bar: agreement >= 0.95 while running <= a quarter of the cells.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collapse_ray import theory  # noqa: E402
from collapse_ray.sweep.contour_search import STATE_FILE, ContourSearch, ValueGridCells  # noqa: E402
from collapse_ray.sweep.spec import load_spec  # noqa: E402


def run(spec: Path, out: Path, *overrides: str) -> tuple[Path, float]:
    """`collapse-ray run` in its own process; the sweep folder and the wall time."""
    sets = [arg for o in overrides for arg in ("--set", o)]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "collapse_ray.cli", "run", str(spec), "--out", str(out), *sets],
                   check=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    name = load_spec(spec, overrides).name
    return max((out / name).iterdir()), seconds


def estimate_of(spec: Path, sweep_dir: Path, *overrides: str):
    loaded = load_spec(spec, overrides)
    cells = ValueGridCells.from_jobs(loaded.jobs())
    state = json.loads((sweep_dir / STATE_FILE).read_text())
    search = ContourSearch.open(sweep_dir / STATE_FILE, cells, loaded.search, state["batch_size"])
    return search.estimate(), search, len(loaded.jobs())


def report(name: str, estimate, truth: np.ndarray, search: ContourSearch, n_trials: int, seconds: float) -> dict:
    cells = estimate.cells
    side = cells.candidates
    right = (estimate.hurts == truth)[side]
    ran_trials = len(search.results)
    row = {"check": name, "agreement": float(right.mean()), "cells_with_side": int(side.sum()),
           "wrong": [[int(n), int(s)] for n, s, ok in zip(cells.n_real[side], cells.synthetic[side], right) if not ok],
           "cells_run": int(estimate.ran.sum()), "cells": len(cells), "run_fraction": float(estimate.ran.mean()),
           "trials_run": ran_trials, "trials": n_trials, "trial_fraction": ran_trials / n_trials,
           "stopped": estimate.stopped, "batches": len(search.batches), "seconds": round(seconds, 1),
           "truth_hurts": int(truth[side].sum())}
    print(f"{name}: side right for {row['agreement']:.3f} of {row['cells_with_side']} cells "
          f"({len(row['wrong'])} wrong: {row['wrong']}); ran {row['cells_run']} of {row['cells']} cells "
          f"({row['run_fraction']:.3f}), {ran_trials} of {n_trials} trials ({row['trial_fraction']:.3f}); "
          f"stopped: {estimate.stopped} after {row['batches']} batches; {seconds:.0f} s", flush=True)
    return row


def linear_regression(out: Path) -> dict:
    spec = ROOT / "sweeps" / "linear_regression_value_contour.yaml"
    sweep_dir, seconds = run(spec, out / "lr")
    estimate, search, n_trials = estimate_of(spec, sweep_dir)
    task = load_spec(spec).points[0].task
    cells = estimate.cells
    with np.errstate(invalid="ignore"):
        truth = theory.linear_regression_value(cells.n_real, cells.synthetic, task.value_pool_real, task.dim,
                                               task.sigma2) > 0
    return report("linear_regression (closed form)", estimate, truth, search, n_trials, seconds)


def replayed(spec: Path, table, overrides: tuple[str, ...] = ()) -> tuple[ContourSearch, int]:
    """The adaptive search run in-process on a full grid's per-seed losses, batch size as the
    sweep would resolve it (run.max_concurrent_trials over the trials of a cell)."""
    from collapse_ray.sweep.contour_search import resolve_batch_size

    loaded = load_spec(spec, ["search.method=level_set", *overrides])
    jobs = loaded.jobs()
    cells = ValueGridCells.from_jobs(jobs)
    batch = resolve_batch_size(loaded.search, loaded.run.max_concurrent_trials, 2, loaded.run.cpus_per_trial,
                               max(len(j) for j in cells.jobs))
    search = ContourSearch(cells, loaded.search, batch)
    key_of = {job.key: job.point.key for job in jobs}
    last = table[table["iteration"] == table.groupby("run_key")["iteration"].transform("max")]
    while (pending := search.next_jobs()) is not None:
        for job in pending:
            rows = last[last["run_key"] == key_of[job]].sort_values("seed")
            search.record(job, rows["seed"].tolist(), rows["test_loss"].tolist())
    return search, len(jobs)


def fig5(out: Path, replay: bool = False, full_grid: Path | None = None, overrides: tuple[str, ...] = ()) -> dict:
    import pandas as pd

    from analysis.value_grid_figures import value_per_cell
    from collapse_ray.tracking.results import results_table

    spec = ROOT / "sweeps" / "fig5_value_grid_dense.yaml"
    if full_grid is None:
        full_grid = out / "fig5_full"
        _, full_seconds = run(spec, full_grid)
    else:
        full_seconds = math.nan
    table = results_table(f"sqlite:///{full_grid / 'mlflow.db'}", load_spec(spec).name)
    observed = value_per_cell(table[table["iteration"] == table.groupby("run_key")["iteration"].transform("max")])
    if replay:  # the search in-process on the full grid's own losses (what the engine proposes on
        # the same losses: tests/test_contour_sweep.py checks that), instead of a second sweep
        started = time.perf_counter()
        search, n_trials = replayed(spec, table, overrides)
        estimate, seconds = search.estimate(), time.perf_counter() - started
    else:
        sweep_dir, seconds = run(spec, out / "fig5_adaptive", "search.method=level_set", *overrides)
        estimate, search, n_trials = estimate_of(spec, sweep_dir, "search.method=level_set", *overrides)
    cells = estimate.cells
    sign = {(int(r.n_real), int(r.value_synthetic)): r.mean > 0 for r in observed.itertuples()}
    truth = np.array([sign.get((int(n), int(s)), False) for n, s in zip(cells.n_real, cells.synthetic)])
    row = report("fig5_value_grid_dense (full grid)", estimate, truth, search, n_trials, seconds)
    row["full_grid_seconds"] = round(full_seconds, 1)
    print(f"  the full grid took {full_seconds:.0f} s; the search {seconds:.0f} s ({seconds / full_seconds:.2f})")
    pd.DataFrame(observed).to_csv(out / "fig5_full_values.csv", index=False)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["linear_regression", "fig5"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/collapse_ray_adaptive_search"))
    parser.add_argument("--replay", action="store_true",
                        help="fig5: run the search in-process on the full grid's losses instead of a second sweep")
    parser.add_argument("--full-grid", type=Path, help="fig5: a finished full grid's --out folder to read, not rerun")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="fig5: a spec override for the adaptive run (e.g. search.budget=22), repeatable")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.only in (None, "linear_regression"):
        rows.append(linear_regression(args.out))
    if args.only in (None, "fig5"):
        rows.append(fig5(args.out, args.replay, args.full_grid, tuple(args.overrides)))
    (args.out / "adaptive_search.json").write_text(json.dumps(rows, indent=2))
    print(f"written: {args.out / 'adaptive_search.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
