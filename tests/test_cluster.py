"""The cluster path for real, on loopback only.

`cluster/local_cluster.sh` starts a Ray head (token authentication on, every server on
127.0.0.1) and an `mlflow server` (SQLite backend, artifacts proxied by the server); a
quick sweep goes in with `ray job submit`, exactly as cluster/README.md says, while every
process the script started is sampled for listening sockets (none may be off loopback);
its runs and per-iteration metrics are read back through the server; and the MLflow UI
is checked in headless Chromium (Debian's, installed by `make test`).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from collapse_ray.tracking.results import results_table
from collapse_ray.tracking.store import client_for
from tests.helpers import free_ports
from tests.test_loopback import NOT_INHERITED, describe, processes_of, sample_while

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "cluster" / "local_cluster.sh"
SCREENSHOTS = ROOT / "results" / "screenshots"
N_ITERATIONS, N_SEEDS = 6, 8
pytestmark = pytest.mark.ray


def listening_addresses(port: int) -> set[str]:
    import psutil

    return {c.laddr.ip for c in psutil.net_connections(kind="tcp") if c.status == "LISTEN" and c.laddr.port == port}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    shared = tmp_path_factory.mktemp("shared")
    ray_temp = tempfile.mkdtemp(prefix="crr", dir="/tmp")  # Ray's socket paths must stay short
    ray_port, dashboard, mlflow_port, client_port, agent_port, metrics_port = free_ports(6)
    home = tmp_path_factory.mktemp("home")  # the script's own token file, not ~/.ray/auth_token: shown here
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}  # the script sets what it needs
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(home),
        COLLAPSE_RAY_SHARED=str(shared),
        RAY_PORT=str(ray_port),
        DASHBOARD_PORT=str(dashboard),
        MLFLOW_PORT=str(mlflow_port),
        RAY_TEMP_DIR=ray_temp,
        RAY_NUM_CPUS="2",
        RAY_START_ARGS=f"--ray-client-server-port {client_port} --dashboard-agent-listen-port {agent_port} "
        f"--metrics-export-port {metrics_port}",
    )
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        exports = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.split("\n") if line)
        env.update(exports)  # what `eval "$(cluster/local_cluster.sh env)"` does (RAY_AUTH_MODE=token among them)
        yield SimpleNamespace(env=env, shared=shared, home=home, ray_temp=ray_temp, dashboard=exports["RAY_DASHBOARD"],
                              tracking=exports["MLFLOW_TRACKING_URI"], dashboard_port=dashboard,
                              mlflow_port=mlflow_port, metrics_port=metrics_port)
    finally:
        subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(ray_temp, ignore_errors=True)


def job_submit(cluster, env, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ray", "job", "submit", "--address", cluster.dashboard, *command],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )


def cluster_processes(cluster) -> list:
    """Every process the script started and theirs (the process groups it recorded), the
    jobs' drivers and workers among them."""
    pids = [int(path.read_text()) for path in cluster.shared.glob("*.pid")]
    return processes_of(pids, marker=cluster.ray_temp)


def job_submit_sampled(cluster, *command: str) -> tuple[subprocess.CompletedProcess, set]:
    """`ray job submit` (which waits for the job), and the listeners of the cluster's
    processes, sampled while the job runs."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        args = ["ray", "job", "submit", "--address", cluster.dashboard, *command]
        job = subprocess.Popen(args, env=cluster.env, cwd=ROOT, stdout=out, stderr=err, text=True)
        deadline = time.monotonic() + 600
        try:
            listeners = sample_while(lambda: job.poll() is None and time.monotonic() < deadline,
                                     lambda: cluster_processes(cluster))
        finally:
            if job.poll() is None:
                job.kill()
            job.wait()
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, job.returncode, out.read(), err.read()), listeners


@pytest.fixture(scope="module")
def submitted(cluster):
    """The quickstart sweep, submitted the README's way; returns where its results are."""
    results = cluster.shared / "results"
    job_id = f"collapse-ray-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    done, listeners = job_submit_sampled(
        cluster,
        "--submission-id", job_id, "--runtime-env", "cluster/runtime_env.yaml", "--working-dir", ".",
        "--", "collapse-ray", "run", "sweeps/quickstart.yaml", "--out", str(results),
        "--tracking-uri", cluster.tracking,
        "--set", f"chain.n_iterations={N_ITERATIONS}", "--set", f"seeds={N_SEEDS}",
    )
    seconds = time.perf_counter() - started
    log = done.stdout[-4000:] + done.stderr[-4000:]
    status = subprocess.run(["ray", "job", "status", "--address", cluster.dashboard, job_id],
                            env=cluster.env, capture_output=True, text=True, timeout=120)
    return SimpleNamespace(job_id=job_id, returncode=done.returncode, log=log, status=status.stdout + status.stderr,
                           results=results, seconds=seconds, listeners=listeners)


def test_ray_job_submit_needs_the_clusters_token(cluster, tmp_path):
    env = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token either
    refused = job_submit(cluster, env, "--", "python", "-c", "print('should not run')")
    assert refused.returncode != 0
    assert "token" in (refused.stdout + refused.stderr).lower()


