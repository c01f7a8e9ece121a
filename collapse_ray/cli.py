"""`collapse-ray`: validate and run sweep specs, and read their results back.

    collapse-ray validate sweeps/quickstart.yaml [--print | --trials]
    collapse-ray run sweeps/quickstart.yaml [--set chain.n_iterations=5 ...] [--resume]
    collapse-ray results quickstart --out results/quickstart.csv

Bad input (the spec, a --set override or the command line itself) exits with status 2
and one line on stderr, `error: ...`, naming the field, before any Ray or MLflow work
starts.

Quiet by default: Ray's, Tune's and MLflow's own banners and progress bars are left out
(the per-trial progress and the closing summary stay); -v / --verbose brings them back.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from collapse_ray import __version__
from collapse_ray.environment import environment_restored
from collapse_ray.faults import StorageFault, disk_fault_line, is_disk_fault
from collapse_ray.sweep.spec import SweepSpec, load_spec
from collapse_ray.tracking.credentials import scrub
from collapse_ray.tracking.store import TrackingUnavailable
from collapse_ray.validation import SpecError, one_line

EXIT_BAD_INPUT = 2
TABLE_SUFFIXES = (".csv", ".parquet")


class Terminated(KeyboardInterrupt):
    """SIGTERM outside a sweep, handled like Ctrl-C."""

    signum = signal.SIGTERM


def _terminated(signum, frame):
    raise Terminated()


class UsageError(Exception):
    """A command line argparse refuses; the message is one line."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one `error:` line (no usage block), like bad specs.
    Subparsers are made with the parent's class, so they share this."""

    def error(self, message):
        raise UsageError(one_line(f"{message} (see {self.prog} --help)"))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="collapse-ray", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"collapse-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def verbose_arg(p):
        p.add_argument("-v", "--verbose", action="store_true",
                       help="also show Ray's, Tune's and MLflow's own messages and progress bars")

    def spec_args(p):
        p.add_argument("spec", help="sweep spec YAML, e.g. sweeps/quickstart.yaml")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a dotted key, e.g. --set chain.n_iterations=5 (repeatable); a key the "
                            "grid sweeps is refused: change its axis with --set grid.task.bandwidth=[0.1,0.2]")
        verbose_arg(p)

    p = sub.add_parser("validate", help="validate a spec and print what it would run")
    spec_args(p)
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--print", dest="print_spec", action="store_true",
                       help="print the resolved spec (defaults and --set filled in) as YAML")
    shown.add_argument("--trials", action="store_true",
                       help="print the trials, one line per grid point x block of seeds")
    shown.add_argument("--cost", action="store_true",
                       help="print what it would cost, per trial and in total: FLOPs, tokens, time at a throughput "
                            "profile, GPU-hours, memory per GPU, disk (collapse_ray/sweep/cost.py)")
    p.add_argument("--profile", default=None, metavar="PATH",
                   help="with --cost: the throughput profile (JSON) to time it with (default: $COLLAPSE_RAY_PROFILE or "
                        "collapse_ray/profiles/cpu.json; GPU specs: the stated placeholder collapse_ray/profiles/"
                        "gpu_h100_nominal.json); benchmarks/throughput_profile.py measures one")

    p = sub.add_parser("run", help="run a spec with Ray Tune, logging to MLflow")
    spec_args(p)
    p.add_argument("--out", default="results", help="results folder (default: ./results)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under --out)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="SWEEP_DIR",
                   help="continue the newest sweep of this spec (or the one in SWEEP_DIR): finish an unfinished "
                        "one, or grow a finished one by the seeds and iterations the spec adds")

    p = sub.add_parser("results", help="write one long table (CSV or Parquet) of a sweep's results")
    p.add_argument("experiment", help="experiment (sweep) name, e.g. quickstart")
    p.add_argument("--out", required=True, help="output file, .csv or .parquet")
    verbose_arg(p)
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite under --results-dir)")
    p.add_argument("--results-dir", default="results", help="where `run --out` wrote (default: ./results)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--sweep-run-id", default=None, help="a particular sweep (parent run); default: the newest")
    group.add_argument("--all-sweeps", action="store_true", help="every sweep of the experiment")
    return parser


