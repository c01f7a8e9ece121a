"""Credentials in the environment never reach MLflow, the sweep folder or the output.

A sweep runs against a real `mlflow server` with hub tokens, cloud and MLflow
credentials in its environment and a password in its tracking URI; then every param,
tag and metric name of every run, every artifact, every file under --out and the
server's database file itself are searched for the secret values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from collapse_ray.tracking.store import client_for
from tests.helpers import TrackingServer

pytestmark = pytest.mark.ray
SECRETS = {
    "HF_TOKEN": "hf_SeCrEt0000token1111",
    "HUGGING_FACE_HUB_TOKEN": "hf_SeCrEt2222token3333",
    "AWS_SECRET_ACCESS_KEY": "aws-SeCrEt-4444",
    "MLFLOW_TRACKING_PASSWORD": "mlflow-SeCrEt-5555",
    "PGPASSWORD": "pg-SeCrEt-6666",
}
URI_PASSWORD = "uri-SeCrEt-7777"


def test_no_secret_is_logged_stored_or_printed(tmp_path):
    server = TrackingServer(tmp_path / "tracking")
    server.start()
    try:
        uri = server.uri.replace("http://", f"http://alice:{URI_PASSWORD}@")
        out = tmp_path / "results"
        env = {**os.environ, **SECRETS}
        env.pop("MLFLOW_TRACKING_URI", None)
        done = subprocess.run(
            [sys.executable, "-m", "collapse_ray.cli", "run", str(Path(__file__).parent.parent / "sweeps" / "quickstart.yaml"),
             "--out", str(out), "--tracking-uri", uri, "--set", "chain.n_iterations=3", "--set", "seeds=4"],
            env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        printed = done.stdout + done.stderr
        assert server.uri in printed  # the store is named, without its credentials

        client = client_for(server.uri)
        experiment = client.get_experiment_by_name("quickstart")
        logged = []
        for run in client.search_runs([experiment.experiment_id]):
            logged += [f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items()]
            logged += list(run.data.metrics)
            folder = tmp_path / "artifacts" / run.info.run_id
            client.download_artifacts(run.info.run_id, "", str(folder.mkdir(parents=True) or folder))
            logged += [p.read_bytes().decode("latin-1") for p in folder.rglob("*") if p.is_file()]
        assert len(logged) > 50  # params, tags, metrics and artifacts of 7 runs were read
        stored = [p.read_bytes().decode("latin-1") for root in (out, server.folder) for p in root.rglob("*") if p.is_file()]
        sweep_json = next(out.glob("quickstart/*/sweep.json"))
        assert json.loads(sweep_json.read_text())["tracking_uri"] == server.uri
    finally:
        server.stop()

    for secret in [*SECRETS.values(), URI_PASSWORD]:
        assert not any(secret in text for text in logged), f"{secret} reached MLflow"
        assert not any(secret in text for text in stored), f"{secret} reached a file under --out or the store"
        assert secret not in printed, f"{secret} was printed"
    print(f"\nsecrets planted: {len(SECRETS) + 1}; MLflow entries and artifacts searched: {len(logged)}; "
          f"files searched: {len(stored)}; secrets found: 0")


QUERY_PASSWORD = "query-SeCrEt-8888"


@pytest.mark.slow
def test_a_password_in_the_query_reaches_no_file_under_out_or_rays_session(tmp_path):
    """A credential as a query parameter (`?password=`, as libpq and SQLAlchemy take it)
    is redacted like userinfo: every file under --out and under the embedded Ray's
    session folder, and the output, are searched for it."""
    import shutil
    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))  # short: Ray's socket paths have a length limit
    try:
        out = tmp_path / "results"
        uri = f"sqlite:///{out / 'mlflow.db'}?password={QUERY_PASSWORD}"
        env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
        done = subprocess.run(
            [sys.executable, "-m", "collapse_ray.cli", "run", str(Path(__file__).parent.parent / "sweeps" / "quickstart.yaml"),
             "--out", str(out), "--tracking-uri", uri, "--set", "chain.n_iterations=2", "--set", "seeds=2"],
            env={**env, "RAY_TMPDIR": str(ray_tmp)}, capture_output=True, text=True, timeout=600)
        printed = done.stdout + done.stderr
        assert done.returncode == 0, printed[-3000:]
        assert "password=***" in printed  # the store is named, its password redacted
        sessions = list(ray_tmp.glob("ray/session_*"))
        assert sessions, f"the embedded Ray kept its session under {ray_tmp}"
        files = [p for root in (out, *sessions) for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        assert any(p.name == "params.json" for p in files) and any(p.name == "sweep.json" for p in files)
        holding = [str(p) for p in files if QUERY_PASSWORD.encode() in p.read_bytes()]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not holding, f"the password is in {holding}"
    assert QUERY_PASSWORD not in printed
    print(f"\nfiles searched under --out and Ray's session folder: {len(files)}; holding the password: 0")
