"""MLflow: the store, runs for sweeps and chains, exactly-once metric logging, and the
results table read back from it.

Layout in MLflow: one experiment per sweep name; one parent run per `collapse-ray run`
(the resolved spec is its artifact `spec.yaml`); one child run per Ray Tune trial (a
grid point for a block of seeds). A child run's metric charts show, per iteration, the
mean over its seeds (`test_loss`) and its standard error (`test_loss_se`); the per-seed
rows are its Parquet artifact `chains.parquet`, which is what `results_table` reads,
and the same rows as `per_seed.json`, which MLflow's artifact view shows as a table.

Parameters use the spec's dotted keys on parent and chain runs alike (`chain.n_real`,
`task.dim`; the parent's swept axes as `grid.chain.n_real`); unset (null) values are left
out. What a grown sweep changes (`chain.n_iterations`, the seeds) are tags, since MLflow
parameters cannot change once logged.

The UI: MLflow 3.17 opens an experiment and a run page in its GenAI layout whatever the
experiment says (its GenAI / Model training switch decides; the `mlflow.experimentKind`
tag is set but not read there), so `ui_url` and `run_url` give links with
`workflowType=machine_learning`; `ui_url`'s opens the saved view "collapse-ray" (the
newest sweep's cell runs, one line per cell, test loss first, log axis where the values
span decades, standard errors in a folded section; a value grid's contour), which
`save_sweep_view` writes as an experiment tag the UI reads. Cell runs (collapse_ray.sweep.cells)
are children of the sweep run tagged collapse_ray.role = cell; they hold means only, so
`results_table` reads the chain runs alone.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
import re
import tempfile
import time
import json
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pandas as pd

from collapse_ray import atomic
from collapse_ray.environment import environment_restored
from collapse_ray.core.jobs import ChainJob
from collapse_ray.core.aggregate import mean_and_se
from collapse_ray.core.types import Metrics
from collapse_ray.validation import SpecError, as_flat_dict

JOB_KEY_TAG = "collapse_ray.job_key"
SWEEP_TAG = "collapse_ray.sweep_dir"
PARENT_TAG = "mlflow.parentRunId"
CHAIN_TABLE = "chains.parquet"
SAMPLES = "samples"  # per-iteration pictures of tasks that draw them: samples/iteration_TTT/<file>
MAX_METRICS_PER_BATCH = 1000  # MLflow's limit for one log_batch call
SQLITE = "sqlite:///"
RETRY_ENV = "COLLAPSE_RAY_TRACKING_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 120.0  # on top of MLflow's own HTTP retries
EXECUTION_ONLY = ("checkpoint_every", "persist_pool")  # chain fields that do not change results


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


# userinfo as SQLAlchemy reads it: the user up to ':' (no '/'), the password up to the
# first '@', so a raw '#', '/' or '?' in it stays in the password (urlsplit would end the
# authority there and see no password at all)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:(?P<user>[^:/@]*)(?::(?P<password>[^@]*))?@)?(?P<rest>.*)",
                       re.DOTALL)
# query parameters that carry credentials (libpq's password/sslpassword, tokens, keys)
_SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token|auth|credential|api[_-]?key|signature|^sig$|^key$",
                               re.IGNORECASE)
MIN_SCRUBBED = 4  # shorter credentials are not searched for in text (they match by chance)
_SECRETS: set[str] = set()  # every credential seen in a tracking URI, scrubbed from messages


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """(URI without user:password@, user, password), userinfo as written (not decoded)."""
    match = _USERINFO.fullmatch(uri)
    if match is None or match["user"] is None:
        return uri, None, None
    return match["scheme"] + match["rest"], match["user"], match["password"]


def _query_secrets(uri: str) -> list[tuple[int, int]]:
    """(start, end) of each credential-carrying query parameter's value."""
    spans = []
    if "?" not in uri:
        return spans
    offset = uri.index("?") + 1
    for pair in re.finditer(r"[^&;#]+", uri[offset:]):
        name, equals, _ = pair.group().partition("=")
        if equals and _SECRET_PARAMETER.search(unquote(name)):
            spans.append((offset + pair.start() + len(name) + 1, offset + pair.end()))
    return spans


def uri_secrets(uri: str) -> set[str]:
    """The credentials in a URI (password, secret query values), as written and decoded."""
    public, _, password = split_credentials(uri)
    found = {password} if password else set()
    found |= {public[a:b] for a, b in _query_secrets(public)}
    return {form for value in found for form in (value, unquote(value)) if form and form != "***"}


