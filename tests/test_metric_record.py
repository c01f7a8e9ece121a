"""The record of logged metrics is exact: a driver killed between two batches of one
checkpoint's metrics (an iteration split across them) loses and duplicates nothing
after the resume. Real processes, a real SQLite MLflow store, a real SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from collapse_ray.tracking import client_for

RUNNER = textwrap.dedent("""
    import os, signal, sys
    import collapse_ray.tracking as tracking
    from collapse_ray.loop import run_chain
    from collapse_ray.spec import ChainConfig
    from collapse_ray.tasks import GaussianTask

    uri, run_id, folder, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    tracking.MAX_METRICS_PER_BATCH = 7  # 10 metrics per iteration: a batch boundary splits one
    client = tracking.client_for(uri)
    calls = 0
    real_log_batch = client.log_batch

    def log_batch_then_die(*args, **kwargs):
        global calls
        real_log_batch(*args, **kwargs)
        calls += 1
        if calls == kill_after:  # the first batch is stored, the rest of the checkpoint's are not
            os.kill(os.getpid(), signal.SIGKILL)

    client.log_batch = log_batch_then_die
    chain = ChainConfig(workflow="replace", n_real=50, n_iterations=6, checkpoint_every=3).resolved()
    run_chain(GaussianTask(dim=2), chain, [0, 1], checkpoint_dir=folder, sink=tracking.MlflowChainSink(client, run_id))
""")


def test_a_kill_between_metric_batches_loses_and_duplicates_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    run_id = client.create_run(client.create_experiment("record")).info.run_id
    folder = str(tmp_path / "chain")
    killed = subprocess.run([sys.executable, "-c", RUNNER, uri, run_id, folder, "1"], capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    done = subprocess.run([sys.executable, "-c", RUNNER, uri, run_id, folder, "0"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    keys = sorted(client.get_run(run_id).data.metrics)
    assert len(keys) == 10, keys  # 5 metrics and their standard errors
    lost = duplicated = 0
    for key in keys:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        lost += len(set(range(1, 7)) - set(steps))
        duplicated += len(steps) - len(set(steps))
    assert (lost, duplicated) == (0, 0), (lost, duplicated)
    print(f"\nfault injected: SIGKILL after 1 of 3 metric batches of a checkpoint; metric entries lost: {lost}; "
          f"duplicated: {duplicated}")
