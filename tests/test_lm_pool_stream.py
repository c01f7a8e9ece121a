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
