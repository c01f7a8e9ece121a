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
    from collapse_ray.spec import load_spec

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


class BackgroundRehearsal:
    """`cluster/rehearse.sh --keep` (tests/test_rehearsal.py) started as soon as the session
    starts and left to run beside the other tests: its three jobs on their own 3-node
    cluster are ~11 minutes of a 2-core machine that the rest of the suite leaves ~40%
    idle. It builds its own hub stand-ins. It is no descendant of this process (a
    subshell that outlives its parent), so tests that count the CPU of this process's
    children (tests/test_breakdown.py) do not see it. Its output and exit code go to
    files (a pipe nobody reads for minutes would fill and stop it); `wait` reads them,
    `stop` ends the script if it still runs, then the cluster it started."""

    ROOT = Path(__file__).resolve().parents[1]

    def __init__(self):
        import secrets
        import tempfile

        self.shared = Path(tempfile.mkdtemp(prefix="crr-rehearsal-", dir="/tmp"))
        self.ray_temp = tempfile.mkdtemp(prefix="crh", dir="/tmp")  # Ray's socket paths must stay short
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
                   COLLAPSE_RAY_SHARED=str(self.shared), RAY_TEMP_DIR=self.ray_temp,
                   RAY_AUTH_TOKEN=secrets.token_hex(16))  # this cluster's own token; ~/.ray is left alone
        self.env = env
        self.out, self.err, self.code = (self.shared / f"rehearse.{x}" for x in ("out", "err", "code"))
        self.started = time.perf_counter()
        self.seconds: float | None = None
        # bash starts the script in a background subshell and exits, so the subshell leaves
        # this process's tree; it stays in bash's new process group (no job control) and
        # writes the script's exit code when it ends
        launcher = '("$0" --keep >"$1" 2>"$2"; echo $? >"$3.tmp"; mv "$3.tmp" "$3") &'
        bash = subprocess.Popen(["bash", "-c", launcher, str(self.ROOT / "cluster" / "rehearse.sh"), str(self.out),
                                 str(self.err), str(self.code)], env=env, cwd=self.ROOT, start_new_session=True)
        bash.wait()
        self.group = bash.pid

    def wait(self, timeout_s: float) -> subprocess.CompletedProcess:
        """The script's exit code and output, once it has ended (timeout_s from its start;
        a script still running then is killed, exit code -9)."""
        while not self.code.exists() and time.perf_counter() - self.started < timeout_s:
            time.sleep(2)
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.started
        if not self.code.exists():
            self._kill_script()
        code = int(self.code.read_text()) if self.code.exists() else -9
        return subprocess.CompletedProcess(["cluster/rehearse.sh", "--keep"], code, self.out.read_text(),
                                           self.err.read_text())

    def _kill_script(self) -> None:
        try:
            os.killpg(self.group, signal.SIGKILL)
        except ProcessLookupError:  # the script and its subshell have ended
            pass

    def stop(self) -> None:
        import shutil

        if not self.code.exists():
            self._kill_script()
        if self.shared.exists():  # the cluster outlives the script (its nodes run in their own sessions)
            subprocess.run([str(self.ROOT / "cluster" / "local_cluster.sh"), "stop"], env=self.env,
                           capture_output=True, timeout=300)
        shutil.rmtree(self.ray_temp, ignore_errors=True)
        shutil.rmtree(self.shared, ignore_errors=True)
