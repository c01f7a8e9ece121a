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
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import heapq
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from collapse_ray.validation import SpecError

PROFILE_FORMAT = "collapse_ray.throughput_profile/1"
PROFILES = Path(__file__).parent.parent / "profiles"
DEFAULT_CPU_PROFILE = PROFILES / "cpu.json"
DEFAULT_GPU_PROFILE = PROFILES / "gpu_h100_nominal.json"
PROFILE_ENV = "COLLAPSE_RAY_PROFILE"  # a machine's own measured profile, instead of the checked-in one
MAX_PROFILE_BYTES = 1 << 20
SFT_DRAWN_PER_KEPT = 1.0  # sft's acceptance loop reads its rounds only until n are accepted: n / its rate
TRIALS_SHOWN = 12
NAME_WIDTH = 58
GIB = 2**30


# -- the throughput profile ----------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """A throughput profile as read from its JSON file (plain data, checked once)."""

    path: Path
    name: str
    device: str  # cpu | gpu
    measured: bool
    measured_at: datetime.datetime | None
    data: dict = field(repr=False)

    def provenance(self, now: datetime.datetime | None = None) -> str:
        """Which profile, where from, and how old: the estimate's first line."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        where = _shown_path(self.path)
        if not self.measured:
            return (f"profile {self.name} ({where}): NOT MEASURED, stated placeholder: {self.data['assumptions']}")
        age = _age(now - self.measured_at)
        machine = self.data.get("machine", {})
        load = machine.get("load_average")
        on = f" on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores" if machine else ""
        loaded = f", load average {load[0]:g}-{load[1]:g} while measuring" if load else ""
        return (f"profile {self.name} ({where}), measured {self.measured_at:%Y-%m-%d %H:%M} UTC, {age} old"
                f"{on}{loaded}")

    def number(self, *keys: str) -> float:
        value: Any = self.data
        for key in keys:
            value = value[key]
        return float(value)


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _age(delta: datetime.timedelta) -> str:
    seconds = max(0.0, delta.total_seconds())
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def load_profile(path: str | Path, where: str = "--profile") -> Profile:
    """The profile in `path`; SpecError (one line, exit 2) if it is missing, is not a
    profile, or lacks what the estimate reads. JSON only: nothing in it runs."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise SpecError(f"{where} {str(path)!r} is not a throughput profile (over {MAX_PROFILE_BYTES} bytes)")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{where} {str(path)!r} does not exist (write one with python "
                        "benchmarks/throughput_profile.py --out PATH)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{where} {str(path)!r} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    except json.JSONDecodeError as err:
        raise SpecError(f"{where} {str(path)!r} is not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise SpecError(f"{where} {str(path)!r} is not a throughput profile (its 'format' must be {PROFILE_FORMAT!r})")
    device = data.get("device")
    if device not in ("cpu", "gpu"):
        raise SpecError(f"{where} {str(path)!r}: 'device' must be 'cpu' or 'gpu'; got {device!r}")
    required = (("sweep_start_s",), ("toy_trial_s",), ("lm_trial_s", "local"), ("lm_trial_s", "ray"))
    if device == "gpu":
        required += tuple(("gpu", k) for k in GPU_FIELDS)
    else:
        required += (("fit", "local", "models"), ("fit", "ray_train", "models"), ("sample", "local", "models"),
                     ("sample", "ray_data", "models"))
    for keys in required:
        value: Any = data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        ok = isinstance(value, dict) if keys[-1] == "models" else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0)
        if not ok:
            raise SpecError(f"{where} {str(path)!r}: {'.'.join(keys)} is missing or not a number >= 0")
    measured = data.get("measured") is True
    stamp = None
    if measured:
        try:
            stamp = datetime.datetime.strptime(str(data.get("measured_at")), "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.timezone.utc)
        except ValueError:
            raise SpecError(f"{where} {str(path)!r}: measured_at must be a UTC time like 2026-12-06T13:40:00Z; "
                            f"got {data.get('measured_at')!r}") from None
    elif not isinstance(data.get("assumptions"), str):
        raise SpecError(f"{where} {str(path)!r}: a profile that is not measured must state its 'assumptions'")
    return Profile(path, str(data.get("name", path.stem)), device, measured, stamp, data)


GPU_FIELDS = ("memory_gb", "train_flops_per_s", "sample_flops_per_s", "fit_start_s", "sampler_start_s")


def choose_profile(spec, given: str | None) -> Profile:
    """--profile when given (it must be measured on the device the spec runs on); else
    $COLLAPSE_RAY_PROFILE or the checked-in CPU profile for CPU specs, and the stated GPU
    placeholder for GPU specs."""
    gpu = any(getattr(p.task, "use_gpu", False) for p in spec.points)
    if given is not None:
        profile = load_profile(given)
        if profile.device != ("gpu" if gpu else "cpu"):
            raise SpecError(f"--profile {given!r} is a {profile.device} profile; this spec runs on "
                            f"{'GPUs (task.use_gpu)' if gpu else 'CPUs'}: name a {'gpu' if gpu else 'cpu'} profile, or "
                            "leave --profile out for the default")
        return profile
    if gpu:
        return load_profile(DEFAULT_GPU_PROFILE, "the GPU placeholder profile")
    env = os.environ.get(PROFILE_ENV)
    if not env:
        return load_profile(DEFAULT_CPU_PROFILE, "the CPU profile")
    profile = load_profile(env, f"${PROFILE_ENV}")
    if profile.device != "cpu":
        raise SpecError(f"${PROFILE_ENV} {env!r} is a {profile.device} profile; this spec runs on CPUs")
    return profile


# -- rows: how long a training row is ---------------------------------------------------------
@dataclass(frozen=True)
class RowStats:
    tokens: float  # mean tokens of a training row (BOS and EOS in; long rows cut or dropped)
    kept: float  # share of rows within max_length (1 where long rows are cut)
    characters: float  # mean characters a row: its bytes in a pool, before compression
    batch_longest: float  # expected longest sample of a sampling batch, in generated tokens
    basis: str  # measured on what, or assumed


# Hub data sets' rows, stated (no hub here): (mean tokens, share within max_length 512,
# mean characters, what it rests on)
HUB_ROWS = {
    "nvidia/HelpSteer2": (320.0, 12531 / 20324, 1300.0,
                          "assumed ~320 Gemma tokens and ~1,300 characters a row that fits 512 tokens; 12,531 of "
                          "20,324 train rows fit (A)'s 512"),
    "roneneldan/TinyStories": (220.0, 1.0, 900.0,
                               "assumed ~220 tokens and ~900 characters a story (a few short paragraphs)"),
}
HUB_TEST_ROWS = {"nvidia/HelpSteer2": 1038, "roneneldan/TinyStories": 21990}  # validation splits


def row_stats(task, n_rows: int) -> RowStats:
    kind = "instructions" if task.name == "sft" else "stories"
    drop = task.long_rows == "drop"
    batch = task.sampling_batch_size
    if task.source in HUB_ROWS:
        tokens, kept, chars, basis = HUB_ROWS[task.source]
        tokens = min(tokens, task.max_length)
        return RowStats(tokens, kept if drop else 1.0, chars, float(task.max_length - 1), basis)
    from collapse_ray.text.models import is_preset

    local = task.source == "procedural" or Path(task.source).expanduser().exists()
    if not local or not (is_preset(task.model) or (Path(task.model).expanduser() / "config.json").is_file()):
        return RowStats(float(task.max_length), 1.0, 4.0 * task.max_length, float(task.max_length - 1),
                        f"assumed max_length ({task.max_length}) tokens a row: {task.source} is not at hand")
    return _measured_rows(task.name, kind, task.source, task.corpus_seed, task.model, task.vocab_size,
                          task.max_length, drop, batch, min(max(n_rows, 200), 2000),
                          getattr(task, "prompt_column", "prompt"), getattr(task, "response_column", "response"))


@functools.lru_cache(maxsize=32)
def _measured_rows(name: str, kind: str, source: str, seed: int, model: str, vocab: int, max_length: int,
                   drop: bool, batch: int, n: int, prompt_column: str, response_column: str) -> RowStats:
    """Row lengths as the chain makes them: its tokenizer (trained on the first n real rows
    for a preset), BOS + ids + EOS, cut or dropped at max_length."""
    from collapse_ray.text import corpora
    from collapse_ray.text.models import is_preset, load_tokenizer, train_tokenizer

    columns = (prompt_column, response_column) if kind == "instructions" else ("text",)
    rows = corpora.load_rows(source, kind, "train", n if source == "procedural" else None, columns, seed)
    if kind == "instructions":
        from collapse_ray.tasks.sft import format_example

        texts = [format_example(p, r) for p, r in zip(rows[columns[0]], rows[columns[1]])][:n]
    else:
        texts = rows["text"][:n]
    tokenizer = train_tokenizer(texts, vocab) if is_preset(model) else load_tokenizer(model)
    lengths = np.asarray([len(ids) + 2 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]])
    fits = lengths <= max_length
    used = lengths[fits] if drop else np.minimum(lengths, max_length)
    generated = used - 1  # a sample is generated after its BOS
    draws = np.random.default_rng(0).choice(generated, size=(256, batch))
    return RowStats(float(used.mean()), float(fits.mean()) if drop else 1.0,
                    float(np.mean([len(t) for t in texts])), float(draws.max(axis=1).mean()),
                    f"measured on {len(texts)} {'procedural ' if source == 'procedural' else ''}rows with the chain's "
                    "tokenizer")