def redact_uri(uri: str) -> str:
    """The URI with every credential (password, secret query values) replaced by ***."""
    _SECRETS.update(uri_secrets(uri))
    public, user, password = split_credentials(uri)
    if password is not None:
        scheme, rest = public.split("://", 1)
        uri = f"{scheme}://{user}:***@{rest}"
    for a, b in reversed(_query_secrets(uri)):
        uri = uri[:a] + "***" + uri[b:]
    return uri


def scrub(text: str) -> str:
    """`text` with every credential seen in a tracking URI replaced by *** (for messages
    that quote a driver's error, which may quote the URL)."""
    for secret in sorted(_SECRETS, key=len, reverse=True):
        if len(secret) >= MIN_SCRUBBED:  # a 1-3 character password would blank out words
            text = text.replace(secret, "***")
    return text


def refuse_if_secret_in(uri: str, **written: str) -> None:
    """Refuse to start when a credential would end up in something the sweep writes
    (its folder's name, the spec, a URI that could not be redacted)."""
    secrets = uri_secrets(uri)
    for what, text in written.items():
        if any(len(secret) >= MIN_SCRUBBED and secret in text for secret in secrets):
            raise SpecError(f"refusing to start: a credential of the tracking URI would be written into the {what}; "
                            "pass it in the environment instead (MLFLOW_TRACKING_PASSWORD, PGPASSWORD)")


def credentials_to_environment(uri: str) -> str:
    """Keep credentials out of everything that is logged, printed or stored (Tune's
    trial configs, sweep.json): returns the URI to pass around instead.

    http(s): user:password moves to MLFLOW_TRACKING_USERNAME / _PASSWORD, MLflow's own
    variables. A database URL needs its credentials in the URL (userinfo or query
    parameters such as password=), so the full URL goes to MLFLOW_TRACKING_URI and a
    redacted one is passed around; `client_for` swaps it back.
    Workers of the embedded Ray inherit these variables; on a cluster, set them on the
    nodes (cluster/README.md, Secrets).
    """
    public, user, password = split_credentials(uri)
    if user is not None and uri.startswith(("http://", "https://")):
        os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
        if password is not None:
            _SECRETS.update(uri_secrets(uri))
            os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
        uri = public
    shown = redact_uri(uri)
    if shown == uri:
        return uri
    os.environ["MLFLOW_TRACKING_URI"] = uri
    return shown


CREDENTIAL_VARIABLES = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI")


@contextmanager
def credentials_in_environment(uri: str) -> Iterator[str]:
    """credentials_to_environment for the duration of the block, then the environment
    as it was (a library call must not leave credentials behind)."""
    with environment_restored(CREDENTIAL_VARIABLES):
        yield credentials_to_environment(uri)


def with_credentials(uri: str) -> str:
    """The full URI behind a redacted one (see credentials_to_environment)."""
    if "***" not in uri:
        return uri
    full = os.environ.get("MLFLOW_TRACKING_URI", "")
    if redact_uri(full) != uri:
        raise TrackingUnavailable(f"tracking URI {uri} needs its password: set MLFLOW_TRACKING_URI to the full URL "
                                  "in this process's environment (on a cluster: on every node)")
    return full


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


# MLflow's experiment-type tag. 3.17's UI bundle reads it only when its workflow-type
# switch is off, and the build has it on (the flag is a constant true): the layout comes
# from the link's `workflowType` parameter, else the browser's last choice (localStorage
# mlflow.workflowType, GenAI by default). Measured in Chromium: a run page without the
# parameter opens under GenAI's "Evaluations", with it under "Runs". Other versions may read the tag.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
VIEW_KEY = "collapse-ray"  # the saved view's key: experiment tag mlflow.sharedViewState.<key>
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
ROLE_TAG = "collapse_ray.role"  # "cell" on a sweep's cell runs (chain runs have a job key instead)
CELL_ROLE = "cell"
CELL_SEEDS_TAG = "collapse_ray.seeds_in_cell"  # how many chains (seeds x pools) a cell run's means are over
SE_SUFFIX = "_se"
LOG_AXIS_SPAN = 10.0  # test_loss charts get a log axis when the runs' values span this factor


def ui_url(server: str, experiment_id: str) -> str:
    """The link that opens the sweep's experiment in the model-training view with the
    saved view "collapse-ray" (one line per cell of the newest sweep)."""
    return (f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}&compareRunsMode=CHART")


