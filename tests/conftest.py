"""Shared fixtures. Ray-cluster tests are marked `ray`; they share one local Ray."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")

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
    """A real local Ray cluster (2 CPUs, no dashboard) for the whole session."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture
def sqlite_uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def tracking_server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 with its own SQLite store, stopped afterwards."""
    from tests.helpers import TrackingServer

    server = TrackingServer(tmp_path / "tracking")
    server.start()
    yield server
    server.stop()
