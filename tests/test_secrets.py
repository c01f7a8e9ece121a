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

from collapse_ray.tracking import client_for
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