def _describe(spec: SweepSpec) -> str:
    jobs = spec.jobs()
    return (
        f"{spec.name}: {len(spec.points)} grid points x {len(spec.seeds)} seeds -> "
        f"{len(jobs)} trials, {sum(len(j.seeds) for j in jobs)} chains of "
        f"{max(p.chain.n_iterations for p in spec.points)} iterations at most"
        + (f"; search {spec.search.method} ({spec.search.acquisition}): runs only the cells it picks, "
           f"{'at most ' + str(spec.search.budget) if spec.search.budget else 'until every side is decided'}"
           if spec.search.adaptive else "")
    )


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)  # --help prints and raises SystemExit(0), as usual
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if args.command == "validate":
            return _validate(args)
        if args.command == "run":
            local_ray = not (args.address or os.environ.get("RAY_ADDRESS"))  # else a cluster, left as it is
            if threading.current_thread() is threading.main_thread():
                previous = signal.signal(signal.SIGTERM, _terminated)  # (a sweep sets its own meanwhile)
                try:
                    with _embedded_ray_private(local_ray), _quiet(not args.verbose, local_ray=local_ray):
                        return _run(args)
                finally:
                    signal.signal(signal.SIGTERM, previous)
            with _embedded_ray_private(local_ray), _quiet(not args.verbose, local_ray=local_ray):
                return _run(args)
        if args.command == "results":
            with _quiet(not args.verbose, local_ray=False):
                return _results(args)
    except SpecError as err:
        print(f"error: {scrub(str(err))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:  # outside a sweep (which says for itself whether it can be resumed)
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"interrupted by {signal.Signals(signum).name}; no sweep was left unfinished by it, so there is "
              "nothing to resume", file=sys.stderr)
        return 128 + signum
    except TrackingUnavailable as err:  # progress is in the checkpoints: say how to go on
        print(f"error: {scrub(one_line(str(err)))}", file=sys.stderr)
        return 1
    except StorageFault as err:
        print(f"error: {scrub(one_line(str(err)))}; free space (or make it writable) and rerun with --resume",
              file=sys.stderr)
        return 1
    except OSError as err:  # the driver's own writes (sweep.json, Tune's files) on a full or read-only disk
        if not is_disk_fault(err):
            raise
        print(f"error: {one_line(disk_fault_line(err))}; free space (or make it writable) and rerun with --resume",
              file=sys.stderr)
        return 1
    return 1  # pragma: no cover


# Ray 2.60 has no bind option: its servers bind to loopback only when the node IP is a
# loopback address, and it rewrites an explicit 127.0.0.1 to the routable address. With
# this set to 0 before `ray` is first imported, the node IP is localhost (Ray's switch
# for macOS and Windows, undocumented on Linux: sweep/cluster.py checks the node IP after start).
LOOPBACK_KNOB = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"  # Ray reads RAY_AUTH_TOKEN, then this file, then ~/.ray/auth_token


