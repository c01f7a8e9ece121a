"""An interrupted sweep says so and resumes: SIGINT (Ctrl-C, sent to the driver's whole
process group as a terminal does) or SIGTERM (what `ray job stop` and cluster
schedulers send) while trials run exits 130 / 143, marks sweep.json "interrupted" and
the MLflow sweep run KILLED, and `--resume` then finishes it with nothing lost or
duplicated. The resume advice is only given when a resume can work."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from collapse_ray.tracking.results import results_table
from collapse_ray.tracking.store import client_for
from tests.test_faults import (
    ENV,
    SLOW_CHAIN,
    SLOW_TASK,
    assert_matches_reference,
    checkpointed_iterations,
    cli,
    finish,
    lost_and_duplicated,
    reference_table,
    start_driver,
    steps_per_run,
    wait_until,
    write_spec,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def sweep_run_status(uri: str, name: str) -> str:
    client = client_for(uri)
    exp = client.get_experiment_by_name(name)
    [parent] = client.search_runs([exp.experiment_id], filter_string="tags.`collapse_ray.sweep_dir` != ''")
    return parent.info.status


# SIGINT (Ctrl-C) in the fast lane; SIGTERM takes the same path, ~1 min more
@pytest.mark.parametrize("signum", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow_lane(
    "the same interrupt path as SIGINT (fast lane), ~1 min"))], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_sweep_says_so_and_resumes(tmp_path, signum):
    name = f"interrupt_{signal.Signals(signum).name.lower()}"
    chain = {**SLOW_CHAIN, "n_iterations": 20}  # two trials one after the other: the signal lands mid-sweep
    spec = write_spec(tmp_path, name, task=SLOW_TASK, chain=chain, seeds=4, run={"max_concurrent_trials": 1},
                      grid={"chain.n_real": [5000, 4000]})
    out = tmp_path / "results"
    driver = start_driver("run", str(spec), "--out", str(out))
    try:
        wait_until(lambda: max(checkpointed_iterations(out, name).values(), default=0) >= 5, 300, "iteration 5", driver)
        if signum == signal.SIGINT:
            os.killpg(driver.pid, signal.SIGINT)  # Ctrl-C reaches every process of the terminal's group
        else:
            driver.send_signal(signal.SIGTERM)
        printed = finish(driver, timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    stopped_at = max(checkpointed_iterations(out, name).values())
    assert driver.returncode == 128 + signum, printed[-3000:]
    assert "finished:" not in printed and "--resume" in printed, printed[-3000:]
    assert "Tuner.restore" not in printed, "Tune's own resume hint is not the one to follow"
    sweep_dir = next((out / name).iterdir())
    assert json.loads((sweep_dir / "sweep.json").read_text())["status"] == "interrupted"
    uri = f"sqlite:///{out / 'mlflow.db'}"
    assert sweep_run_status(uri, name) == "KILLED"

    resumed = subprocess.run(cli("run", str(spec), "--out", str(out), "--resume"), env=ENV,
                             capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert json.loads((sweep_dir / "sweep.json").read_text())["status"] == "finished"
    assert sweep_run_status(uri, name) == "FINISHED"
    steps = steps_per_run(uri, name)
    lost, duplicated = lost_and_duplicated(steps, chain["n_iterations"])
    assert len(steps) == 2 and lost == 0 and duplicated == 0, steps
    table = results_table(uri, name)
    assert len(table) == 2 * 4 * chain["n_iterations"] and not table.duplicated(["run_key", "seed", "iteration"]).any()
    print(f"\nfaults injected: {signal.Signals(signum).name} at iteration ~{stopped_at}; exit {driver.returncode}; "
          f"sweep.json interrupted, MLflow KILLED; --resume finished it; metrics lost: {lost}; duplicated: {duplicated}")


def test_resume_advice_only_when_a_resume_can_work(tmp_path):
    """SIGTERM while the embedded Ray is still starting: either nothing was written and
    the message says there is nothing to resume, or a sweep.json exists and says
    "interrupted" (then the advice is right)."""
    name = "interrupt_startup"
    spec = write_spec(tmp_path, name, task=SLOW_TASK, chain={**SLOW_CHAIN, "n_iterations": 5}, seeds=2)
    out = tmp_path / "results"
    driver = start_driver("run", str(spec), "--out", str(out))
    try:
        wait_until(lambda: driver.stdout.readline().startswith("running "), 120, "the spec to validate", driver)
        driver.send_signal(signal.SIGTERM)  # Ray's start-up takes seconds: this lands in it
        printed = finish(driver, timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 128 + signal.SIGTERM, printed[-3000:]
    sweep_files = list(out.glob(f"{name}/*/sweep.json"))
    if "--resume" in printed:
        assert [json.loads(p.read_text())["status"] for p in sweep_files] == ["interrupted"], printed
    else:
        assert not sweep_files and "nothing to resume" in printed, printed
    assert "Traceback" not in printed, printed[-3000:]
