"""Faults injected for real, and what must survive them: no iteration's metric lost or
logged twice, no partial file visible, and chains that finish as if nothing happened.

- a Ray worker running a chain is SIGKILLed: Tune retries the trial, which resumes from
  its last finished iteration;
- the driver is SIGKILLed mid-sweep: `collapse-ray run SPEC --resume` finishes it;
- a pool shard write is killed part-way: readers never see a partial shard;
- the MLflow tracking server goes away: briefly (the sweep rides it out), or for good
  (the sweep fails loudly and `--resume` finishes it once the server is back).

Each test prints its counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import yaml

from collapse_ray.core.chain_state import load_state
from collapse_ray.core.loop import CHECKPOINT_FILE, run_chain
from collapse_ray.core.shards import check_shards
from collapse_ray.core.chain import ChainConfig
from collapse_ray.sweep.trainable import RESUMED_TAG
from collapse_ray.tasks import GaussianTask
from collapse_ray.tracking.layout import JOB_KEY_TAG
from collapse_ray.tracking.results import results_table
from collapse_ray.tracking.store import client_for

pytestmark = pytest.mark.ray
ENV = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")},
       "PYTHONUNBUFFERED": "1"}

# A chain slow enough to be hit mid-way (0.1-0.3 s per iteration of 4 seeds on the shared
# 2 cores: it writes its pool's Parquet shards every iteration) and checkpointed after
# every iteration. Faults land at iteration 5-10, leaving 30+ iterations (seconds) to spare.
SLOW_TASK = {"name": "gaussian", "dim": 20, "n_test": 200}
SLOW_CHAIN = {"workflow": "replace", "n_real": 5000, "n_iterations": 40, "checkpoint_every": 1, "persist_pool": True}


def write_spec(tmp_path: Path, name: str, **fields) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **fields}))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "collapse_ray.cli", *args]


def start_driver(*args: str) -> subprocess.Popen:
    return subprocess.Popen(cli(*args), env=ENV, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(driver: subprocess.Popen, timeout: float = 600) -> str:
    out, _ = driver.communicate(timeout=timeout)
    return out


def checkpointed_iterations(out: Path, name: str) -> dict[str, int]:
    """Last finished iteration of every chain folder of the sweep (0 before the first)."""
    found = {}
    for path in out.glob(f"{name}/*/chains/*/{CHECKPOINT_FILE}"):
        try:
            found[path.parent.name] = load_state(path.parent).iteration
        except ValueError:  # being replaced right now (os.replace is atomic, but be safe)
            continue
    return found


def wait_until(condition, timeout: float, what: str, driver: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if driver is not None and driver.poll() is not None:
            raise AssertionError(f"driver exited ({driver.returncode}) before {what}:\n{driver.stdout.read()[-3000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def steps_per_run(uri: str, experiment: str, key: str = "test_loss") -> dict[str, list[int]]:
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`collapse_ray.job_key` != ''")
    # keyed by job key and run id: a trial whose run was opened twice shows as two entries
    return {f"{r.data.tags[JOB_KEY_TAG]} {r.info.run_id}": [m.step for m in client.get_metric_history(r.info.run_id, key)]
            for r in runs}


def lost_and_duplicated(steps: dict[str, list[int]], n_iterations: int) -> tuple[int, int]:
    lost = sum(len(set(range(1, n_iterations + 1)) - set(s)) for s in steps.values())
    duplicated = sum(len(s) - len(set(s)) for s in steps.values())
    return lost, duplicated


def reference_table(seeds: list[int], tmp_path: Path) -> pd.DataFrame:
    """The same chains, uninterrupted, in this process."""
    chain = ChainConfig(**SLOW_CHAIN).resolved()
    return run_chain(GaussianTask(**{k: v for k, v in SLOW_TASK.items() if k != "name"}), chain, seeds,
                     checkpoint_dir=tmp_path / "reference").table


@pytest.fixture(scope="module")
def slow_reference(tmp_path_factory) -> pd.DataFrame:
    """SLOW_CHAIN on seeds 0-3, uninterrupted: computed once for every test that compares to it."""
    return reference_table([0, 1, 2, 3], tmp_path_factory.mktemp("slow_reference"))


def assert_matches_reference(table: pd.DataFrame, reference: pd.DataFrame) -> None:
    """Bit-for-bit: a resumed chain redraws exactly what the uninterrupted one drew."""
    got = table.sort_values(["seed", "iteration"], ignore_index=True)
    want = reference.sort_values(["seed", "iteration"], ignore_index=True)
    np.testing.assert_array_equal(got[["seed", "iteration"]].to_numpy(), want[["seed", "iteration"]].to_numpy())
    np.testing.assert_array_equal(got.test_loss.to_numpy(), want.test_loss.to_numpy())


# -- a Ray worker killed mid-chain --------------------------------------------------------
def trial_workers(driver: subprocess.Popen) -> list:
    """The Ray worker processes (under this driver's embedded Ray) running a chain trial."""
    import psutil

    found = []
    for proc in psutil.Process(driver.pid).children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if title.startswith("ray::") and ("chain_trial" in title or "ImplicitFunc" in title):
            found.append(proc)
    return found


def test_a_killed_ray_worker_is_retried_and_resumes_from_its_last_finished_iteration(tmp_path, slow_reference):
    name = "worker_kill"
    spec = write_spec(tmp_path, name, task=SLOW_TASK, chain=SLOW_CHAIN, seeds=4, run={"max_failures": 2})
    out = tmp_path / "results"
    driver = start_driver("run", str(spec), "--out", str(out))
    try:
        killed_after = wait_until(lambda: max(checkpointed_iterations(out, name).values(), default=0) >= 5 and
                                  max(checkpointed_iterations(out, name).values()), 300, "iteration 5", driver)
        workers = wait_until(lambda: trial_workers(driver), 30, "the trial's worker process", driver)
        for proc in workers:
            proc.send_signal(signal.SIGKILL)
        printed = finish(driver)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, printed[-3000:]

    uri = f"sqlite:///{out / 'mlflow.db'}"
    steps = steps_per_run(uri, name)
    lost, duplicated = lost_and_duplicated(steps, SLOW_CHAIN["n_iterations"])
    assert len(steps) == 1 and lost == 0 and duplicated == 0, steps
    client = client_for(uri)
    exp = client.get_experiment_by_name(name)
    run = client.search_runs([exp.experiment_id], filter_string="tags.`collapse_ray.job_key` != ''")[0]
    resumed_from = int(run.data.tags[RESUMED_TAG])
    assert killed_after <= resumed_from < SLOW_CHAIN["n_iterations"], (killed_after, resumed_from)
    table = results_table(uri, name)
    assert_matches_reference(table, slow_reference)
    print(f"\nfaults injected: {len(workers)} worker SIGKILL after iteration {killed_after}; trial retried from "
          f"iteration {resumed_from}; chains completed: {table.seed.nunique()}; metrics lost: {lost}; "
          f"duplicated: {duplicated}; results equal to an uninterrupted run")


# -- the driver killed mid-sweep ------------------------------------------------------------
@pytest.mark.slow_lane("a 40-seed sweep killed and resumed, ~45 s; fast lane: an interrupted driver resumes exactly "
                       "(tests/test_interrupt.py, SIGINT), a killed Ray worker too (this file)")
def test_a_killed_driver_resumes_without_redoing_or_duplicating(tmp_path):
    name = "driver_kill"
    spec = write_spec(tmp_path, name, task={"name": "gaussian", "dim": 10, "n_test": 200},
                      chain={"n_real": 200, "n_iterations": 40, "checkpoint_every": 5}, seeds=40,
                      grid={"chain.workflow": ["replace", "accumulate", "accumulate_subsample"],
                            "chain.n_real": [100, 200, 400]},
                      run={"seeds_per_trial": 20})
    out = tmp_path / "results"
    driver = start_driver("run", str(spec), "--out", str(out))
    lines = []
    try:  # kill the whole driver (and its embedded Ray) once a few trials have finished
        deadline = time.time() + 240
        while time.time() < deadline:
            line = driver.stdout.readline()
            lines.append(line)
            if line.startswith("[4/") or (not line and driver.poll() is not None):
                break
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    time.sleep(2)
    sweep_dir = next((out / name).iterdir())
    assert json.loads((sweep_dir / "sweep.json").read_text())["status"] == "running", "".join(lines)
    finished_before = len(list(sweep_dir.glob(f"chains/*/{CHECKPOINT_FILE}")))

    resumed = subprocess.run(cli("run", str(spec), "--out", str(out), "--resume"), env=ENV,
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert json.loads((sweep_dir / "sweep.json").read_text())["status"] == "finished"

    uri = f"sqlite:///{out / 'mlflow.db'}"
    steps = steps_per_run(uri, name)
    lost, duplicated = lost_and_duplicated(steps, 40)
    assert len(steps) == 18, f"one run per trial, none opened twice: {sorted(steps)}"
    assert lost == 0 and duplicated == 0, steps
    table = results_table(uri, name)
    assert len(table) == 9 * 40 * 40 and not table.duplicated(["run_key", "seed", "iteration"]).any()
    print(f"\nfaults injected: 1 driver SIGKILL; trials checkpointed before it: {finished_before}/18; "
          f"chains completed: {table.groupby(['run_key', 'seed']).ngroups}; metrics lost: {lost}; duplicated: {duplicated}")


# -- a pool shard write killed part-way ----------------------------------------------------------
CHAIN_RUNNER = textwrap.dedent("""
    import os, signal, sys
    import pyarrow.parquet as pq
    import collapse_ray.core.pool as pool
    from collapse_ray.core.loop import run_chain
    from collapse_ray.core.chain import ChainConfig
    from collapse_ray.tasks import GaussianTask

    kill_at, folder = int(sys.argv[1]), sys.argv[2]
    calls = 0
    real_write = pq.write_table

    def write_then_die(table, where, **kw):
        global calls
        calls += 1
        if calls == kill_at:  # half the rows reach the (temporary) file, then the process dies
            with pq.ParquetWriter(where, table.schema) as writer:
                writer.write_table(table.slice(0, table.num_rows // 2))
                os.kill(os.getpid(), signal.SIGKILL)
        return real_write(table, where, **kw)

    pool.pq.write_table = write_then_die
    chain = ChainConfig(workflow="accumulate", n_real=4000, n_iterations=8, checkpoint_every=1,
                        persist_pool=True).resolved()
    run_chain(GaussianTask(dim=5), chain, [0, 1, 2], checkpoint_dir=folder).table.to_parquet(folder + "/table.parquet")
""")


def test_a_shard_write_killed_part_way_leaves_no_partial_shard_visible(tmp_path):
    folder = tmp_path / "chain"
    kills = [3, 3, 3]  # each run dies in its 3rd shard write, two iterations past where it resumed
    for kill_at in kills:
        done = subprocess.run([sys.executable, "-c", CHAIN_RUNNER, str(kill_at), str(folder)], env=ENV,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
        pool_dir = folder / "pool"
        partial = list(pool_dir.glob("iteration=*/source=*/.part-0.parquet.tmp-*"))
        assert partial, "the kill must land inside a shard write"
        for path in partial:  # the half-written file is really truncated, and hidden
            with pytest.raises(Exception):  # noqa: B017, PT011 - any reader error
                pq.read_table(path)
        check_shards(pool_dir, [0, 1, 2])  # every visible shard is whole and ours
        visible = pads.dataset(pool_dir, format="parquet", partitioning="hive")  # hidden files are skipped
        assert visible.count_rows() == sum(pq.read_metadata(p).num_rows for p in pool_dir.rglob("part-0.parquet"))
        state = load_state(folder)
        on_disk = sorted(int(p.name.split("=")[1]) for p in pool_dir.glob("iteration=*") if any(p.rglob("part-0.parquet")))
        assert state is None or set(range(state.iteration)) <= set(on_disk), (state.iteration, on_disk)

    finished = subprocess.run([sys.executable, "-c", CHAIN_RUNNER, "0", str(folder)], env=ENV,
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert not list((folder / "pool").rglob(".part-0.parquet.tmp-*")), "stale temporaries are cleaned on resume"
    resumed = pd.read_parquet(folder / "table.parquet")
    chain = ChainConfig(workflow="accumulate", n_real=4000, n_iterations=8, checkpoint_every=1, persist_pool=True)
    reference = run_chain(GaussianTask(dim=5), chain.resolved(), [0, 1, 2], checkpoint_dir=tmp_path / "ref").table
    pd.testing.assert_frame_equal(resumed, reference)
    print(f"\nfaults injected: {len(kills)} kills inside shard writes; partial shards visible: 0; "
          f"chains completed: 3 (identical to an uninterrupted run)")


# -- the tracking server away ---------------------------------------------------------------
@pytest.mark.slow_lane("a tracking server stopped and restarted under a running sweep: ~1-1.5 min; the fast lane's "
                       "exactly-once checks are tests/test_metric_record.py's")
def test_a_brief_tracking_outage_loses_and_duplicates_nothing(tmp_path, tracking_server):
    name = "tracking_outage"
    spec = write_spec(tmp_path, name, task=SLOW_TASK, chain=SLOW_CHAIN, seeds=4,
                      grid={"chain.n_real": [5000, 4000]}, run={"max_concurrent_trials": 1})
    out = tmp_path / "results"
    driver = start_driver("run", str(spec), "--out", str(out), "--tracking-uri", tracking_server.uri)
    try:
        wait_until(lambda: max(checkpointed_iterations(out, name).values(), default=0) >= 10, 300, "iteration 10", driver)
        down = time.time()
        tracking_server.stop()
        time.sleep(3)  # down for this plus the server's own restart (seconds): many iterations' logging
        tracking_server.start()
        outage = time.time() - down
        printed = finish(driver)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, printed[-3000:]
    steps = steps_per_run(tracking_server.uri, name)
    lost, duplicated = lost_and_duplicated(steps, SLOW_CHAIN["n_iterations"])
    assert len(steps) == 2 and lost == 0 and duplicated == 0, steps
    table = results_table(tracking_server.uri, name)
    assert len(table) == 2 * 4 * SLOW_CHAIN["n_iterations"]
    print(f"\nfaults injected: tracking server down for {outage:.0f} s mid-sweep; chains completed: "
          f"{table.groupby(['run_key', 'seed']).ngroups}; metrics lost: {lost}; duplicated: {duplicated}")


@pytest.mark.slow_lane("a sweep outlasting its tracking server, then its resume: ~1.5 min; the fast lane resumes "
                       "killed drivers and workers (this file) and refuses unreachable stores (tests/test_preflight.py)")
def test_a_tracking_server_that_stays_away_fails_loudly_and_resumes(tmp_path, tracking_server, slow_reference):
    name = "tracking_gone"
    spec = write_spec(tmp_path, name, task=SLOW_TASK, chain=SLOW_CHAIN, seeds=4, run={"max_failures": 0})
    out = tmp_path / "results"
    env_short_retries = {"COLLAPSE_RAY_TRACKING_RETRY_SECONDS": "3", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    driver = subprocess.Popen(cli("run", str(spec), "--out", str(out), "--tracking-uri", tracking_server.uri),
                              env={**ENV, **env_short_retries}, start_new_session=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: max(checkpointed_iterations(out, name).values(), default=0) >= 10, 300, "iteration 10", driver)
        tracking_server.stop()
        printed = finish(driver)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode != 0, printed[-3000:]
    assert "--resume" in printed and "tracking store unavailable" in printed, printed[-3000:]
    stopped_at = max(checkpointed_iterations(out, name).values())

    tracking_server.start()
    resumed = subprocess.run(cli("run", str(spec), "--out", str(out), "--resume"), env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    steps = steps_per_run(tracking_server.uri, name)
    lost, duplicated = lost_and_duplicated(steps, SLOW_CHAIN["n_iterations"])
    assert len(steps) == 1 and lost == 0 and duplicated == 0, steps
    assert_matches_reference(results_table(tracking_server.uri, name), slow_reference)
    print(f"\nfaults injected: tracking server stopped for good at iteration ~{stopped_at}; the sweep failed loudly "
          f"(exit {driver.returncode}); --resume finished it; metrics lost: {lost}; duplicated: {duplicated}")
