"""The fixed cost of one Ray Train + DeepSpeed fit, with DeepSpeed's own imports and
with the lean ones (collapse_ray/text/lean_deepspeed.py), in one run.

    python benchmarks/fit_overhead.py            # ~4 minutes on 2 idle CPU cores
    python benchmarks/fit_overhead.py --fits 5

For each mode, a local Ray of its own (the mode reaches the workers through the job's
runtime environment) and an empty TORCH_EXTENSIONS_DIR, as in a new venv: the first fit
(which, with DeepSpeed's own imports, builds the shared-memory op), then --fits more.
Each fit is the tiny preset on a few examples on 2 workers (ZeRO-1), so its time is
almost all fixed cost: Ray Train's controller and workers, imports, the DeepSpeed engine.
Printed: wall seconds per fit (first, then median and range of the rest) and the
workers' set-up seconds (train_worker's figure: imports, model, engine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=int, default=3, help="fits after the first, per mode")
    parser.add_argument("--examples", type=int, default=64)
    args = parser.parse_args()

    from collapse_ray.tasks import PretrainingTask
    from collapse_ray.text import corpora
    from collapse_ray.text.lean_deepspeed import LEAN_ENV
    from collapse_ray.text.models import load_tokenizer
    from collapse_ray.text.steps import encode, prepare_tokenizer

    work = Path(tempfile.mkdtemp(prefix="fit-overhead-"))
    task = PretrainingTask(model="tiny", max_length=64, vocab_size=300).with_workdir(work)
    texts = corpora.procedural_rows("stories", "train", args.examples, 0)["text"]
    tokenizer_dir = prepare_tokenizer(task, task.workdir, texts)
    examples = encode(load_tokenizer(tokenizer_dir), texts, 64, drop_long=False)

    rows = []
    for mode, lean in (("DeepSpeed's own imports", "0"), ("lean imports", "1")):
        extensions = work / f"torch_extensions_{lean}"
        extensions.mkdir()
        seconds, setup = _fits(work / f"fits_{lean}", tokenizer_dir, examples, args.fits + 1,
                               {LEAN_ENV: lean, "TORCH_EXTENSIONS_DIR": str(extensions)})
        built = sorted(p.name for p in extensions.iterdir())
        rows.append((mode, seconds, setup, built))

    print(f"\none Ray Train fit (tiny preset, {len(examples)} examples, 2 workers, DeepSpeed ZeRO-1), wall seconds:")
    print(f"{'':26s} {'first fit':>10s} {'later: median':>14s} {'range':>13s} {'worker set-up':>14s}  ops built")
    for mode, seconds, setup, built in rows:
        rest = seconds[1:]
        print(f"{mode:26s} {seconds[0]:10.1f} {statistics.median(rest):14.1f} {min(rest):6.1f}-{max(rest):<6.1f}"
              f" {statistics.median(setup):14.1f}  {', '.join(built) or 'none'}")
    (own, own_s, own_setup, _), (_, lean_s, lean_setup, _) = rows
    print(f"lean saves {own_s[0] - lean_s[0]:.1f} s on a new venv's first fit and "
          f"{statistics.median(own_s[1:]) - statistics.median(lean_s[1:]):.1f} s on each later one "
          f"(worker set-up {statistics.median(own_setup) - statistics.median(lean_setup):.1f} s)")


def _fits(root: Path, tokenizer_dir: str, examples, n: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """n fits on a local Ray whose workers see `env`; (wall seconds, worker set-up seconds)."""
    import ray

    from collapse_ray.text import backends
    from collapse_ray.text.training import FitSettings

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": env})
    placement = backends.Placement(backend="ray_train", num_workers=2, use_gpu=False, cpus_per_worker=0.9,
                                   sampler="local", sampling_concurrency=1)
    seconds, setup = [], []
    try:
        for i in range(n):
            settings = FitSettings(
                model_name="tiny", tokenizer_dir=tokenizer_dir, output_dir=str(root / f"fit{i}"), seed=i, epochs=1,
                micro_batch_size=4, grad_accum_steps=1, learning_rate=1e-3, warmup_ratio=0.0, warmup_steps=None,
                betas=(0.9, 0.999), schedule="constant", weight_decay=0.0, max_grad_norm=1.0, engine="deepspeed",
                zero_stage=1, precision="fp32")
            start = time.perf_counter()
            figures = backends.fit(settings, examples, placement)
            seconds.append(time.perf_counter() - start)
            setup.append(figures["setup_seconds"])
            print(f"  {env}: fit {i + 1}/{n}: {seconds[-1]:.1f} s (worker set-up {setup[-1]:.1f} s)", flush=True)
    finally:
        ray.shutdown()
    return seconds, setup


if __name__ == "__main__":
    main()
