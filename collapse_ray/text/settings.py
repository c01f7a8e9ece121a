"""Settings shared by the language-model tasks, and the functions both tasks call.

`LanguageModelSettings` holds only fields (model, fitting, sampling, placement); each
task module adds its own fields and its own real data and sampler. Fields are flat so
a grid can sweep any of them (`task.learning_rate: [...]`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ..validation import SpecError, check_finite_positive, check_min, fail, require
from . import backends
from .models import is_preset, load_tokenizer, train_tokenizer
from .training import FitSettings, token_loss


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
    learning_rate: float = 1e-3
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_ratio: float | None = None
    """Warm-up as a share of the fit's optimiser steps (0.05 when neither this nor
    warmup_steps is given)."""
    warmup_steps: int | None = None
    """Warm-up in optimiser steps ((A)'s Fig. 5: 16); not together with warmup_ratio."""
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    """AdamW's betas; (0.9, 0.999) are torch's defaults, which (A)'s `adamw_torch` uses."""
    long_rows: Literal["drop", "cut"] = "cut"
    """Training rows longer than max_length tokens: dropped, or cut to max_length."""
    micro_batch_size: int = 16
    grad_accum_steps: int = 1
    engine: Literal["deepspeed", "torch"] = "deepspeed"
    eval_steps: int = 0
    """Held-out loss every eval_steps optimiser steps within each fit ((A): 5), computed
    on the fit's workers and logged as the chain run's metric fit_test_loss/iteration_TTT
    (step: optimiser step); 0: only at the end of the fit (test_loss)."""
    zero_stage: int = 1
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """auto: bf16 on GPUs that support it, else fp32."""
    # -- sampling --
    temperature: float = 1.0
    top_p: float | None = None
    sampling_batch_size: int = 64
    # -- placement --
    backend: Literal["ray_train", "local"] = "ray_train"
    """ray_train: a TorchTrainer per fit; local: this process (debugging, benchmarks)."""
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.9
    """Logical CPUs per Ray Train worker and per sampling actor: under 1, so that
    num_workers workers plus the trial that drives them (run.cpus_per_trial) fit on a
    machine with num_workers cores."""
    sampler: Literal["ray_data", "local"] = "ray_data"
    sampling_concurrency: int = 2

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

    def check_run(self, run, where: str) -> None:
        """A trial that drives Ray Train workers or Ray Data actors must not hold the
        CPUs they need (on a small machine the trial would wait for itself forever)."""
        if (self.backend == "ray_train" or self.sampler == "ray_data") and run.cpus_per_trial > 0.1:
            fail(f"{where}.cpus_per_trial", f"<= 0.1 for task {self.name} with backend ray_train or "
                 "sampler ray_data (its Ray Train workers and Ray Data actors hold the CPUs)", run.cpus_per_trial)

    def check_cluster(self, run, cpus: float, where: str) -> None:
        """One chain holds its trial's CPUs plus, at its peak, its fit's workers or its
        sampling actors; more than the cluster has and they would wait forever."""
        peaks = [(self.num_workers, "num_workers")] if self.backend == "ray_train" else []
        if self.sampler == "ray_data":
            peaks.append((self.sampling_concurrency, "sampling_concurrency"))
        if not peaks or self.use_gpu:  # in-process, or GPU workers (Ray places those by GPU)
            return
        count, field = max(peaks)
        if run.cpus_per_trial + count * self.cpus_per_worker > cpus:
            raise SpecError(
                f"task.{field} x task.cpus_per_worker + run.cpus_per_trial must be <= the cluster's {cpus:g} CPUs; "
                f"got {count} x {self.cpus_per_worker:g} + {run.cpus_per_trial:g} in {where}")

    # -- runtime ---------------------------------------------------------------------
    def with_workdir(self, workdir: str | Path):
        """A copy that keeps its files (tokenizer, fitted models) under `workdir`: the
        chain's checkpoint folder, so a resumed chain finds them again."""
        bound = copy.copy(self)
        object.__setattr__(bound, "_workdir", Path(workdir))
        return bound

    @property
    def workdir(self) -> Path:
        path = getattr(self, "_workdir", None)
        if path is None:  # a chain run without a checkpoint folder
            path = Path(tempfile.mkdtemp(prefix="collapse_ray-"))
            object.__setattr__(self, "_workdir", path)
        return path

    def placement(self) -> backends.Placement:
        return backends.Placement(self.backend, self.num_workers, self.use_gpu, self.cpus_per_worker,
                                  self.sampler, self.sampling_concurrency)

    def resolved_warmup_ratio(self) -> float:
        if self.warmup_steps is not None:
            return 0.0
        return 0.05 if self.warmup_ratio is None else self.warmup_ratio

    def resolved_precision(self) -> str:
        if self.precision != "auto":
            return self.precision
        if self.use_gpu:
            import torch

            if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
                return "bf16"
        return "fp32"

    def iteration_series(self, model: FittedLM) -> dict[str, list[tuple[int, float]]]:
        """The protocol's hook: the within-fit held-out loss as (optimiser step, loss)
        pairs, every eval_steps steps and at the end (none when eval_steps is 0)."""
        curve = model.figures.get("eval_curve") or []
        if not self.eval_steps or not curve:
            return {}
        return {"fit_test_loss": [(int(step), float(loss)) for step, loss in curve]}

    def config_digest(self) -> str:
        """Identifies the fitting configuration (files keyed by it are safe to reuse)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_engine(settings: LanguageModelSettings, where: str) -> None:
    """engine, precision and zero_stage together, in one place: a combination the
    training loop would not honour is refused, not silently trained otherwise.

    - zero_stage is DeepSpeed's: with engine torch only its default (1, unused) is accepted;
    - fp16: DeepSpeed's loss scaler only (torch autocast in fp16 without one would
      underflow; the plain-torch loop has none), and on GPUs (DeepSpeed's CPU path has
      no fp16 optimizer);
    - bf16 and fp32 with either engine; auto: bf16 on a GPU that has it, else fp32.
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