@contextmanager
def _embedded_ray_private(local_ray: bool) -> Iterator[None]:
    """An embedded Ray kept to its owner (a cluster given by --address or RAY_ADDRESS is
    left alone): every server on loopback, and its token, which is what keeps other local
    users out of 127.0.0.1, never in a file they can read. Ray writes ~/.ray/auth_token
    readable by everyone (0644), so the token goes to a file only its owner reads: the one
    RAY_AUTH_TOKEN_PATH names (created so if missing), else one in a folder of this run's
    own, removed afterwards. A token in RAY_AUTH_TOKEN needs no file. The environment is
    put back on leaving (cli.main also runs in-process)."""
    if not local_ray:
        yield
        return
    with environment_restored([LOOPBACK_KNOB, TOKEN_PATH]):
        os.environ.setdefault(LOOPBACK_KNOB, "0")  # before anything imports ray: it is read once, at import
        if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get(TOKEN_PATH):
            if not os.environ.get("RAY_AUTH_TOKEN"):
                _owners_token_file(Path(os.environ[TOKEN_PATH]))
            yield
            return
        folder = tempfile.mkdtemp(prefix="collapse-ray-token-")  # mode 0700: this run's own
        try:
            os.environ[TOKEN_PATH] = str(_owners_token_file(Path(folder) / "auth_token"))
            yield
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _owners_token_file(path: Path) -> Path:
    """`path` holding a Ray token that only its owner can read: a new one is written with
    mode 0600 from the start (never readable in between); an existing one must be ours,
    and no one else's to read, or it is refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            info = path.stat()
        except OSError as err:  # e.g. a link to nowhere
            raise SpecError(f"{TOKEN_PATH} {str(path)!r} cannot be read ({err.strerror})") from None
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise SpecError(f"{TOKEN_PATH} {str(path)!r} can be read by other users (mode "
                            f"{stat.filemode(info.st_mode)}, owner uid {info.st_uid}); chmod 600 it, as its "
                            "owner, or name a new file") from None
        return path
    except OSError as err:
        raise SpecError(f"{TOKEN_PATH} {str(path)!r} cannot be created ({err.strerror})") from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes: 256 random bits
    return path


# Loggers whose INFO lines are banners, not news: MLflow creating or upgrading its tables.
QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic")


@contextmanager
def _quiet(quiet: bool, local_ray: bool) -> Iterator[None]:
    """Ray's, Tune's and MLflow's own chatter left out while a command runs (restored after,
    as cli.main also runs in-process): Tune's legacy reporter, silent at verbose=0 (the new
    one prints its configuration box and a TensorBoard hint at any verbosity); no MLflow
    artifact progress bars; no table-creation INFO lines. For an embedded local Ray,
    RAY_AUTH_MODE=token states Ray 2.60's default explicitly, which only drops its warning
    that the default applies (token authentication stays on)."""
    if not quiet:
        yield
        return
    env = {"RAY_AIR_NEW_OUTPUT": "0", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    if local_ray and "RAY_AUTH_MODE" not in os.environ:
        env["RAY_AUTH_MODE"] = "token"
    saved_levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    with environment_restored(env):
        os.environ.update(env)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in saved_levels.items():
                logging.getLogger(name).setLevel(level)


def _validate(args) -> int:
    if args.profile is not None and not args.cost:
        raise SpecError("--profile is read only with --cost")
    spec = load_spec(args.spec, args.overrides)
    if args.print_spec:  # the spec as it would run, like Hydra's --cfg job
        import yaml

        resolved = spec.resolved_dict()
        if not resolved["cases"]:  # (a spec gives cases as a non-empty list, or not at all)
            del resolved["cases"]
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
        return 0
    if args.cost:
        from collapse_ray.sweep.cost import report
        from collapse_ray.sweep.cost_profile import choose_profile

        print("\n".join(report(spec, choose_profile(spec, args.profile))))
        return 0
    if args.trials:
        for job in spec.jobs():
            print(job.key)
        print(f"# {_describe(spec)}")
        return 0
    print(f"ok: {_describe(spec)}")
    return 0


def _check_out(out: str) -> None:
    """--out is a results folder of its own: not the filesystem root (it would get
    /mlflow.db and a folder per sweep there), not an existing file."""
    path = Path(out).resolve()
    if path == path.parent:
        raise SpecError(f"--out must be a folder of its own below the filesystem root; got {out!r}")
    if path.exists() and not path.is_dir():
        raise SpecError(f"--out must be a folder; {out!r} is an existing file")
    existing = next(p for p in (path, *path.parents) if p.exists())  # (created later, by the run)
    if not os.access(existing, os.W_OK | os.X_OK):  # false on a read-only file system, even for root
        raise SpecError(f"--out {out!r} is not writable ({existing} is read-only or not ours)")
    if os.statvfs(existing).f_bavail == 0:
        raise SpecError(f"--out {out!r} is on a full disk (no space left in {existing})")


def _run(args) -> int:
    spec = load_spec(args.spec, args.overrides)  # validate everything before Ray starts
    _check_out(args.out)
    from collapse_ray.sweep.cluster import NotOnLoopback
    from collapse_ray.sweep.interrupts import SweepInterrupted
    from collapse_ray.sweep.run import run_sweep
    from collapse_ray.tracking.store import resolve_tracking_uri

    if not args.resume:
        resolve_tracking_uri(args.tracking_uri, args.out)  # a bad URI fails here, before Ray
    print(f"running {_describe(spec)}", flush=True)
    try:
        outcome = run_sweep(spec, out_root=args.out, tracking_uri=args.tracking_uri, address=args.address,
                            resume=args.resume, source=args.spec)
    except SweepInterrupted as stop:
        if stop.resumable:
            print(f"\n{stop}: progress is kept in the chain checkpoints of {stop.sweep_dir}; "
                  f"rerun with --resume to continue", file=sys.stderr)
        else:
            print(f"\n{stop} before the sweep started; nothing was written, so there is nothing to resume",
                  file=sys.stderr)
        return 128 + stop.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
    except NotOnLoopback as err:  # the machine's Ray, not the input: status 1
        print(f"error: {err}", file=sys.stderr)
        return 1
    ui_uri = outcome.tracking_uri
    print(f"\n{'finished' if outcome.n_failed == 0 else 'FAILED'}: {outcome.n_trials - outcome.n_failed}/"
          f"{outcome.n_trials} trials in {outcome.seconds:.1f}s")
    conclusion = outcome.conclusion
    if conclusion is not None:  # the answer first: the last iteration per cell, and the header's claim
        for line in conclusion.lines:
            print(f"  {line}")
    print(f"  sweep folder : {outcome.sweep_dir}")
    print(f"  MLflow store : {ui_uri} (experiment {outcome.experiment!r}, sweep run {outcome.sweep_run_id})")
    from collapse_ray.tracking.view import run_url, ui_url

    port = _free_ui_port()
    if ui_uri.startswith("sqlite:"):
        print(f"  MLflow UI    : mlflow ui --backend-store-uri {ui_uri} --host 127.0.0.1 --port {port}")
        server = f"http://127.0.0.1:{port}"
    else:
        server = ui_uri if ui_uri.startswith(("http://", "https://")) else "http://<your mlflow ui>"
    if outcome.experiment_id:
        print(f"  open         : {ui_url(server, outcome.experiment_id)}")
        print("                 (a line per cell of this sweep; or click 'Model training' in the side menu, then "
              "Views > collapse-ray)")
        print(f"  sweep run    : {run_url(server, outcome.experiment_id, outcome.sweep_run_id)}")
    where = (f" --tracking-uri {ui_uri}" if not ui_uri.startswith("sqlite:")
             else "" if args.out == "results" else f" --results-dir {args.out}")
    if conclusion is not None:
        print(f"  cell table   : {conclusion.table} (also on the sweep run: cells.csv)")
        if conclusion.figures:
            print(f"  figures      : {Path(conclusion.figures[0]).parent}/ ({len(conclusion.figures)} PNG, also on "
                  "the sweep run: Artifacts, figures/)")
    print(f"  results table: collapse-ray results {outcome.experiment} "
          f"--out {outcome.sweep_dir / (outcome.experiment + '.csv')}{where}")
    if outcome.disk_fault is not None:
        print(f"error: {outcome.n_failed} trials failed on {one_line(outcome.disk_fault)}; free space (or make it "
              "writable) and rerun with --resume", file=sys.stderr)
        return 1
    if outcome.n_failed:
        print(f"  {outcome.n_failed} trials failed; fix the cause and rerun with --resume", file=sys.stderr)
        return 1
    return 0


def _free_ui_port(preferred: int = 5000) -> int:
    """The port for the printed `mlflow ui` line: 5000 unless something listens there."""
    import socket

    for port in (preferred, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    return preferred


def _results(args) -> int:
    if Path(args.out).suffix not in TABLE_SUFFIXES:  # before anything is read or downloaded
        raise SpecError(f"--out must end in one of {{{', '.join(TABLE_SUFFIXES)}}}; got {args.out!r}")
    from collapse_ray.tracking.credentials import credentials_in_environment
    from collapse_ray.tracking.results import results_table, write_table
    from collapse_ray.tracking.store import check_reachable, resolve_tracking_uri, sqlite_path

    with credentials_in_environment(resolve_tracking_uri(args.tracking_uri, args.results_dir)) as uri:
        if sqlite_path(uri) is not None and not sqlite_path(uri).exists():
            raise SpecError(f"no MLflow store at {uri}; pass --tracking-uri or --results-dir")
        if sqlite_path(uri) is None:
            check_reachable(uri)  # a server that is down: one line now, not MLflow's retries
        table = results_table(uri, args.experiment, sweep_run_id=args.sweep_run_id, all_sweeps=args.all_sweeps)
    out = write_table(table, args.out)
    print(f"wrote {len(table)} rows ({table['run_key'].nunique()} runs x seeds x iterations) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