# -- one trial's work ------------------------------------------------------------------------
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
    lines: list[str]  # model, rows, memory, disk: what the printer shows beside the table


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


def training_rows(chain, kept: float) -> list[int]:
    """Rows of the training set at iterations 1..T: the workflow's own eligibility rule
    (MixingPolicy.parts) on a pool of the chain's sizes, and its own sizes (n_train,
    synthetic_ratio, real_fraction), without drawing the rows (a subsample's real share is
    its expectation); synthetic rows scaled by `kept`, the share a fit keeps when long rows
    are dropped (real rows are the first that fit)."""
    from collapse_ray.core.workflows import REAL, SYNTHETIC

    policy = chain.policy()
    iteration, source, rows = [0], [REAL], [chain.n_real]
    sizes = []
    for t in range(1, chain.n_iterations + 1):
        real, synthetic = policy.parts(np.asarray(iteration), np.asarray(source, dtype=np.int8), t)
        n_real, n_synthetic = int(np.asarray(rows)[real].sum()), int(np.asarray(rows)[synthetic].sum())
        if t > 1 and policy.real_fraction is not None:
            n_real, n_synthetic = policy._fraction_sizes(n_real, n_synthetic)
        elif t > 1 and policy.synthetic_ratio is not None:
            n_synthetic = policy._ratio_size(n_real, n_synthetic)
        elif t > 1 and policy.n_train is not None and policy.n_train < n_real + n_synthetic:
            share = n_real / (n_real + n_synthetic)
            n_real, n_synthetic = policy.n_train * share, policy.n_train * (1 - share)
        sizes.append(int(round(n_real + n_synthetic * kept)))
        iteration += [t, t]
        source += [SYNTHETIC, REAL]
        rows += [chain.n_synthetic, policy.n_fresh_real]
    return sizes