# -- shared steps of the language-model tasks -------------------------------------------
def _looks_like_path(value: str) -> bool:
    """A local path rather than a preset, 'procedural' or a hub id ('org/name')."""
    return value.startswith(("/", "./", "../", "~")) or Path(value).suffix in (".parquet", ".jsonl", ".json") or (
        "/" in value and Path(value).expanduser().exists())


@dataclass(frozen=True)
class TextContext:
    """Per-chain facts: where the tokenizer is, and the chain's seed."""

    tokenizer_dir: str
    seed: int
    first_tokens: tuple[int, ...] = ()  # generation first_token: the real first tokens ...
    first_token_counts: tuple[int, ...] = ()  # ... and their counts
    held_out: tuple[np.ndarray, ...] | None = None
    """The held-out examples (the task's test set): each fit evaluates them on its
    workers, so evaluation never loads the model in the trial."""


@dataclass(frozen=True)
class FittedLM:
    model_dir: str
    tokenizer_dir: str
    figures: dict  # training figures of the fit (loss, tokens/s, seconds)


def prepare_tokenizer(settings: LanguageModelSettings, train_texts: list[str]) -> str:
    """The chain's tokenizer folder: trained on the real split for presets (once; a
    resumed chain reuses it), else the saved/hub model's own."""
    if not is_preset(settings.model):
        return settings.model
    folder = settings.workdir / f"tokenizer-{settings.vocab_size}"
    if not (folder / "tokenizer.json").exists():
        tmp = folder.with_name(f".{folder.name}.tmp")
        train_tokenizer(train_texts, settings.vocab_size).save_pretrained(tmp)
        tmp.replace(folder)
    return str(folder)


def encode(tokenizer, texts, max_length: int, drop_long: bool) -> list[np.ndarray]:
    """BOS + token ids + EOS; longer examples are cut to max_length or dropped.

    The BOS makes the first tokens learnable: sampling starts from BOS alone."""
    if len(texts) == 0:
        return []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    out = []
    for ids in encoded:
        ids = [bos] + ids + [tokenizer.eos_token_id]
        if len(ids) > max_length:
            if drop_long:
                continue
            ids = ids[:max_length]
        out.append(np.asarray(ids, dtype=np.int32))
    return out


def fit_texts(settings: LanguageModelSettings, texts, context: TextContext) -> FittedLM:
    """Fit the model named in `settings` from its initial weights on `texts`.

    The fitted model is stored under the workdir keyed by the training set and the
    fitting configuration, so an iteration resumed after a crash in its sampling step
    reuses its fit instead of paying for it again. The fit's seed derives from the
    chain's seed and the same key: reproducible, and different per iteration.
    """
    texts = [str(t) for t in texts]
    key = fit_key(settings, "\x00".join(texts), context)
    out = settings.workdir / "models" / key
    figures_file = out / "fit.json"
    if figures_file.exists():
        return FittedLM(str(out), context.tokenizer_dir, json.loads(figures_file.read_text()))
    tokenizer = load_tokenizer(context.tokenizer_dir)
    examples = encode(tokenizer, texts, settings.max_length, drop_long=settings.long_rows == "drop")
    if not examples:  # nothing to train on (a value-grid cell with no data): the initial model
        return FittedLM(_initial_model(settings, tokenizer, context, out), context.tokenizer_dir, {})
    fit_settings = fit_settings_for(settings, context, out, key, len(examples))
    figures = backends.fit(fit_settings, examples, settings.placement(), context.held_out)
    figures["train_examples"] = float(len(examples))
    figures_file.write_text(json.dumps(figures))  # written last: marks the fit complete
    return FittedLM(str(out), context.tokenizer_dir, figures)


