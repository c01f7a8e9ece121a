"""Benchmark: training throughput of one iteration's fit of the neural tasks (images or
points per second), one chain against a batch of chains trained together.

    python benchmarks/neural.py                      # CPU, ~2 minutes on 2 cores
    python benchmarks/neural.py --chains 1 5 20      # other batch sizes

The fits run on the CPU (the neural tasks have no GPU placement yet).

For each task setting (vae on digits; diffusion on moons and on digits) and each batch
size, fits once on the task's real data (iteration 1's fit) and prints the throughput
the fit measured (rows x epochs / training seconds, all chains together), the wall time
of the whole fit, and the speed-up over one chain. torch uses one thread per process,
as in a Ray trial.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SETTINGS = {
    "vae digits (hidden 256, 1,438 images)": ("vae", {}, 1438),
    "diffusion moons (1,000 points)": ("diffusion", {"source": "moons"}, 1000),
    "diffusion digits (1,438 images)": ("diffusion", {"source": "digits", "n_test": 359}, 1438),
}


def measure(task_name: str, fields: dict, n_real: int, chains: int) -> tuple[float, float]:
    from collapse_ray.core.loop import chain_generators
    from collapse_ray.sweep.spec import build_task

    task = build_task({"name": task_name, **fields}, "task")
    real = task.real_data(n_real, [chain_generators(s)[0] for s in range(chains)])
    start = time.perf_counter()
    model = task.fit(real.train, real.context)
    seconds = time.perf_counter() - start
    rate = getattr(model, "images_per_s", None) or getattr(model, "rows_per_s", None)
    return float(rate if rate is not None else n_real * chains / seconds), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chains", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--only", default=None, help="substring of a setting name")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from collapse_ray.tasks import TASKS

    print(f"{'setting':42s} {'chains':>6s} {'rows/s':>10s} {'fit s':>8s} {'x one chain':>12s}")
    for label, (task_name, fields, n_real) in SETTINGS.items():
        if task_name not in TASKS or (args.only and args.only not in label):
            continue
        base = None
        for chains in args.chains:
            rate, seconds = measure(task_name, fields, n_real, chains)
            base = base or rate
            print(f"{label:42s} {chains:6d} {rate:10,.0f} {seconds:8.1f} {rate / base:11.1f}x", flush=True)
    print(f"\nCPU, 1 torch thread; torch {torch.__version__}; numpy {np.__version__}")


if __name__ == "__main__":
    main()
