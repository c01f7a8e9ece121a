"""A workflow's selection read from the pool's Parquet shards through Ray Data selects
exactly the rows the in-memory pool's `take` does, per chain, for every kind of
selection (all rows, a newest block, seeded subsamples, fresh real rows). Toy pool,
real Parquet, real local Ray."""

from __future__ import annotations

import numpy as np
import pytest

from collapse_ray.loop import chain_generators
from collapse_ray.pool import ArrayPool, selected_rows, selection_dataset
from collapse_ray.workflows import make_workflow

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
def test_ray_train_workers_stream_a_selection_from_the_pool_files(tmp_path, local_ray):
    """The trial hands the workers a read of the selected rows, not the rows: Ray Data
    tokenizes them and each worker streams its shard; the fit sees every selected row."""
    from collapse_ray.tasks import PretrainingTask
    from collapse_ray.text import backends
    from collapse_ray.text.models import load_tokenizer
    from collapse_ray.text.settings import encode
    from collapse_ray.text.training import FitSettings, token_loss

    task = PretrainingTask(max_length=48, vocab_size=300, n_test=12).with_workdir(tmp_path / "task")
    real = task.real_data(60, [chain_generators(0)[0]])
    pool = ArrayPool([5])
    pool.add(real.train, 0, "real")
    pool.add({"text": real.train["text"][:, ::-1].copy()}, 1, "synthetic")  # stand-in samples
    pool.write_shards(tmp_path / "pool")
    workflow = make_workflow("accumulate_subsample", n_train=41)
    selection = workflow.select(pool.index, 2, [np.random.default_rng(1)])
    texts = selection_dataset(tmp_path / "pool", pool.index, selection, 5, ["text"])

    settings = FitSettings(
        model_name="tiny", tokenizer_dir=real.context.tokenizer_dir, output_dir=str(tmp_path / "model"), seed=0,
        epochs=1, micro_batch_size=1, grad_accum_steps=1, learning_rate=1e-3, warmup_ratio=0.0, warmup_steps=None,
        betas=(0.9, 0.999), schedule="constant", weight_decay=0.0, max_grad_norm=1.0, engine="torch", zero_stage=0,
        precision="fp32")
    figures = backends.fit_ray_train_texts(settings, texts, task.placement(), 48, drop_long=False,
                                           held_out=real.context.held_out)
    assert figures["train_examples"] == 41, "every selected row was tokenized for the workers"
    assert figures["optimizer_steps"] == 41 // 2, "each worker took its 20 micro-batches of one"
    loaded, tokenizer, device = backends.load_for_inference(settings.output_dir, settings.tokenizer_dir)
    assert figures["test_loss"] == pytest.approx(token_loss(loaded, list(real.test), tokenizer.pad_token_id), rel=1e-5)
    tokenized = encode(load_tokenizer(settings.tokenizer_dir), list(pool.take(selection)["text"][0]), 48, False)
    assert len(tokenized) == 41
