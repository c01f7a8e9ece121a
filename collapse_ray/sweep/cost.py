"""The cost of a sweep before it starts: `collapse-ray validate SPEC --cost [--profile PATH]`.

    collapse-ray validate sweeps/pretraining_quick.yaml --cost
    collapse-ray validate sweeps/sft_helpsteer2.yaml --cost      # GPU-hours, memory per GPU

Per trial and in total, for the language-model tasks:
- fits: the rows each fit really trains on (the workflow's training set at each
  iteration, made by the workflow's own block selection on a pool of the chain's sizes;
  a value-grid cell's n_real + value_synthetic; the micro-batches every worker takes),
  times epochs times the rows' mean length in tokens, and FLOPs = 6 x parameters x
  tokens; fits that the sweep shares (every workflow's iteration 1, value-grid cells
  without synthetic rows across pools) counted once, as the sweep's fit keys share them;
- sampling: the tokens generated (n_synthetic samples after every iteration but the
  last; sft draws until n are accepted, taken as n: a trained model keeps nearly all), 2 x parameters
  FLOPs a token; Fig. 5's pools (a fine-tune and value_pool_size samples each) on the
  sweep's driver before any cell;
- time, from a throughput profile (collapse_ray/profiles/, `benchmarks/throughput_profile.py`
  measures one), with the fixed costs that dominate at CPU scale: the sweep's start, a
  trial's own, a fit's start-up (Ray Train's workers and DeepSpeed engine, or loading the
  model), a sampler's start-up (Ray Data actors, a vLLM engine) and evaluation; trials
  are laid out on run.max_concurrent_trials slots, heaviest first, as Tune starts them;
- memory per GPU of the fit and of the sampler (text/memory.py, DeepSpeed's own
  accounting, plus activations and the KV cache), and for ZeRO-3 fits what ZeRO-2 and
  fewer workers would need;
- disk: the pools' text and the fits kept (a model's weights in its training precision).
The toy and neural tasks get their trials and a time from the profile's fixed costs (and
the neural fits' measured rows/s): no FLOPs are made up for them.

Row lengths are measured on the task's own rows where they are at hand (the procedural
corpus, local files), with the chain's tokenizer; for hub data sets they are stated
assumptions (HUB_ROWS), and the output says which.

This module prints the estimate; cost_profile.py reads and chooses the profile,
cost_rows.py counts rows, tokens and parameters, cost_estimate.py costs and schedules the trials.
"""

from __future__ import annotations

import datetime

from collapse_ray.sweep.cost_estimate import SweepCost, TrialCost, estimate_sweep
from collapse_ray.sweep.cost_profile import Profile
from collapse_ray.sweep.cost_rows import Measures, row_stats

TRIALS_SHOWN = 12
NAME_WIDTH = 58
GIB = 2**30


# -- the models: size, rows, memory per GPU -------------------------------------------------
def _model_lines(spec, measures: Measures) -> list[str]:
    """Each model's size and rows, and for GPU specs the memory per GPU of its fit and sampler."""

    lines, seen = [], set()
    for point in spec.points:
        task = point.task
        key = (task.model, task.vocab_size, task.source, task.max_length)
        if key in seen:
            continue
        seen.add(key)
        stats = measures.rows(task)
        within = f", {stats.kept:.0%} within max_length {task.max_length}" if task.long_rows == "drop" else ""
        lines.append(f"model {task.model}: {measures.parameters(task):,} parameters; a training row ~{stats.tokens:.1f} "
                     f"tokens ({stats.basis}){within}")
    seen = set()
    for point in spec.points:
        task = point.task
        if not task.use_gpu:
            continue
        key = (task.model, task.precision, task.engine, task.zero_stage, task.num_workers, task.micro_batch_size,
               task.max_length, task.sampling_batch_size, task.gpu_memory_gb, task.sampler)
        if key in seen:
            continue
        seen.add(key)
        lines += memory_lines(task)
    return lines


