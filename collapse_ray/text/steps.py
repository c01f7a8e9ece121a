"""The language-model tasks' steps, as functions of the settings and the chain's workdir.

`settings.py` holds what a language-model task is configured with; this module holds
what both tasks do with it on the rows path: the chain's tokenizer, encoding, the fit
(stored under a key of what it depends on, in the sweep's shared folder or the
workdir: a resumed iteration, and any chain whose fit is the same, reuses it),
evaluation and sampling. `pool_steps.py` has the same steps on a pool that lives on disk. The tasks
(tasks/pretraining.py, tasks/sft.py) call them explicitly.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from collapse_ray import atomic
from collapse_ray.text import backends
from collapse_ray.text.models import encode, is_preset, load_tokenizer, train_tokenizer
from collapse_ray.text.settings import LanguageModelSettings, fit_digest, placement, resolved_precision, resolved_warmup_ratio
from collapse_ray.text.training import FitSettings, token_loss

FIT_FILE = "fit.json"  # a fit's figures, in its folder: the folder is a finished fit


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


def prepare_tokenizer(settings: LanguageModelSettings, workdir: Path, train_texts: list[str]) -> str:
    """The chain's tokenizer folder: trained on the real split for presets (once; a
    resumed chain reuses it), else the saved/hub model's own."""
    if not is_preset(settings.model):
        return settings.model
    folder = Path(workdir) / f"tokenizer-{settings.vocab_size}"
    if not (folder / "tokenizer.json").exists():
        folder.parent.mkdir(parents=True, exist_ok=True)  # a scratch workdir is made on first use
        tmp = folder.with_name(f".{folder.name}.tmp")
        train_tokenizer(train_texts, settings.vocab_size).save_pretrained(tmp)
        tmp.replace(folder)
    return str(folder)


def fit_texts(settings: LanguageModelSettings, workdir: Path, texts, context: TextContext) -> FittedLM:
    """Fit the model named in `settings` from its initial weights on `texts`.

    The fitted model is stored under a key of everything the fit depends on (fit_key),
    in the sweep's shared folder when there is one (fits_folder): an iteration resumed
    after a crash in its sampling step reuses its fit, and so does every chain whose
    fit would be the same one (each workflow's iteration 1). The fit's seed derives
    from the same key: reproducible, and different per iteration.
    """
    texts = [str(t) for t in texts]
    key = fit_key(settings, "\x00".join(texts), context)
    out = fits_folder(settings, workdir) / key
    tokenizer = load_tokenizer(context.tokenizer_dir)
    examples = encode(tokenizer, texts, settings.max_length, drop_long=settings.long_rows == "drop")
    if not examples:  # nothing to train on (a value-grid cell with no data): the initial model
        return initial_fit(settings, tokenizer, context, out, Path(workdir))
    if (stored := stored_fit(out)) is not None:
        return FittedLM(str(out), context.tokenizer_dir, stored)

    def fit_into(folder: Path) -> dict:
        fit_settings = fit_settings_for(settings, context, folder, key, len(examples))
        figures = backends.fit(fit_settings, examples, placement(settings), context.held_out)
        return {**figures, "train_examples": float(len(examples))}

    return FittedLM(str(out), context.tokenizer_dir, publish_fit(out, fit_into, Path(workdir)))


def fits_folder(settings: LanguageModelSettings, workdir: Path) -> Path:
    """Where fits are kept: the sweep's shared folder (settings.shared_dir), else the chain's workdir."""
    return settings.shared_dir / "fits" if settings.shared_dir is not None else Path(workdir) / "models"


def stored_fit(out: Path) -> dict | None:
    """The figures of the finished fit in `out`, or None when there is none (yet)."""
    path = out / FIT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def publish_fit(out: Path, fit_into: Callable[[Path], dict | None], owner: Path) -> dict | None:
    """`fit_into(folder)` fits into a folder of its own, then that folder is renamed to
    `out` with the figures in it (FIT_FILE), so `out` appears whole or not at all.
    Chains that fit the same key at once each fit, and the first rename wins (a rename
    onto a folder that is there fails); the others drop theirs, an identical fit, and
    use it. fit_into returning None: nothing to keep (None is returned).

    The folder is named by the key and by `owner`, the chain's workdir: a chain that
    retries after a crash mid-fit replaces its own leftover (a model's worth of disk)
    and never touches another chain's, which may be fitting now."""
    out.parent.mkdir(parents=True, exist_ok=True)
    attempt = out.with_name(f".{out.name}.{hashlib.sha256(str(owner).encode()).hexdigest()[:12]}")
    if attempt.exists():
        shutil.rmtree(attempt)  # this chain's own, left by a crash
    figures = fit_into(attempt)
    if figures is None:
        shutil.rmtree(attempt, ignore_errors=True)
        return None
    attempt.mkdir(parents=True, exist_ok=True)
    (attempt / FIT_FILE).write_text(json.dumps(figures))
    if out.exists() and not (out / FIT_FILE).exists():
        shutil.rmtree(out)  # a fit that stopped part-way under an earlier version (it fitted in place)
    try:
        atomic.publish_folder(attempt, out)
    except OSError:
        if (figures := stored_fit(out)) is None:
            raise
        shutil.rmtree(attempt, ignore_errors=True)  # another chain's fit of this key got there first
    return figures


