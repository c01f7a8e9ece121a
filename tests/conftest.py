"""Shared fixtures. Ray-cluster tests are marked `ray`; they share one local Ray."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# The session's Ray listens on loopback only, as `collapse-ray run` has its own: Ray 2.60
# binds its servers to loopback when the node IP is loopback, which this gives (it is read
# once, when ray is first imported). Its token stays in the environment, not in the
# ~/.ray/auth_token Ray would write readable by everyone.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_TOKEN", os.urandom(32).hex())
# There is no hub here: say so before `datasets`/`huggingface_hub` are imported (they read
# these once, at import), so a hub id fails at once instead of after ~23 s of retries.
# A sweep's end draws its figures (seconds of matplotlib per sweep, ~1-2 min over the fast
# lane's sweeps); the tests that check those figures turn this back on (test_analysis's
# quickstart run, test_mlflow_ui's grown sweep). The cell runs, view and table stay on.
os.environ.setdefault("COLLAPSE_RAY_SWEEP_FIGURES", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Session fixtures for the hub stand-ins (a tiny Gemma-2, HelpSteer2- and TinyStories-shaped
# folders), shared by every slow test that needs them.
from tests.standins import *  # noqa: E402,F401,F403

try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # hypothesis is a dev dependency; only the fuzz tests need it
    pass
else:
    # Fuzz tests (tests/test_fuzz_spec_cli.py) run a fixed number of examples. `ci`
    # (chosen when CI is set) is also derandomised and keeps no example database, so
    # every CI run tries the same examples; `dev` draws new ones each run and replays
    # failures from .hypothesis/. HYPOTHESIS_PROFILE=... picks one explicitly.
    _hypothesis_settings.register_profile(
        "ci", max_examples=200, derandomize=True, database=None, deadline=None, print_blob=True
    )
    _hypothesis_settings.register_profile("dev", max_examples=200, deadline=None, print_blob=True)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="session")
def local_ray():
    """A real local Ray cluster (2 CPUs, no dashboard) for the whole session.

    Its workers' output is not streamed into this process: Ray's log monitor prints it
    whenever it arrives, so a line from an earlier test's worker (one exiting on SIGTERM
    prints a traceback) would land in a later test's captured output. Tests judge what
    the driver prints; a failed trial's traceback still reaches them through Tune."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


@dataclass(frozen=True)
class SweepRun:
    """A spec run once through `collapse-ray run` and `collapse-ray results`."""

    table_path: Path  # the results table as CSV
    out: Path  # the results folder (MLflow store, chains, pools)

    def table(self):
        import pandas as pd

        return pd.read_csv(self.table_path)  # a fresh frame per reader: no test sees another's edits


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory):
    """An MLflow SQLite file with its schema migrated and nothing in it (no experiment, not
    even Default, which the first store to open it adds with its own artifact root): what a
    first run creates, less the alembic migrations (2-17 s a store on the shared 2 cores)."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    _initialize_tables(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def sweep_once(tmp_path_factory, local_ray, migrated_store):
    """`sweep_once(name, *overrides)` runs sweeps/<name>.yaml (with `--set` overrides)
    once per session and hands every test that asks for the same run its results: an
    end-to-end sweep read by several tests' checks is paid for once."""
    import shutil

    from collapse_ray.sweep.spec import load_spec
    from tests.helpers import run_spec_end_to_end

    runs: dict[tuple[str, ...], SweepRun] = {}

    def run(name: str, *overrides: str) -> SweepRun:
        key = (name, *overrides)
        if key not in runs:
            spec = Path(__file__).parent.parent / "sweeps" / f"{name}.yaml"
            folder = tmp_path_factory.mktemp(name)
            (folder / "results").mkdir()
            shutil.copyfile(migrated_store, folder / "results" / "mlflow.db")  # the run's own store, pre-migrated
            _, out = run_spec_end_to_end(spec, folder, *overrides)
            runs[key] = SweepRun(folder / f"{load_spec(spec).name}.csv", out)
        return runs[key]

    return run


@pytest.fixture
def sqlite_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def tracking_server(tmp_path, migrated_store):
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store, stopped afterwards."""
    from tests.helpers import TrackingServer

    server = TrackingServer(tmp_path / "tracking", migrated_store)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through Playwright, for the MLflow UI tests (one per session)."""
    import shutil

    chromium_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium_path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: `make test` installs Debian's chromium (apt-get install chromium)")
        pytest.skip("chromium is not installed (make test installs it where it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --disable-background-networking & co: no calls to Google's hosts on a closed network
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


def pytest_collection_modifyitems(config, items):
    """A slow-lane test says why it cannot run in the fast lane (`make test`)."""
    for item in items:
        for mark in item.iter_markers("slow_lane"):
            if not (mark.args and isinstance(mark.args[0], str) and mark.args[0].strip()):
                raise pytest.UsageError(f"{item.nodeid}: write @pytest.mark.slow_lane('why it cannot run in the fast lane')")
