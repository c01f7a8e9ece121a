"""The paper-scale specs, rehearsed on a three-node loopback Ray cluster.

`cluster/rehearse.sh` starts a Ray head and two worker nodes (`ray start` on 127.0.0.1,
each with its own temp folder and ports, token authentication on), an MLflow tracking
server on 127.0.0.1 and a shared --out folder, and submits each paper-scale spec FILE
with `ray job submit`, changed through --set only where this machine forces it (the
hub stand-ins of tests/standins.py, use_gpu false, sizes scaled down). Checked here:
every job succeeds; every cell of every spec is in `collapse-ray results` with every
iteration; the trials (the node of each one recorded) and their Ray Train workers and
sampling actors ran on more than one node (Ray's own record); the runs, metrics and tables are on the tracking server.

    make test-slow        # the slow lane: this and the other slow-lane tests
    .venv/bin/python -m pytest tests/test_rehearsal.py -q
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from collapse_ray.sweep.spec import load_spec
from collapse_ray.tracking.store import client_for

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster" / "rehearse.sh"
STOP = ROOT / "cluster" / "local_cluster.sh"
SPECS = ("fig5_value_grid", "sft_helpsteer2", "pretraining_tinystories")
N_NODES = 3
TIMEOUT_S = 2400  # measured: 21 min for the rehearsal on this 2-core machine at load 16-35
pytestmark = [pytest.mark.rehearsal, pytest.mark.slow, pytest.mark.ray]  # slow lane: `make test-slow`


@pytest.fixture(scope="module")
def rehearsal(standins):
    shared = Path(tempfile.mkdtemp(prefix="crr-rehearsal-", dir="/tmp"))
    ray_temp = tempfile.mkdtemp(prefix="crh", dir="/tmp")  # Ray's socket paths must stay short
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        COLLAPSE_RAY_SHARED=str(shared), RAY_TEMP_DIR=ray_temp,
        RAY_AUTH_TOKEN=secrets.token_hex(16),  # this cluster's own token; ~/.ray is left alone
        STANDIN_HELPSTEER2=str(standins["helpsteer2"]), STANDIN_TINYSTORIES=str(standins["tinystories"]),
        STANDIN_GEMMA2=str(standins["gemma2"]),
    )
    started = time.perf_counter()
    try:  # the cluster outlives a timed-out script (its nodes run in their own sessions): stop it in any case
        done = subprocess.run([str(SCRIPT), "--keep"], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=TIMEOUT_S)
        seconds = time.perf_counter() - started
        report = shared / "rehearsal"
        exports = dict(line.removeprefix("export ").split("=", 1)
                       for line in (report / "exports.sh").read_text().splitlines() if line.startswith("export "))
        yield SimpleNamespace(done=done, seconds=seconds, shared=shared, report=report, env=env,
                              tracking=exports["MLFLOW_TRACKING_URI"], dashboard=exports["RAY_DASHBOARD"],
                              overrides=json.loads((report / "overrides.json").read_text()))
    finally:
        subprocess.run([str(STOP), "stop"], env=env, capture_output=True, timeout=300)
        shutil.rmtree(ray_temp, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)


def log_tail(rehearsal) -> str:
    return rehearsal.done.stdout[-3000:] + rehearsal.done.stderr[-6000:]


def jobs(rehearsal) -> dict[str, dict]:
    """spec -> Ray's record of its job (`ray list jobs`)."""
    ids = dict(line.split() for line in (rehearsal.report / "jobs.txt").read_text().splitlines())
    by_id = {job["submission_id"]: job for job in json.loads((rehearsal.report / "jobs.json").read_text())}
    return {spec: by_id[job_id] for spec, job_id in ids.items()}


def expected_cells(rehearsal, spec: str):
    """The chains the submitted command asked for: the spec file with the same --set."""
    return load_spec(ROOT / "sweeps" / f"{spec}.yaml", rehearsal.overrides[spec]).jobs()


def test_every_paper_scale_job_succeeds_on_three_nodes(rehearsal):
    assert rehearsal.done.returncode == 0, log_tail(rehearsal)
    print(f"\nrehearsal: 3 paper-scale specs on {N_NODES} loopback nodes in {rehearsal.seconds:.0f} s")
    nodes = json.loads((rehearsal.report / "nodes.json").read_text())
    alive = [n for n in nodes if n["state"] == "ALIVE"]
    assert len(alive) == N_NODES and sum(n["is_head_node"] for n in alive) == 1
    # every node on loopback, so every server of the cluster listens on 127.0.0.1 only
    # (cluster/local_cluster.sh: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0)
    assert {n["node_ip"] for n in alive} == {"127.0.0.1"}
    for spec, job in jobs(rehearsal).items():
        assert job["status"] == "SUCCEEDED", (spec, job.get("message"))
        assert job["entrypoint"].startswith(f"collapse-ray run sweeps/{spec}.yaml "), job["entrypoint"]