def fit_key(settings: LanguageModelSettings, training_set: str, context: TextContext) -> str:
    """The folder name of a fit, from what it depends on: the training set's identity,
    the settings a fit reads (fit_digest: not the sampling ones), the tokenizer's
    content, the held-out examples its figures are measured on, and the chain's seed.
    Its first 8 hex digits seed the fit."""
    digest = hashlib.sha256(training_set.encode())
    digest.update(fit_digest(settings).encode())
    tokenizer_file = Path(context.tokenizer_dir) / "tokenizer.json"
    digest.update(hashlib.sha256(tokenizer_file.read_bytes()).digest() if tokenizer_file.is_file()
                  else context.tokenizer_dir.encode())
    for example in context.held_out or ():
        digest.update(np.asarray(example, dtype=np.int32).tobytes() + b"|")
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
        warmup_ratio=resolved_warmup_ratio(settings), warmup_steps=settings.warmup_steps,
        betas=(settings.adam_beta1, settings.adam_beta2), schedule=settings.schedule, weight_decay=settings.weight_decay,
        max_grad_norm=settings.max_grad_norm, engine=settings.engine, zero_stage=settings.zero_stage,
        precision=resolved_precision(settings), eval_steps=settings.eval_steps, eval_loss=settings.eval_loss,
        eval_batch_size=settings.eval_batch_size,
    )


def initial_fit(settings: LanguageModelSettings, tokenizer, context: TextContext, out: Path, owner: Path) -> FittedLM:
    """A fit on no rows: the initial model, its held-out figures computed by the fit's
    own code where fits run (backends.evaluate: the workers, the fits' precision and
    loss), kept beside the fits under the fit's key."""
    model_dir = initial_model(settings, tokenizer, context, out)
    if context.held_out is None:
        return FittedLM(model_dir, context.tokenizer_dir, {})
    evaluated = out.with_name(f"{out.name}-untrained")
    if (figures := stored_fit(evaluated)) is None:
        def evaluate_into(folder: Path) -> dict:
            fit_settings = replace(fit_settings_for(settings, context, folder, out.name, None), model_name=model_dir)
            return backends.evaluate(fit_settings, placement(settings), context.held_out)

        figures = publish_fit(evaluated, evaluate_into, owner)
    return FittedLM(model_dir, context.tokenizer_dir, figures)


def initial_model(settings: LanguageModelSettings, tokenizer, context: TextContext, out: Path) -> str:
    """A fit on no rows: the base model (saved/hub), or a preset's initial weights
    (seeded by the chain) saved under `out`."""
    from collapse_ray.text.models import build_model

    if not is_preset(settings.model):
        return settings.model
    if not (out / FIT_FILE).exists():
        publish_fit(out, lambda folder: build_model(settings.model, tokenizer, context.seed).save_pretrained(folder) or {},
                    settings.workdir)
    return str(out)


def evaluate_texts(model: FittedLM, test_examples: list[np.ndarray]) -> dict[str, np.ndarray]:
    """test_loss (mean token cross-entropy on held-out real text, nats) and perplexity.

    The fit's workers computed it (FittedLM.figures), for an untrained model too
    (initial_fit); a model is loaded here only where its fit had no held-out examples."""
    loss = model.figures.get("test_loss")
    if loss is None:
        loaded, tokenizer, device = backends.load_for_inference(model.model_dir, model.tokenizer_dir)
        loss = token_loss(loaded, test_examples, tokenizer.pad_token_id, device=device)
    metrics = {"test_loss": np.array([loss]), "perplexity": np.array([math.exp(min(loss, 700.0))])}
    for name in ("train_loss", "tokens_per_s", "fit_seconds"):
        metrics[name] = np.array([float(model.figures.get(name, float("nan")))])
    return metrics

def iteration_series(settings: LanguageModelSettings, model: FittedLM) -> dict[str, list[tuple[int, float]]]:
    """The tasks' ReportsFitCurve hook: the within-fit held-out loss as (optimiser
    step, loss) pairs, every eval_steps steps and at the end (none when eval_steps is 0)."""
    curve = model.figures.get("eval_curve") or []
    if not settings.eval_steps or not curve:
        return {}
    return {"fit_test_loss": [(int(step), float(loss)) for step, loss in curve]}


def sample_texts(settings: LanguageModelSettings, model: FittedLM, n: int, seed: int,
                 generation: str = "from_bos", context: TextContext | None = None) -> list[str]:
    """n samples; generation: see backends.SampleSettings (first_token needs the
    context's first-token counts)."""
    return backends.sample(n, seed, sample_settings(settings, model, generation, context), placement(settings))


def sample_settings(settings: LanguageModelSettings, model: FittedLM, generation: str = "from_bos",
                    context: TextContext | None = None) -> backends.SampleSettings:
    return backends.SampleSettings(
        model_dir=model.model_dir, tokenizer_dir=model.tokenizer_dir, temperature=settings.temperature,
        top_p=settings.top_p, max_new_tokens=settings.max_length - 1, batch_size=settings.sampling_batch_size,
        generation=generation, first_tokens=context.first_tokens if context else (),
        first_token_counts=context.first_token_counts if context else (), seeding=settings.sampler_seeding,
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
