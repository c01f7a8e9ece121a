"""The benchmarks' time breakdown: the loop's phase clock and the table's arithmetic."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest

from collapse_ray.core.loop import PHASES, run_chain
from collapse_ray.core.chain import ChainConfig
from collapse_ray.tasks import GaussianTask, KDETask

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import breakdown  # noqa: E402


@pytest.mark.parametrize("workflow", ["replace", "accumulate_subsample"])
def test_phase_seconds_cover_the_chain_and_no_more(workflow):
    chain = ChainConfig(workflow=workflow, n_real=20, n_iterations=6).resolved()
    start = time.perf_counter()
    result = run_chain(GaussianTask(dim=3, n_test=10), chain, range(4))
    wall = time.perf_counter() - start
    phases = result.phase_seconds
    assert set(phases) == set(PHASES) and all(s >= 0 for s in phases.values())
    booked = sum(phases.values())
    assert sum(result.iteration_seconds) <= booked <= wall  # every iteration booked, nothing twice
    assert phases["fit"] > 0 and phases["evaluate"] > 0 and phases["sample"] > 0
    # the rows path moves rows through the pool; replace carries statistics and never does
    assert (phases["pool"] > 0) == (workflow == "accumulate_subsample")


def test_phase_clock_leaves_results_unchanged():
    chain = ChainConfig(workflow="accumulate", n_real=15, n_iterations=4).resolved()
    task = KDETask(dataset="moons", bandwidth=0.5, n_test=20)
    a, b = run_chain(task, chain, [3, 4]), run_chain(task, chain, [3, 4])
    assert a.table.equals(b.table)


def _trial(pid: int, start: float, end: float, fit: float) -> dict:
    return {"worker_pid": pid, "trial_started": start, "trial_ended": end, "seconds_fit": fit,
            "seconds_open_run": 0.5, "seconds_log": 0.25}


def test_breakdown_books_every_core_second_once():
    # two workers: A runs 10-20 and 21-30 (1 s gap), B runs 10-25 then waits 5 s for A
    trials = [_trial(1, 10.0, 20.0, 8.0), _trial(1, 21.0, 30.0, 7.0), _trial(2, 10.0, 25.0, 12.0)]
    run = breakdown.EngineRun(ray_start=3.0, run=24.0, results=2.0, run_started=7.0, run_ended=31.0,
                              rows=0, cores=2, trials=trials)
    rows = dict(breakdown.breakdown(run))
    assert sum(rows.values()) == pytest.approx(2 * run.total)
    assert rows["Tune scheduling and trial start (between trials)"] == pytest.approx(1.0)
    assert rows["idle cores (waiting on other trials or the driver)"] == pytest.approx(5.0)
    assert rows["task: fit"] == pytest.approx(27.0)
    assert rows["MLflow: open run, params"] == pytest.approx(1.5)
    assert rows["driver: spec, MLflow set-up, Tune start, first trial start"] == pytest.approx(6.0)
    assert rows["driver: Tune end, sweep.json, parent run"] == pytest.approx(2.0)


def test_kernel_throughput_is_a_rate_per_dtype():
    rates = breakdown.kernel_throughput(n_test=50, n_points=60, repeats=2)
    assert set(rates) == {"float32", "float64"} and all(np.isfinite(r) and r > 0 for r in rates.values())


@pytest.mark.ray
def test_every_trial_reports_its_timings_through_tune(tmp_path, local_ray):
    """The benchmarks' breakdown reads what trials already report to Tune (result.json)."""
    from collapse_ray import cli

    out = tmp_path / "results"
    started = time.time()
    assert cli.main(["run", str(Path(__file__).resolve().parent.parent / "sweeps" / "quickstart.yaml"), "--out",
                     str(out), "--set", "chain.n_iterations=3", "--set", "seeds=2"]) == 0
    ended = time.time()
    trials = [breakdown._last_result(p) for p in out.glob("quickstart/*/tune/*/*/result.json")]
    assert len(trials) == 6 and all(trials)
    for t in trials:
        loop_seconds = sum(t[f"seconds_{name}"] for name in PHASES)
        assert 0 < loop_seconds <= t["seconds_chain"] + 1e-6
        assert started <= t["trial_started"] < t["trial_ended"] <= ended
        assert t["seconds_open_run"] > 0 and t["seconds_finish_run"] > 0
    run = breakdown.EngineRun(ray_start=0.0, run=ended - started, results=0.0, run_started=started, run_ended=ended,
                              rows=0, cores=2, trials=trials)
    assert sum(s for _, s in breakdown.breakdown(run)) == pytest.approx(2 * run.total)


def test_task_kernel_throughput_is_a_rate_per_precision_and_size():
    rates = breakdown.task_kernel_throughput(n_points=(5, 40), n_test=30, chains=2, repeats=1)
    assert set(rates) == {"float32", "float64"}
    assert all(set(r) == {5, 40} and all(np.isfinite(v) and v > 0 for v in r.values()) for r in rates.values())


def test_cpu_sampler_books_the_driver_and_its_children():
    import subprocess

    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\ntime.sleep(0.4)"
    with breakdown.CpuSampler(interval=0.1) as sampler:
        child = subprocess.Popen([sys.executable, "-c", burn])
        start = time.process_time()
        while time.process_time() - start < 0.3:
            pass
        child.wait()
    assert sampler.cpu["driver"] >= 0.3
    assert 0.55 <= sampler.cpu["Ray's own processes"] <= 1.5  # not named ray::, so not a trial worker
