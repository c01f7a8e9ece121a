"""Measure this machine's throughput profile: what `collapse-ray validate SPEC --cost` turns
FLOPs and tokens into seconds with.

    python benchmarks/throughput_profile.py                         # ~5 minutes on 2 CPU cores
    python benchmarks/throughput_profile.py --out ~/.cache/collapse_ray/throughput_profile.json

Writes a small JSON file (plain data: collapse_ray/sweep/cost_profile.py reads it, nothing in it runs):
when and where it was measured, and

- the fixed costs that dominate CPU-scale sweeps: `collapse-ray run` of a one-trial toy sweep
  end to end (Ray start, the MLflow store, the sweep's end), each further toy trial, and a
  language-model trial's own cost beyond its fits and samples (a one-fit sweep, in-process
  and on Ray Train, less the fit's own seconds that the fit recorded);
- language-model fits per path, from the fits' own figures: training tokens/s
  (train_tokens / train_seconds, first steps included, as every fit pays them), held-out
  tokens/s, and the start-up of a fit (its wall time less training and evaluation: model
  build, saving; on Ray Train also the workers, process group, DeepSpeed engine and Ray
  Data's reading, tokenising and shuffle, taken from the one-fit sweep's own fit, which
  reads its selection from the pool's shards as every chain's fit does). Paths: in-process plain torch with 1 thread (a trial of
  run.cpus_per_trial 1) and with every core (the sweep's driver, which builds Fig. 5's
  pools), and Ray Train (2 workers, gloo, DeepSpeed ZeRO-1);
- sampling per path: seconds per generation step of a batch (fixed-length generation, so
  every step is one token for every sample of the batch) and the sampler's start-up
  (loading the model; on Ray Data the actors);
- the neural tasks' fits: training rows per second of one chain (vae on digits,
  diffusion on moons and on digits), 1 torch thread.
Everything runs on this machine's CPU; a GPU profile is not measured by this script
(see collapse_ray/profiles/README.md for the GPU placeholder's policy).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FORMAT = "collapse_ray.throughput_profile/1"
MODELS = ("tiny", "tiny_wide")
MAX_LENGTH = 128
MICRO_BATCH = 16
SAMPLE_BATCH = 64
SAMPLE_STEPS = 48


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def corpus(work: Path, n: int):
    """Procedural instruction pairs formatted as sft trains on them, a tokenizer trained
    on them (vocabulary 512, as the quick specs) and their encodings (long rows dropped)."""
    from collapse_ray.tasks.sft import format_example
    from collapse_ray.text import corpora
    from collapse_ray.text.models import load_tokenizer, train_tokenizer
    from collapse_ray.text.steps import encode

    rows = corpora.procedural_rows("instructions", "train", n, 7)
    texts = [format_example(p, r) for p, r in zip(rows["prompt"], rows["response"])]
    folder = work / "tokenizer"
    train_tokenizer(texts, 512).save_pretrained(folder)
    examples = encode(load_tokenizer(folder), texts, MAX_LENGTH, drop_long=True)
    return texts, str(folder), examples


def fit_settings(model: str, tokenizer_dir: str, out: Path, engine: str):
    from collapse_ray.text.training import FitSettings

    return FitSettings(model_name=model, tokenizer_dir=tokenizer_dir, output_dir=str(out), seed=0, epochs=1,
                       micro_batch_size=MICRO_BATCH, grad_accum_steps=1, learning_rate=1e-3, warmup_ratio=0.0,
                       warmup_steps=None, betas=(0.9, 0.999), schedule="constant", weight_decay=0.0,
                       max_grad_norm=1.0, engine=engine, zero_stage=1, precision="fp32")


def fit_figures(figures: dict, wall: float, held_out) -> dict:
    eval_tokens = sum(len(x) for x in held_out)
    return {"train_tokens_per_s": figures["train_tokens"] / figures["train_seconds"],
            "eval_tokens_per_s": eval_tokens / figures["eval_seconds"] if figures.get("eval_seconds") else None,
            "start_s": max(0.0, wall - figures["train_seconds"] - figures.get("eval_seconds", 0.0)),
            "wall_s": wall, "train_tokens": figures["train_tokens"]}


def measure_local(work: Path, tokenizer_dir: str, examples, held_out, threads: int) -> tuple[dict, dict]:
    """In-process fits and sampling of each model at `threads` torch threads."""
    import torch

    from collapse_ray.text import backends
    from collapse_ray.text.models import n_parameters

    torch.set_num_threads(threads)
    # a first fit pays this process's imports, which a trial's own cost (lm_trial_s) holds
    backends.fit_local(fit_settings("tiny", tokenizer_dir, work / f"warm-up-{threads}", "torch"), examples[:64])
    fits, samples = {}, {}
    for model in MODELS:
        out = work / f"local-{threads}-{model}"
        start = time.perf_counter()
        figures = backends.fit_local(fit_settings(model, tokenizer_dir, out, "torch"), examples, held_out)
        fits[model] = fit_figures(figures, time.perf_counter() - start, held_out)
        start = time.perf_counter()
        loaded, tokenizer, device = backends.load_for_inference(str(out), tokenizer_dir)
        load_s = time.perf_counter() - start
        fits[model]["parameters"] = n_parameters(loaded)
        settings = backends.SampleSettings(model_dir=str(out), tokenizer_dir=tokenizer_dir, temperature=1.0,
                                           top_p=None, max_new_tokens=SAMPLE_STEPS, batch_size=SAMPLE_BATCH,
                                           generation="fixed_length")
        list(backends.generate_ids(loaded, tokenizer, 8, 0, settings, device))  # warm-up
        start = time.perf_counter()
        list(backends.generate_ids(loaded, tokenizer, SAMPLE_BATCH, 1, settings, device))
        samples[model] = {"batch": SAMPLE_BATCH, "step_s": (time.perf_counter() - start) / SAMPLE_STEPS,
                          "start_s": load_s}
        print(f"  local x{threads} {model}: {fits[model]['train_tokens_per_s']:,.0f} train tokens/s, fit start "
              f"{fits[model]['start_s']:.1f} s; sampling {samples[model]['step_s'] * 1e3:.1f} ms a step of "
              f"{SAMPLE_BATCH}", flush=True)
    return fits, samples


def measure_ray(work: Path, texts, tokenizer_dir: str, held_out, cores: int, local_step_s: float) -> tuple[dict, dict]:
    """Ray Train fits (2 workers, DeepSpeed ZeRO-1) on a Ray Dataset of texts, as a pool's
    selection is fitted: two, the second's figures kept (the first also pays this Ray's
    first imports and Ray Data's first start); and one Ray Data sampling batch on an
    actor, whose start-up is its wall time less the batch at `local_step_s` a step (an
    actor generates with one thread, as the in-process sampler of a 1-CPU trial)."""
    import pandas as pd
    import ray

    from collapse_ray.text import backends

    for attempt in range(3):  # on a busy machine Ray's start can time out
        try:
            ray.init(address="local", num_cpus=cores, include_dashboard=False, logging_level="ERROR",
                     log_to_driver=False)
            break
        except Exception as err:  # noqa: BLE001 - Ray raises a bare Exception on a start-up timeout
            if attempt == 2 or "timed out" not in str(err):
                raise
            ray.shutdown()
    try:
        placement = backends.Placement("ray_train", 2, False, 0.9, "ray_data", 2)
        shard = work / "shard.parquet"  # read as a pool's selection is: Parquet through Ray Data
        pd.DataFrame({"text": texts}).to_parquet(shard)
        dataset = ray.data.read_parquet(str(shard))
        first = None
        for attempt in ("first", "second"):
            out = work / f"ray-tiny-{attempt}"
            start = time.perf_counter()
            figures = backends.fit_ray_train_texts(fit_settings("tiny", tokenizer_dir, out, "deepspeed"), dataset,
                                                   placement, MAX_LENGTH, True, held_out)
            fit = {"tiny": fit_figures(figures, time.perf_counter() - start, held_out)}
            first = first or fit["tiny"]["start_s"]
        fit["tiny"]["first_start_s"] = first
        print(f"  ray_train x2 tiny: {fit['tiny']['train_tokens_per_s']:,.0f} train tokens/s, fit start "
              f"{fit['tiny']['start_s']:.1f} s (the first fit: {first:.1f} s)", flush=True)
        settings = backends.SampleSettings(model_dir=str(out), tokenizer_dir=tokenizer_dir, temperature=1.0,
                                           top_p=None, max_new_tokens=SAMPLE_STEPS, batch_size=SAMPLE_BATCH,
                                           generation="fixed_length")
        start = time.perf_counter()
        backends.sample(SAMPLE_BATCH, 1, settings, placement)
        wall = time.perf_counter() - start
        sample = {"tiny": {"batch": SAMPLE_BATCH, "step_s": local_step_s,
                           "start_s": max(0.0, wall - SAMPLE_STEPS * local_step_s)}}
        print(f"  ray_data x2 tiny: start {sample['tiny']['start_s']:.1f} s (one batch in {wall:.1f} s)", flush=True)
        return fit, sample
    finally:
        ray.shutdown()


def run_sweep(work: Path, name: str, spec: str) -> tuple[float, list[dict]]:
    """`collapse-ray run` of `spec` in a process of its own: (wall seconds, the figures
    its fits recorded, fit.json)."""
    path = work / f"{name}.yaml"
    path.write_text(spec)
    out = work / f"out-{name}"
    cli = Path(sys.executable).with_name("collapse-ray")
    log = work / f"{name}.log"
    for attempt in range(2):  # on a busy machine Ray's start can time out: once more, from scratch
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        with log.open("w") as sink:
            done = subprocess.run([str(cli), "run", str(path), "--out", str(out)], stdout=sink, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        if done.returncode == 0:
            break
    else:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:]
        raise SystemExit(f"collapse-ray run {path} failed twice: {tail}")
    return wall, [json.loads(f.read_text()) for f in out.rglob("fit.json")]


TOY = """name: {name}
task: {{name: gaussian, dim: 2}}
chain: {{n_real: 20, n_iterations: 2}}
seeds: 1
grid: {{chain.n_real: {n_real}}}
"""
LM_LOCAL = """name: profile_lm_local
task: {name: sft, model: tiny, vocab_size: 512, max_length: 128, epochs: 1, n_test: 50, backend: local,
       sampler: local, engine: torch}