def fit_key(settings: LanguageModelSettings, training_set: str, context: TextContext) -> str:
    """The folder name of a fit: the training set's identity, the fitting configuration
    and the chain's seed (its first 8 hex digits seed the fit)."""
    digest = hashlib.sha256(training_set.encode())
    digest.update(settings.config_digest().encode())
    digest.update(str(context.seed).encode())
    return digest.hexdigest()[:20]


def fit_settings_for(settings: LanguageModelSettings, context: TextContext, out: Path, key: str,
                     n_examples: int | None) -> FitSettings:
    """The training loop's settings for one fit; micro-batches no larger than each
    worker's share of n_examples (None: not known yet, the backend clamps it)."""
    micro = settings.micro_batch_size
    if n_examples is not None:
        micro = min(micro, max(1, n_examples // settings.num_workers))
    return FitSettings(
        model_name=settings.model, tokenizer_dir=context.tokenizer_dir, output_dir=str(out),
        seed=int(key[:8], 16) % 2**31, epochs=settings.epochs, micro_batch_size=micro,
        grad_accum_steps=settings.grad_accum_steps, learning_rate=settings.learning_rate,
        warmup_ratio=settings.resolved_warmup_ratio(), warmup_steps=settings.warmup_steps,
        betas=(settings.adam_beta1, settings.adam_beta2), schedule=settings.schedule, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm, engine=settings.engine, zero_stage=settings.zero_stage,
        precision=settings.resolved_precision(), eval_steps=settings.eval_steps,
    )


def _initial_model(settings, tokenizer, context: TextContext, out: Path) -> str:
    from .models import build_model

    if not is_preset(settings.model):
        return settings.model
    if not (out / "config.json").exists():
        build_model(settings.model, tokenizer, context.seed).save_pretrained(out)
    return str(out)


def evaluate_texts(model: FittedLM, test_examples: list[np.ndarray]) -> dict[str, np.ndarray]:
    """test_loss (mean token cross-entropy on held-out real text, nats) and perplexity.

    The fit's workers computed it (FittedLM.figures); only a model that was never fitted
    (a value-grid cell's base model) is loaded here to be evaluated."""
    loss = model.figures.get("test_loss")
    if loss is None:
        loaded, tokenizer, device = backends.load_for_inference(model.model_dir, model.tokenizer_dir)
        loss = token_loss(loaded, test_examples, tokenizer.pad_token_id, device=device)
    metrics = {"test_loss": np.array([loss]), "perplexity": np.array([math.exp(min(loss, 700.0))])}
    for name in ("train_loss", "tokens_per_s", "fit_seconds"):
        metrics[name] = np.array([float(model.figures.get(name, float("nan")))])
    return metrics




def sample_texts(settings: LanguageModelSettings, model: FittedLM, n: int, seed: int,
                 generation: str = "from_bos", context: TextContext | None = None) -> list[str]:
    """n samples; generation: see backends.SampleSettings (first_token needs the
    context's first-token counts)."""
    return backends.sample(n, seed, sample_settings(settings, model, generation, context), settings.placement())


def sample_settings(settings: LanguageModelSettings, model: FittedLM, generation: str = "from_bos",
                    context: TextContext | None = None) -> backends.SampleSettings:
    return backends.SampleSettings(
        model_dir=model.model_dir, tokenizer_dir=model.tokenizer_dir, temperature=settings.temperature,
        top_p=settings.top_p, max_new_tokens=settings.max_length - 1, batch_size=settings.sampling_batch_size,
        generation=generation, first_tokens=context.first_tokens if context else (),
        first_token_counts=context.first_token_counts if context else (),
    )


def first_token_counts(tokenizer, texts: list[str]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The distinct first tokens of `texts` and how many texts start with each."""
    firsts = [ids[0] for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"] if ids]
    values, counts = np.unique(np.asarray(firsts, dtype=np.int64), return_counts=True)
    return tuple(int(v) for v in values), tuple(int(c) for c in counts)


def chain_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


def as_rows(texts: list[str]) -> dict[str, np.ndarray]:
    """Pool rows of one chain: a `text` column of shape (1, n)."""
    column = np.empty((1, len(texts)), dtype=object)
    column[0, :] = texts
    return {"text": column}