def memory_lines(task) -> list[str]:
    """Per-GPU memory of a GPU task's fit and sampler against task.gpu_memory_gb; for a
    ZeRO-3 fit, what ZeRO-2 and half the workers would need (why it takes ZeRO-3 and
    that many GPUs, or that it does not)."""
    from collapse_ray.text import memory

    try:
        arch, placed, need = memory.settings_estimate(task)
    except ValueError as err:
        return [f"memory per GPU of {task.model}: unknown ({err})"]
    gpu = task.gpu_memory_gb
    of = f" of {gpu:g} GiB" if gpu else " (task.gpu_memory_gb not set)"
    lines = [f"memory per GPU, {task.model} ({placed.describe()}, micro-batch {placed.micro_batch} x "
             f"{task.max_length} tokens): fit {need.describe_fit()}{of}{_verdict(need.fit, gpu)}"]
    kv = arch.kv_cache_bytes_per_token(placed.sampling_precision) * task.sampling_batch_size * task.max_length
    share = memory.SAMPLER_MEMORY_SHARE
    lines.append(f"  sampler ({task.sampler}, {placed.sampling_precision}): weights {need.sampler_weights / GIB:.1f} GiB "
                 f"+ KV cache {kv / GIB:.1f} GiB for {task.sampling_batch_size} sequences of {task.max_length} tokens = "
                 f"{(need.sampler_weights + kv) / GIB:.1f} GiB"
                 + (f" of the {share * gpu:.1f} GiB ({share:.0%}) a sampling actor takes"
                    f"{_verdict(need.sampler_weights + kv, share * gpu)}" if gpu else ""))
    if placed.engine == "deepspeed" and placed.zero_stage == 3 and gpu:
        lines += _zero_ladder(task, placed, gpu)
    return lines


def _verdict(need: float, gpu_gib: float | None) -> str:
    if not gpu_gib:
        return ""
    spare = gpu_gib - need / GIB
    return f": fits, {spare:.1f} GiB spare" if spare >= 0 else f": OVER by {-spare:.1f} GiB"


