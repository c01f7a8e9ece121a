"""A new SQLite store starts from a migrated empty template (tracking.store.start_from_migrated_store)."""

from __future__ import annotations

import sqlite3
from contextlib import closing

from collapse_ray.tracking.store import check_reachable, client_for, ensure_experiment


def test_a_new_store_is_a_copy_of_the_template_and_works_as_one_mlflow_made(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    check_reachable(uri)
    (template,) = (tmp_path / "cache" / "collapse_ray").glob("mlflow-*-empty.db")
    assert (tmp_path / "out" / "mlflow.db").read_bytes() == template.read_bytes()
    client = client_for(uri)
    experiment = ensure_experiment(client, "x", tmp_path / "out" / "mlartifacts")
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "test_loss", 1.5, step=1)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "test_loss")] == [1.5]
    assert {e.name for e in client.search_experiments()} == {"x", "Default"}
    assert list(tmp_path.joinpath("out").glob(".*tmp")) == []  # no temporaries left
    # an existing store is never replaced
    check_reachable(uri)
    assert client.get_run(run.info.run_id).data.metrics == {"test_loss": 1.5}


def test_a_template_with_runs_in_it_is_not_copied(tmp_path, monkeypatch):
    """Somebody's filled (or swapped) cache file must not seed a new store with its runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    check_reachable(f"sqlite:///{tmp_path / 'first' / 'mlflow.db'}")
    (template,) = (tmp_path / "cache" / "collapse_ray").glob("mlflow-*-empty.db")
    forged = client_for(f"sqlite:///{template}")
    forged.create_run(ensure_experiment(forged, "planted", tmp_path / "planted"))

    uri = f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}"
    check_reachable(uri)
    client = client_for(uri)
    assert "planted" not in {e.name for e in client.search_experiments()}
    with closing(sqlite3.connect(template)) as db:  # rebuilt empty
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