def _is_language_model(task) -> bool:
    from collapse_ray.text.settings import LanguageModelSettings  # what every language-model task is built on

    return isinstance(task, LanguageModelSettings)


def _lm_trial(profile: Profile, job, stats_of, parameters_of) -> TrialCost:
    """One language-model trial: its chain's fits and samplings (a trial runs one chain)."""
    from collapse_ray.text.settings import fit_digest

    task, chain = job.point.task, job.point.chain
    stats, parameters = stats_of(task), parameters_of(task)
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


def _value_pools(profile: Profile, points, stats_of, parameters_of) -> list[tuple[str, Fit, Sampling]]:
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
        stats, parameters = stats_of(task), parameters_of(task)
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
    trial.__dict__["training_rows"] = rows
    return trial


def estimate_sweep(spec, profile: Profile) -> SweepCost:
    """The sweep's cost by trial and in total, at `profile`."""
    from collapse_ray.text import memory

    jobs = spec.jobs()
    lines: list[str] = []
    kinds = {("language_model" if _is_language_model(p.task) else "neural" if p.task.name in NEURAL_SOURCES
              or p.task.name == "conformer_diffusion" else "toy") for p in spec.points}
    kind = "language_model" if "language_model" in kinds else "neural" if "neural" in kinds else "toy"
    stats_cache: dict = {}

    def stats_of(task) -> RowStats:
        n = max(getattr(task, "value_pool_real", 0), max(p.chain.n_real for p in spec.points))
        key = (task.name, task.source, task.corpus_seed, task.model, task.vocab_size, task.max_length, task.long_rows,
               task.sampling_batch_size)
        if key not in stats_cache:
            stats_cache[key] = row_stats(task, n)
        return stats_cache[key]

    def parameters_of(task) -> int:
        return memory.architecture(task.model, task.vocab_size).parameters

    trials, pools = [], []
    if kind == "language_model":
        pools = _value_pools(profile, spec.points, stats_of, parameters_of)
        trials = [_lm_trial(profile, job, stats_of, parameters_of) for job in jobs]
    elif kind == "neural":
        trials = [_neural_trial(profile, job, lines) for job in jobs]
    else:
        trials = [TrialCost(job.key, len(job.seeds), overhead_s=profile.number("toy_trial_s")) for job in jobs]
    slots = _slots(spec, profile)
    sweep_start = profile.number("sweep_start_s")
    pools_s = sum(f.seconds + s.seconds for _, f, s in pools)
    wall = sweep_start + pools_s + _schedule(trials, slots, start=sweep_start + pools_s)
    if kind == "language_model":
        lines += _model_lines(spec, stats_of, parameters_of)
    return SweepCost(spec.name, profile, kind, trials, pools, wall, sweep_start, slots, lines)


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


