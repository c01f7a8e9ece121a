"""Where a toy grid's time goes through the whole engine, and its floor, measured in one run.

Used by fig1_gaussian.py and toy_settings.py:

  - `run_engine`: Ray started here (timed, the engine's own `ray.init` arguments), then
    `collapse-ray run` and `collapse-ray results` as a user runs them; each trial's own
    timings (loop.PHASES, the MLflow run's opening and closing, its wall-clock start and
    end) come back through Tune's result.json, which the trial already reports to.
  - `breakdown`: core-seconds per component over the machine's cores for the whole
    run, printed as a table by `print_breakdown`; idle cores are what is left of
    cores x the trials' span once trials and the gaps between one worker's trials are
    booked.
  - `floor`: the same jobs (blocks of seeds, heaviest first) through `loop.run_chain`
    in one plain process per core (multiprocessing), no Ray, MLflow or Parquet.
  - `kernel_throughput`: squared distance plus exp, numpy, one core, float32 and float64;
    `task_kernel_throughput`: the KDE task's own kernel, per precision.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MLFLOW_PHASES = ("open_run", "log", "finish_run")
TASK_PHASES = ("fit", "evaluate", "sample")


@dataclass
class EngineRun:
    ray_start: float  # ray.init plus ray.shutdown, wall seconds
    run: float  # `collapse-ray run`, wall seconds
    results: float  # `collapse-ray results`, wall seconds
    run_started: float  # time.time() around the run, to line up with the trials' clocks
    run_ended: float
    rows: int
    cores: int
    trials: list[dict] = field(default_factory=list)  # each trial's last Tune result
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds during the run, by process kind (CpuSampler)

    @property
    def total(self) -> float:
        return self.ray_start + self.run + self.results


def seed_overrides(seeds: int | None) -> list[str]:
    return [] if seeds is None else [f"seeds={seeds}"]


def run_engine(spec_name: str, seeds: int | None = None) -> EngineRun:
    import pandas as pd
    import ray

    from collapse_ray import cli

    overrides = sum((["--set", o] for o in seed_overrides(seeds)), [])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        sampler = CpuSampler().__enter__()  # Ray's start-up and the run; left before shutdown
        start = time.perf_counter()
        ray.init(address="local", include_dashboard=False, logging_level="WARNING", configure_logging=True)
        ray_start = time.perf_counter() - start
        cores = int(ray.cluster_resources().get("CPU", 1))
        try:
            run_started = time.time()
            start = time.perf_counter()
            assert cli.main(["run", str(ROOT / "sweeps" / f"{spec_name}.yaml"), "--out", str(out), *overrides]) == 0
            ran = time.perf_counter() - start
            run_ended = time.time()
        finally:
            sampler.__exit__(None, None, None)
            start = time.perf_counter()
            ray.shutdown()
            ray_start += time.perf_counter() - start
        start, cpu_start = time.perf_counter(), time.process_time()
        table = out / f"{spec_name}.parquet"
        assert cli.main(["results", spec_name, "--out", str(table), "--results-dir", str(out)]) == 0
        read = time.perf_counter() - start
        sampler.cpu["results export"] = time.process_time() - cpu_start
        rows = len(pd.read_parquet(table, columns=["seed"]))
        trials = [_last_result(p) for p in out.glob(f"{spec_name}/*/tune/*/*/result.json")]
    return EngineRun(ray_start, ran, read, run_started, run_ended, rows, cores, [t for t in trials if t], sampler.cpu)


RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # named like workers, but Ray's own


class CpuSampler:
    """CPU seconds used while it is entered, by the driver process (Tune's event loop, the
    MLflow client, the progress callback) and by its descendants: Ray's own processes
    (gcs_server, raylet, agents) and the workers that run trials. Descendants are read
    once a second (a worker that exits loses at most its last second); on 2 shared cores
    every such second is taken from the trials, whose phase clocks count wall time."""

    def __init__(self, interval: float = 1.0):
        import threading

        self.interval = interval
        self.cpu: dict[str, float] = {}
        self._seen: dict[tuple[int, float], tuple[str, float, float]] = {}  # (pid, created) -> kind, at start, last
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "CpuSampler":
        import resource

        self._driver = resource.getrusage(resource.RUSAGE_SELF)
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import resource

        self._stop.set()
        self._thread.join()
        self._sample()
        now = resource.getrusage(resource.RUSAGE_SELF)
        cpu = {"driver": now.ru_utime + now.ru_stime - self._driver.ru_utime - self._driver.ru_stime}
        for kind, first, last in self._seen.values():
            cpu[kind] = cpu.get(kind, 0.0) + last - first
        self.cpu = cpu

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        import psutil

        for proc in psutil.Process().children(recursive=True):
            try:
                with proc.oneshot():
                    key = (proc.pid, proc.create_time())
                    times = proc.cpu_times()
                    used = times.user + times.system
                    # a worker renames itself "ray::IDLE", "ray::ImplicitFunc"... once started: read it each time
                    command = " ".join(proc.cmdline()) or proc.name()
                    worker = command.startswith("ray::") and not command.startswith(RAY_AGENTS)
                    kind = "trial workers" if worker or "default_worker.py" in command else "Ray's own processes"
                    start = self._seen[key][1] if key in self._seen else (used if first else 0.0)
                    self._seen[key] = (kind, start, used)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue


def _last_result(path: Path) -> dict | None:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for line in reversed(lines):
        result = json.loads(line)
        if "trial_started" in result:
            return result
    return None


def breakdown(run: EngineRun) -> list[tuple[str, float]]:
    """(component, core-seconds) summing to cores x the whole wall time."""
    c, trials = run.cores, run.trials
    first = min(t["trial_started"] for t in trials)
    last = max(t["trial_ended"] for t in trials)
    phase = lambda name: sum(t.get(f"seconds_{name}", 0.0) for t in trials)  # noqa: E731
    busy = sum(t["trial_ended"] - t["trial_started"] for t in trials)
    gaps = 0.0  # between consecutive trials of one (reused) worker: Tune's scheduling and trial start
    by_worker: dict[int, list[dict]] = {}
    for t in trials:
        by_worker.setdefault(t["worker_pid"], []).append(t)
    for own in by_worker.values():
        own.sort(key=lambda t: t["trial_started"])
        gaps += sum(max(0.0, b["trial_started"] - a["trial_ended"]) for a, b in zip(own, own[1:]))
    booked_in_trials = sum(phase(p) for p in TASK_PHASES + ("pool", "checkpoint", "open_run", "log", "finish_run"))
    rows = [
        ("Ray start-up and shutdown", c * run.ray_start),
        ("driver: spec, MLflow set-up, Tune start, first trial start", c * (first - run.run_started)),
        ("Tune scheduling and trial start (between trials)", gaps),
        ("task: fit", phase("fit")),
        ("task: evaluate", phase("evaluate")),
        ("task: sample", phase("sample")),
        ("pool work", phase("pool")),
        ("MLflow: open run, params", phase("open_run")),
        ("MLflow: metrics", phase("log")),
        ("MLflow: chain table upload, close run", phase("finish_run")),
        ("checkpoints", phase("checkpoint")),
        ("trial, other (config, real data, tables, report)", busy - booked_in_trials),
        ("idle cores (waiting on other trials or the driver)", c * (last - first) - busy - gaps),
        ("driver: Tune end, sweep.json, parent run", c * (run.run_ended - last)),
        ("results export (`collapse-ray results`)", c * run.results),
    ]
    return rows


def print_breakdown(run: EngineRun, floor_seconds: float | None = None, floor_cpu: float | None = None) -> None:
    rows = breakdown(run)
    total = sum(s for _, s in rows)
    print(f"\nbreakdown over {run.cores} cores ({len(run.trials)} trials; core-seconds; wall = core-s / {run.cores}):")
    print(f"  {'component':62s} {'core-s':>8s} {'share':>6s}")
    for name, seconds in rows:
        print(f"  {name:62s} {seconds:8.1f} {seconds / total:6.1%}")
    print(f"  {'total':62s} {total:8.1f}   = {total / run.cores:.1f}s wall")
    task = sum(s for name, s in rows if name.startswith("task:"))
    mlflow = sum(s for name, s in rows if name.startswith("MLflow"))
    print(f"  task's own arithmetic {task:.1f} core-s ({task / total:.0%}); MLflow {mlflow:.1f} core-s "
          f"({mlflow / total:.0%})")
    if run.cpu:
        booked = sum(t["trial_ended"] - t["trial_started"] for t in run.trials)
        print(f"  CPU seconds of Ray's start, the run and the export: " + ", ".join(
            f"{kind} {s:.1f}" for kind, s in sorted(run.cpu.items())) + f" = {sum(run.cpu.values()):.1f} "
            f"(the trials' wall time: {booked:.1f} core-s)")
    if floor_seconds is not None:
        print(f"engine {run.total:.1f}s / floor {floor_seconds:.1f}s = {run.total / floor_seconds:.2f}x")
    if run.cpu and floor_cpu:
        engine_cpu = sum(run.cpu.values())
        print(f"engine {engine_cpu:.1f} CPU-s / floor {floor_cpu:.1f} CPU-s = {engine_cpu / floor_cpu:.2f}x "
              f"(CPU time: what other users' load on shared cores changes least)")


# -- floor ----------------------------------------------------------------------------
def _run_job(job_dict: dict) -> tuple[float, dict, float]:
    from collapse_ray.core.loop import run_chain
    from collapse_ray.sweep.spec import job_from_dict

    job = job_from_dict(job_dict)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = run_chain(job.point.task, job.point.chain, job.seeds)
    return time.perf_counter() - start, result.phase_seconds, time.process_time() - cpu_start


def floor(spec_name: str, seeds: int | None = None, processes: int = 2) -> tuple[float, float, dict, float]:
    """Wall seconds of the spec's jobs (same blocks, heaviest first) through run_chain in
    `processes` plain processes; also their summed seconds, phase seconds and CPU seconds."""
    from collapse_ray.sweep.spec import job_to_dict, load_spec

    spec = load_spec(ROOT / "sweeps" / f"{spec_name}.yaml", seed_overrides(seeds))
    jobs = [job_to_dict(j) for j in spec.jobs()]
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as workers:
        done = list(workers.imap_unordered(_run_job, jobs, chunksize=1))
    wall = time.perf_counter() - start
    phases: dict[str, float] = {}
    for _, p, _ in done:
        for k, v in p.items():
            phases[k] = phases.get(k, 0.0) + v
    return wall, sum(s for s, _, _ in done), phases, sum(c for _, _, c in done)


# -- machine throughput of the KDE kernel ---------------------------------------------
def kernel_throughput(n_test: int = 500, n_points: int = 1000, dim: int = 2, repeats: int = 20) -> dict[str, float]:
    """Kernel evaluations per CPU second on one core (this process's numpy, one BLAS
    thread; CPU time, so other users of a shared core do not count): squared distances by
    |x|^2 + |p|^2 - 2 x.p, then exp, in float32 and float64."""
    rng = np.random.default_rng(0)
    out = {}
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((n_test, dim)).astype(dtype)
        p = rng.standard_normal((n_points, dim)).astype(dtype)
        half_x, half_p = 0.5 * (x * x).sum(1), 0.5 * (p * p).sum(1)
        block = np.empty((n_test, n_points), dtype)
        best = float("inf")
        for _ in range(repeats):
            start = time.process_time()
            np.matmul(x, p.T, out=block)
            block -= half_x[:, None]
            block -= half_p[None, :]
            np.exp(block, out=block)
            block.sum(axis=1)
            best = min(best, time.process_time() - start)
        out[np.dtype(dtype).name] = n_test * n_points / best
    return out


def task_kernel_throughput(n_points=(10, 100, 1000), n_test: int = 500, chains: int = 10,
                           repeats: int = 5) -> dict[str, dict[int, float]]:
    """The KDE task's own kernel (kde._log_kernel_sums: distances, shift, exp, sum) in
    evaluations per CPU second on one core, per precision and number of points scored."""
    from collapse_ray.tasks.kde import KDETestSet, _log_kernel_sums

    rng = np.random.default_rng(0)
    x = rng.standard_normal((chains, n_test, 2))
    test = KDETestSet(x, np.einsum("cnd,cnd->cn", x, x))
    out: dict[str, dict[int, float]] = {"float32": {}, "float64": {}}
    for n in n_points:
        points = rng.standard_normal((chains, n, 2))
        for precision, rates in out.items():
            best = float("inf")
            for _ in range(repeats):
                start = time.process_time()
                _log_kernel_sums(test, points, 0.5, precision)
                best = min(best, time.process_time() - start)
            rates[n] = chains * n_test * n / best
    return out


def single_thread_blas() -> None:
    """One BLAS/OpenMP thread per process, as in a Ray trial (Ray sets OMP_NUM_THREADS=1)."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f}, {five:.1f}, {fifteen:.1f} on {os.cpu_count()} cores"
