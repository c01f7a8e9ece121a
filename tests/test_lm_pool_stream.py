"""A workflow's selection read from the pool's Parquet shards through Ray Data selects
exactly the rows the in-memory pool's `take` does, per chain, for every kind of
selection (all rows, a newest block, seeded subsamples, fresh real rows). Toy pool,
real Parquet, real local Ray."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from collapse_ray.core.loop import chain_generators
from collapse_ray.core.pool import ArrayPool, selected_rows
from collapse_ray.text.readers import selection_dataset
from collapse_ray.core.workflows import make_workflow

from .helpers import tiny_fit_settings

CHAINS = [7, 3]


def _rows(iteration: int, source: str, k: int) -> dict[str, np.ndarray]:
    text = np.empty((len(CHAINS), k), dtype=object)
    for c, chain in enumerate(CHAINS):
        text[c] = [f"chain {chain} iteration {iteration} {source} {j}" for j in range(k)]
    return {"text": text}


def _toy_pool(root, workflow, n_iterations=3):
    pool = ArrayPool(CHAINS, keep_history=workflow.needs_history)
    pool.add(_rows(0, "real", 6), 0, "real")
    for t in range(1, n_iterations + 1):
        pool.add(_rows(t, "synthetic", 5), t, "synthetic")
        if workflow.n_fresh_real:
            pool.add(_rows(t, "real", workflow.n_fresh_real), t, "real")
        pool.write_shards(root)
    return pool


WORKFLOWS = [
    ("replace", {}),
    ("accumulate", {"n_fresh_real": 2}),
    ("accumulate_subsample", {"n_train": 9}),
    ("fresh_data", {"n_fresh_real": 2}),
    ("iterative_retraining", {"synthetic_ratio": 0.5}),
    ("real_fraction", {"n_train": 8, "real_fraction": 0.25}),
]


@pytest.mark.ray
@pytest.mark.parametrize("name,knobs", WORKFLOWS, ids=[w[0] for w in WORKFLOWS])
def test_streamed_selection_reads_exactly_the_rows_take_selects(tmp_path, local_ray, name, knobs):
    workflow = make_workflow(name, **knobs)
    pool = _toy_pool(tmp_path / "pool", workflow)
    rngs = [chain_generators(s)[1] for s in CHAINS]
    selection = workflow.select(pool.index, 4, rngs)
    taken = pool.take(selection)["text"]
    for position, chain_id in enumerate(CHAINS):
        streamed = selection_dataset(tmp_path / "pool", pool.index, selection, chain_id, ["text"], chain=position)
        frame = streamed.to_pandas()
        in_order = frame.sort_values(["iteration", "source", "row"], kind="stable")
        assert list(in_order["text"]) == list(frame["text"]), "(iteration, source, row) order"
        assert sorted(frame["text"]) == sorted(taken[position]), (name, chain_id)
        assert sum(len(r) for r in selected_rows(pool.index, selection, position).values()) == len(frame)


@pytest.mark.ray
@pytest.mark.slow  # a TorchTrainer's start-up: ~30 s on 2 cores
def test_ray_train_workers_stream_a_shuffled_selection_and_all_reduce_the_held_out_loss(tmp_path, local_ray):
    """The trial hands the workers a read of the selected rows, not the rows: Ray Data
    tokenizes them and each worker streams its shard; the fit sees every selected row.

    In random order: an accumulate fit at iteration 2 reads its real rows, then the
    samples, from the pool; each worker's first and last quarter of steps hold real rows
    in their overall share (1/2) within sampling error, as (A)'s shuffled fits. (Without
    the fit's global shuffle the shares were 1 and 0.) Each worker evaluates its share
    of the held-out rows (13: the shares differ in size) and the sums are all-reduced:
    the trial gets the held-out loss without loading the model. The fit's poll interval
    is set for its controller only."""
    import os

    from collapse_ray.tasks import PretrainingTask
    from collapse_ray.text import backends
    from collapse_ray.text.models import load_tokenizer
    from collapse_ray.text.settings import placement
    from collapse_ray.text.steps import encode
    from collapse_ray.text.training import ORDER_FOLDER, row_digest, token_loss

    task = PretrainingTask(max_length=48, vocab_size=300, n_test=13).with_workdir(tmp_path / "task")
    real = task.real_data(160, [chain_generators(0)[0]])
    synthetic = real.train["text"].copy()
    synthetic[0] = [text[::-1] for text in synthetic[0]]  # stand-in samples, told apart from the real rows
    pool = ArrayPool([5])
    pool.add(real.train, 0, "real")
    pool.add({"text": synthetic}, 1, "synthetic")
    pool.write_shards(tmp_path / "pool")
    selection = make_workflow("accumulate").select(pool.index, 2, [np.random.default_rng(1)])
    texts = selection_dataset(tmp_path / "pool", pool.index, selection, 5, ["text"])

    settings = tiny_fit_settings(real.context.tokenizer_dir, tmp_path / "model", micro_batch_size=2,
                                 record_order=True)
    assert backends.HEALTH_CHECK_ENV not in os.environ
    figures = backends.fit_ray_train_texts(settings, texts, placement(task), 48, drop_long=False,
                                           held_out=real.context.held_out)
    assert backends.HEALTH_CHECK_ENV not in os.environ, "the caller's environment is restored after the fit"
    assert np.isfinite(figures["eval_seconds"])
    assert figures["train_examples"] == 320, "every selected row was tokenized for the workers"
    assert figures["optimizer_steps"] == 80, "each worker took its 80 micro-batches of two"
    loaded, tokenizer, device = backends.load_for_inference(settings.output_dir, settings.tokenizer_dir)
    assert figures["test_loss"] == pytest.approx(token_loss(loaded, list(real.test), tokenizer.pad_token_id), rel=1e-5)

    tokenizer = load_tokenizer(settings.tokenizer_dir)
    is_real = {row_digest(x): True for x in encode(tokenizer, list(real.train["text"][0]), 48, False)}
    is_real.update({row_digest(x): False for x in encode(tokenizer, list(synthetic[0]), 48, False)})
    seen = []
    for rank in (0, 1):
        steps = json.loads((tmp_path / "model" / ORDER_FOLDER / f"rank-{rank}.json").read_text())
        assert len(steps) == 80
        quarter = len(steps) // 4
        for part in (steps[:quarter], steps[-quarter:]):
            rows = [is_real[d] for batch in part for d in batch]
            # 40 rows drawn without replacement from 320, half real: sd <= 0.08; 4 sd
            assert abs(np.mean(rows) - 0.5) < 4 * np.sqrt(0.25 / len(rows)), (rank, np.mean(rows))
        seen += [d for batch in steps for d in batch]
    assert sorted(seen) == sorted(row_digest(x) for x in encode(tokenizer, list(pool.take(selection)["text"][0]), 48,
                                                                False)), "each row once, on one worker"


@pytest.mark.ray
def test_ray_data_tokenizes_a_fits_rows_cutting_or_dropping_the_long_ones(tmp_path, local_ray):
    """The Ray Data stage before a Ray Train fit: long rows cut (pretraining) or dropped
    (SFT, as (A)), the same examples as the rows path's encode; a fit whose every row is
    too long starts no trainer and says so (the SFT chain then keeps its initial model)."""
    import ray.data

    from collapse_ray.tasks import PretrainingTask
    from collapse_ray.text import backends
    from collapse_ray.text.models import load_tokenizer
    from collapse_ray.text.settings import placement
    from collapse_ray.text.steps import encode

    task = PretrainingTask(max_length=24, vocab_size=300, n_test=4).with_workdir(tmp_path / "task")
    real = task.real_data(20, [chain_generators(0)[0]])
    tokenizer_dir = real.context.tokenizer_dir
    tokenizer = load_tokenizer(tokenizer_dir)
    texts = [str(t) for t in np.ravel(real.train["text"])] + ["a short one", "the end"]
    lengths = [len(tokenizer(t)["input_ids"]) + 2 for t in texts]
    assert 0 < sum(n > 24 for n in lengths) < len(texts), "some rows are too long, some fit"
    dataset = ray.data.from_items([{"text": t} for t in texts])
    for drop_long in (False, True):
        tokens = backends.tokenized_dataset(dataset, tokenizer_dir, 24, drop_long, num_workers=2)
        streamed = sorted(tuple(row["input_ids"]) for row in tokens.take_all())
        assert streamed == sorted(tuple(x) for x in encode(tokenizer, texts, 24, drop_long)), drop_long
        assert len(streamed) == (sum(n <= 24 for n in lengths) if drop_long else len(texts))

    settings = tiny_fit_settings(tokenizer_dir, tmp_path / "model")
    only_long = ray.data.from_items([{"text": t} for t, n in zip(texts, lengths) if n > 24])
    figures = backends.fit_ray_train_texts(settings, only_long, placement(task), 24, drop_long=True)
    assert figures == {"train_examples": 0.0}
    assert not (tmp_path / "model").exists(), "no trainer ran"


@pytest.mark.ray
def test_both_fit_paths_hand_the_workers_their_rows_in_a_seeded_random_order(tmp_path, local_ray):
    """The rows path (examples in memory) and the on-disk path (a pool read) put a fit's
    rows in random order before Ray Data cuts the workers' blocks: rows that arrive
    real-first are mixed in every block, the same for a seed whatever the input's
    blocks were, different for another seed, also inside a Tune trial's placement group.
    (The Ray Train test above checks what the workers then consume.)"""
    import pyarrow as pa
    import ray.data

    from collapse_ray.tasks import PretrainingTask
    from collapse_ray.text import backends
    from collapse_ray.text.models import load_tokenizer
    from collapse_ray.text.steps import encode

    task = PretrainingTask(max_length=32, vocab_size=300, n_test=2).with_workdir(tmp_path / "task")
    real = task.real_data(100, [chain_generators(0)[0]])
    texts = list(real.train["text"][0]) + [t[::-1] for t in real.train["text"][0]]  # real rows first
    tokenizer_dir = real.context.tokenizer_dir
    examples = encode(load_tokenizer(tokenizer_dir), texts, 32, False)
    real_rows = {tuple(x) for x in examples[:100]}

    def blocks(dataset) -> list[list[tuple]]:
        return [[tuple(x) for x in ray.get(ref)["input_ids"].to_pylist()] for ref in dataset.get_internal_block_refs()]

    def rows_from_the_pool(n_blocks: int):
        rows = [{"text": t, "iteration": int(i >= 100), "source": "synthetic" if i >= 100 else "real", "row": i % 100}
                for i, t in enumerate(texts)]
        return ray.data.from_items(rows, override_num_blocks=n_blocks)

    def balanced(blocks_: list[list[tuple]]) -> bool:
        assert len(blocks_) == 4 and sorted(r for b in blocks_ for r in b) == sorted(tuple(x) for x in examples)
        # 50 rows of 200 in a block, half real: sd <= 0.071
        return all(abs(np.mean([r in real_rows for r in block]) - 0.5) < 4 * 0.071 for block in blocks_)

    assert balanced(blocks(backends.examples_dataset(examples, 3, num_workers=2))), "rows path"
    assert not np.array_equal(backends.fit_order(200, 3), backends.fit_order(200, 4))
    on_disk = blocks(backends.tokenized_dataset(rows_from_the_pool(1), tokenizer_dir, 32, False, 2, shuffle_seed=3))
    assert balanced(on_disk), "on-disk path"
    assert blocks(backends.tokenized_dataset(rows_from_the_pool(5), tokenizer_dir, 32, False, 2,
                                             shuffle_seed=3)) == on_disk, "one order per seed, whatever the blocks"
    # inside a Tune trial of 0.01 CPU (the language-model specs' trials), whose placement
    # group captures what it starts: Ray Data's own sort failed there (its map tasks fell
    # into the group and could never run)
    from ray import tune

    def trial(config):
        got = blocks(backends.tokenized_dataset(rows_from_the_pool(2), tokenizer_dir, 32, False, 2, shuffle_seed=3))
        tune.report({"same": float(got == on_disk)})

    tuner = tune.Tuner(tune.with_resources(trial, {"cpu": 0.01}),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0))
    result = tuner.fit().get_best_result(metric="same", mode="max")
    assert result.error is None and result.metrics["same"] == 1.0, result.error
    table = pa.Table.from_pylist(rows_from_the_pool(1).take_all())
    assert not np.array_equal(np.argsort(backends.shuffle_keys(table, 3)), np.argsort(backends.shuffle_keys(table, 4)))


# -- the chain loop with the pool on disk (loop.PoolOnDiskTask) ----------------------------
def _disk_toy_pool(root, workflow, n_iterations=3):
    """The same pool as _toy_pool, each block written to its shard as it is added."""
    from collapse_ray.core.disk_pool import DiskPool

    pool = DiskPool(root, CHAINS, keep_history=workflow.needs_history)
    pool.add(_rows(0, "real", 6), 0, "real")
    for t in range(1, n_iterations + 1):
        pool.add(_rows(t, "synthetic", 5), t, "synthetic")
        if workflow.n_fresh_real:
            pool.add(_rows(t, "real", workflow.n_fresh_real), t, "real")
    return pool


@pytest.mark.parametrize("name,knobs", WORKFLOWS, ids=[w[0] for w in WORKFLOWS])
def test_a_disk_pool_selects_and_reads_what_the_array_pool_takes(tmp_path, name, knobs):
    """Index, manifest and rows (in the selection's own order) as the in-memory pool's;
    a reload from the manifest gives the same index. No Ray: the in-process read."""
    from collapse_ray.core.disk_pool import DiskPool

    workflow = make_workflow(name, **knobs)
    memory = _toy_pool(tmp_path / "memory", workflow)
    disk = _disk_toy_pool(tmp_path / "disk", workflow)
    np.testing.assert_array_equal(disk.index.iteration, memory.index.iteration)
    np.testing.assert_array_equal(disk.index.source, memory.index.source)
    assert [e["rows"] for e in disk.manifest()] == [e["rows"] for e in memory.manifest()]
    rngs = [chain_generators(s)[1] for s in CHAINS]
    selection = workflow.select(disk.index, 4, rngs)
    taken = memory.take(selection)["text"]
    for position in range(len(CHAINS)):
        assert disk.selection(selection, position).read(["text"])["text"] == list(taken[position])
        # the loop's path: the selection made block by block, the same draws from the generators
        handle = disk.select(workflow, 4, [chain_generators(s)[1] for s in CHAINS], position)
        assert handle.read(["text"])["text"] == list(taken[position])
        assert len(handle) == len(taken[position])
        wanted = selected_rows(memory.index, selection, position)
        assert {b: list(r) for b, r in handle.rows_by_shard().items()} == {b: list(r) for b, r in wanted.items()}
        assert handle.digest() == disk.selection(selection, position).digest()
        assert [e["path"] for e in handle.shards] == sorted(f"iteration={it}/source={s}/part-0.parquet"
                                                            for it, s in wanted)
    again = DiskPool.load(tmp_path / "disk", CHAINS, workflow.needs_history, disk.manifest())
    np.testing.assert_array_equal(again.index.iteration, disk.index.iteration)
    np.testing.assert_array_equal(again.blocks.rows, disk.blocks.rows)
    assert disk.nbytes() == 24 * len(disk.blocks.rows), "the process holds its blocks, nothing per row"


def test_a_selection_of_a_disk_pool_is_the_same_size_whatever_the_pool_holds():
    """The trial's part of a fit: DiskPool.select holds and hands out nothing per pool
    row (blocks, and a subsample's drawn rows), at 10 thousand rows as at 10 million."""
    import pickle
    import tracemalloc

    from collapse_ray.core.disk_pool import DiskPool

    def grown_pool(rows):
        pool = DiskPool("/nonexistent", [0])
        for t in range(4):
            source = "real" if t == 0 else "synthetic"
            pool._append(t, source, rows // 4, {"path": f"iteration={t}/source={source}/part-0.parquet",
                                                "rows": rows // 4, "sha256": "0" * 64})
        return pool

    for name, knobs in [("accumulate", {}), ("accumulate_subsample", {"n_train": 1000}),
                        ("real_fraction", {"n_train": 1000, "real_fraction": 0.25}),
                        ("replace", {})]:  # (iterative_retraining draws a share of |real|: it grows with it)
        workflow = make_workflow(name, **knobs)
        sizes, peaks = [], []
        for rows in (10_000, 10_000_000):
            pool = grown_pool(rows)
            tracemalloc.start()
            handle = pool.select(workflow, 4, [np.random.default_rng(0)])
            digest = handle.digest()
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            sizes.append(len(pickle.dumps(handle)))
            assert len(digest) == 64
        assert peaks[1] < 200_000 and sizes[1] < 40_000, (name, peaks, sizes)
        assert abs(sizes[1] - sizes[0]) < 1000, (name, sizes)


@dataclass(frozen=True)
class _TextToy:
    """A text task with the pool-on-disk hooks, all in this process (no Ray): rows are
    strings, the "model" a hash of the training texts in the order given (any other
    row, or another order, shows in test_loss), samples drawn from the chain's rng."""

    name: ClassVar[str] = "text_toy"
    batched: ClassVar[bool] = False

    def real_data(self, n_real, rngs):
        from collapse_ray.core.types import RealData

        return RealData(train=_one_chain([f"real 0 {j}" for j in range(n_real)]), test=None, context=None)

    def fit(self, train, context=None):
        return _hash_of(list(train["text"][0]))

    def sample(self, model, n, rngs, context=None):
        return _one_chain([f"synthetic of {int(model) % 9973}: {d}" for d in rngs[0].integers(10**6, size=n)])

    def sample_real(self, n, rngs, context=None):
        return _one_chain([f"fresh real {d}" for d in rngs[0].integers(10**6, size=n)])

    def evaluate(self, model, test):
        return {"test_loss": np.array([model])}

    def row_nbytes(self) -> int:
        return 40

    def real_data_on_disk(self, n_real, rngs, target):
        from collapse_ray.core.shards import ShardWriter
        from collapse_ray.core.types import RealData

        if target is not None:
            with ShardWriter(target, ("text",)) as shard:
                shard.write({"text": list(self.real_data(n_real, rngs).train["text"][0])})
        return RealData(train={}, test=None, context=None)

    def fit_on_disk(self, selection, context=None):
        return _hash_of(selection.read(["text"])["text"])

    def sample_on_disk(self, model, n, rngs, context, target):
        from collapse_ray.core.shards import ShardWriter

        with ShardWriter(target, ("text",)) as shard:
            shard.write({"text": list(self.sample(model, n, rngs)["text"][0])})


def _one_chain(texts):
    column = np.empty((1, len(texts)), dtype=object)
    column[0, :] = texts
    return {"text": column}


def _hash_of(texts) -> float:
    import hashlib

    return float(int(hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12], 16))


@pytest.mark.parametrize("name,knobs", WORKFLOWS, ids=[w[0] for w in WORKFLOWS])
def test_the_loop_on_disk_never_builds_the_per_row_index(tmp_path, monkeypatch, name, knobs):
    """Every workflow through the real loop with the pool on disk, the per-row index and
    per-row handles forbidden: the same table, bit for bit, as the rows path (an
    ArrayPool and MixingPolicy.select), and the same shards."""
    from benchmarks.lm_pool_memory import RowsPath
    from collapse_ray.core import disk_pool
    from collapse_ray.core import pool as pool_module
    from collapse_ray.core.loop import run_chain
    from collapse_ray.core.chain import ChainConfig

    chain = ChainConfig(workflow=name, n_real=6, n_synthetic=5, n_iterations=5, **knobs)
    rows_path = run_chain(RowsPath(_TextToy()), chain, [7], checkpoint_dir=tmp_path / "rows").table

    def forbidden(*args, **kwargs):
        pytest.fail("the pool-on-disk loop built a per-row index or selection")

    monkeypatch.setattr(disk_pool.DiskPool, "index", property(forbidden))
    monkeypatch.setattr(disk_pool.DiskPool, "selection", forbidden)
    monkeypatch.setattr(pool_module, "selected_rows", forbidden)
    on_disk = run_chain(_TextToy(), chain, [7], checkpoint_dir=tmp_path / "disk").table
    assert len(set(on_disk["test_loss"])) > 1
    import pandas as pd

    pd.testing.assert_frame_equal(on_disk, rows_path, check_exact=True)
    # (the rows path writes only the shards a resume needs: a subset)
    written, kept = _shard_texts(tmp_path / "disk" / "pool"), _shard_texts(tmp_path / "rows" / "pool")
    assert kept and {path: written.get(path) for path in kept} == kept


LOCAL_LM = {"backend": "local", "sampler": "local", "max_length": 48, "n_test": 12, "vocab_size": 300,
            "micro_batch_size": 8}


def _lm_chain(folder, task, stop_after=None):
    from collapse_ray.core.loop import run_chain
    from collapse_ray.core.chain import ChainConfig

    def stop(t, total):
        if t == stop_after:
            raise KeyboardInterrupt

    chain = ChainConfig(workflow="accumulate_subsample", n_real=48, n_synthetic=24, n_train=40, n_iterations=3,
                        checkpoint_every=1)
    return run_chain(task, chain, [11], checkpoint_dir=folder, progress=stop)


def _results(table):
    """The table without its clock readings (tokens_per_s, fit_seconds)."""
    return table.drop(columns=["tokens_per_s", "fit_seconds"])


def _shard_texts(root):
    import pyarrow.parquet as pq

    return {p.relative_to(root).as_posix(): pq.read_table(p).column("text").to_pylist()
            for p in sorted(root.glob("iteration=*/source=*/*.parquet"))}


@pytest.mark.slow  # 6 in-process fits of the tiny preset: ~40 s on 2 cores
def test_a_language_model_chain_on_disk_equals_its_rows_path_and_resumes_exactly(tmp_path):
    """PretrainingTask in-process (no Ray), accumulate_subsample: a pool-on-disk chain
    interrupted after iteration 2 resumes from the shards its manifest lists, and then
    holds the same shards and gives the same table, bit for bit, as the same task down
    the rows path uninterrupted; an altered shard is refused."""
    import pandas as pd

    from benchmarks.lm_pool_memory import RowsPath
    from collapse_ray.core.loop import CHECKPOINT_FILE, check_checkpoint
    from collapse_ray.tasks import PretrainingTask

    task = PretrainingTask(**LOCAL_LM)
    rows_path = _lm_chain(tmp_path / "rows", RowsPath(task)).table
    with pytest.raises(KeyboardInterrupt):
        _lm_chain(tmp_path / "disk", task, stop_after=2)
    manifest = json.loads((tmp_path / "disk" / CHECKPOINT_FILE).read_text())["pool"]
    assert [e["path"] for e in manifest] == ["iteration=0/source=real/part-0.parquet",
                                             "iteration=1/source=synthetic/part-0.parquet",
                                             "iteration=2/source=synthetic/part-0.parquet"]
    assert len(list((tmp_path / "disk" / "task").glob("models/*/fit.json"))) == 2, "2 fits before the interrupt"
    resumed = _lm_chain(tmp_path / "disk", task)
    assert resumed.resumed_from == 2
    pd.testing.assert_frame_equal(_results(resumed.table), _results(rows_path), check_exact=True)
    assert _shard_texts(tmp_path / "disk" / "pool") == _shard_texts(tmp_path / "rows" / "pool")

    shard = tmp_path / "disk" / "pool" / manifest[1]["path"]
    data = shard.read_bytes()
    shard.write_bytes(data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    with pytest.raises(ValueError, match="iteration=1/source=synthetic"):
        check_checkpoint(tmp_path / "disk", [11])


@pytest.mark.ray
def test_the_trial_holds_the_pools_blocks_not_its_rows(tmp_path, local_ray):
    """Through the real loop in a Ray task (a trial): a 2-iteration accumulate chain whose
    second fit sees 200k rows (~33 MB of text). On the rows path the trial's peak RSS
    grows by more than the text (~100 MB); with the pool on disk (Ray tasks write and
    stream the shards) by under a quarter of that, and the table is the same."""
    import ray

    from benchmarks.lm_pool_memory import run_trial

    rows = 200_000
    trial = ray.remote(num_cpus=0.01, max_calls=1)(run_trial)
    memory = ray.get(trial.remote(rows, False, str(tmp_path / "memory")))
    disk = ray.get(trial.remote(rows, True, str(tmp_path / "disk")))
    assert disk["test_loss"] == memory["test_loss"]
    text_mb = sum(sum(len(t) for t in texts) for texts in _shard_texts(tmp_path / "disk" / "pool").values()) / 2**20
    assert text_mb > 30
    grown_memory, grown_disk = memory["peak_mb"] - memory["before_mb"], disk["peak_mb"] - disk["before_mb"]
    assert grown_memory > text_mb, (grown_memory, text_mb)
    # (on disk what grows is Ray's client state in the trial, ~20 MB at any size; the
    # benchmark shows it flat from 10k to 1M rows)
    assert grown_disk < grown_memory / 4, (grown_disk, grown_memory, text_mb)