def _precision_bytes(task) -> int:
    precision = task.precision if task.precision != "auto" else ("bf16" if task.use_gpu else "fp32")
    return 4 if precision == "fp32" else 2


def _model_lines(spec, stats_of, parameters_of) -> list[str]:
    """Each model's size and rows, and for GPU specs the memory per GPU of its fit and sampler."""

    lines, seen = [], set()
    for point in spec.points:
        task = point.task
        key = (task.model, task.vocab_size, task.source, task.max_length)
        if key in seen:
            continue
        seen.add(key)
        stats = stats_of(task)
        within = f", {stats.kept:.0%} within max_length {task.max_length}" if task.long_rows == "drop" else ""
        lines.append(f"model {task.model}: {parameters_of(task):,} parameters; a training row ~{stats.tokens:.1f} "
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
        rows = sum(t.__dict__.get("training_rows", 0) for t in cost.trials)
        fitted = sum(t.other_s for t in cost.trials)
        timed = (f"fitting {_duration(fitted)} at the profile's measured rows/s of one chain (sampling and "
                 "evaluation not modelled; chains batched in a trial train up to ~2x faster)") if fitted else "fits not timed"
        lines += [f"task {spec.points[0].task.name}: {rows:,} training rows (rows x epochs over every chain's "
                  f"iterations); {timed}",
                  *cost.lines,
                  f"time: ~{_duration(cost.wall_s)} on {cost.slots} slot(s) (sweep start {cost.sweep_start_s:.0f} s, "
                  f"{profile.number('toy_trial_s'):.2f} s a trial)",
                  "GPU-hours: 0 (a CPU task: the neural tasks have no GPU placement); GPU memory: none; memory per "
                  f"trial: the pool, {_size(max(_chain_bytes(j) * len(j.seeds) for j in jobs))} at most"]
        return lines
    lines += cost.lines
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
