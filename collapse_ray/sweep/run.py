"""Ray Tune fan-out of a validated sweep: one trial per (grid point, block of seeds).

This layer only fans out and logs: each trial opens its MLflow child run, hands a sink
and a checkpoint folder to `loop.run_chain`, and uploads the per-seed table at the end.

Fault tolerance: a trial's checkpoint folder and MLflow run are keyed by its job key,
so a retried trial (Tune's FailureConfig) or a re-run sweep (`--resume`) continues from
the last checkpoint, and trials whose run already finished return at once.

Output layout (`--out`, default ./results), self-contained (it can be moved):
    results/mlflow.db                       the default MLflow store
    results/mlartifacts/<sweep name>/...    its artifacts (chains.parquet, spec.yaml, pictures)
    results/<sweep name>/<UTC time>/sweep.json, chains/<job key>/..., tune/...

Growing: `--resume` after raising `seeds` or `chain.n_iterations` (nothing else may
change) extends the newest sweep of the spec: new seeds run as new trials (blocks of the
new seeds, so earlier trials and their runs stay as they are), and chains of a larger
n_iterations run on in their runs, logging only the iterations they had not. A chain
that finished is recomputed from iteration 1 (identically: fixed seeds) since a finished
chain's checkpoint keeps no pool to continue from; its earlier iterations are not
logged again. sweep.json lists the trials it planned, so a grown sweep resumes the same ones.

Interrupts: SIGINT or SIGTERM while a sweep runs stop Tune cleanly, mark sweep.json
"interrupted" and the MLflow sweep run KILLED, and exit 130 / 143; `--resume` continues.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune import Callback

from collapse_ray import atomic
from collapse_ray.sweep.spec import ChainJob, SweepSpec
from collapse_ray.tasks.protocol import SHARED_FOLDER, SharesFits
from collapse_ray.validation import SpecError

SWEEP_FILE = "sweep.json"
RESUMED_TAG = "collapse_ray.resumed_from_iteration"
NODE_TAG = "collapse_ray.ray_node_id"  # the Ray node the chain (last) ran on: a bad node shows in the UI


class SweepInterrupted(Exception):
    """SIGINT or SIGTERM stopped the sweep. `resumable`: its sweep.json was written (and
    now says "interrupted"), so `--resume` continues from the chain checkpoints."""

    def __init__(self, signum: int, sweep_dir: Path, resumable: bool):
        self.signum, self.sweep_dir, self.resumable = signum, sweep_dir, resumable
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


class _Signalled(BaseException):  # BaseException: Ray's and Tune's `except Exception` let it through
    def __init__(self, signum: int):
        self.signum = signum


INTERRUPTS = (signal.SIGINT, signal.SIGTERM)  # Ctrl-C; `ray job stop` and cluster schedulers


class _Interrupts:
    """What the driver's handlers saw. A signal is only recorded (raising inside Ray's
    C code turns into a SystemError there); while Tune runs, it is passed on to Tune's
    own stop handler (its SIGUSR1), which ends the run cleanly. The sweep then raises
    _Signalled at the next point it checks."""

    signum: int | None = None
    tune_running = False


_SEEN = _Interrupts()


def _on_interrupt(signum, frame):
    for s in INTERRUPTS:  # a second signal is handled as usual (stops at once)
        signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)
    if _SEEN.signum is None:
        _SEEN.signum = signum
    if _SEEN.tune_running:
        stop_tune = signal.getsignal(signal.SIGUSR1)  # set by tune.run for this purpose
        if callable(stop_tune):
            stop_tune(signum, frame)


def _raise_if_interrupted() -> None:
    if _SEEN.signum is not None:
        raise _Signalled(_SEEN.signum)


def _arm_interrupts() -> None:
    """(Re)install the handlers: ray.init installs SIGTERM handlers of its own that exit
    at once, so this runs again after it."""
    if threading.current_thread() is threading.main_thread() and _SEEN.signum is None:
        for s in INTERRUPTS:
            signal.signal(s, _on_interrupt)


class _QuietWhenInterrupted(logging.Filter):
    """Tune's own messages about an interrupted run ("Tuner.restore(...)") name the wrong
    way to continue: the driver's message names --resume."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _SEEN.signum is None