chain: {n_real: 64, n_iterations: 1}
seeds: 1
run: {cpus_per_trial: 1}
"""
LM_RAY = """name: profile_lm_ray
task: {name: pretraining, model: tiny, vocab_size: 512, max_length: 96, epochs: 1, n_test: 50, num_workers: 2}
chain: {n_real: 64, n_iterations: 1}
seeds: 1
run: {cpus_per_trial: 0.01, max_concurrent_trials: 1}
"""


def measure_overheads(work: Path) -> tuple[dict, dict]:
    """The sweep's start, a toy trial, and an LM trial's own cost beyond its fit (in-process
    and on Ray); and, from the Ray sweep's fit as a chain makes it (its selection read from
    the pool's Parquet shards, tokenised and shuffled by Ray Data, then Ray Train), that
    fit's start-up: its wall time less training and evaluation."""
    one, _ = run_sweep(work, "profile_toy_1", TOY.format(name="profile_toy_1", n_real=[20]))
    five, _ = run_sweep(work, "profile_toy_5", TOY.format(name="profile_toy_5", n_real=[20, 21, 22, 23, 24]))
    local, local_fits = run_sweep(work, "profile_lm_local", LM_LOCAL)
    ray_wall, ray_fits = run_sweep(work, "profile_lm_ray", LM_RAY)
    seconds = lambda fits: sum(f.get("fit_seconds", 0.0) for f in fits)  # noqa: E731
    overheads = {"sweep_start_s": one, "toy_trial_s": max(0.0, (five - one) / 4),
                 "lm_trial_s": {"local": max(0.0, local - one - seconds(local_fits)),
                                "ray": max(0.0, ray_wall - one - seconds(ray_fits))}}
    pool_fit = {"start_s": max(0.0, ray_fits[0]["fit_seconds"] - ray_fits[0]["train_seconds"]
                               - ray_fits[0].get("eval_seconds", 0.0)),
                "data_s": ray_fits[0].get("data_seconds")} if ray_fits else {}
    print(f"  sweep start {one:.1f} s, a toy trial {overheads['toy_trial_s']:.2f} s, an LM trial beyond its fit: "
          f"{overheads['lm_trial_s']['local']:.1f} s in-process, {overheads['lm_trial_s']['ray']:.1f} s on Ray; a "
          f"chain's Ray Train fit starts in {pool_fit.get('start_s', float('nan')):.1f} s", flush=True)
    return overheads, pool_fit