def test_submitted_sweep_logs_every_iteration_to_the_tracking_server(cluster, submitted):
    assert submitted.returncode == 0, submitted.log
    assert f"Job '{submitted.job_id}' succeeded" in submitted.status, submitted.status
    print(f"\nray job submit: quickstart ({6 * N_SEEDS} chains x {N_ITERATIONS} iterations) in {submitted.seconds:.0f} s")

    client = client_for(cluster.tracking)
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
                and "collapse_ray.job_key" in r.data.tags]  # the chain runs (the cell runs hold their means)
    assert len(parents) == 1 and len(children) == 6
    for run in children:
        assert run.info.status == "FINISHED"
        for key in ("test_loss", "cov_trace_ratio"):
            steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
            assert steps == list(range(1, N_ITERATIONS + 1)), (run.info.run_name, key, steps)

    table = results_table(cluster.tracking, "quickstart")  # per-seed rows, via the server's artifact proxy
    assert len(table) == 6 * N_SEEDS * N_ITERATIONS
    assert not table.duplicated(["run_key", "seed", "iteration"]).any()

    # checkpoints, pool and Tune's storage live under --out, the path every node shares
    sweep_dir = Path(parents[0].data.tags["collapse_ray.sweep_dir"])
    assert sweep_dir.is_relative_to(submitted.results)
    assert json.loads((sweep_dir / "sweep.json").read_text())["status"] == "finished"
    assert len(list(sweep_dir.glob("chains/*/checkpoint.json"))) == 6
    assert any((sweep_dir / "tune").iterdir())


def test_dashboard_and_tracking_server_listen_on_loopback_only(cluster, submitted):
    """And every other process the script started: Ray's GCS, raylet, agents (the metrics
    export port, which answers without a token), workers and the job's driver, sampled
    while the sweep ran."""
    assert listening_addresses(cluster.dashboard_port) == {"127.0.0.1"}
    assert listening_addresses(cluster.mlflow_port) == {"127.0.0.1"}
    listeners = submitted.listeners
    names = {l.process for l in listeners}
    # the sampling saw the cluster at work, or a clean result would prove nothing
    assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
    assert any(name.startswith("ray::") and not name.endswith("Agent") for name in names), names
    assert {cluster.dashboard_port, cluster.mlflow_port, cluster.metrics_port} <= {l.port for l in listeners}
    print(f"\nlocal_cluster.sh with a job running: {describe(listeners)}")
    assert all(l.on_loopback for l in listeners), describe(listeners)


def test_the_clusters_token_is_in_a_file_only_its_owner_reads(cluster):
    """Other local users reach 127.0.0.1 too; the token is what keeps them out."""
    assert not (cluster.home / ".ray" / "auth_token").exists(), "the token went to ~/.ray/auth_token"
    token = Path(cluster.env["RAY_AUTH_TOKEN_PATH"])  # from the script's exports
    assert token.is_relative_to(cluster.shared) and token.stat().st_size > 0
    assert stat.filemode(token.stat().st_mode) == "-rw-------"


def test_mlflow_ui_shows_the_sweep_runs_and_their_metric_charts(cluster, submitted, browser):
    assert submitted.returncode == 0, submitted.log
    client = client_for(cluster.tracking)
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    children = sorted(r.info.run_name for r in runs if "collapse_ray.job_key" in r.data.tags)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1600, "height": 1000})

    # the experiment's runs (model-training layout, as the printed links open it): the
    # sweep's parent run, expanded to its chain runs and its cell runs
    page.goto(f"{cluster.tracking}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning",
              wait_until="load")
    row = page.get_by_role("row").filter(has_text=parent.info.run_name).first
    row.wait_for(timeout=60_000)
    row.locator("button[data-component-id*='runnamecellrenderer']").click()  # the +: show child runs
    page.get_by_text(children[0]).first.wait_for(timeout=30_000)
    page.screenshot(path=str(SCREENSHOTS / "mlflow_ui_runs.png"))
    text = page.inner_text("body")
    assert "quickstart" in text
    assert all(name in text for name in children), (children, text[:2000])
    cells = [r for r in runs if r.data.tags.get("collapse_ray.role") == "cell"]
    assert len(cells) == len(children) and len(runs) == 1 + 2 * len(children)  # a cell per grid point, as a chain run
    assert f"{len(runs)} matching runs" in text

    # one chain run's metric charts: test_loss over iterations 1..N
    chain = next(r for r in runs if r.info.run_name == children[0])
    page.goto(f"{cluster.tracking}/#/experiments/{experiment.experiment_id}/runs/{chain.info.run_id}/model-metrics"
              "?workflowType=machine_learning", wait_until="load")
    chart = page.locator(".js-plotly-plot").first
    chart.wait_for(timeout=60_000)
    page.screenshot(path=str(SCREENSHOTS / "mlflow_ui_metrics.png"))
    text = page.inner_text("body")
    assert children[0] in text and "test_loss" in text and "Step" in text
    assert page.locator(".js-plotly-plot").count() >= 4  # test_loss, cov_trace_ratio, ... and their _se
    # each chart is one line with a point per iteration, its step axis ending at the last one
    chart = page.locator(".js-plotly-plot").first
    assert chart.locator(".scatterlayer .points path").count() == N_ITERATIONS
    ticks = [float(t) for t in chart.locator(".xtick text").all_text_contents()]
    assert N_ITERATIONS - 1 <= max(ticks) <= N_ITERATIONS and min(ticks) >= 1, ticks
    print(f"\nscreenshots: {SCREENSHOTS / 'mlflow_ui_runs.png'}, {SCREENSHOTS / 'mlflow_ui_metrics.png'}")
    page.close()