@contextmanager
def _interrupts_recorded() -> Iterator[None]:
    """SIGINT and SIGTERM are recorded in the driver (see _Interrupts) instead of Tune's
    own SIGINT handling, which ends the run as if it had finished. Only in the main
    thread, where handlers can be set."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.getsignal(s) for s in INTERRUPTS}
    tune_handler = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    quiet = _QuietWhenInterrupted()
    tune_logger = logging.getLogger("ray.tune.tune")
    tune_logger.addFilter(quiet)
    _SEEN.signum, _SEEN.tune_running = None, False
    try:
        _arm_interrupts()
        yield
    finally:
        for s, previous in saved.items():
            signal.signal(s, previous)
        tune_logger.removeFilter(quiet)
        if tune_handler is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_handler


@dataclass(frozen=True)
class SweepOutcome:
    sweep_dir: Path
    tracking_uri: str
    experiment: str
    sweep_run_id: str
    n_trials: int
    n_failed: int
    seconds: float
    disk_fault: str | None = None  # why trials failed, when it was a full or read-only disk
    experiment_id: str = ""
    conclusion: Any = None  # collapse_ray.sweep.cells.Conclusion: the answer's lines, figures, table


def chain_trial(config: dict[str, Any], jobs: Mapping[str, ChainJob]) -> None:
    """Ray Tune function trainable for one ChainJob (Tune's config names it by key; the
    jobs themselves come through tune.with_parameters, as the spec built them)."""
    from collapse_ray.core.loop import checkpoint_continues, run_chain
    from collapse_ray.tracking import MlflowChainSink, client_for, finish_chain_run, open_chain_run

    started = time.time()  # wall clock: benchmarks line trials up against the driver's
    job = jobs[config["job"]["key"]]
    ctx = config["sweep"]
    chain = job.point.chain
    from mlflow.entities import Dataset

    from collapse_ray.tracking import N_ITERATIONS_TAG

    client = client_for(ctx["tracking_uri"])
    datasets = [Dataset(**d) for d in ctx.get("datasets", [])]
    # the node tag is set again on a retry elsewhere
    opened_run = open_chain_run(client, ctx["experiment_id"], ctx["sweep_run_id"], job,
                                run_name=config["job"].get("run_name"), datasets=datasets,
                                tags={NODE_TAG: ray.get_runtime_context().get_node_id()})
    run_id, grown = opened_run.run_id, opened_run.grown
    opened = time.time()
    if opened_run.finished:  # done before a resume: nothing to redo or relog
        tune.report({"iteration": chain.n_iterations, "skipped": 1})
        return
    checkpoint_dir = Path(ctx["sweep_dir"]) / "chains" / job.key
    if grown and not checkpoint_continues(checkpoint_dir):
        # a finished row-path chain keeps no pool: run it again from iteration 1 (identically);
        # a statistics-path chain runs on from where it finished
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if grown:
        client.set_tag(run_id, N_ITERATIONS_TAG, str(chain.n_iterations))

    def progress(t: int, total: int) -> None:
        if chain.checkpoints_at(t) and t < total:
            tune.report({"iteration": t, "skipped": 0})

    task = job.point.task
    if isinstance(task, SharesFits):  # fits kept where the sweep's other chains find them
        task = task.with_shared_dir(Path(ctx["sweep_dir"]) / "chains" / SHARED_FOLDER)
    result = run_chain(
        task,
        chain,
        job.seeds,
        checkpoint_dir=checkpoint_dir,
        sink=MlflowChainSink(client, run_id, created=opened_run.created),
        progress=progress,
    )
    ran = time.time()
    if result.resumed_from:  # shows in the UI, and lets tests check where a retry started
        client.set_tag(run_id, RESUMED_TAG, str(result.resumed_from))
    finish_chain_run(client, run_id, job, result.table)
    # where the trial's time went (Tune's result.json keeps it; benchmarks/breakdown.py reads it)
    timing = {f"seconds_{name}": s for name, s in result.phase_seconds.items()}
    timing.update(seconds_open_run=opened - started, seconds_chain=ran - opened,
                  seconds_finish_run=time.time() - ran, trial_started=started, trial_ended=time.time(),
                  worker_pid=os.getpid())
    tune.report({"iteration": chain.n_iterations, "skipped": 0, "resumed_from": result.resumed_from, **timing})


def new_sweep_dir(out_root: Path, name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return (out_root / name / stamp).resolve()


def find_resumable(out_root: Path, name: str, resolved: dict | None = None) -> Path:
    """The newest sweep folder of this name that did not finish, or that a changed spec
    (`resolved`, e.g. more seeds) would grow."""
    candidates = sorted((out_root / name).glob(f"*/{SWEEP_FILE}"), reverse=True)
    for path in candidates:
        saved = read_sweep_file(path.parent)
        if saved.get("status") != "finished" or (resolved is not None and saved["spec"] != resolved):
            return path.parent.resolve()
    if not candidates:  # nothing ever ran: the user wants a plain run
        raise SpecError(f"--resume: no sweep named {name!r} has run under {out_root}; to start it, run without "
                        "--resume")
    raise SpecError(f"--resume: every sweep named {name!r} under {out_root} finished and the spec asks for no more "
                    "seeds or iterations than they ran; to run it again from scratch, drop --resume")


GROWABLE = "seeds (added) and chain.n_iterations (raised)"
# an adaptive search goes on from its state with a larger budget or another confidence
SEARCH_GROWABLE = ("budget", "confidence")
GROWABLE_SEARCH = ", search.budget (raised) and search.confidence"


def check_growable(saved: dict, resolved: dict, sweep_dir: Path) -> None:
    """A resumed spec may differ from the one the sweep started with only by more seeds
    and a larger chain.n_iterations (grid and cases unchanged); else SpecError naming what changed."""
    changed = sorted(key for key in set(saved) | set(resolved) if saved.get(key) != resolved.get(key))
    chain_changed = sorted(key for key in set(saved.get("chain", {})) | set(resolved.get("chain", {}))
                           if saved.get("chain", {}).get(key) != resolved.get("chain", {}).get(key))
    bad = [key for key in changed if key not in ("seeds", "chain", "search")]
    bad += [f"chain.{key}" for key in chain_changed if key != "n_iterations"]
    if "search" in changed:  # absent = method grid: switching between the two is not growing
        before, after = saved.get("search"), resolved.get("search")
        if before is None or after is None:
            bad.append("search")
        else:
            bad += [f"search.{key}" for key in sorted(set(before) | set(after))
                    if before.get(key) != after.get(key) and key not in SEARCH_GROWABLE]
            if (after.get("budget") or math.inf) < (before.get("budget") or math.inf):
                bad.append("search.budget (lowered)")
    if "seeds" in changed and not set(saved["seeds"]) <= set(resolved["seeds"]):
        bad.append("seeds (some were removed)")
    if "n_iterations" in chain_changed and resolved["chain"]["n_iterations"] < saved["chain"]["n_iterations"]:
        bad.append("chain.n_iterations (lowered)")
    if bad:
        raise SpecError(f"--resume: the spec differs from the one {sweep_dir} was started with in {', '.join(bad)}; "
                        f"a sweep grows only by {GROWABLE}{GROWABLE_SEARCH if 'search' in resolved else ''}: start "
                        "a new sweep (without --resume) for other changes")


def planned_jobs(spec: SweepSpec, saved: dict | None) -> list[ChainJob]:
    """The trials of `spec`: those the sweep planned before (sweep.json's "trials", on
    the current spec's grid points, so longer chains run on in the same trials), and
    blocks of the seeds they do not cover."""
    if saved is None:
        return spec.jobs()
    points = {point.key: point for point in spec.points}
    trials = saved.get("trials")
    if trials is None:  # a sweep.json from before sweeps could grow: the trials its spec made
        trials = [[job.key, job.point.key, list(job.seeds)] for job in _spec_of(saved["spec"]).jobs()]
    if not (isinstance(trials, list) and all(
            isinstance(t, list) and len(t) == 3 and isinstance(t[0], str) and t[1] in points
            and isinstance(t[2], list) and t[2] and all(isinstance(s, int) for s in t[2]) for t in trials)):
        raise SpecError("--resume: sweep.json's trials do not match this spec's grid points")
    jobs = [ChainJob(key, points[point_key], tuple(seeds)) for key, point_key, seeds in trials]
    covered = {seed for _, _, seeds in trials for seed in seeds}
    new_seeds = tuple(seed for seed in spec.seeds if seed not in covered)
    if new_seeds:
        jobs += dataclasses.replace(spec, seeds=new_seeds).jobs()
    return jobs


def _spec_of(resolved: dict) -> SweepSpec:
    from collapse_ray.sweep.spec import parse_spec

    raw = {key: value for key, value in resolved.items() if not (key == "cases" and not value)}
    return parse_spec(raw)


SWEEP_KEYS = ("spec", "tracking_uri", "experiment", "sweep_run_id", "status")
MAX_SWEEP_FILE_BYTES = 16 * 2**20


def read_sweep_file(sweep_dir: Path) -> dict[str, Any]:
    """A sweep folder's sweep.json, or SpecError naming what is wrong with it."""
    if not sweep_dir.is_dir():
        raise SpecError(f"--resume: {sweep_dir} is not a folder (give the sweep folder that holds {SWEEP_FILE})")
    from collapse_ray.core.checkpoint import CheckpointFormatError, read_json

    path = sweep_dir / SWEEP_FILE
    if not path.exists():
        raise SpecError(f"--resume: {path} is missing: {sweep_dir} is not a sweep folder")
    try:
        saved = read_json(path, MAX_SWEEP_FILE_BYTES)
    except CheckpointFormatError as err:
        raise SpecError(f"--resume: {path} is {err}, so not a sweep file") from None
    if not isinstance(saved, dict) or any(key not in saved for key in SWEEP_KEYS) or not all(
            isinstance(saved[key], str) for key in SWEEP_KEYS[1:]):
        raise SpecError(f"--resume: {path} is not a sweep file (it needs the keys {', '.join(SWEEP_KEYS)})")
    return saved


def run_sweep(
    spec: SweepSpec,
    out_root: str | Path = "results",
    tracking_uri: str | None = None,
    address: str | None = None,
    resume: bool | str | Path = False,
    source: str | None = None,
) -> SweepOutcome:
    """Run every job of `spec` with Ray Tune, logging to MLflow; returns where things are.
    `source`: where the spec came from (its file), for the sweep run's Source."""
    from collapse_ray.tracking import check_reachable, credentials_in_environment, refuse_if_secret_in, resolve_tracking_uri

    started = time.perf_counter()
    out_root = Path(out_root).resolve()
    resolved = json.loads(json.dumps(spec.resolved_dict()))  # as it reads back from sweep.json
    if resume:
        sweep_dir = (Path(resume).resolve() if not isinstance(resume, bool)
                     else find_resumable(out_root, spec.name, resolved))
        saved = read_sweep_file(sweep_dir)
        if saved["spec"] != resolved:
            check_growable(saved["spec"], resolved, sweep_dir)
        jobs = planned_jobs(spec, saved)
        tracking_uri = _resumed_tracking_uri(saved["tracking_uri"], tracking_uri)
        _check_chain_folders(sweep_dir, jobs)
    else:
        jobs = spec.jobs()
        sweep_dir = new_sweep_dir(out_root, spec.name)
        tracking_uri = resolve_tracking_uri(tracking_uri, out_root)
    # A password in the URI moves to MLflow's own variables for the sweep's duration (the
    # embedded Ray's workers inherit them): the URI then goes into Tune's files,
    # sweep.json and output without it.
    refuse_if_secret_in(tracking_uri, **{"sweep folder's path": str(sweep_dir), "spec": json.dumps(resolved),
                                         "spec's header comment": spec.description})
    with credentials_in_environment(tracking_uri) as tracking_uri:
        refuse_if_secret_in(tracking_uri, **{"URI passed to the trials": tracking_uri})
        check_reachable(tracking_uri)
        resumed_run_id = saved["sweep_run_id"] if resume else None
        written: dict[str, Any] = {}  # the sweep's state once sweep.json holds it, and its client
        try:
            with _interrupts_recorded():
                return _fan_out(spec, jobs, resolved, sweep_dir, tracking_uri, address, resumed_run_id, started,
                                written, source)
        except _Signalled as stop:
            _mark_interrupted(sweep_dir, written)
            raise SweepInterrupted(stop.signum, sweep_dir, resumable=bool(written)) from None


def _mark_interrupted(sweep_dir: Path, written: dict[str, Any]) -> None:
    """sweep.json and the parent run say "interrupted" / KILLED (the chains' own runs
    stay open: a resume reuses them)."""
    if not written:
        return
    state = {**written["state"], "status": "interrupted"}
    _write_json(sweep_dir / SWEEP_FILE, state)
    _conclude(written)  # the chains finished so far, on the sweep run
    try:
        written["client"].set_terminated(state["sweep_run_id"], "KILLED")
    except Exception as err:  # noqa: BLE001 - the store may be what is away; sweep.json says it
        say(f"  (could not mark MLflow run {state['sweep_run_id']} KILLED: {str(err).splitlines()[0][:200]})")


class NotOnLoopback(Exception):
    """The embedded Ray came up on a routable node IP, so its servers listen beyond this machine."""


def _refuse_unless_on_loopback() -> None:
    """Stop the embedded Ray unless its node IP is a loopback address. Ray 2.60 binds its
    servers to loopback only then, and to every interface otherwise; the CLI sets
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before ray is imported to get there, a knob Ray
    documents for macOS and Windows only, so a Ray that ignores it must not go unnoticed."""
    node_ip = ray.util.get_node_ip_address()
    address = ipaddress.ip_address(node_ip)
    if (getattr(address, "ipv4_mapped", None) or address).is_loopback:
        return
    ray.shutdown()
    raise NotOnLoopback(f"the embedded Ray's node IP is {node_ip}, not a loopback address, so its servers would "
                        "listen on every interface; run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 set before ray is "
                        "imported (collapse-ray run sets it unless it is set already), or pass --address")


def _fan_out(spec: SweepSpec, jobs: list[ChainJob], resolved: dict, sweep_dir: Path, tracking_uri: str,
             address: str | None, resumed_run_id: str | None, started: float, written: dict[str, Any],
             source: str | None = None) -> SweepOutcome:
    """The sweep proper, once its folder and tracking store are settled (resumed_run_id:
    the parent run of the sweep being resumed, else None for a new sweep). Fills
    `written` once sweep.json exists, so an interrupt knows whether a resume can work."""
    from collapse_ray.tracking import (
        cell_run_names,
        client_for,
        default_artifact_root,
        ensure_experiment,
        grow_sweep_run,
        real_data_datasets,
        start_sweep_run,
    )

    address = address or os.environ.get("RAY_ADDRESS")
    owns_ray = not ray.is_initialized()
    if owns_ray:
        armed = signal.getsignal(signal.SIGTERM) is _on_interrupt
        try:
            if address:
                ray.init(address=address, logging_level="WARNING")
            else:
                # An embedded local Ray ("local": never a cluster some `ray start` left running);
                # the dashboard is only needed for `ray job submit`.
                ray.init(address="local", include_dashboard=False, logging_level="WARNING", configure_logging=True)
                _refuse_unless_on_loopback()
        except SystemExit:  # ray.init's own SIGTERM handlers exit (sys.exit) while it starts
            if not armed or signal.getsignal(signal.SIGTERM) is _on_interrupt:
                raise
            ray.shutdown()
            raise _Signalled(signal.SIGTERM) from None
        if armed:  # ray.init sets SIGTERM handlers that exit at once: ours again
            _arm_interrupts()
        if _SEEN.signum is not None:  # while Ray was starting: stop what it started
            ray.shutdown()
            _raise_if_interrupted()
    try:  # before anything is written: a chain that cannot be placed is a spec error
        _check_fits_cluster(spec)
    except SpecError:
        if owns_ray:
            ray.shutdown()
        raise

    client = client_for(tracking_uri)
    experiment_id = ensure_experiment(client, spec.name, default_artifact_root(tracking_uri))
    datasets = real_data_datasets(spec.points)
    if resumed_run_id is not None:
        sweep_run_id = resumed_run_id
        client.update_run(sweep_run_id, status="RUNNING")
        grow_sweep_run(client, sweep_run_id, resolved)  # (the same spec again when not grown)
    else:
        sweep_dir.mkdir(parents=True)
        stamp = sweep_dir.name  # e.g. 20261201T104430149429Z: the run is "quickstart 1201-104430"
        sweep_run_id = start_sweep_run(client, experiment_id, f"{spec.name} {stamp[4:8]}-{stamp[9:15]}", sweep_dir,
                                       resolved, description=spec.description, source=source, datasets=datasets)
    state = {
        "spec": resolved,
        "tracking_uri": tracking_uri,
        "experiment": spec.name,
        "sweep_run_id": sweep_run_id,
        "status": "running",
        "trials": [[job.key, job.point.key, list(job.seeds)] for job in jobs],
    }
    _write_json(sweep_dir / SWEEP_FILE, state)
    written.update(state=state, client=client, spec=spec, jobs=jobs, experiment_id=experiment_id, sweep_dir=sweep_dir)
    run_names = cell_run_names(jobs)
    job_configs = {j.key: {"key": j.key, "run_name": run_names[j.key], "n_iterations": j.point.chain.n_iterations}
                   for j in jobs}
    searcher = None
    if spec.search.adaptive:  # the cells an adaptive search picks, a batch at a time (collapse_ray/sweep/contour_searcher.py)
        from collapse_ray.sweep.contour_searcher import ContourSearcher, mlflow_losses, open_search
        from collapse_ray.sweep.contour_search import STATE_FILE

        search = open_search(spec, jobs, sweep_dir, ray.cluster_resources().get("CPU", 1))
        searcher = ContourSearcher(search, sweep_dir / STATE_FILE, job_configs,
                                   mlflow_losses(client, tracking_uri, experiment_id, sweep_run_id))
        written["search"] = search
        say(f"sweep {spec.name}: contour search ({spec.search.acquisition}, {search.batch_size} cells a batch) over "
            f"{len(search.cells)} cells, {len(jobs)} trials at most -> {sweep_dir}")
    else:
        say(f"sweep {spec.name}: {len(jobs)} trials ({len(spec.points)} grid points x {len(spec.seeds)} seeds) -> {sweep_dir}")

    try:
        for point in spec.points:  # files every cell reads (e.g. sft's synthetic pools), made once, here
            prepare = getattr(point.task, "prepare_sweep", None)
            if prepare is not None:
                prepare(sweep_dir / "chains" / SHARED_FOLDER)
        trainable = tune.with_resources(tune.with_parameters(chain_trial, jobs={j.key: j for j in jobs}),
                                        {"cpu": spec.run.cpus_per_trial})
        # every job once (a grid search), or those the contour search suggests
        jobs_space = {} if searcher else {"job": tune.grid_search([job_configs[j.key] for j in jobs])}
        search_config = {"search_alg": searcher, "num_samples": -1} if searcher else {}
        tuner = tune.Tuner(
            trainable,
            param_space={
                **jobs_space,
                "sweep": {
                    "tracking_uri": tracking_uri,
                    "experiment_id": experiment_id,
                    "sweep_run_id": sweep_run_id,
                    "sweep_dir": str(sweep_dir),
                    "datasets": [d.to_dictionary() for d in datasets],
                },
            },
            tune_config=tune.TuneConfig(
                reuse_actors=True,
                max_concurrent_trials=spec.run.max_concurrent_trials or None,
                trial_name_creator=lambda t: t.config["job"]["key"],
                trial_dirname_creator=lambda t: t.trial_id,
                **search_config,
            ),
            run_config=tune.RunConfig(
                name=f"tune-{int(time.time())}",
                storage_path=str(sweep_dir / "tune"),
                failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
                callbacks=[ProgressCallback(len(jobs), started, at_most=searcher is not None)],
                verbose=0,
            ),
        )
        _raise_if_interrupted()
        _SEEN.tune_running = True
        try:
            grid = tuner.fit()
        except Exception as err:  # Tune reading back its own half-written files, say
            _raise_if_disk_fault(err, sweep_dir)
            raise
        finally:
            _SEEN.tune_running = False
        _raise_if_interrupted()
        n_failed = sum(1 for r in grid if r.error is not None)
        disk_fault = _disk_fault_of([r.error for r in grid if r.error is not None], sweep_dir)
        # a trial Tune stopped without an error (it was interrupted) did not finish either
        unfinished = [r for r in grid if r.error is None and (r.metrics or {}).get("iteration") !=
                      r.config["job"]["n_iterations"]]
    finally:
        if owns_ray:
            ray.shutdown()
    if unfinished:
        raise _Signalled(signal.SIGINT)

    state["status"] = "finished" if n_failed == 0 else "failed"
    _write_json(sweep_dir / SWEEP_FILE, state)
    conclusion = _conclude(written)
    client.set_terminated(sweep_run_id, "FINISHED" if n_failed == 0 else "FAILED")
    n_trials = len(jobs) if searcher is None else len(grid)  # an adaptive search runs some of them
    return SweepOutcome(sweep_dir, tracking_uri, spec.name, sweep_run_id, n_trials, n_failed,
                        time.perf_counter() - started, disk_fault, experiment_id, conclusion)


def _conclude(written: dict[str, Any]):
    """The sweep's cell runs, saved view, per-cell table and figures (collapse_ray.sweep.cells): a
    convenience, which never fails a sweep; None when it could not be made."""
    from collapse_ray.sweep.cells import conclude_sweep

    spec, state = written["spec"], written["state"]
    jobs, contour = written["jobs"], None
    try:
        search = written.get("search")
        if search is not None:  # an adaptive search: the cells it ran, and its estimate over every cell
            from collapse_ray.sweep.contour_search import STATE_FILE

            jobs = [job for job in jobs if job.key in search.results]
            contour = search.estimate()
            search.save(written["sweep_dir"] / STATE_FILE)  # with the model the estimate fitted
        return conclude_sweep(written["client"], state["tracking_uri"], written["experiment_id"], spec.name,
                              state["sweep_run_id"], jobs,
                              list(dict.fromkeys(key for point in spec.points for key, _ in point.swept)),
                              written["sweep_dir"], spec.description,
                              figures=os.environ.get(FIGURES_ENV, "1") != "0", contour=contour)
    except Exception as err:  # noqa: BLE001
        say(f"  (could not summarise the sweep on its MLflow run: {str(err).splitlines()[0][:200]})")
        return None


FIGURES_ENV = "COLLAPSE_RAY_SWEEP_FIGURES"  # 0: a sweep's end draws no figures (its table and view stay)


def _resumed_tracking_uri(saved: str, given: str | None) -> str:
    """The store a sweep was started with (sweep.json keeps it without credentials); a
    given URI is used instead when it names the same store, for its credentials."""
    from collapse_ray.tracking import redact_uri, split_credentials

    given = given or os.environ.get("MLFLOW_TRACKING_URI")
    if given and saved in (split_credentials(given)[0], redact_uri(given)):
        return given
    return saved


def _disk_fault_of(errors: list, sweep_dir: Path) -> str | None:
    """One line for the first trial error that was a full or read-only disk, else None."""
    from collapse_ray.tracking import disk_fault_line, is_disk_fault

    for err in errors:
        if is_disk_fault(err):
            return f"{sweep_dir}: {disk_fault_line(err)}"
    return None


def _raise_if_disk_fault(err: Exception, sweep_dir: Path) -> None:
    """StorageFault naming the folder when the disk under it is full or read-only (then
    whatever failed, failed because of it)."""
    from collapse_ray.tracking import StorageFault, disk_fault_line, is_disk_fault

    if is_disk_fault(err):
        raise StorageFault(f"{sweep_dir}: {disk_fault_line(err)}") from err
    try:
        full = os.statvfs(sweep_dir).f_bavail == 0
    except OSError:
        return
    if full or not os.access(sweep_dir, os.W_OK):
        raise StorageFault(f"{sweep_dir}: the disk is full or read-only (Ray Tune failed on it: "
                           f"{type(err).__name__})") from err


def _check_chain_folders(sweep_dir: Path, jobs: list[ChainJob]) -> None:
    """Before a resume starts anything: every chain's checkpoint and pool shards must be
    readable and its own, or the error names the file (not a trial failure later)."""
    from collapse_ray.core.loop import check_checkpoint

    keys = {job.key: job for job in jobs}
    for folder in sorted((sweep_dir / "chains").glob("*")):
        if folder.name.startswith("_") or not folder.is_dir():
            continue  # shared files (e.g. chains/_shared)
        job = keys.get(folder.name)
        if job is None:
            raise SpecError(f"--resume: {folder} belongs to no chain of this spec; move it away")
        try:
            check_checkpoint(folder, job.seeds)
        except ValueError as err:
            raise SpecError(f"--resume: {err}") from None


def _check_fits_cluster(spec: SweepSpec) -> None:
    """Tasks that place work of their own on the cluster (Ray Train workers, Ray Data
    actors) check that one chain fits it, before any trial starts."""
    cpus = ray.cluster_resources().get("CPU", 0)
    for point in spec.points:
        check_cluster = getattr(point.task, "check_cluster", None)
        if check_cluster is not None:
            check_cluster(spec.run, cpus, point.key)


def say(message: str) -> None:
    """Progress line on the driver's stdout (looked up at call time: Tune pickles callbacks)."""
    print(message, flush=True)


def _write_json(path: Path, data: dict) -> None:
    atomic.write_text(path, json.dumps(data, indent=2))


class ProgressCallback(Callback):
    """One line per finished trial (with an ETA), and per checkpoint of long chains."""

    def __init__(self, n_trials: int, sweep_started: float | None = None, at_most: bool = False):
        self.n_trials = n_trials
        self.at_most = at_most  # an adaptive search runs some of the n_trials: no ETA, "of at most"
        self.done = 0
        self.start = time.perf_counter()  # the trials' start, for the ETA
        # "elapsed" counts from the sweep's start (Ray's start-up too), as the closing line does
        self.sweep_started = self.start if sweep_started is None else sweep_started

    def on_trial_result(self, iteration, trials, trial, result, **info):
        total = trial.config["job"]["n_iterations"]
        if result.get("iteration", total) < total:
            say(f"  {trial.config['job']['key']}: iteration {result['iteration']}/{total}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        now = time.perf_counter()
        eta = (now - self.start) / self.done * (self.n_trials - self.done)
        # a trial a resumed or grown sweep had finished before reran nothing: say so, not "done"
        what = "already finished, kept" if (trial.last_result or {}).get("skipped") else "done"
        if self.at_most:
            say(f"[{self.done} of at most {self.n_trials}] {trial.config['job']['key']} {what}; elapsed "
                f"{now - self.sweep_started:.0f}s")
            return
        say(f"[{self.done}/{self.n_trials}] {trial.config['job']['key']} {what}; elapsed "
            f"{now - self.sweep_started:.0f}s, eta {eta:.0f}s")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.done += 1
        say(f"[{self.done}/{self.n_trials}] {trial.config['job']['key']} FAILED: {trial.error_file}")