def run_url(server: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the model-training layout (3.17 reads the layout from this parameter
    or the browser's last choice, never from the experiment: see EXPERIMENT_KIND_TAG)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def cell_filter(sweep_run_id: str) -> str:
    """The runs-table filter that keeps the cell runs of one sweep (not its chain runs, not
    an earlier sweep's cells)."""
    return f"tags.`{ROLE_TAG}` = '{CELL_ROLE}' and tags.`{PARENT_TAG}` = '{sweep_run_id}'"


@dataclass(frozen=True)
class ValueGrid:
    """A sweep whose question is a surface (Fig. 5): test loss over two swept params."""

    x: str  # dotted param key, e.g. chain.n_real
    y: str  # e.g. task.value_synthetic


VALUE_GRID = ValueGrid("chain.n_real", "task.value_synthetic")


def save_sweep_view(client, experiment_id: str, sweep_run_id: str, metric_keys: Sequence[str],
                    spans_decades: bool, swept: Sequence[str] = (), n_cells: int = 20,
                    value_grid: ValueGrid | None = None, contour_metric: str | None = None) -> dict:
    """The experiment's saved view "collapse-ray" (the UI's own format of a saved and shared
    view, an experiment tag): chart mode over the cell runs of this sweep only (one run,
    so one line, per cell: its seed blocks combined, never an average of unlike cells; no
    grouping, so no min-max band), test_loss first and on a log axis when `spans_decades`,
    the other means after it, standard errors and within-fit curves in folded sections,
    the swept parameters as columns. A value grid (`value_grid`, one fit per chain) gets a
    contour of test_loss over its two axes and test_loss against its x axis instead of
    line charts of one point; an adaptive search's (`contour_metric`, P(synthetic rows hurt)
    on every cell, run or estimated) comes first, as a contour over the same axes. Returns
    the view's state (what the tag holds, unpacked)."""
    import zlib
    import base64

    def section(uid: str, name: str, display: bool) -> dict:
        return {"uuid": uid, "name": name, "display": display, "isReordered": True, "deleted": False,
                "isGenerated": False}

    sections = [section("means", "Model metrics", True), section("se", "Standard errors (over seeds)", False)]
    means = sorted((k for k in metric_keys if not k.endswith(SE_SUFFIX) and "/" not in k),
                   key=lambda k: (k != "test_loss", k))
    errors = sorted(k for k in metric_keys if k.endswith(SE_SUFFIX) and "/" not in k)
    nested = sorted({k.split("/", 1)[0] for k in metric_keys if "/" in k})
    sections += [section(f"prefix-{p}", p, False) for p in nested]
    charts = []
    shown = max(n_cells, 1)

    def base(kind: str, section_id: str, name: str) -> dict:
        return {"uuid": f"chart-{len(charts)}", "type": kind, "runsCountToCompare": shown,
                "metricSectionId": section_id, "deleted": False, "isGenerated": False, "displayName": name}

    def chart(key: str, section_id: str, log: bool = False) -> None:
        charts.append({**base("LINE", section_id, key),
                       "metricKey": key, "lineSmoothness": 0, "xAxisScaleType": "linear",
                       "scaleType": "log" if log else "linear", "range": {}, "xAxisKey": "step",
                       "selectedXAxisMetricKey": "", "yAxisKey": "metric", "yAxisExpressions": [],
                       "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True})

    if value_grid is not None and contour_metric is not None:
        charts.append({**base("CONTOUR", "means", f"{contour_metric}: the search's estimate (0.5 = the contour)"),
                       "xaxis": {"key": value_grid.x, "type": "PARAM"}, "yaxis": {"key": value_grid.y, "type": "PARAM"},
                       "zaxis": {"key": contour_metric, "type": "METRIC"}})
    if value_grid is not None:
        charts.append({**base("CONTOUR", "means", f"test_loss over {value_grid.x} and {value_grid.y}"),
                       "xaxis": {"key": value_grid.x, "type": "PARAM"}, "yaxis": {"key": value_grid.y, "type": "PARAM"},
                       "zaxis": {"key": "test_loss", "type": "METRIC"}})
        charts.append({**base("SCATTER", "means", f"test_loss against {value_grid.x} (a point per cell)"),
                       "xaxis": {"key": value_grid.x, "type": "PARAM"},
                       "yaxis": {"key": "test_loss", "type": "METRIC"}})
        for key in errors:
            charts.append({**base("SCATTER", "se", f"{key} against {value_grid.x}"),
                           "xaxis": {"key": value_grid.x, "type": "PARAM"}, "yaxis": {"key": key, "type": "METRIC"}})
        for key in [*means, *errors]:  # the UI would add a line chart of lone dots per metric: marked deleted
            chart(key, "means" if key in means else "se")
            charts[-1]["deleted"] = True
    else:
        for key in means:
            chart(key, "means", log=key == "test_loss" and spans_decades)
        for key in errors:
            chart(key, "se")
        for key in sorted(k for k in metric_keys if "/" in k):
            chart(key, f"prefix-{key.split('/', 1)[0]}")
    state = {
        "searchFilter": cell_filter(sweep_run_id), "orderByKey": "attributes.run_name", "orderByAsc": True,
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": [*(["tags.`workflow`"] if "chain.workflow" not in swept else []),
                            *(f"params.`{key}`" for key in swept), f"tags.`{CELL_SEEDS_TAG}`",
                            *(["tags.`collapse_ray.sweep.contour_search`", f"metrics.`{contour_metric}`"]
                              if contour_metric else [])],
        "columnOrder": [], "columnWidths": {}, "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts, "compareRunSections": sections, "viewMaximized": False,
        "runListHidden": False, "isAccordionReordered": True, "useGroupedValuesInCharts": False,
        "hideEmptyCharts": True, "groupsExpanded": {}, "groupBy": None,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }
    now = int(time.time() * 1000)

    def tag_value() -> str:
        packed = base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
        return json.dumps({"name": "collapse-ray: a line per cell of the newest sweep", "createdAt": now,
                           "updatedAt": now, "state": f"deflate;{packed}"})

    value = tag_value()
    if len(value) > MAX_VIEW_TAG_CHARS:  # many within-fit curves: the UI adds their charts by itself
        state["compareRunCharts"] = [c for c in charts if c["metricSectionId"] in ("means", "se")]
        state["compareRunSections"] = sections[:2]
        value = tag_value()
    if len(value) <= MAX_VIEW_TAG_CHARS:
        client.set_experiment_tag(experiment_id, VIEW_TAG, value)
    return state


def read_view_state(experiment) -> dict:
    """The saved view's state as the UI unpacks it (for tests and tools)."""
    import base64
    import zlib

    packed = json.loads(experiment.tags[VIEW_TAG])["state"].removeprefix("deflate;")
    return json.loads(zlib.decompress(base64.b64decode(packed)))


MAX_VIEW_TAG_CHARS = 20_000  # MLflow's limit on an experiment tag's value


def sweep_view_inputs(client, experiment_id: str, sweep_run_id: str) -> tuple[list[str], bool, int]:
    """The metric keys of the sweep's cell runs, whether their last test_loss values span
    decades (then its chart gets a log axis), and how many cells there are."""
    cells = client.search_runs([experiment_id], filter_string=cell_filter(sweep_run_id), max_results=5000)
    keys = sorted({key for run in cells for key in run.data.metrics})
    losses = [run.data.metrics["test_loss"] for run in cells if "test_loss" in run.data.metrics]
    finite = [v for v in losses if math.isfinite(v)]
    spans = bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= LOG_AXIS_SPAN
    return keys, spans, len(cells)


WORKFLOW_ABBREVIATIONS = {"replace": "rep", "accumulate": "acc", "accumulate_subsample": "accsub"}
TABLE_NAME_WIDTH = 15  # the MLflow runs table cuts run names about here


def _short_value(field: str, value: Any) -> str:
    """A swept value for a run name: numbers behind the field's initials (n_real 20 ->
    nr20, bandwidth 0.1 -> b0.1), other values as themselves (a path by its last part)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "".join(part[:1] for part in field.split("_")) + f"{value:g}"
    return str(value).rstrip("/").rsplit("/", 1)[-1]


def cell_run_names(jobs: list[ChainJob]) -> dict[str, str]:
    """Child run names by cell, short enough to tell apart where the UI's table cuts
    them: the workflow, then the other swept values ("acc nr20"), then the seeds when a
    cell has several trials. Where the sweep has too many axes for that, every name
    starts with its trial's number ("07 acc moons ..."); the full key stays a tag."""
    blocks: dict[str, int] = {}
    for job in jobs:
        blocks[job.point.key] = blocks.get(job.point.key, 0) + 1
    names = {}
    for job in jobs:
        parts = [WORKFLOW_ABBREVIATIONS.get(job.point.chain.workflow, job.point.chain.workflow)]
        parts += [_short_value(key.split(".", 1)[1], value) for key, value in job.point.swept
                  if key not in ("task.name", "chain.workflow")]
        if blocks[job.point.key] > 1:
            parts.append(f"s{_seed_range(job.seeds)}")
        names[job.key] = " ".join(parts)
    if len({name[:TABLE_NAME_WIDTH] for name in names.values()}) < len(names):
        width = len(str(len(names)))
        names = {key: f"{i:0{width}d} {name}" for i, (key, name) in enumerate(names.items(), 1)}
    return names


SOURCE_TAGS = {"mlflow.source.type": "LOCAL"}
VERSION_TAG = "collapse_ray.version"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
N_ITERATIONS_TAG = "chain.n_iterations"  # tags, not params: a grown sweep changes them
SEEDS_TAG = "seeds"
PER_SEED_TABLE = "per_seed.json"  # chains.parquet's rows as a table MLflow's artifact view renders
MAX_TABLE_ROWS = 50_000  # larger chain tables (very long chains) stay Parquet only
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"


def git_commit(folder: Path | None = None) -> str | None:
    """The commit of the git checkout the package runs from (None when it is installed
    elsewhere or git is missing); ' (dirty)' is not added: the tag holds a hash."""
    folder = folder or Path(__file__).resolve().parent
    try:
        done = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


def run_provenance(source: str | None) -> dict[str, str]:
    """Tags every sweep run gets: package version, git commit, source (the spec file)."""
    from collapse_ray import __version__

    tags = {VERSION_TAG: __version__, **SOURCE_TAGS}
    if source:
        tags["mlflow.source.name"] = source
    commit = git_commit()
    if commit:
        tags[GIT_COMMIT_TAG] = commit
    return tags


def dotted_params(prefix: str, values: dict[str, Any], leave_out: Sequence[str] = ()) -> dict[str, str]:
    """`prefix.field` -> value as MLflow params, unset (None) values and `leave_out` fields left out."""
    return {f"{prefix}.{k}": str(v)[:500] for k, v in values.items() if v is not None and k not in leave_out}


def sweep_params(resolved_spec: dict) -> dict[str, str]:
    """The sweep run's params: the base task and chain (fields the grid or cases sweep
    left out: they are `grid.<key>`), and each swept axis as `grid.<key>`."""
    grid = resolved_spec.get("grid", {})
    swept = set(grid) | {key for case in resolved_spec.get("cases", []) for key in case}
    params = {}
    for prefix in ("task", "chain"):
        leave_out = [key.split(".", 1)[1] for key in swept if key.startswith(prefix + ".")]
        if prefix == "chain":
            leave_out += [*EXECUTION_ONLY, "n_iterations"]
        params.update(dotted_params(prefix, resolved_spec[prefix], leave_out))
    params.update({f"grid.{k}": str(v)[:500] for k, v in grid.items()})
    for i, case in enumerate(resolved_spec.get("cases", [])):
        params.update({f"cases.{i}.{k}": str(v)[:500] for k, v in case.items()})
    return params


def sweep_tags(resolved_spec: dict) -> dict[str, str]:
    """What a grown sweep changes, as tags: its seeds and the base iteration count."""
    return {SEEDS_TAG: _seed_range(resolved_spec["seeds"]),
            N_ITERATIONS_TAG: str(resolved_spec["chain"]["n_iterations"])}


def start_sweep_run(client, experiment_id: str, run_name: str, sweep_dir: Path, resolved_spec: dict,
                    description: str = "", source: str | None = None, datasets: Sequence = ()) -> str:
    tags = {SWEEP_TAG: str(sweep_dir), **run_provenance(source), **sweep_tags(resolved_spec)}
    if description:  # the spec's header comment: the UI shows it as the run's description
        tags["mlflow.note.content"] = description
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    _log_params(client, run.info.run_id, sweep_params(resolved_spec))
    log_spec(client, run.info.run_id, resolved_spec)
    log_datasets(client, run.info.run_id, datasets)
    return run.info.run_id


def log_spec(client, run_id: str, resolved_spec: dict) -> None:
    import yaml

    client.log_text(run_id, yaml.safe_dump(resolved_spec, sort_keys=False), "spec.yaml")


def grow_sweep_run(client, run_id: str, resolved_spec: dict) -> None:
    """The sweep run after --resume grew it: the new spec.yaml, seeds and iteration count."""
    log_spec(client, run_id, resolved_spec)
    for key, value in sweep_tags(resolved_spec).items():
        client.set_tag(run_id, key, value)


def real_data_datasets(points: Sequence) -> list:
    """MLflow dataset entities for the real data of the sweep's cells, one per distinct
    source: a local file or folder, a Hugging Face hub dataset, or data the task draws
    or bundles itself (a code source naming the task and its `source`)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    found: dict[tuple[str, str], Any] = {}
    for point in points:
        task = point.task
        source = getattr(task, "source", None)
        key = (task.name, str(source))
        if key in found:
            continue
        if isinstance(source, str) and source and Path(source).expanduser().exists():
            import warnings

            from mlflow.data.dataset_source_registry import resolve_dataset_source

            # MLflow registers its local source class at import (there is no importable name),
            # twice, and warns that a path could be either: it is the same class
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                origin = resolve_dataset_source(str(Path(source).expanduser().resolve()))
            name = Path(source).name
        elif isinstance(source, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", source):
            origin, name = HuggingFaceDatasetSource(path=source), source
        else:
            what = {"task": task.name, **({"source": str(source)} if source is not None else {})}
            origin = CodeDatasetSource(tags={"collapse_ray.task": json.dumps(what)})
            name = f"{task.name}: {source}" if source is not None else f"{task.name} (drawn by the task)"
        found[key] = MetaDataset(origin, name=name)._to_mlflow_entity()
    return list(found.values())


def log_datasets(client, run_id: str, datasets: Sequence) -> None:
    from mlflow.entities import DatasetInput, InputTag

    if datasets:
        client.log_inputs(run_id, datasets=[DatasetInput(d, tags=[InputTag("mlflow.data.context", "real data")])
                                            for d in datasets])


def job_params(job: ChainJob) -> dict[str, Any]:
    """Typed columns describing a job's chains; the same names in params and tables."""
    point = job.point
    chain = point.chain
    cols: dict[str, Any] = {"run_key": point.key, "task": point.task.name}
    cols.update(as_flat_dict(point.task))
    cols.update((k, v) for k, v in as_flat_dict(chain).items() if k not in EXECUTION_ONLY)
    return cols


def chain_run_params(job: ChainJob) -> dict[str, str]:
    """A chain run's params under the spec's dotted keys (as the sweep run's), unset ones
    left out, and `run_key`, the cell's key (as in the results table); the iteration
    count and seeds are tags (chain_run_tags)."""
    params = {"run_key": job.point.key, "task.name": job.point.task.name}
    params.update(dotted_params("task", as_flat_dict(job.point.task)))
    params.update(dotted_params("chain", as_flat_dict(job.point.chain.resolved()),
                                leave_out=(*EXECUTION_ONLY, "n_iterations")))
    return params


def chain_run_tags(job: ChainJob) -> dict[str, str]:
    return {N_ITERATIONS_TAG: str(job.point.chain.n_iterations), SEEDS_TAG: _seed_range(job.seeds)}


@dataclass(frozen=True)
class ChainRun:
    """A job's child run as open_chain_run found or made it."""

    run_id: str
    finished: bool  # it already holds every iteration of the job
    grown: bool  # a finished run that a grown sweep lengthened (opened again)
    created: bool  # made just now: nothing is logged on it yet


def open_chain_run(client, experiment_id: str, parent_run_id: str, job: ChainJob,
                   run_name: str | None = None, datasets: Sequence = (),
                   tags: Mapping[str, str] | None = None) -> ChainRun:
    """The job's child run, reused when a retried or resumed trial comes back.
    `run_name`: see cell_run_names (default: the job's key). `tags` go on the run either
    way (in the creating call for a new run: one round trip fewer)."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{JOB_KEY_TAG}` = '{job.key}'",
        max_results=2,
    )
    tags = dict(tags or {})
    if found:
        run = found[0]
        through = int(run.data.tags.get(N_ITERATIONS_TAG, job.point.chain.n_iterations))
        if run.info.status == "FINISHED" and through >= job.point.chain.n_iterations:
            return ChainRun(run.info.run_id, finished=True, grown=False, created=False)
        grown = through < job.point.chain.n_iterations
        if run.info.status == "FINISHED":  # grown: more iterations than it ran
            client.update_run(run.info.run_id, status="RUNNING")
        for key, value in tags.items():
            client.set_tag(run.info.run_id, key, value)
        # (the caller sets the new N_ITERATIONS_TAG once the short chain's checkpoint is gone)
        return ChainRun(run.info.run_id, finished=False, grown=grown, created=False)
    run = client.create_run(
        experiment_id,
        run_name=run_name or job.key,
        tags={PARENT_TAG: parent_run_id, JOB_KEY_TAG: job.key, "workflow": job.point.chain.workflow,
              **chain_run_tags(job), **tags},
    )
    _log_params(client, run.info.run_id, chain_run_params(job))
    log_datasets(client, run.info.run_id, datasets)
    return ChainRun(run.info.run_id, finished=False, grown=False, created=True)


LOGGED_TAG = "collapse_ray.logged_through_iteration"


class MlflowChainSink:
    """Per-iteration mean and standard error over a job's seeds, logged exactly once.

    The record of what is logged is exact: a tag holds the last iteration whose every
    metric is stored (set after a log_iterations call's last batch), and metrics of
    later iterations already stored (a call cut short between its batches of 1,000)
    are found per metric key and not sent again.
    """

    def __init__(self, client, run_id: str, created: bool = False):
        self.client = client
        self.run_id = run_id
        self.created = created  # the run was made by this trial: nothing is logged on it yet
        self._stored: set[tuple[str, int]] = set()  # (key, step) past the tag, already stored

    def last_logged_iteration(self) -> int:
        if self.created:  # no round trip to learn that a new run holds nothing
            return 0
        run = self.client.get_run(self.run_id)
        through = int(run.data.tags.get(LOGGED_TAG, 0))
        self._stored = {(key, m.step) for key in run.data.metrics
                        for m in self.client.get_metric_history(self.run_id, key) if m.step > through}
        return through

    def log_iterations(self, seeds: Sequence[int], records: Sequence[tuple[int, Metrics]]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = []
        for iteration, values in records:
            for name, per_seed in values.items():
                mean, se = mean_and_se(per_seed)
                metrics.append(Metric(name, mean, now, iteration))
                if len(seeds) > 1:
                    metrics.append(Metric(f"{name}_se", se, now, iteration))
        metrics = [m for m in metrics if (m.key, m.step) not in self._stored]
        if not records:
            return
        # The tag rides in the last batch: MLflow's SQL store (behind a tracking server
        # too) commits a batch's metrics before its tags, so the tag is set only once every
        # metric of these iterations is stored; a crash between the two leaves metrics
        # past the tag, which last_logged_iteration finds and never sends again.
        logged = [RunTag(LOGGED_TAG, str(records[-1][0]))]
        batches = [metrics[i : i + MAX_METRICS_PER_BATCH] for i in range(0, len(metrics), MAX_METRICS_PER_BATCH)]
        if not batches or len(batches[-1]) + len(logged) > MAX_METRICS_PER_BATCH:
            # the tag alone: every metric stored before a crash, or a full last batch (a
            # batch holds 1,000 entities, and MLflow's client would split an overfull one
            # and send the tag before the metrics that did not fit)
            batches.append([])
        for i, batch in enumerate(batches):
            self.client.log_batch(self.run_id, metrics=batch, tags=logged if i == len(batches) - 1 else ())


    def log_series(self, iteration: int, series: dict[str, Sequence[tuple[int, float]]]) -> None:
        """Curves within one iteration: metric <name>/iteration_TTT with their own steps;
        a key already stored (an iteration recomputed after a crash) is not logged again."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = []
        for name, points in series.items():
            key = f"{name}/{iteration_folder(iteration)}"
            if points and not self.client.get_metric_history(self.run_id, key):
                metrics.extend(Metric(key, float(value), now, int(step)) for step, value in points)
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + MAX_METRICS_PER_BATCH])

    def log_artifacts(self, iteration: int, files: dict[str, bytes]) -> None:
        """Files of one iteration under samples/iteration_TTT/ (rewriting is harmless)."""
        if not files:
            return
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / iteration_folder(iteration)
            folder.mkdir()
            for name, content in files.items():
                (folder / name).write_bytes(content)
            self.client.log_artifacts(self.run_id, str(folder), f"{SAMPLES}/{folder.name}")


def iteration_folder(iteration: int) -> str:
    return f"iteration_{iteration:03d}"


def finish_chain_run(client, run_id: str, job: ChainJob, table: pd.DataFrame) -> None:
    """`table`: the loop's per-seed rows (seed, iteration, metrics)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / CHAIN_TABLE
        table.assign(**{k: v for k, v in job_params(job).items()}, run_id=run_id).to_parquet(path, index=False)
        client.log_artifact(run_id, str(path))
        if len(table) <= MAX_TABLE_ROWS:
            log_per_seed_table(client, run_id, table, Path(tmp))
    client.set_terminated(run_id, "FINISHED")


def log_per_seed_table(client, run_id: str, table: pd.DataFrame, tmp: Path) -> None:
    """The per-seed rows (seed, iteration, metrics) as a JSON table in MLflow's own
    log_table format, which the run's artifact view shows as a table. Written whole
    (client.log_table would append to a grown run's earlier table)."""
    path = tmp / PER_SEED_TABLE
    table.to_json(path, orient="split", index=False)
    client.log_artifact(run_id, str(path))
    logged = json.loads(client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    entry = {"path": PER_SEED_TABLE, "type": "table"}
    if entry not in logged:
        client.set_tag(run_id, LOGGED_ARTIFACTS_TAG, json.dumps([*logged, entry]))


def results_table(tracking_uri: str, experiment: str, sweep_run_id: str | None = None, all_sweeps: bool = False) -> pd.DataFrame:
    """One row per (run, seed, iteration): swept parameters, workflow, seed, iteration, metrics.

    Reads the newest sweep of the experiment unless `sweep_run_id` or `all_sweeps` says otherwise.
    """
    client = client_for(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = [e.name for e in client.search_experiments()]
        raise SpecError(f"experiment must be one of {{{', '.join(names)}}} (the experiments in "
                        f"{redact_uri(tracking_uri)}); got {experiment!r}: for another store pass --results-dir "
                        "(the folder `run --out` wrote) or --tracking-uri")
    sweeps = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` != ''", order_by=["attributes.start_time DESC"]
    )
    if sweep_run_id is not None:
        chosen = [sweep_run_id]
    elif all_sweeps:
        chosen = [r.info.run_id for r in sweeps]
    else:
        chosen = [r.info.run_id for r in sweeps[:1]]
    frames = []
    for parent in chosen:
        children = client.search_runs(
            [exp.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'", max_results=50000
        )
        for run in children:
            if run.info.status != "FINISHED" or run.data.tags.get(ROLE_TAG) == CELL_ROLE:  # cells hold means only
                continue
            # a file store on this machine: read in place, no download copy
            found = (_local_artifact(run.info.artifact_uri, CHAIN_TABLE)
                     or _moved_artifact(tracking_uri, run.info.artifact_uri, CHAIN_TABLE))
            if found is not None:
                frames.append(pd.read_parquet(found).assign(sweep_run_id=parent))
                continue
            with tempfile.TemporaryDirectory() as tmp:
                local = client.download_artifacts(run.info.run_id, CHAIN_TABLE, tmp)
                frames.append(pd.read_parquet(local).assign(sweep_run_id=parent))
    if not frames:
        raise SpecError(f"experiment {experiment!r} has no finished chain runs yet")
    table = pd.concat(frames, ignore_index=True)
    for column in table.columns[table.dtypes == object]:
        if table[column].map(type).nunique() > 1:  # e.g. bandwidth: 0.5 in one run, "scott" in another
            table[column] = table[column].map(lambda v: None if v is None else str(v))
    return table.sort_values(["run_key", "seed", "iteration"], ignore_index=True)


def _local_artifact(artifact_uri: str, name: str) -> Path | None:
    """A file-store artifact where the run recorded it, else None."""
    from urllib.parse import unquote, urlsplit

    if not artifact_uri.startswith("file:"):
        return None
    path = Path(unquote(urlsplit(artifact_uri).path)) / name
    return path if path.is_file() else None


def _moved_artifact(tracking_uri: str, artifact_uri: str, name: str) -> Path | None:
    """A SQLite store's artifact found beside the database when the results folder was
    moved after the run recorded its (absolute) artifact location; else None."""
    from urllib.parse import unquote, urlsplit

    root = default_artifact_root(tracking_uri)
    if root is None or not artifact_uri.startswith("file:"):
        return None
    recorded = Path(unquote(urlsplit(artifact_uri).path))
    if (recorded / name).exists() or ARTIFACTS_DIR not in recorded.parts:
        return None
    parts = recorded.parts
    rebased = root.joinpath(*parts[len(parts) - 1 - parts[::-1].index(ARTIFACTS_DIR) + 1:]) / name
    return rebased if rebased.exists() else None


def write_table(table: pd.DataFrame, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        table.to_csv(out, index=False)
    elif out.suffix == ".parquet":
        table.to_parquet(out, index=False)
    else:
        raise SpecError(f"--out must end in one of {{.csv, .parquet}}; got {str(out)!r}")
    return out


def _log_params(client, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def _seed_range(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))[:500]


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


class StorageFault(RuntimeError):
    """A full or read-only disk under the store or the results folder: retrying cannot help."""


DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT)
DISK_MARKERS = ("database or disk is full", "readonly database", "No space left on device", "Read-only file system",
                "Disk quota exceeded")


def _causes(err: BaseException) -> Iterator[BaseException]:
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def is_disk_fault(err: BaseException) -> bool:
    """A full or read-only disk, however deep in a driver's exception chain."""
    return any((isinstance(e, OSError) and e.errno in DISK_ERRNOS) or any(m in str(e) for m in DISK_MARKERS)
               for e in _causes(err))


def disk_fault_line(err: BaseException) -> str:
    """One line saying what the disk fault is, the path when the error names one (not
    SQLAlchemy's "autoflush" preamble)."""
    for e in _causes(err):
        if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
            where = f" ({e.filename})" if e.filename else ""
            return f"the disk is full or read-only{where}: {e.strerror}"
    for e in _causes(err):
        for marker in DISK_MARKERS:
            if marker in str(e):
                return f"the disk is full or read-only: {marker}"
    return _first_line(err)  # pragma: no cover - only called when is_disk_fault


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
