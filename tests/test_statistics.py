"""Issue 26, 6: one rule for a mean over seeds and its standard error, used by the MLflow
charts (a chain run's logged metrics) and the figures (analysis.tables) alike."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from analysis import tables
from collapse_ray.core import aggregate as statistics
from collapse_ray.tracking.sink import MlflowChainSink
from collapse_ray.tracking.store import client_for


def test_the_mlflow_charts_and_the_figures_take_the_same_mean_and_se_of_finite_values(tmp_path, migrated_store):
    per_seed = {"test_loss": np.array([1.0, np.inf, 3.0, 4.0]), "cov_trace_ratio": np.array([0.5, 0.7, np.nan, 0.9])}
    shutil.copyfile(migrated_store, tmp_path / "mlflow.db")
    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("rule"))
    MlflowChainSink(client, run.info.run_id, created=True).log_iterations([0, 1, 2, 3], [(1, per_seed)])
    logged = client.get_run(run.info.run_id).data.metrics

    rows = pd.DataFrame({"iteration": 1, **per_seed})
    drawn = tables.summarise_long(rows, ["iteration"], list(per_seed)).set_index("metric")
    for metric, values in per_seed.items():
        finite = values[np.isfinite(values)]
        assert logged[metric] == pytest.approx(finite.mean(), rel=1e-12) == drawn.loc[metric, "mean"]
        se = finite.std(ddof=1) / np.sqrt(len(finite))
        assert logged[f"{metric}_se"] == pytest.approx(se, rel=1e-12) == drawn.loc[metric, "se"]
        assert (drawn.loc[metric, "count"], drawn.loc[metric, "total"]) == (3, 4)


def test_no_finite_value_gives_nan_and_one_gives_no_standard_error():
    grouped = statistics.mean_se([np.inf, np.nan, 2.0, 5.0, 7.0], groups=[0, 0, 1, 2, 2], n_groups=3)
    assert np.isnan(grouped.mean[0]) and grouped.count.tolist() == [0, 1, 2] and grouped.total.tolist() == [2, 1, 2]
    assert grouped.mean[1] == 2.0 and np.isnan(grouped.se[1])
    assert grouped.mean[2] == 6.0 and grouped.se[2] == pytest.approx(np.std([5.0, 7.0], ddof=1) / np.sqrt(2))
