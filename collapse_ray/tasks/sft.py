"""Supervised fine-tuning ("sft"), as (A)'s HelpSteer2 runs with Gemma-2-2B.

Each iteration fine-tunes the *base* model (not the previous fit) on text formatted
    user: {prompt}\\nassistant: {response}<EOS>
(examples longer than max_length tokens are dropped). The sampler is the iteration's
fine-tuned model generating unconditionally from the empty prompt; only samples that
split into exactly one user part and one assistant part are kept, until the quota is
met. `test_loss` is the mean token cross-entropy on the real validation split only.

Value grid (Fig. 5): with `value_pool_size > 0` a chain is one fit on the first n_real
real rows plus the first `value_synthetic` rows of a synthetic pool that is sampled once
(seeded by the task, shared by every cell and seed of the sweep) from a fine-tune on
`value_pool_real` real rows. n_real = value_synthetic = 0 evaluates the base model.

Quick run (2 CPU cores): collapse-ray run sweeps/sft_quick.yaml
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np

from ..text import corpora
from ..text.models import load_tokenizer
from ..text.settings import (
    LanguageModelSettings, TextContext, as_rows, chain_seed, encode, evaluate_texts, fit_texts,
    prepare_tokenizer, sample_texts,
)
from ..validation import check_min, fail, require
from .protocol import Metrics, RealData, Rows

USER, ASSISTANT = "user: ", "\nassistant: "
MAX_SAMPLING_ROUNDS = 30
MAX_DRAWS_PER_SAMPLE = 20  # a model that parses under 1 in 20 is not worth waiting on


def format_example(prompt: str, response: str) -> str:
    return f"{USER}{prompt}{ASSISTANT}{response}"


def parse_example(text: str) -> tuple[str, str] | None:
    """(prompt, response) if `text` has exactly one user and one assistant part."""
    if not text.startswith(USER) or text.count(USER.strip()) != 1 or text.count(ASSISTANT) != 1:
        return None
    prompt, response = text.removeprefix(USER).split(ASSISTANT)  # removeprefix: lstrip eats characters
    if not prompt.strip() or not response.strip():
        return None
    return prompt, response


@dataclass(frozen=True)
class SFTTask(LanguageModelSettings):
    """Instruction/response pairs in, a fine-tune of the base model out."""

    name: ClassVar[str] = "sft"
    batched: ClassVar[bool] = False

    learning_rate: float = 1e-3
    schedule: Literal["constant", "cosine"] = "constant"  # (A): constant with 5% warm-up
    prompt_column: str = "prompt"
    response_column: str = "response"
    value_pool_size: int = 0
    """Value grid: synthetic rows sampled once for all cells (0: an ordinary chain)."""
    value_pool_real: int = 0
    """Value grid: real rows the pool's sampler is fine-tuned on."""
    value_synthetic: int = 0
    """Value grid: first rows of the pool added to this cell's training set."""

    # an empty training set is meaningful here: the base model, evaluated untrained
    fits_empty_training_set: ClassVar[bool] = True

    def validate(self, where: str) -> None:
        super().validate(where)
        for name in ("value_pool_size", "value_pool_real", "value_synthetic"):
            check_min(getattr(self, name), 0, f"{where}.{name}")
        require(self.value_synthetic <= self.value_pool_size, f"{where}.value_synthetic",
                f"<= value_pool_size ({self.value_pool_size})", self.value_synthetic)
        if self.value_pool_size:
            check_min(self.value_pool_real, 1, f"{where}.value_pool_real")

    def check_chain(self, chain, where: str) -> None:
        if chain.n_fresh_real and self.source != corpora.PROCEDURAL:
            fail(f"{where}.n_fresh_real", "0 unless task.source is 'procedural'", chain.n_fresh_real)
        if self.value_pool_size and chain.n_iterations != 1:
            fail(f"{where}.n_iterations", "1 for value-grid cells (task.value_pool_size > 0)", chain.n_iterations)
        if chain.n_real == 0 and not self.value_pool_size:
            fail(f"{where}.n_real", "an integer >= 1 (0 only in value-grid cells: task.value_pool_size > 0)", chain.n_real)

    # -- data --------------------------------------------------------------------------
    def source_columns(self) -> tuple[str, ...]:
        return (self.prompt_column, self.response_column)

    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        n_train = max(n_real, self.value_pool_real)
        loaded = self._load_fitting("train", self._first_ask(n_train))
        tokenizer_dir = prepare_tokenizer(self, loaded)
        tokenizer = load_tokenizer(tokenizer_dir)
        train = self._fitting(tokenizer, "train", n_train, loaded)
        test = self._fitting(tokenizer, "validation", self.n_test)
        context = TextContext(tokenizer_dir, chain_seed(rngs[0]))
        texts = train[:n_real]
        if self.value_synthetic:
            texts = texts + self._value_pool(train, context)[: self.value_synthetic]
        return RealData(train=as_rows(texts), test=encode(tokenizer, test, self.max_length, drop_long=True),
                        context=context)

    def _load_fitting(self, split: str, ask: int | None) -> list[str]:
        """Formatted examples of `split`: the first `ask` of the procedural stream, or
        all of a named source."""
        columns = (self.prompt_column, self.response_column)
        rows = corpora.load_rows(self.source, "instructions", split, ask, columns, self.corpus_seed)
        return [format_example(p, r) for p, r in zip(rows[columns[0]], rows[columns[1]])]

    def _first_ask(self, n: int) -> int | None:
        """Procedural rows to generate so that about n fit (None: all of a named source)."""
        return int(n * 1.25) + 16 if self.source == corpora.PROCEDURAL else None

    def _fitting(self, tokenizer, split: str, n: int, loaded: list[str] | None = None) -> list[str]:
        """The first n formatted examples of `split` that fit in max_length tokens
        ((A) drops the rest). A procedural stream is read further until n fit.
        `loaded`: the split as `_load_fitting(split, _first_ask(n))` already returned it."""
        ask = self._first_ask(n)
        while True:
            texts = loaded if loaded is not None else self._load_fitting(split, ask)
            loaded = None
            lengths = [len(ids) + 2 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            kept = [t for t, k in zip(texts, lengths) if k <= self.max_length]
            if len(kept) >= n or ask is None or ask > 64 * n + 1024:
                break
            ask *= 2
        if len(kept) < n:
            raise ValueError(f"source {self.source!r} split {split!r}: {len(kept)} examples fit in "
                             f"max_length={self.max_length} tokens; {n} were asked for")
        return kept[:n]

    def _value_pool(self, train: list[str], context: TextContext) -> list[str]:
        """The value grid's shared synthetic pool: made by the first cell that needs it
        (under a file lock), read by the rest. Its seed is the task's, not the chain's."""
        pool_task = replace(self, value_synthetic=0)
        folder = self.workdir.parent.parent / "_shared" / f"value_pool-{pool_task.config_digest()}"
        path = folder / "pool.json"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not path.exists():
                shared = TextContext(context.tokenizer_dir, self.corpus_seed)
                fitter = pool_task.with_workdir(folder)
                model = fit_texts(fitter, train[: self.value_pool_real], shared)
                texts = fitter._accepted_samples(model, self.value_pool_size, self.corpus_seed)
                tmp = folder / ".pool.json.tmp"
                tmp.write_text(json.dumps(texts))
                tmp.replace(path)
        return json.loads(path.read_text())

    # -- protocol ----------------------------------------------------------------------
    def fit(self, train: Rows, context: Any = None):
        return fit_texts(self, train["text"][0], context)

    def sample(self, model, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Rows:
        return as_rows(self._accepted_samples(model, n, chain_seed(rngs[0])))

    def _accepted_samples(self, model, n: int, seed: int) -> list[str]:
        """Sample until n samples parse (rounds sized by the acceptance rate so far)."""
        accepted, drawn = [], 0
        seeds = np.random.SeedSequence(seed).generate_state(MAX_SAMPLING_ROUNDS)
        for round_seed in seeds:
            if len(accepted) >= n or drawn >= MAX_DRAWS_PER_SAMPLE * n:
                break
            rate = max(len(accepted) / drawn, 0.1) if drawn else 1.0
            ask = int(np.ceil((n - len(accepted)) / rate * 1.1))
            made = sample_texts(self, model, ask, int(round_seed))
            drawn += len(made)
            accepted.extend(format_example(*p) for p in map(parse_example, made) if p is not None)
        if len(accepted) < n:
            raise RuntimeError(f"sft sampler: {len(accepted)} of {drawn} samples parsed as one user and one "
                               f"assistant part; {n} were needed (is the model trained enough to keep the format?)")
        return accepted[:n]

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Rows:
        pairs = [corpora.procedural_instruction(rngs[0]) for _ in range(n)]
        return as_rows([format_example(p, r) for p, r in pairs])

    def evaluate(self, model, test) -> Metrics:
        return evaluate_texts(model, test)

    def row_nbytes(self) -> int:
        return 4 * self.max_length

