"""What a sweep's trials do, in numbers, for `validate --cost` (collapse_ray/sweep/cost.py
prints them): each language-model trial's fits (rows, tokens, FLOPs, seconds) and samplings,
Fig. 5's value pools, the neural and toy tasks' fixed costs, and the trials laid out on
the sweep's concurrent slots as Tune starts them."""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
from dataclasses import dataclass, field

from collapse_ray.sweep.cost_profile import Profile
from collapse_ray.sweep.cost_rows import HUB_TEST_ROWS, Measures, RowStats, training_rows

SFT_DRAWN_PER_KEPT = 1.0  # sft's acceptance loop reads its rounds only until n are accepted: n / its rate


@dataclass(frozen=True)
class Fit:
    key: tuple | None  # what makes it shared between chains (None: its own)
    rows: int
    tokens: float  # training tokens
    eval_tokens: float
    flops: float  # 6 N tokens + 2 N held-out tokens
    seconds: float
    gpus: int


@dataclass(frozen=True)
class Sampling:
    samples: int
    tokens: float
    flops: float
    seconds: float
    gpus: int


@dataclass
class TrialCost:
    key: str
    chains: int
    fits: list[Fit] = field(default_factory=list)
    samplings: list[Sampling] = field(default_factory=list)
    overhead_s: float = 0.0
    other_s: float = 0.0  # fitting time of tasks not costed in FLOPs (neural tasks' measured rows/s)
    start_s: float = 0.0  # filled by the schedule
    seconds: float = 0.0  # filled by the schedule (shared fits already made cost nothing)
    shared_fits: int = 0  # fits another trial had made before this one needed them
    training_rows: int = 0  # a neural trial's: rows x epochs over its chains' iterations


@dataclass
class SweepCost:
    spec_name: str
    profile: Profile
    kind: str  # language_model | neural | toy
    trials: list[TrialCost]
    pools: list[tuple[str, Fit, Sampling]]  # Fig. 5's pools, built by the driver
    wall_s: float
    sweep_start_s: float
    slots: int
    measures: Measures  # the tasks' rows and parameters, as the estimate counted them
    notes: list[str]  # what the estimate could not time (a rate the profile lacks)


def _lm_fit_seconds(profile: Profile, path: str, model: str, parameters: int, tokens: float, eval_tokens: float,
                    workers: int) -> float:
    """A fit's wall time on `path` (local, local_all_cores, ray_train; gpu)."""
    if profile.device == "gpu":
        gpu = profile.data["gpu"]
        return gpu["fit_start_s"] + (6 * parameters * tokens + 2 * parameters * eval_tokens) / (
            workers * gpu["train_flops_per_s"])
    entry = _model_entry(profile, "fit", path, model, parameters)
    train = entry["train_tokens_per_s"]
    evaluate = entry.get("eval_tokens_per_s") or train * 3
    return entry["start_s"] + tokens / train + eval_tokens / evaluate


def _model_entry(profile: Profile, what: str, path: str, model: str, parameters: int) -> dict:
    """The profile's measurement of `model` on `path`, or the nearest model's (by
    parameters) with its rates scaled by parameters: labelled so in `notes`."""
    models = profile.data[what].get(path, profile.data[what]["local"])["models"]
    if model in models:
        return models[model]
    nearest = min(models, key=lambda m: abs(math.log(models[m].get("parameters", 1) or 1) - math.log(max(parameters, 1)))
                  if "parameters" in models[m] else 0)
    entry = dict(models[nearest])
    scale = parameters / entry.get("parameters", parameters)
    for rate in ("train_tokens_per_s", "eval_tokens_per_s"):
        if entry.get(rate):
            entry[rate] = entry[rate] / scale
    if "step_s" in entry:
        entry["step_s"] = entry["step_s"] * max(1.0, scale)
    return entry


def _sampling(profile: Profile, task, parameters: int, samples: int, stats: RowStats, driver: bool) -> Sampling:
    per_sample = task.max_length - 1 if getattr(task, "generation", "from_bos") == "fixed_length" else stats.tokens - 1
    tokens = samples * per_sample
    flops = 2.0 * parameters * tokens
    if profile.device == "gpu":
        gpu = profile.data["gpu"]
        actors = task.sampling_concurrency
        seconds = gpu["sampler_start_s"] + flops / (actors * gpu["sample_flops_per_s"])
        return Sampling(samples, tokens, flops, seconds, actors)
    longest = task.max_length - 1 if per_sample == task.max_length - 1 else stats.batch_longest
    batches = math.ceil(samples / task.sampling_batch_size)
    if task.sampler == "local":
        entry = _model_entry(profile, "sample", "local_all_cores" if driver else "local", task.model, parameters)
        rounds = batches
    else:  # Ray Data actors (the vllm sampler's CPU build is timed as them)
        entry = _model_entry(profile, "sample", "ray_data", task.model, parameters)
        rounds = math.ceil(batches / max(1, min(task.sampling_concurrency, batches)))
    step = entry["step_s"] * max(1.0, task.sampling_batch_size / entry.get("batch", task.sampling_batch_size))
    return Sampling(samples, tokens, flops, entry["start_s"] + rounds * longest * step, 0)