NEURAL = {"vae/digits": ("vae", {"epochs": 3}, 1438), "diffusion/moons": ("diffusion", {"source": "moons", "epochs": 5}, 1000),
          "diffusion/digits": ("diffusion", {"source": "digits", "n_test": 359, "epochs": 3}, 1438)}


def measure_neural() -> dict:
    import torch

    from collapse_ray.core.loop import chain_generators
    from collapse_ray.sweep.spec import build_task

    torch.set_num_threads(1)
    rates = {}
    for key, (name, fields, n_real) in NEURAL.items():
        task = build_task({"name": name, **fields}, "task")
        real = task.real_data(n_real, [chain_generators(0)[0]])
        model = task.fit(real.train, real.context)
        rate = getattr(model, "images_per_s", None) or model.rows_per_s
        rates[key] = {"rows_per_s": float(rate), "chains": 1,
                      "fields": {k: getattr(task, k) for k in ("hidden", "batch_size", "n_train_noise") if hasattr(task, k)}}
        print(f"  {key}: {rate:,.0f} training rows/s (1 chain, 1 thread)", flush=True)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="collapse_ray/profiles/cpu.json", help="where to write the profile")
    parser.add_argument("--name", default=None, help="the profile's name (default: cpu-<cores>core-<host>)")
    args = parser.parse_args()

    import torch

    cores = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="throughput-profile-"))
    load_before = os.getloadavg()
    began = time.perf_counter()
    try:
        texts, tokenizer_dir, examples = corpus(work, 600)
        held_out = examples[-100:]
        examples = examples[:-100]
        print(f"{len(examples)} training examples, {sum(map(len, examples)) / len(examples):.1f} tokens each")
        print("fits and sampling in-process:", flush=True)
        local_fit, local_sample = measure_local(work, tokenizer_dir, examples, held_out, 1)
        all_fit, all_sample = measure_local(work, tokenizer_dir, examples, held_out, cores)
        print("on Ray:", flush=True)
        ray_fit, ray_sample = measure_ray(work, texts[:500], tokenizer_dir, held_out, cores,
                                         local_sample['tiny']['step_s'])
        print("neural tasks:", flush=True)
        neural = measure_neural()
        print("fixed costs (collapse-ray run, each in a process of its own):", flush=True)
        overheads, pool_fit = measure_overheads(work)
        if pool_fit:  # a chain's fit starts as the sweep's did (the pool path), not as the bare one above
            ray_fit["tiny"]["bare_start_s"] = ray_fit["tiny"]["start_s"]
            ray_fit["tiny"]["start_s"] = pool_fit["start_s"]
            ray_fit["tiny"]["data_s"] = pool_fit["data_s"]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    profile = {
        "format": FORMAT,
        "name": args.name or f"cpu-{cores}core-{socket.gethostname()}",
        "device": "cpu",
        "measured": True,
        "measured_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python benchmarks/throughput_profile.py",
        "machine": {"cpu": cpu_model(), "cores": cores, "torch": torch.__version__,
                    "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                    "seconds": round(time.perf_counter() - began, 1)},
        **overheads,
        "fit": {"local": {"threads": 1, "models": local_fit}, "local_all_cores": {"threads": cores, "models": all_fit},
                "ray_train": {"workers": 2, "engine": "deepspeed", "zero_stage": 1, "models": ray_fit}},
        "sample": {"local": {"threads": 1, "models": local_sample},
                   "local_all_cores": {"threads": cores, "models": all_sample},
                   "ray_data": {"actors": 2, "models": ray_sample}},
        "neural": neural,
    }
    out = Path(args.out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(profile, indent=1) + "\n")
    print(f"wrote {out} ({profile['machine']['seconds']} s; load average {load_before[0]:.1f} -> "
          f"{profile['machine']['load_average'][1]:.1f})")


if __name__ == "__main__":
    main()
