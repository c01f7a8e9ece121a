"""The Fig. 1 script: aggregation arithmetic, and PNGs drawn from a real results table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from collapse_ray.loop import run_chain
from collapse_ray.spec import parse_spec
from collapse_ray.tracking import job_params

SCRIPT = Path(__file__).parent.parent / "analysis" / "fig1_gaussian.py"
spec_ = importlib.util.spec_from_file_location("fig1_gaussian", SCRIPT)
fig1 = importlib.util.module_from_spec(spec_)
spec_.loader.exec_module(fig1)


def results_table(seeds=5, iterations=8):
    """A table of the same shape `collapse-ray results` writes, without Ray or MLflow."""
    spec = parse_spec({
        "task": {"name": "gaussian", "dim": 2, "n_test": 50},
        "chain": {"n_iterations": iterations},
        "seeds": seeds,
        "grid": {"chain.workflow": ["replace", "accumulate", "accumulate_subsample"], "chain.n_real": [10, 40]},
    })
    frames = []
    for job in spec.jobs():
        table = run_chain(job.point.task, job.point.chain, job.seeds).table
        frames.append(table.assign(**job_params(job), run_id=job.key, sweep_run_id="s"))
    return pd.concat(frames, ignore_index=True)


def test_summarise_is_mean_and_standard_error_over_finite_seeds():
    table = results_table()
    table.loc[0, "test_loss"] = np.inf  # a collapsed chain
    summary = fig1.summarise(table)
    row = summary[(summary.metric == "cov_trace_ratio") & (summary.workflow == "replace")
                  & (summary.n_real == 10) & (summary.iteration == 3)].iloc[0]
    values = table[(table.workflow == "replace") & (table.n_real == 10) & (table.iteration == 3)].cov_trace_ratio
    assert row["mean"] == pytest.approx(values.mean())
    assert row["se"] == pytest.approx(values.std() / np.sqrt(len(values)))
    first = table.iloc[0]
    nll = summary[(summary.metric == "test_loss") & (summary.workflow == first.workflow)
                  & (summary.n_real == first.n_real) & (summary.iteration == first.iteration)].iloc[0]
    assert nll["count"] == 4 and nll["total"] == 5


def test_script_draws_pngs_from_a_results_table(tmp_path, capsys):
    path = tmp_path / "table.csv"
    results_table().to_csv(path, index=False)
    assert fig1.main([str(path), "--out", str(tmp_path / "figs")]) in (0, None)
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert {p.name for p in pngs} == {"fig1_gaussian_d2.png", "fig1_gaussian_overview.png"}
    assert all(p.stat().st_size > 20_000 and p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_script_refuses_a_table_with_two_sweeps_of_the_same_chains(tmp_path):
    table = results_table(seeds=2, iterations=2)
    path = tmp_path / "twice.parquet"
    pd.concat([table, table.assign(sweep_run_id="t")]).to_parquet(path)
    with pytest.raises(ValueError, match="several sweeps"):
        fig1.load_table(path)