def _fit_cost(profile: Profile, task, parameters: int, rows: int, stats: RowStats, key: tuple | None,
              driver: bool = False) -> Fit:
    """A fit on `rows` rows: the micro-batches every worker takes (training.micro_steps_per_epoch),
    epochs, and the held-out evaluations (every eval_steps optimiser steps and at the end)."""
    workers = task.num_workers if task.backend == "ray_train" else 1
    micro = min(task.micro_batch_size, max(1, rows // workers))
    micro_steps = (rows // workers) // micro
    used = workers * micro * micro_steps
    tokens = used * task.epochs * stats.tokens
    optimizer_steps = max(1, task.epochs * micro_steps // task.grad_accum_steps)
    evaluations = 1 + (optimizer_steps // task.eval_steps if task.eval_steps else 0)
    n_test = task.n_test if task.n_test != "all" else HUB_TEST_ROWS.get(task.source, 1000) * stats.kept
    eval_tokens = evaluations * n_test * stats.tokens
    path = "gpu" if profile.device == "gpu" else (
        "ray_train" if task.backend == "ray_train" else "local_all_cores" if driver else "local")
    if rows == 0:  # nothing to train on: the model evaluated untrained, where fits run
        tokens = 0.0
    seconds = _lm_fit_seconds(profile, path, task.model, parameters, tokens, eval_tokens, workers)
    return Fit(key, rows, tokens, eval_tokens, 6.0 * parameters * tokens + 2.0 * parameters * eval_tokens, seconds,
               workers if task.use_gpu else 0)



def _is_language_model(task) -> bool:
    from collapse_ray.text.settings import LanguageModelSettings  # what every language-model task is built on

    return isinstance(task, LanguageModelSettings)


def _lm_trial(profile: Profile, job, measures: Measures) -> TrialCost:
    """One language-model trial: its chain's fits and samplings (a trial runs one chain)."""
    from collapse_ray.text.settings import fit_digest

    task, chain = job.point.task, job.point.chain
    stats, parameters = measures.rows(task), measures.parameters(task)
    trial = TrialCost(job.key, len(job.seeds))
    on_ray = task.backend == "ray_train" or task.sampler in ("ray_data", "vllm")
    trial.overhead_s = profile.number("lm_trial_s", "ray" if on_ray else "local")
    digest = fit_digest(task)
    value_synthetic = getattr(task, "value_synthetic", 0) if getattr(task, "value_pool_size", 0) else 0
    for seed in job.seeds:
        if value_synthetic or getattr(task, "value_pool_size", 0):  # a value-grid cell: one fit
            pool = task.value_pool if value_synthetic else None
            key = (digest, seed, chain.n_real, value_synthetic, pool)
            trial.fits.append(_fit_cost(profile, task, parameters, chain.n_real + value_synthetic, stats, key))
            continue
        for t, rows in enumerate(training_rows(chain, stats.kept), start=1):
            key = (digest, seed, chain.n_real) if t == 1 else None  # iteration 1: the same real rows in every workflow
            trial.fits.append(_fit_cost(profile, task, parameters, rows, stats, key))
            if t < chain.n_iterations:  # the last fit's samples would train nothing
                asked = chain.n_synthetic * (SFT_DRAWN_PER_KEPT if task.name == "sft" else 1.0)
                trial.samplings.append(_sampling(profile, task, parameters, math.ceil(asked), stats, driver=False))
    return trial


def _value_pools(profile: Profile, points, measures: Measures) -> list[tuple[str, Fit, Sampling]]:
    """Fig. 5's pools, each a fine-tune on value_pool_real rows and value_pool_size samples,
    built one after another by the sweep's driver before any cell starts."""
    from collapse_ray.text.settings import config_digest

    pools, seen = [], set()
    for point in points:
        task = point.task
        if not getattr(task, "value_pool_size", 0) or not task.value_synthetic:
            continue
        pool_task = dataclasses.replace(task, value_synthetic=0, n_value_pools=1)
        key = config_digest(pool_task)
        if key in seen:
            continue
        seen.add(key)
        stats, parameters = measures.rows(task), measures.parameters(task)
        fit = _fit_cost(profile, task, parameters, task.value_pool_real, stats, None, driver=True)
        samples = math.ceil(task.value_pool_size * SFT_DRAWN_PER_KEPT)
        pools.append((f"pool {task.value_pool}", fit, _sampling(profile, task, parameters, samples, stats, driver=True)))
    return pools


NEURAL_SOURCES = {"vae": lambda task: "digits", "diffusion": lambda task: task.source}


def _neural_trial(profile: Profile, job, notes: list[str]) -> TrialCost:
    """A neural task's trial: its chains' training rows x epochs at the profile's measured
    rows/s of that task (one chain at a time: chains batched in one trial train up to ~2x
    faster, benchmarks/neural.py), plus a toy trial's fixed cost. Sampling and evaluation
    are not costed."""
    task, chain = job.point.task, job.point.chain
    trial = TrialCost(job.key, len(job.seeds), overhead_s=profile.number("toy_trial_s"))
    source = NEURAL_SOURCES.get(task.name, lambda t: None)(task)
    measured = profile.data.get("neural", {}).get(f"{task.name}/{source}")
    rows = sum(training_rows(chain, 1.0)) * task.epochs * len(job.seeds)
    if measured:
        trial.other_s = rows / measured["rows_per_s"]
    else:
        note = (f"no measured rate for {task.name}{f' ({source})' if source else ''} in the profile: the time below "
                "is its fixed costs only")
        if note not in notes:
            notes.append(note)
    trial.fits = []  # no FLOPs are counted for them
    trial.training_rows = rows
    return trial


def estimate_sweep(spec, profile: Profile) -> SweepCost:
    """The sweep's cost by trial and in total, at `profile`."""
    jobs = spec.jobs()
    notes: list[str] = []
    kinds = {("language_model" if _is_language_model(p.task) else "neural" if p.task.name in NEURAL_SOURCES
              or p.task.name == "conformer_diffusion" else "toy") for p in spec.points}
    kind = "language_model" if "language_model" in kinds else "neural" if "neural" in kinds else "toy"
    measures = Measures(spec.points)
    trials, pools = [], []
    if kind == "language_model":
        pools = _value_pools(profile, spec.points, measures)
        trials = [_lm_trial(profile, job, measures) for job in jobs]
    elif kind == "neural":
        trials = [_neural_trial(profile, job, notes) for job in jobs]
    else:
        trials = [TrialCost(job.key, len(job.seeds), overhead_s=profile.number("toy_trial_s")) for job in jobs]
    slots = _slots(spec, profile)
    sweep_start = profile.number("sweep_start_s")
    pools_s = sum(f.seconds + s.seconds for _, f, s in pools)
    wall = sweep_start + pools_s + _schedule(trials, slots, start=sweep_start + pools_s)
    return SweepCost(spec.name, profile, kind, trials, pools, wall, sweep_start, slots, measures, notes)


def _slots(spec, profile: Profile) -> int:
    """Trials at once: run.max_concurrent_trials, else as many as the profile machine's
    CPUs hold at run.cpus_per_trial."""
    if spec.run.max_concurrent_trials:
        return spec.run.max_concurrent_trials
    cores = profile.data.get("machine", {}).get("cores", os.cpu_count() or 1)
    return max(1, int(cores // spec.run.cpus_per_trial))


def _schedule(trials: list[TrialCost], slots: int, start: float) -> float:
    """Trials in Tune's order (heaviest first) on `slots`, each starting on the first free
    slot; a shared fit made (finished) before a trial needs it costs that trial nothing,
    one still running is made again (two chains fitting one key both fit, steps.publish_fit).
    Returns the seconds from `start` until the last trial ends."""
    free = [start] * slots
    heapq.heapify(free)
    done: dict[tuple, float] = {}
    end = start
    for trial in trials:
        now = heapq.heappop(free)
        trial.start_s = now
        now += trial.overhead_s + trial.other_s
        samplings = iter(trial.samplings)
        for fit in trial.fits:
            if fit.key is not None and done.get(fit.key, math.inf) <= now:
                trial.shared_fits += 1
            else:
                now += fit.seconds
                if fit.key is not None:
                    done[fit.key] = min(done.get(fit.key, math.inf), now)
            sampling = next(samplings, None)
            if sampling is not None:
                now += sampling.seconds
        trial.seconds = now - trial.start_s
        heapq.heappush(free, now)
        end = max(end, now)
    return end - start