def test_every_cell_is_in_the_results_with_every_iteration(rehearsal):
    for spec in SPECS:
        table = pd.read_csv(rehearsal.report / f"{spec}.csv")
        cells = expected_cells(rehearsal, spec)
        assert set(table["run_key"]) == {job.point.key for job in cells}, spec
        for job in cells:
            rows = table[table["run_key"] == job.point.key]
            iterations = job.point.chain.n_iterations
            assert sorted(rows["iteration"]) == list(range(1, iterations + 1)), (spec, job.key)
            assert rows["test_loss"].notna().all() and (rows["test_loss"] > 0).all(), (spec, job.key)


def trial_nodes(rehearsal, spec: str) -> dict[str, str]:
    """trial id -> the Ray node id it ran on: Tune's own per-result pid (result.json)
    joined with Ray's record of that actor process (the state API's pid and node_id; pids
    are unique because every node runs on this one machine)."""
    actors = json.loads((rehearsal.report / "actors.json").read_text())
    node_of_pid = {a["pid"]: a["node_id"] for a in actors if a.get("pid") and a.get("node_id")}
    found = {}
    for result in (rehearsal.shared / "results" / spec).glob("*/tune/*/*/result.json"):
        for line in filter(str.strip, result.read_text().splitlines()):
            record = json.loads(line)
            found[record["trial_id"]] = node_of_pid[record["pid"]]
    return found


def test_trials_and_their_work_spread_over_the_nodes(rehearsal):
    actors = [a for a in json.loads((rehearsal.report / "actors.json").read_text()) if a.get("node_id")]
    nodes = {n["node_id"] for n in json.loads((rehearsal.report / "nodes.json").read_text())}
    trials = {spec: trial_nodes(rehearsal, spec) for spec in SPECS}
    for spec in SPECS:
        assert len(trials[spec]) == len(expected_cells(rehearsal, spec)), spec  # one trial per chain here
    trial_node_ids = {node for per_spec in trials.values() for node in per_spec.values()}
    assert trial_node_ids <= nodes
    # Each trial drives work on other processes: its fits' Ray Train workers (0.9 CPU
    # each, 2 CPUs a node) and its sampling actors; Ray placed them on several nodes
    # (Tune reuses one trial actor per concurrent slot, so the trial actors themselves
    # may sit on one node).
    workers = {a["node_id"] for a in actors if a["class_name"] == "RayTrainWorker"}
    samplers = {a["node_id"] for a in actors if a["class_name"].startswith("MapWorker")}
    assert len(workers) >= 2, sorted((a["node_id"][:8], a["class_name"]) for a in actors)
    assert len(trial_node_ids | workers | samplers) >= 2
    print("\ntrials per node:", {n[:8]: sum(v == n for t in trials.values() for v in t.values()) for n in sorted(nodes)},
          "| Ray Train workers per node:",
          {n[:8]: sum(a["node_id"] == n for a in actors if a["class_name"] == "RayTrainWorker") for n in sorted(nodes)},
          "| sampling actors per node:",
          {n[:8]: sum(a["node_id"] == n for a in actors if a["class_name"].startswith("MapWorker")) for n in sorted(nodes)})


def test_runs_metrics_and_tables_are_on_the_tracking_server(rehearsal):
    assert rehearsal.tracking.startswith("http://127.0.0.1:")
    client = client_for(rehearsal.tracking)
    for spec in SPECS:
        experiment = client.get_experiment_by_name(spec)
        assert experiment is not None, spec
        runs = client.search_runs([experiment.experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1, spec
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
                    and "collapse_ray.job_key" in r.data.tags]  # chain runs, not the cell runs
        cells = expected_cells(rehearsal, spec)
        assert len(children) == len(cells), spec
        iterations = {job.point.key: job.point.chain.n_iterations for job in cells}
        assert {run.data.params["run_key"] for run in children} == set(iterations), spec
        for run in children:
            assert run.info.status == "FINISHED", (spec, run.info.run_name)
            assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri  # proxied by the server
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "test_loss"))
            assert steps == list(range(1, iterations[run.data.params["run_key"]] + 1)), (spec, run.info.run_name, steps)
    # the SFT specs' within-fit held-out curve (eval_steps: 5) reached the server as well
    sft = client.get_experiment_by_name("sft_helpsteer2")
    run = next(r for r in client.search_runs([sft.experiment_id]) if "collapse_ray.job_key" in r.data.tags)
    curve = client.get_metric_history(run.info.run_id, "fit_test_loss/iteration_001")
    assert len(curve) >= 2 and all(m.value > 0 for m in curve)
