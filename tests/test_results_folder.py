"""--out holds everything of a sweep with the default SQLite store: the MLflow
artifacts (chains.parquet, spec.yaml, pictures) sit beside mlflow.db, nothing is
written to the working directory, and a moved results folder still gives its table."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import yaml

from collapse_ray import cli

pytestmark = pytest.mark.ray
SPEC = {"name": "selfcontained", "task": {"name": "gaussian", "dim": 2}, "chain": {"n_real": 30, "n_iterations": 3},
        "seeds": 2, "grid": {"chain.workflow": ["replace", "accumulate"]}}


def test_the_results_folder_is_self_contained_and_movable(tmp_path, monkeypatch, local_ray, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the driver's working directory must stay empty
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "results"
    assert cli.main(["run", str(spec), "--out", str(out)]) == 0
    assert list(elsewhere.iterdir()) == [], "nothing written to the working directory (no ./mlruns)"
    artifacts = {p.name for p in (out / "mlartifacts").rglob("*") if p.is_file()}
    assert {"chains.parquet", "spec.yaml"} <= artifacts, artifacts

    moved = tmp_path / "moved" / "results"
    moved.parent.mkdir()
    shutil.move(str(out), str(moved))
    capsys.readouterr()
    table_file = tmp_path / "table.csv"
    assert cli.main(["results", "selfcontained", "--results-dir", str(moved), "--out", str(table_file)]) == 0, \
        capsys.readouterr().err
    table = pd.read_csv(table_file)
    assert len(table) == 2 * 2 * 3 and set(table.workflow) == {"replace", "accumulate"}
