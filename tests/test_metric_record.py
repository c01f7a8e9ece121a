"""The record of logged metrics is exact: a driver killed between two batches of one
checkpoint's metrics (an iteration split across them) loses and duplicates nothing
after the resume. Real processes, a real SQLite MLflow store, a real SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import numpy as np

from collapse_ray.tracking.store import client_for

RUNNER = textwrap.dedent("""
    import os, signal, sys
    from collapse_ray.tracking import sink
    from collapse_ray.tracking.store import client_for
    from collapse_ray.core.loop import run_chain
    from collapse_ray.core.chain import ChainConfig
    from collapse_ray.tasks import GaussianTask

    uri, run_id, folder, kill_after = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    sink.MAX_METRICS_PER_BATCH = 7  # 10 metrics per iteration: a batch boundary splits one
    client = client_for(uri)
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
    run_chain(GaussianTask(dim=2), chain, [0, 1], checkpoint_dir=folder, sink=sink.MlflowChainSink(client, run_id))
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


class CountingClient:
    """A real MLflow client that counts the calls made through it (round trips to the store)."""

    def __init__(self, client):
        self._client, self.calls = client, []

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def counted(*args, **kwargs):
            self.calls.append(name)
            return attr(*args, **kwargs)
        return counted


def test_a_new_chain_run_is_opened_and_logged_in_the_fewest_round_trips(tmp_path):
    """A trial's new run: its tags (the node's too) in the creating call, no read-back of
    what a new run holds, and the logged-through tag in the last metric batch; the record
    is still exact (the tag names the last iteration, every step stored once)."""
    from collapse_ray.core.loop import run_chain
    from collapse_ray.sweep.spec import parse_spec
    from collapse_ray.tasks import GaussianTask
    from collapse_ray.tracking.runs import open_chain_run
    from collapse_ray.tracking.sink import LOGGED_TAG, MlflowChainSink

    client = CountingClient(client_for(f"sqlite:///{tmp_path / 'mlflow.db'}"))
    experiment = client.create_experiment("record")
    parent = client.create_run(experiment).info.run_id
    job = parse_spec({"task": {"name": "gaussian", "dim": 2},
                      "chain": {"n_real": 20, "n_iterations": 4, "checkpoint_every": 2}, "seeds": 2}).jobs()[0]
    client.calls.clear()
    opened = open_chain_run(client, experiment, parent, job, tags={"collapse_ray.ray_node_id": "n1"})
    assert opened.created and not opened.finished and not opened.grown
    sink = MlflowChainSink(client, opened.run_id, created=opened.created)
    run_chain(GaussianTask(dim=2), job.point.chain, list(job.seeds), checkpoint_dir=tmp_path / "chain", sink=sink)
    assert "get_run" not in client.calls and "set_tag" not in client.calls, client.calls
    assert client.calls.count("create_run") == 1
    run = client.get_run(opened.run_id)
    assert run.data.tags["collapse_ray.ray_node_id"] == "n1"
    assert run.data.tags[LOGGED_TAG] == "4"
    for key in run.data.metrics:
        assert sorted(m.step for m in client.get_metric_history(opened.run_id, key)) == [1, 2, 3, 4], key

    # the same job's run found again (a retried trial): the tags are set on it, and the
    # sink reads back what is logged
    again = open_chain_run(client, experiment, parent, job, tags={"collapse_ray.ray_node_id": "n2"})
    assert again.run_id == opened.run_id and not again.created
    assert client.get_run(opened.run_id).data.tags["collapse_ray.ray_node_id"] == "n2"
    assert MlflowChainSink(client, again.run_id).last_logged_iteration() == 4


def test_the_logged_through_tag_never_goes_before_a_metric_of_its_iterations(tmp_path):
    """1,000 metrics exactly (one full batch): the tag cannot ride in that batch (a batch
    holds 1,000 entities; MLflow's client would split it and store the tag with the first
    999), so it follows on its own, after the store holds every metric."""
    from collapse_ray.tracking.sink import LOGGED_TAG, MlflowChainSink

    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("record")).info.run_id
    store = client._tracking_client.store  # observed, not replaced: every call goes through
    stored, real_log_batch = [], store.log_batch

    def observed(run_id, metrics, params, tags):
        stored.append((len(metrics), [t.key for t in tags]))
        return real_log_batch(run_id=run_id, metrics=metrics, params=params, tags=tags)

    store.log_batch = observed
    records = [(t, {f"m{k}": np.array([float(t + k)]) for k in range(10)}) for t in range(1, 101)]
    sink = MlflowChainSink(client, run_id, created=True)
    sink.log_iterations([0], records)  # 10 metrics x 100 iterations, one seed (no standard errors)
    assert sum(n for n, _ in stored) == 1000
    tagged = [i for i, (_, keys) in enumerate(stored) if LOGGED_TAG in keys]
    assert tagged == [len(stored) - 1] and all(n == 0 for n, keys in stored[tagged[0]:])
    assert client.get_run(run_id).data.tags[LOGGED_TAG] == "100"
