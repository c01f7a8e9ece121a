"""What `validate --cost` (collapse_ray/sweep/cost.py) counts a language-model sweep's work
in: how long a training row is, in tokens and characters (measured on the task's own rows
where they are at hand, else stated assumptions), how many rows each iteration trains on
(the workflow's own size rule), and the parameters of each model."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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


def training_rows(chain, kept: float) -> list[int]:
    """Rows of the training set at iterations 1..T: the workflow's own eligibility rule
    (MixingPolicy.parts) on a pool of the chain's sizes, and its own size rule
    (MixingPolicy.training_size), without drawing the rows (a subsample of the union: its
    expected split between the parts); synthetic rows scaled by `kept`, the share a fit
    keeps when long rows are dropped (real rows are the first that fit)."""
    from collapse_ray.core.workflows import REAL, SYNTHETIC

    policy = chain.policy()
    iteration, source, rows = [0], [REAL], [chain.n_real]
    sizes = []
    for t in range(1, chain.n_iterations + 1):
        real, synthetic = policy.parts(np.asarray(iteration), np.asarray(source, dtype=np.int8), t)
        n_real, n_synthetic = int(np.asarray(rows)[real].sum()), int(np.asarray(rows)[synthetic].sum())
        size = policy.training_size(n_real, n_synthetic, t)
        if size.subsample is None:
            n_real, n_synthetic = size.real, size.synthetic
        else:
            share = n_real / (n_real + n_synthetic)
            n_real, n_synthetic = size.subsample * share, size.subsample * (1 - share)
        sizes.append(int(round(n_real + n_synthetic * kept)))
        iteration += [t, t]
        source += [SYNTHETIC, REAL]
        rows += [chain.n_synthetic, policy.n_fresh_real]
    return sizes


@dataclass
class Measures:
    """A sweep's tasks measured once each: their rows (row_stats, at the most real rows any
    chain or value pool of the sweep trains on) and their models' parameters."""

    points: Sequence
    _rows: dict = field(default_factory=dict, repr=False)

    def rows(self, task) -> RowStats:
        n = max(getattr(task, "value_pool_real", 0), max(p.chain.n_real for p in self.points))
        key = (task.name, task.source, task.corpus_seed, task.model, task.vocab_size, task.max_length, task.long_rows,
               task.sampling_batch_size)
        if key not in self._rows:
            self._rows[key] = row_stats(task, n)
        return self._rows[key]

    def parameters(self, task) -> int:
        from collapse_ray.text import memory

        return memory.architecture(task.model, task.vocab_size).parameters
