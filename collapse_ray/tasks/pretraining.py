"""Causal language-model pretraining ("pretraining"), as (B)'s TinyStories runs.

Each iteration trains a model *from scratch* (a preset: GPT-2 or Llama-2 shapes) on
the iteration's stories; the synthetic stories of an iteration are as many unconditional
samples (temperature 1 by default, optional top-p; `generation` picks one of (B)'s
strategies) as the workflow asks for, n_real by default. `test_loss` is the mean token cross-entropy on held-out real stories (nats;
ln(vocab) is a uniform guess), also logged as `perplexity`.

Rows are a `text` column; one chain per trial. Quick run (2 CPU cores, ~3 min):
    collapse-ray run sweeps/pretraining_quick.yaml
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

from collapse_ray.text import backends, corpora, pool_steps, settings, steps
from collapse_ray.text.models import is_preset, load_tokenizer
from collapse_ray.text.settings import LanguageModelSettings
from collapse_ray.text.steps import TextContext, as_rows, chain_seed, encode
from collapse_ray.validation import fail
from collapse_ray.tasks.protocol import Metrics, RealData, Rows


@dataclass(frozen=True)
class PretrainingTask(LanguageModelSettings):
    """Stories in, a causal LM trained from scratch out.

    Its fields are LanguageModelSettings' (inherited as fields, with their checks) plus
    `generation`; every step is a function of text.steps / text.pool_steps, called here."""

    name: ClassVar[str] = "pretraining"
    batched: ClassVar[bool] = False

    adam_beta2: float = 0.95  # (B) publishes no optimiser settings: a common LM-pretraining choice
    generation: Literal["from_bos", "first_token", "fixed_length"] = "from_bos"
    """(B)'s generation strategies: from BOS until EOS; from BOS plus the first token
    of a real story (drawn by how often stories start with it, kept in the sample); or
    a fixed max_length tokens from BOS (EOS suppressed)."""
    not_in_fit: ClassVar[frozenset[str]] = LanguageModelSettings.not_in_fit | {"generation"}  # sampling only

    def validate(self, where: str) -> None:
        super().validate(where)
        if not is_preset(self.model):
            fail(f"{where}.model", "a preset (tiny, tiny_wide, gpt2_9m, llama2_12m, llama2_42m, llama2_126m): "
                 "pretraining starts from scratch", self.model)

    def check_chain(self, chain, where: str) -> None:
        if chain.n_fresh_real and self.source != corpora.PROCEDURAL:
            fail(f"{where}.n_fresh_real", "0 unless task.source is 'procedural'", chain.n_fresh_real)

    def check_run(self, run, where: str) -> None:
        settings.check_run(self, self.name, run, where)

    def check_cluster(self, run, cpus: float, where: str) -> None:
        settings.check_cluster(self, run, cpus, where)

    def with_workdir(self, workdir) -> PretrainingTask:
        return settings.with_workdir(self, workdir)

    def with_shared_dir(self, shared_dir) -> PretrainingTask:
        return settings.with_shared_dir(self, shared_dir)

    def source_columns(self) -> tuple[str, ...]:
        return ("text",)

    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        texts = corpora.load_rows(self.source, "stories", "train", n_real, ("text",), self.corpus_seed)["text"]
        n_test = None if self.n_test == "all" else self.n_test  # stories are cut, never dropped: all fit
        test = corpora.load_rows(self.source, "stories", "validation", n_test, ("text",), self.corpus_seed)["text"]
        tokenizer_dir = steps.prepare_tokenizer(self, self.workdir, texts)
        tokenizer = load_tokenizer(tokenizer_dir)
        firsts = steps.first_token_counts(tokenizer, texts) if self.generation == "first_token" else ((), ())
        test_examples = encode(tokenizer, test, self.max_length, drop_long=False)
        context = TextContext(tokenizer_dir, chain_seed(rngs[0]), *firsts, held_out=tuple(test_examples))
        return RealData(train=as_rows(texts), test=test_examples, context=context)

    def fit(self, train: Rows, context: Any = None):
        return steps.fit_texts(self, self.workdir, train["text"][0], context)

    def sample(self, model, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Rows:
        return as_rows(steps.sample_texts(self, model, n, chain_seed(rngs[0]), self.generation, context))

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Rows:
        return as_rows([corpora.procedural_story(rngs[0]) for _ in range(n)])

    # -- the pool on disk (loop.PoolOnDiskTask): the trial never holds the rows --------
    def real_data_on_disk(self, n_real: int, rngs: Sequence[np.random.Generator], target) -> RealData:
        return pool_steps.real_data_on_disk(self, n_real, rngs, target)

    def fit_on_disk(self, selection, context: Any = None):
        return pool_steps.fit_on_disk(self, self.workdir, selection, context)

    def sample_on_disk(self, model, n: int, rngs: Sequence[np.random.Generator], context: Any, target) -> None:
        s = steps.sample_settings(self, model, self.generation, context)
        placement = settings.placement(self)
        batches = functools.partial(backends.iter_samples, n, chain_seed(rngs[0]), s, placement)
        pool_steps.sample_on_disk(placement, batches, target)

    def evaluate(self, model, test) -> Metrics:
        return steps.evaluate_texts(model, test)

    def iteration_series(self, model) -> dict[str, list[tuple[int, float]]]:
        return steps.iteration_series(self, model)

    def row_nbytes(self) -> int:
        return 4 * self.max_length  # about a byte per character, ~4 characters per token
