"""The tracking store: its URI, a client that rides out a store briefly away, the check
that it is usable before work starts, a new SQLite store started from a migrated
template, and experiments with their artifacts beside the database."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from urllib.parse import unquote

from collapse_ray import atomic
from collapse_ray.environment import environment_restored
from collapse_ray.faults import StorageFault, disk_fault_line, is_disk_fault
from collapse_ray.tracking.credentials import redact_uri, scrub, split_credentials
from collapse_ray.validation import SpecError

SQLITE = "sqlite:///"
RETRY_ENV = "COLLAPSE_RAY_TRACKING_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 120.0  # on top of MLflow's own HTTP retries


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    return Path(uri[len(SQLITE):].split("?", 1)[0]) if uri.startswith(SQLITE) else None


def resolve_tracking_uri(uri: str | None, out_root: str | Path) -> str:
    """An absolute tracking URI: the flag, else MLFLOW_TRACKING_URI, else SQLite under out_root.

    Absolute because Tune trials and `ray job submit` run in other working directories,
    where a relative sqlite path would silently create a fresh database each.
    """
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"{SQLITE}{(Path(out_root) / 'mlflow.db').resolve()}"
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        query = uri.partition("?")[1] + uri.partition("?")[2]
        return f"{SQLITE}{path.resolve()}{query}"
    if uri.startswith(("http://", "https://", "sqlite:////", "postgresql", "mysql", "databricks")):
        return uri
    raise SpecError(
        "tracking URI must be sqlite:///PATH, http(s)://HOST:PORT or a database URL "
        f"(MLflow 3 refuses plain file stores); got {uri!r}"
    )


def client_for(uri: str) -> "RetryingClient":
    from mlflow.tracking import MlflowClient

    return RetryingClient(MlflowClient(tracking_uri=with_credentials(uri)), uri)


def with_credentials(uri: str) -> str:
    """The full URI behind a redacted one (see credentials.credentials_to_environment)."""
    if "***" not in uri:
        return uri
    full = os.environ.get("MLFLOW_TRACKING_URI", "")
    if redact_uri(full) != uri:
        raise TrackingUnavailable(f"tracking URI {uri} needs its password: set MLFLOW_TRACKING_URI to the full URL "
                                  "in this process's environment (on a cluster: on every node)")
    return full


SUPPRESS_RUN_LINKS = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"  # read by MLflow at each call


class RetryingClient:
    """An MlflowClient whose calls ride out a tracking store that is briefly away (a
    restarting server, a locked SQLite file), and fail loudly when it stays away.

    Safe for metrics: a retried `log_batch` resends the same (key, step, timestamp,
    value) rows, which the store de-duplicates, so nothing is logged twice.
    """

    def __init__(self, client, uri: str, seconds: float | None = None):
        self._client = client
        self._shown_uri = redact_uri(uri)  # for messages; parsed once, not per call
        self._seconds = float(os.environ.get(RETRY_ENV, DEFAULT_RETRY_SECONDS)) if seconds is None else seconds

    def __getattr__(self, name: str):
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def call(*args, **kwargs):
            return _retry(lambda: method(*args, **kwargs), self._seconds, f"{name} on {self._shown_uri}")

        return call

    def set_terminated(self, run_id: str, status: str | None = None, end_time: int | None = None) -> None:
        """Without MLflow's "View run at" link, which it prints for each run it ends on a
        server: streamed from every trial that is two lines per cell, and the command line
        names the UI itself."""
        with environment_restored([SUPPRESS_RUN_LINKS]):
            os.environ[SUPPRESS_RUN_LINKS] = "true"
            _retry(lambda: self._client.set_terminated(run_id, status, end_time), self._seconds,
                   f"set_terminated on {self._shown_uri}")


class TrackingUnavailable(RuntimeError):
    """The tracking store stayed unreachable; the chain's checkpoint keeps its progress."""


def _retry(call, seconds: float, what: str):
    """Call until it succeeds or `seconds` have passed (backing off up to 8 s). A full or
    read-only disk is not waited out: it raises StorageFault at once."""
    started = time.monotonic()
    deadline = started + seconds
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as err:
            if is_disk_fault(err):
                raise StorageFault(f"{what}: {disk_fault_line(err)}") from err
            if not _is_transient(err) or time.monotonic() + delay > deadline:
                if _is_transient(err):
                    # the real window: each attempt may itself have spent MLflow's HTTP retries
                    raise TrackingUnavailable(
                        f"tracking store unavailable for {time.monotonic() - started:.0f} s ({what}; retried for "
                        f"up to {seconds:g} s after MLflow's own retries); progress is kept in the chain "
                        f"checkpoints: rerun with --resume once it is back. Last error: {_first_line(err)}"
                    ) from err
                raise
            time.sleep(delay)
            delay = min(2 * delay, 8.0)


