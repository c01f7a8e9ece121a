"""Test helpers shared by several test modules."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest


@pytest.fixture
def one_torch_thread():
    """Small networks gain nothing from intra-op threads, and on a shared 2-core machine
    two OpenMP threads contending with other processes run ~10x slower than one. Use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")` after importing it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_ports(n: int) -> list[int]:
    """n loopback ports nobody listens on right now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run_spec_end_to_end(spec_path: Path, tmp_path: Path, *overrides: str):
    """A spec through `collapse-ray run` (Ray Tune, MLflow) and `collapse-ray results`;
    returns (the results table as a DataFrame, the results folder). Needs a Ray cluster
    (the `local_ray` fixture)."""
    import pandas as pd

    from collapse_ray import cli
    from collapse_ray.sweep.spec import load_spec

    name = load_spec(spec_path).name
    out = tmp_path / "results"
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert cli.main(["run", str(spec_path), "--out", str(out), *sets]) == 0
    table_path = tmp_path / f"{name}.csv"
    assert cli.main(["results", name, "--out", str(table_path), "--results-dir", str(out)]) == 0
    return pd.read_csv(table_path), out


@dataclass(frozen=True)
class WithoutStatistics:
    """A task without its statistics methods: the loop must sample rows and refit the
    selected training set every iteration, as (A)'s code does."""

    batched: ClassVar[bool] = True
    inner: object

    @property
    def name(self):
        return self.inner.name

    def real_data(self, n_real, rngs):
        return self.inner.real_data(n_real, rngs)

    def fit(self, train, context=None):
        return self.inner.fit(train, context)

    def sample(self, model, n, rngs, context=None):
        return self.inner.sample(model, n, rngs, context)

    def sample_real(self, n, rngs, context=None):
        return self.inner.sample_real(n, rngs, context)

    def evaluate(self, model, test):
        return self.inner.evaluate(model, test)

    def row_nbytes(self):
        return self.inner.row_nbytes()


def mlflow_server_env() -> dict[str, str]:
    """The environment for an `mlflow server` a test starts: without MLflow's job runner
    (GenAI evaluation jobs, which collapse_ray never submits), whose seven huey worker
    processes otherwise take ~1.6 GB and seconds of both cores at every start."""
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class TrackingServer:
    """A real `mlflow server` on loopback that a test can stop and start again."""

    def __init__(self, folder: Path, migrated_store: Path | None = None):
        self.port = free_ports(1)[0]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.folder = folder
        self.migrated_store = migrated_store  # an empty migrated store to start from (conftest)
        self.proc = None

    def start(self):
        store = self.folder / "mlflow.db"
        if self.migrated_store is not None and not store.exists():
            import shutil

            self.folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.migrated_store, store)  # the server's first start skips the migrations
        self.proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            env=mlflow_server_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import urllib.request

        def healthy():
            try:
                return urllib.request.urlopen(self.uri + "/health", timeout=2).read() == b"OK"
            except OSError:
                return False

        deadline = time.time() + 120
        while not healthy():
            assert time.time() < deadline, "the tracking server did not start"
            time.sleep(0.2)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def tiny_fit_settings(tokenizer_dir: str, output_dir: Path, **changes):
    """The FitSettings of a one-epoch fit of the `tiny` preset (plain torch, fp32, constant
    learning rate), with `changes` applied: the tests' small real fits."""
    from collapse_ray.text.training import FitSettings

    base = dict(model_name="tiny", tokenizer_dir=tokenizer_dir, output_dir=str(output_dir), seed=0, epochs=1,
                micro_batch_size=1, grad_accum_steps=1, learning_rate=1e-3, warmup_ratio=0.0, warmup_steps=None,
                betas=(0.9, 0.999), schedule="constant", weight_decay=0.0, max_grad_norm=1.0, engine="torch",
                zero_stage=0, precision="fp32")
    return FitSettings(**{**base, **changes})