def _zero_ladder(task, placed, gpu: float) -> list[str]:
    """ZeRO-2 and ZeRO-3 at the spec's workers and half as many, at its micro-batch."""
    from collapse_ray.text import memory

    workers = placed.workers
    counts = sorted({max(1, workers // 2), workers})
    rows, need_of = [], {}
    for stage in (2, 3):
        for n in counts:
            need = memory.settings_estimate(task, zero_stage=stage, workers=n)[2]
            need_of[stage, n] = need
            rows.append(f"ZeRO-{stage} x {n}: {need.fit / GIB:.1f} GiB{_verdict(need.fit, gpu)}")
    lines = [f"  why ZeRO-3 over {workers} ({gpu:g} GiB GPUs): " + "; ".join(rows)]
    z2 = need_of[2, workers]
    if z2.fit > gpu * GIB:
        lines.append(f"  ZeRO-2 keeps the {placed.precision} weights whole on every GPU ({z2.weights / GIB:.1f} GiB of "
                     f"{task.model}'s {placed.parameters:,} parameters) and cannot fit on {workers} GPUs; ZeRO-3 "
                     "shards the weights too")
    else:
        spare = gpu - z2.fit / GIB
        lines.append(f"  ZeRO-2 over {workers} would leave {spare:.1f} GiB ({spare / gpu:.0%}) for what the estimate "
                     f"does not count (CUDA context, allocator fragmentation, communication buckets): its "
                     f"{placed.precision} weights alone take {z2.weights / GIB:.1f} GiB on every GPU")
    half = counts[0]
    if half != workers:
        z3_half = need_of[3, half]
        if z3_half.fit > gpu * GIB:
            lines.append(f"  ZeRO-3 needs {workers} GPUs: over {half} it needs {z3_half.fit / GIB:.1f} GiB")
        else:
            lines.append(f"  memory alone does not ask for {workers}: ZeRO-3 over {half} fits ({z3_half.fit / GIB:.1f} "
                         f"GiB); {workers} GPUs train {workers // half}x as many rows at once (about the same GPU-hours)")
    return lines


# -- the report ------------------------------------------------------------------------------
def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _size(n_bytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes:.0f} B"


def _n(x: float) -> str:
    return f"{x:.2e}" if x >= 1e6 else f"{x:,.0f}"


def report(spec, profile: Profile, now: datetime.datetime | None = None) -> list[str]:
    """What `validate --cost` prints."""
    cost = estimate_sweep(spec, profile)
    jobs = spec.jobs()
    lines = [f"cost of {spec.name}: {len(jobs)} trials, {sum(len(j.seeds) for j in jobs)} chains, "
             f"{cost.slots} at a time", profile.provenance(now)]
    if cost.kind == "toy":
        task = spec.points[0].task.name
        lines += [f"task {task}: closed-form or vectorised fits on small arrays; their compute is not modelled (no "
                  "FLOPs: the fixed costs below dominate such sweeps here)",
                  f"time: at least {_duration(cost.wall_s)} (sweep start {cost.sweep_start_s:.0f} s + "
                  f"{profile.number('toy_trial_s'):.2f} s a trial, measured); no GPU; memory per trial: the pool, "
                  f"{_size(max(_chain_bytes(j) for j in jobs))} at most"]
        return lines
    if cost.kind == "neural":
        rows = sum(t.training_rows for t in cost.trials)
        fitted = sum(t.other_s for t in cost.trials)
        timed = (f"fitting {_duration(fitted)} at the profile's measured rows/s of one chain (sampling and "
                 "evaluation not modelled; chains batched in a trial train up to ~2x faster)") if fitted else "fits not timed"
        lines += [f"task {spec.points[0].task.name}: {rows:,} training rows (rows x epochs over every chain's "
                  f"iterations); {timed}",
                  *cost.notes,
                  f"time: ~{_duration(cost.wall_s)} on {cost.slots} slot(s) (sweep start {cost.sweep_start_s:.0f} s, "
                  f"{profile.number('toy_trial_s'):.2f} s a trial)",
                  "GPU-hours: 0 (a CPU task: the neural tasks have no GPU placement); GPU memory: none; memory per "
                  f"trial: the pool, {_size(max(_chain_bytes(j) * len(j.seeds) for j in jobs))} at most"]
        return lines
    lines += cost.notes + _model_lines(spec, cost.measures)
    gpu = profile.device == "gpu"
    lines.append(f"{'trial (what sets it apart)':{NAME_WIDTH}s} {'fits':>7s} {'train tokens':>12s} {'FLOPs':>9s} {'sampled':>9s} {'FLOPs':>9s} "
                 f"{'time':>8s}" + (f" {'GPU-h':>8s}" if gpu else ""))
    longest = sorted(cost.trials, key=lambda t: -t.seconds)
    shown = longest if len(longest) <= TRIALS_SHOWN + 1 else longest[:TRIALS_SHOWN]
    names = _varying_names(jobs)
    for trial in shown:
        lines.append(_trial_line(trial, names[trial.key], gpu))
    if len(shown) < len(cost.trials):
        lines.append(f"... {len(cost.trials) - len(shown)} more trials, each no longer than the last above (the "
                     f"longest {len(shown)} are shown)")
    for name, fit, sampling in cost.pools:
        lines.append(f"{name + ' (driver)':{NAME_WIDTH}s} {1:>7d} {_n(fit.tokens):>12s} {fit.flops:9.2e} "
                     f"{_n(sampling.tokens):>9s} {sampling.flops:9.2e} {_duration(fit.seconds + sampling.seconds):>8s}"
                     + (f" {(fit.seconds * fit.gpus + sampling.seconds * sampling.gpus) / 3600:8.1f}" if gpu else ""))
    lines += _totals(spec, cost, gpu)
    return lines


def _varying_names(jobs) -> dict[str, str]:
    """Each trial by what sets it apart: the swept values that differ between trials, less
    those another one determines (a case's ZeRO stage beside its model), and its seeds when
    trials differ by them; short enough for a table."""
    columns: dict[str, list[str]] = {}
    for job in jobs:
        for key, value in job.point.swept:
            columns.setdefault(key, [])
    for key in columns:
        for job in jobs:
            value = dict(job.point.swept).get(key)
            columns[key].append("" if value is None else str(value).rsplit("/", 1)[-1])
    seeds = [f"seeds {job.seeds[0]}" + (f"-{job.seeds[-1]}" if len(job.seeds) > 1 else "") for job in jobs]
    columns["seeds"] = seeds
    varying = [k for k, v in columns.items() if len(set(v)) > 1]
    kept = [k for i, k in enumerate(varying) if not any(_determines(columns[j], columns[k]) for j in varying[:i])]

    def shown(key: str, value: str) -> str:
        field = key.split(".", 1)[-1]
        return value if field in ("workflow", "seeds") else f"{field}={value}"

    return {job.key: _short(" ".join(shown(k, columns[k][n]) for k in kept if columns[k][n]) or job.key, NAME_WIDTH)
            for n, job in enumerate(jobs)}


def _determines(a: list[str], b: list[str]) -> bool:
    """Is b a function of a over the trials?"""
    seen: dict[str, str] = {}
    return all(seen.setdefault(x, y) == y for x, y in zip(a, b))


def _trial_line(trial: TrialCost, name: str, gpu: bool) -> str:
    made = len(trial.fits) - trial.shared_fits
    fits = f"{made}" + (f"+{trial.shared_fits}" if trial.shared_fits else "")
    train = sum(f.tokens for f in trial.fits)
    sampled = sum(s.tokens for s in trial.samplings)
    line = (f"{name:{NAME_WIDTH}s} {fits:>7s} {_n(train):>12s} {sum(f.flops for f in trial.fits):9.2e} "
            f"{_n(sampled):>9s} {sum(s.flops for s in trial.samplings):9.2e} {_duration(trial.seconds):>8s}")
    if gpu:
        line += f" {_gpu_seconds(trial) / 3600:8.1f}"
    return line


def _short(key: str, width: int) -> str:
    """A trial key cut in its middle, so its start (task, workflow) and end (seeds) show."""
    if len(key) <= width:
        return key
    head = (width - 1) * 3 // 5
    return f"{key[:head]}~{key[-(width - 1 - head):]}"


def _gpu_seconds(trial: TrialCost) -> float:
    """GPU-seconds: each fit's wall time on its workers' GPUs, each sampling's on its
    actors' (a fit another trial made costs nothing here)."""
    fits = sorted(trial.fits, key=lambda f: f.key is None)
    shared = trial.shared_fits
    seconds = 0.0
    for fit in fits:
        if fit.key is not None and shared:
            shared -= 1
            continue
        seconds += fit.seconds * fit.gpus
    return seconds + sum(s.seconds * s.gpus for s in trial.samplings)


def _chain_bytes(job) -> int:
    from collapse_ray.sweep.spec import chain_nbytes

    return chain_nbytes(job.point.task, job.point.chain)


def _totals(spec, cost: SweepCost, gpu: bool) -> list[str]:

    trials = cost.trials
    made = sum(len(t.fits) - t.shared_fits for t in trials) + len(cost.pools)
    shared = sum(t.shared_fits for t in trials)
    fit_tokens = sum(f.tokens for t in trials for f in t.fits) + sum(f.tokens for _, f, _ in cost.pools)
    fit_flops = sum(f.flops for t in trials for f in t.fits) + sum(f.flops for _, f, _ in cost.pools)
    sampled = sum(s.tokens for t in trials for s in t.samplings) + sum(s.tokens for _, _, s in cost.pools)
    sample_flops = sum(s.flops for t in trials for s in t.samplings) + sum(s.flops for _, _, s in cost.pools)
    lines = [f"total: {made} fits ({shared} more shared with an earlier trial's), {_n(fit_tokens)} training tokens, "
             f"{fit_flops:.2e} FLOPs (6 x parameters x tokens, held-out passes 2 x); sampling {_n(sampled)} tokens, "
             f"{sample_flops:.2e} FLOPs (2 x parameters a token)"]
    fixed = sum(t.overhead_s for t in trials)
    if gpu:
        gpu_s = sum(_gpu_seconds(t) for t in trials) + sum(f.seconds * f.gpus + s.seconds * s.gpus
                                                           for _, f, s in cost.pools)
        lines.append(f"GPU-hours: {gpu_s / 3600:,.0f} (fits on their workers' GPUs, samplings on their actors'); wall "
                     f"~{_duration(cost.wall_s)} with {cost.slots} trial(s) at a time")
    else:
        lines.append(f"time: ~{_duration(cost.wall_s)} wall on {cost.slots} slot(s) (sweep start "
                     f"{cost.sweep_start_s:.0f} s, value pools {sum(f.seconds + s.seconds for _, f, s in cost.pools):.0f} s, "
                     f"the trials' own fixed cost {fixed:.0f} s in all); no GPU")
    lines += _disk_lines(spec, cost)
    return lines


def _disk_lines(spec, cost: SweepCost) -> list[str]:
    """The pools' text (before Parquet's compression: an upper bound) and the fits kept
    (every fit's model is kept in the sweep's shared folder, in its training precision)."""
    from collapse_ray.text import memory

    pool_bytes, fit_bytes = 0.0, 0.0
    jobs = {job.key: job for job in spec.jobs()}
    stats_cache: dict = {}
    for trial in cost.trials:
        job = jobs[trial.key]
        task, chain = job.point.task, job.point.chain
        key = (task.name, task.source, task.model, task.max_length, task.long_rows)
        if key not in stats_cache:
            stats_cache[key] = row_stats(task, chain.n_real)
        stats = stats_cache[key]
        if not getattr(task, "value_pool_size", 0):
            rows = chain.n_real + (chain.n_iterations - 1) * (chain.n_synthetic + chain.policy().n_fresh_real)
            pool_bytes += rows * stats.characters * len(job.seeds)
        size = memory.architecture(task.model, task.vocab_size).parameters * _precision_bytes(task)
        fit_bytes += size * sum(1 for f in trial.fits if f.rows > 0) - size * trial.shared_fits
    for _, fit, _ in cost.pools:
        task = next(p.task for p in spec.points if getattr(p.task, "value_pool_size", 0))
        stats = row_stats(task, task.value_pool_real)
        pool_bytes += task.value_pool_size * stats.characters
        fit_bytes += memory.architecture(task.model, task.vocab_size).parameters * _precision_bytes(task)
    return [f"disk: pools {_size(pool_bytes)} of text (every iteration's rows, before Parquet's compression), fits "
            f"{_size(fit_bytes)} (each distinct fit's weights, kept in the sweep's shared folder)"]


def _precision_bytes(task) -> int:
    precision = task.precision if task.precision != "auto" else ("bf16" if task.use_gpu else "fp32")
    return 4 if precision == "fp32" else 2