def _is_transient(err: Exception) -> bool:
    """Connection trouble or a busy store, not a request the store refused."""
    import sqlite3

    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    if isinstance(err, (OSError, RequestException, sqlite3.OperationalError)):
        return True
    if isinstance(err, MlflowException):
        text = str(err)
        return err.error_code in ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED") or any(
            marker in text for marker in ("Max retries exceeded", "Connection", "database is locked", "timed out")
        )
    return "database is locked" in str(err)


def _first_line(err: Exception) -> str:
    text = scrub(str(err).strip())
    return text.splitlines()[0][:300] if text else type(err).__name__


def check_reachable(uri: str) -> None:
    """Fail before any work starts when the tracking store cannot be used."""
    path = sqlite_path(uri)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            start_from_migrated_store(path)
        return
    if uri.startswith(("http://", "https://")):
        import urllib.request

        import base64

        public, user, password = split_credentials(uri)  # urllib does not read URL credentials
        request = urllib.request.Request(public.rstrip("/") + "/health")
        user = unquote(user) if user else os.environ.get("MLFLOW_TRACKING_USERNAME")
        password = unquote(password) if password else os.environ.get("MLFLOW_TRACKING_PASSWORD", "")
        if user:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            urllib.request.urlopen(request, timeout=10).read()
        except OSError as err:
            raise SpecError(scrub(f"tracking server {redact_uri(uri)} is unreachable: {err}")) from None
        return
    try:  # a database URL: one cheap query, without MLflow's long retries
        client_for(uri)._client.search_experiments(max_results=1)
    except Exception as err:  # noqa: BLE001 - any driver error means "cannot use it"
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SpecError(scrub(f"tracking store {redact_uri(uri)} is unusable: {first_line}")) from None


def start_from_migrated_store(path: Path) -> None:
    """A new SQLite store starts as a copy of an empty one whose schema is migrated, kept
    per MLflow version in the user's cache: MLflow otherwise runs its ~60 schema migrations
    for every new store (2-3 s on a quiet core, 15 s on a loaded one) before a trial starts.
    Best effort: without the template MLflow migrates as before."""
    template = _migrated_store_template()
    if template is None:
        return
    try:
        with atomic.replacing(path) as hidden:
            shutil.copyfile(template, hidden)
    except OSError:
        pass  # MLflow creates the store itself; a real disk fault surfaces there


def _migrated_store_template() -> Path | None:
    import mlflow

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "collapse_ray"
    template = cache / f"mlflow-{mlflow.__version__}-empty.db"
    if template.is_file() and _is_empty_store(template):
        return template
    try:
        import sqlalchemy
        from mlflow.store.db.utils import _initialize_tables  # private: a moved name only costs the speed-up

        with atomic.replacing(template) as hidden:
            hidden.unlink(missing_ok=True)
            engine = sqlalchemy.create_engine(f"{SQLITE}{hidden}")
            try:
                _initialize_tables(engine)
            finally:
                engine.dispose()
    except Exception:  # noqa: BLE001 - any failure: MLflow migrates the store itself
        return None
    return template if _is_empty_store(template) else None


def _is_empty_store(path: Path) -> bool:
    """No experiment and no run: a template somebody filled is not copied into a new store."""
    import sqlite3
    from contextlib import closing

    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return all(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0 for table in ("experiments", "runs"))
    except sqlite3.Error:
        return False


ARTIFACTS_DIR = "mlartifacts"  # beside mlflow.db: the results folder holds everything


def default_artifact_root(uri: str) -> Path | None:
    """Where a SQLite store's artifacts go: beside its database, so --out is self-contained
    (MLflow's own default is ./mlruns in whatever the working directory is, which under
    `ray job submit` is a temporary copy). None for servers and databases: they decide."""
    path = sqlite_path(uri)
    return path.parent / ARTIFACTS_DIR if path is not None else None


# MLflow's experiment-type tag. 3.17's UI bundle reads it only when its workflow-type
# switch is off, and the build has it on (the flag is a constant true): the layout comes
# from the link's `workflowType` parameter, else the browser's last choice (localStorage
# mlflow.workflowType, GenAI by default). Measured in Chromium: a run page without the
# parameter opens under GenAI's "Evaluations", with it under "Runs". Other versions may read the tag.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"


def ensure_experiment(client, name: str, artifact_root: Path | None = None) -> str:
    """Create the experiment once, on the driver (concurrent SQLite schema creation races),
    with its artifacts under `artifact_root` when given."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        location = None if artifact_root is None else (artifact_root / name).resolve().as_uri()
        experiment_id = client.create_experiment(name, artifact_location=location,
                                                 tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING})
    except Exception:  # created meanwhile by another driver
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
    return experiment_id
