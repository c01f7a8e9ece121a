"""Supervised fine-tuning ("sft"), as (A)'s HelpSteer2 runs with Gemma-2-2B.

Each iteration fine-tunes the *base* model (not the previous fit) on text formatted
    user: {prompt}\\nassistant: {response}<EOS>
(examples longer than max_length tokens are dropped). The sampler is the iteration's
fine-tuned model generating unconditionally from the empty prompt; only samples that
split into exactly one user part and one assistant part are kept, until the quota is
met. `test_loss` is the mean token cross-entropy on the real validation split only.

Value grid (Fig. 5): with `value_pool_size > 0` a chain is one fit on the first n_real
real rows plus the first `value_synthetic` rows of synthetic pool number `value_pool`
(of `n_value_pools`). Pool p is sampled (seed p) from its own fine-tune (seed p) on
`value_pool_real` real rows, as (A) samples three pools from three iteration-1
fine-tunes; it is shared by every cell and seed that names it. n_real =
value_synthetic = 0 evaluates the base model.

Pools are built once per sweep by the sweep's driver, before any cell starts
(`prepare_sweep`), and cells only read them: no lock is needed. A lock was not safe to
rely on: on the file systems cluster/README.md recommends, flock holds on EFS
(NFSv4.1; Linux emulates flock with NFS byte-range locks since 2.6.12) but not on an
NFS mount with `nolock` or `local_lock=flock|all` (then locks are local to one node),
on NFSv3 without a reachable lock manager (lockd/NLM), on SMB before Linux 5.5 (Azure
Files: flock is not sent to the server), nor on S3 FUSE mounts. The sweep gives the
folder the pools go in (prepare_sweep, with_shared_dir); a chain run outside a sweep
builds its pool itself, in its own workdir, if it is missing.

Quick runs (2 CPU cores): sweeps/sft_quick.yaml (Ray Train + DeepSpeed),
sweeps/sft_models_quick.yaml (Fig. 3's line per model), sweeps/sft_fig4_subsample_quick.yaml,
sweeps/fig5_value_grid_quick.yaml.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from collapse_ray import atomic
from collapse_ray.text import backends, corpora, pool_steps, settings, steps
from collapse_ray.text.models import load_tokenizer
from collapse_ray.text.settings import LanguageModelSettings
from collapse_ray.text.steps import TextContext, as_rows, chain_seed, encode
from collapse_ray.validation import SpecError, fail, require
from collapse_ray.tasks.protocol import Metrics, RealData, Rows, check_value_grid

USER, ASSISTANT = "user: ", "\nassistant: "
VALUE_POOLS_FOLDER = "value_pools"
"""Where a chain run outside a sweep (no shared_dir given) keeps its value pool: in its own workdir."""
MAX_SAMPLING_ROUNDS = 64
"""Sampling rounds before a pool that still lacks accepted samples is given up on."""
ROUND_OVERDRAW = 4
"""A round asks for this many times what is missing at the acceptance rate so far (at
least 10%), and is read only until enough are accepted: its unread rest costs the few
batches in flight when reading stops, where a round that comes up short costs another
sampler start (a vLLM engine takes ~1 min to start on CPU)."""


def format_example(prompt: str, response: str) -> str:
    return f"{USER}{prompt}{ASSISTANT}{response}"


def parse_example(text: str) -> tuple[str, str] | None:
    """(prompt, response) by (A)'s acceptance rule: the sample starts with "user: " and
    splits on "assistant: " into exactly two parts; both are stripped (and may be
    empty, as (A)'s). One difference: (A) takes the prompt as `lstrip("user: ")`, which
    strips any leading u, s, e, r, colon or space ("users ask" -> "ask"); the prefix
    alone is removed here."""
    if not text.startswith(USER):
        return None
    parts = text.split(ASSISTANT.strip("\n"))
    if len(parts) != 2:
        return None
    return parts[0].removeprefix(USER).strip(), parts[1].strip()


@dataclass(frozen=True)
class SFTTask(LanguageModelSettings):
    """Instruction/response pairs in, a fine-tune of the base model out.

    Its fields are LanguageModelSettings' (inherited as fields, with their checks) plus
    the columns and the value grid's; the shared steps are text.steps / text.pool_steps
    functions, called here."""

    name: ClassVar[str] = "sft"
    batched: ClassVar[bool] = False

    learning_rate: float = 1e-3
    schedule: Literal["constant", "cosine"] = "constant"  # (A): constant_with_warmup
    long_rows: Literal["drop", "cut"] = "drop"  # (A) drops rows longer than max_length, synthetic ones too
    prompt_column: str = "prompt"
    response_column: str = "response"
    value_pool_size: int = 0
    """Value grid: synthetic rows in each pool (0: an ordinary chain)."""
    value_pool_real: int = 0
    """Value grid: real rows each pool's sampler is fine-tuned on."""
    n_value_pools: int = 1
    """Value grid: synthetic pools, each from its own fine-tune ((A): 3)."""
    value_pool: int = 0
    """Value grid: the pool this cell draws from (0 .. n_value_pools - 1; a grid axis)."""
    value_synthetic: int = 0
    """Value grid: first rows of the pool that fit in max_length, added to this cell's training set."""
    value_pool_warmup_ratio: float = 0.05
    """Value grid: warm-up of each pool's own fine-tune, as (A)'s iteration-1 fine-tunes."""

    # an empty training set is meaningful here: the base model, evaluated untrained
    fits_empty_training_set: ClassVar[bool] = True
    # the value-grid fields shape a cell's training set, which keys its fit already: a
    # cell with no synthetic rows fits what the same n_real fits in every pool's column
    not_in_fit: ClassVar[frozenset[str]] = LanguageModelSettings.not_in_fit | {
        "value_pool_size", "value_pool_real", "n_value_pools", "value_pool", "value_synthetic",
        "value_pool_warmup_ratio"}

    def validate(self, where: str) -> None:
        super().validate(where)
        check_value_grid(self, where, min_pool_real=1)
        require(0 <= self.value_pool_warmup_ratio < 1, f"{where}.value_pool_warmup_ratio", "a number in [0, 1)",
                self.value_pool_warmup_ratio)

    def check_chain(self, chain, where: str) -> None:
        if chain.n_fresh_real and self.source != corpora.PROCEDURAL:
            fail(f"{where}.n_fresh_real", "0 unless task.source is 'procedural'", chain.n_fresh_real)
        if self.value_pool_size and chain.n_iterations != 1:
            fail(f"{where}.n_iterations", "1 for value-grid cells (task.value_pool_size > 0)", chain.n_iterations)
        if chain.n_real == 0 and not self.value_pool_size:
            fail(f"{where}.n_real", "an integer >= 1 (0 only in value-grid cells: task.value_pool_size > 0)", chain.n_real)
        self._check_local_test_set()

    def check_run(self, run, where: str) -> None:
        settings.check_run(self, self.name, run, where)

    def check_cluster(self, run, cpus: float, where: str) -> None:
        settings.check_cluster(self, run, cpus, where)

    def with_workdir(self, workdir) -> SFTTask:
        return settings.with_workdir(self, workdir)

    def with_shared_dir(self, shared_dir) -> SFTTask:
        return settings.with_shared_dir(self, shared_dir)

    def _check_local_test_set(self) -> None:
        """A local source is read at spec time: asking for more test rows than fit in
        max_length fails here, naming both counts (a hub source fails in its first
        trial, with the same message)."""
        if self.source == corpora.PROCEDURAL or self.n_test == "all" or not Path(self.source).expanduser().exists():
            return
        fitting = _local_fitting_count(self.source, self.model, self.max_length, self.vocab_size,
                                       self.prompt_column, self.response_column)
        if fitting < self.n_test:
            raise SpecError(f"task.n_test must be <= the {fitting} validation rows of {self.source} that fit in "
                            f"max_length={self.max_length} tokens (or 'all'); got {self.n_test}")

    # -- data --------------------------------------------------------------------------
    def source_columns(self) -> tuple[str, ...]:
        return (self.prompt_column, self.response_column)

    def real_data(self, n_real: int, rngs: Sequence[np.random.Generator]) -> RealData:
        n_train = max(n_real, self.value_pool_real)
        loaded = self._load_fitting("train", self._first_ask(n_train))
        tokenizer_dir = steps.prepare_tokenizer(self, self.workdir, loaded)
        tokenizer = load_tokenizer(tokenizer_dir)
        train = self._fitting(tokenizer, "train", n_train, loaded)
        test = self._fitting(tokenizer, "validation", None if self.n_test == "all" else self.n_test)
        test_examples = encode(tokenizer, test, self.max_length, drop_long=True)
        context = TextContext(tokenizer_dir, chain_seed(rngs[0]), held_out=tuple(test_examples))
        texts = train[:n_real]
        if self.value_synthetic:
            # in a sweep the driver built the pool in the folder it gives (prepare_sweep,
            # with_shared_dir); alone, the chain builds it in its own workdir
            shared = self.shared_dir if self.shared_dir is not None else self.workdir / VALUE_POOLS_FOLDER
            texts = texts + self._value_pool_rows(shared, tokenizer)
        return RealData(train=as_rows(texts), test=test_examples, context=context)

    def prepare_sweep(self, shared_dir: Path) -> None:
        """Called by the sweep's driver for every cell before any starts: builds this
        cell's synthetic pool if no earlier cell's call did (one writer, no lock)."""
        if self.value_pool_size:
            self._built_value_pool(shared_dir)

    def _load_fitting(self, split: str, ask: int | None) -> list[str]:
        """Formatted examples of `split`: the first `ask` of the procedural stream, or
        all of a named source."""
        columns = (self.prompt_column, self.response_column)
        rows = corpora.load_rows(self.source, "instructions", split, ask, columns, self.corpus_seed)
        return [format_example(p, r) for p, r in zip(rows[columns[0]], rows[columns[1]])]

    def _first_ask(self, n: int) -> int | None:
        """Procedural rows to generate so that about n fit (None: all of a named source)."""
        return int(n * 1.25) + 16 if self.source == corpora.PROCEDURAL else None

    def _fitting(self, tokenizer, split: str, n: int | None, loaded: list[str] | None = None) -> list[str]:
        """The first n formatted examples of `split` that fit in max_length tokens
        ((A) drops the rest; n None: all that fit, of a named source). A procedural
        stream is read further until n fit. `loaded`: the split as
        `_load_fitting(split, _first_ask(n))` already returned it."""
        ask = self._first_ask(n) if n is not None else None
        while True:
            texts = loaded if loaded is not None else self._load_fitting(split, ask)
            loaded = None
            lengths = [len(ids) + 2 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
            kept = [t for t, k in zip(texts, lengths) if k <= self.max_length]
            if n is None:
                return kept
            if len(kept) >= n or ask is None or ask > 64 * n + 1024:
                break
            ask *= 2
        if len(kept) < n:
            raise ValueError(f"source {self.source!r} split {split!r}: {len(kept)} of {len(texts)} examples fit in "
                             f"max_length={self.max_length} tokens; {n} were asked for (n_test: all takes every one)")
        return kept[:n]

    def value_pool_path(self, shared_dir: Path) -> Path:
        """Pool `value_pool`'s file: its folder is keyed by everything that makes the
        pool (not by the cell's n_real, value_synthetic or chain seed)."""
        pool_task = replace(self, value_synthetic=0, n_value_pools=1)
        return Path(shared_dir) / f"value_pool-{settings.config_digest(pool_task)}" / "pool.parquet"

    def _built_value_pool(self, shared_dir: Path) -> Path:
        """Pool `value_pool`'s file, built if it is missing (it appears whole, by rename)."""
        path = self.value_pool_path(shared_dir)
        if not path.exists():
            self._build_value_pool(replace(self, value_synthetic=0, n_value_pools=1), path)
        return path

    def _value_pool_rows(self, shared_dir: Path, tokenizer) -> list[str]:
        """The first value_synthetic rows of the pool that fit in max_length tokens, as
        (A) drops the long rows of its synthetic set before taking its first ones."""
        texts = pq.read_table(self._built_value_pool(shared_dir)).column("text").to_pylist()
        kept, at = [], 0
        while len(kept) < self.value_synthetic and at < len(texts):
            chunk = texts[at : at + 2 * (self.value_synthetic - len(kept)) + 64]
            at += len(chunk)
            lengths = [len(ids) + 2 for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]]
            kept += [t for t, k in zip(chunk, lengths) if k <= self.max_length]
        if len(kept) < self.value_synthetic:
            raise ValueError(f"value pool {self.value_pool}: {len(kept)} of its {len(texts)} rows fit in max_length="
                             f"{self.max_length} tokens; value_synthetic={self.value_synthetic} were asked for "
                             f"(raise task.value_pool_size)")
        return kept[: self.value_synthetic]

    def _build_value_pool(self, pool_task: SFTTask, path: Path) -> None:
        """Pool p: a fine-tune on the first value_pool_real real rows (seed p), sampled
        (seed p) until value_pool_size samples are accepted, as (A)'s pools 0, 1, 2:
        (A) samples them from its iteration-1 fine-tunes, which warm up for
        value_pool_warmup_ratio of their steps (not the cells' warm-up)."""
        folder = path.parent
        folder.mkdir(parents=True, exist_ok=True)
        fitter = replace(pool_task, warmup_steps=None, warmup_ratio=self.value_pool_warmup_ratio).with_workdir(folder)
        seed = self.value_pool
        loaded = self._load_fitting("train", self._first_ask(self.value_pool_real))
        tokenizer_dir = steps.prepare_tokenizer(fitter, fitter.workdir, loaded)
        train = self._fitting(load_tokenizer(tokenizer_dir), "train", self.value_pool_real, loaded)
        model = steps.fit_texts(fitter, fitter.workdir, train, TextContext(tokenizer_dir, seed))
        with atomic.replacing(path) as tmp, pq.ParquetWriter(tmp, pa.schema([("text", pa.string())])) as writer:
            for texts in fitter._accepted_batches(model, self.value_pool_size, seed):  # batch by batch
                writer.write_table(pa.table({"text": pa.array(texts, type=pa.string())}))

    # -- protocol ----------------------------------------------------------------------
    def fit(self, train: Rows, context: Any = None):
        return steps.fit_texts(self, self.workdir, train["text"][0], context)

    def sample(self, model, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Rows:
        return as_rows(self._accepted_samples(model, n, chain_seed(rngs[0])))

    def _accepted_samples(self, model, n: int, seed: int) -> list[str]:
        return [text for batch in self._accepted_batches(model, n, seed) for text in batch]

    def _accepted_batches(self, model, n: int, seed: int):
        """Sample until n samples are accepted (parse_example), as (A), in rounds sized
        by the acceptance rate so far (ROUND_OVERDRAW), yielding the accepted ones batch
        by batch as they are drawn: n in all, in order. A model that has not given n in
        MAX_SAMPLING_ROUNDS rounds is given up on, in one line that says how far it got."""
        accepted, drawn = 0, 0
        seeds = np.random.SeedSequence(seed).generate_state(MAX_SAMPLING_ROUNDS)
        sample_settings, placement = steps.sample_settings(self, model), settings.placement(self)
        for round_seed in seeds:
            if accepted >= n:
                break
            rate = max(accepted / drawn, 0.1) if drawn else 1.0
            ask = int(np.ceil((n - accepted) / rate * ROUND_OVERDRAW))
            # closed as soon as enough are accepted: the sampler's engines stop and free their CPUs or GPUs
            with contextlib.closing(backends.iter_samples(ask, int(round_seed), sample_settings, placement)) as stream:
                for made in stream:
                    drawn += len(made)
                    kept = [format_example(*p) for p in map(parse_example, made) if p is not None]
                    yield kept[: n - accepted]
                    accepted += len(kept)
                    if accepted >= n:
                        break
        if accepted < n:
            raise RuntimeError(f"sft sampler: {accepted} of {n} samples accepted after {MAX_SAMPLING_ROUNDS} rounds "
                               f"({drawn} drawn; a sample must start with {USER!r} and split on 'assistant: ' into two "
                               f"parts): is the model trained enough to keep the format?")

    def sample_real(self, n: int, rngs: Sequence[np.random.Generator], context: Any = None) -> Rows:
        pairs = [corpora.procedural_instruction(rngs[0]) for _ in range(n)]
        return as_rows([format_example(p, r) for p, r in pairs])

    # -- the pool on disk (loop.PoolOnDiskTask): the trial never holds the rows --------
    def real_data_on_disk(self, n_real: int, rngs: Sequence[np.random.Generator], target) -> RealData:
        return pool_steps.real_data_on_disk(self, n_real, rngs, target)

    def fit_on_disk(self, selection, context: Any = None):
        return pool_steps.fit_on_disk(self, self.workdir, selection, context)

    def sample_on_disk(self, model, n: int, rngs: Sequence[np.random.Generator], context: Any, target) -> None:
        batches = functools.partial(self._accepted_batches, model, n, chain_seed(rngs[0]))
        pool_steps.sample_on_disk(settings.placement(self), batches, target)

    def evaluate(self, model, test) -> Metrics:
        return steps.evaluate_texts(model, test)

    def iteration_series(self, model) -> dict[str, list[tuple[int, float]]]:
        return steps.iteration_series(self, model)

    def row_nbytes(self) -> int:
        return 4 * self.max_length



@functools.lru_cache(maxsize=16)
def _local_fitting_count(source: str, model: str, max_length: int, vocab_size: int, prompt_column: str,
                         response_column: str) -> int:
    """Validation rows of a local source that fit, tokenized as a chain would: by the
    model's own tokenizer, or for a preset by the one trained on the train split."""
    from collapse_ray.text.models import is_preset, train_tokenizer

    columns = (prompt_column, response_column)

    def formatted(split: str) -> list[str]:
        rows = corpora.load_rows(source, "instructions", split, None, columns)
        return [format_example(p, r) for p, r in zip(rows[columns[0]], rows[columns[1]])]

    try:
        test = formatted("validation")
        tokenizer = train_tokenizer(formatted("train"), vocab_size) if is_preset(model) else load_tokenizer(model)
    except (ValueError, OSError) as err:
        raise SpecError(f"task.source {source}: {str(err).splitlines()[0]}") from None
    lengths = [len(ids) + 2 for ids in tokenizer(test, add_special_tokens=False)["input_ids"]]
    return sum(k <= max_length for k in lengths)
