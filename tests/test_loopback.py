"""The embedded Ray of `collapse-ray run` listens on loopback only, and its token is its owner's.

A tiny quickstart sweep runs as a real `collapse-ray run` subprocess; while it runs, the
listening sockets of every process of its Ray session are sampled, and any address off
loopback fails. Ray 2.60 has no bind option: its servers bind to loopback only when the
node IP is a loopback address, which the CLI arranges (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
before ray is imported). The loopback cluster script is checked the same way in
tests/test_cluster.py, which starts that cluster anyway.

    pytest tests/test_loopback.py -q -s     # prints the listener counts
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

ROOT = Path(__file__).parent.parent
QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"
TINY = ("grid.chain.workflow=[replace]", "grid.chain.n_real=[20,50]", "chain.n_iterations=3", "seeds=2")  # 2 trials
KNOB = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
# what the test process's environment may hold that would decide the outcome for the CLI
# (conftest sets the knob and a token for the session's own Ray)
NOT_INHERITED = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", KNOB, "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
pytestmark = pytest.mark.ray


@dataclass(frozen=True)
class Listener:
    process: str = field(compare=False)  # its name when first seen (a Ray worker's is its title: ray::IDLE)
    pid: int
    ip: str
    port: int

    @property
    def on_loopback(self) -> bool:
        address = ipaddress.ip_address(self.ip)
        mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is loopback too
        return (mapped or address).is_loopback  # the wildcards 0.0.0.0 and :: are not


def processes_of(roots: Iterable[int], marker: str | None = None) -> list[psutil.Process]:
    """The live processes under `roots` (themselves included), and every process whose
    command line names `marker` (a session's own temp folder), in case one left the tree."""
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        try:
            root = psutil.Process(pid)
            for p in (root, *root.children(recursive=True)):
                found[p.pid] = p
        except psutil.NoSuchProcess:
            continue
    if marker:
        for p in psutil.process_iter(["cmdline"]):
            if any(marker in arg for arg in p.info["cmdline"] or ()):
                found.setdefault(p.pid, p)
    return list(found.values())


def listeners_of(processes: Iterable[psutil.Process]) -> set[Listener]:
    """Every TCP socket these processes listen on (UDP ones too: they answer anyone)."""
    seen = set()
    for p in processes:
        try:
            name = p.name()
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN or (c.type == socket.SOCK_DGRAM and not c.raddr):
                    seen.add(Listener(name, p.pid, c.laddr.ip, c.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # it ended between the listing and the look
    return seen


def sample_while(running: Callable[[], bool], processes: Callable[[], list[psutil.Process]],
                 interval: float = 0.3) -> set[Listener]:
    """The union of every listener seen while `running()` holds (processes come and go)."""
    seen: set[Listener] = set()
    while running():
        seen |= listeners_of(processes())
        time.sleep(interval)
    return seen


def describe(listeners: set[Listener]) -> str:
    off = sorted(f"{l.process}({l.pid}) {l.ip}:{l.port}" for l in listeners if not l.on_loopback)
    n_processes = len({l.pid for l in listeners})
    return f"{len(off)} of {len(listeners)} listeners in {n_processes} processes off loopback" + (
        f": {', '.join(off)}" if off else "")


def cli_env(home: Path, ray_tmp: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: nothing of this test session's Ray settings, a
    home of its own (so a token Ray writes to ~/.ray shows) and Ray's temp folder."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
    return {**env, "HOME": str(home), "RAY_TMPDIR": str(ray_tmp), **extra}


def start_run(tmp_path: Path, env: dict[str, str], *overrides: str) -> subprocess.Popen:
    """`collapse-ray run` of the quickstart spec, in a process group of its own; its output
    goes to tmp_path/run.log."""
    sets = [arg for override in overrides for arg in ("--set", override)]
    with open(tmp_path / "run.log", "w") as log:  # the child keeps its own copy of the file
        return subprocess.Popen([sys.executable, "-m", "collapse_ray.cli", "run", str(QUICKSTART),
                                 "--out", str(tmp_path / "results"), *sets],
                                env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def token_files_of(processes: Iterable[psutil.Process]) -> dict[str, str]:
    """The token file each Ray process was told to read (RAY_AUTH_TOKEN_PATH), by name,
    with its permission bits while the process lives."""
    found = {}
    for p in processes:
        try:
            path = p.environ().get("RAY_AUTH_TOKEN_PATH")
            if path and p.name() in ("raylet", "gcs_server"):
                found[p.name()] = f"{path} {stat.filemode(os.stat(path).st_mode)}"
        except (psutil.Error, OSError):
            continue
    return found


def metrics_ports_in(ray_tmp: Path) -> set[int]:
    """The Prometheus export ports of the sessions under Ray's temp folder (a file per
    node, written once the agent listens; the endpoint answers without a token)."""
    ports = set()
    for path in ray_tmp.glob("ray/session_*/metrics_export_port_*"):
        try:
            ports.add(int(path.read_text()))
        except (OSError, ValueError):
            continue  # not written yet
    return ports


@pytest.fixture(scope="module")
def embedded_run(tmp_path_factory):
    """One tiny quickstart sweep (2 trials of 2 chains x 3 iterations) through the real
    CLI; its session's listeners and token files, sampled while it ran."""
    tmp = tmp_path_factory.mktemp("embedded")
    home = tmp / "home"
    home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))  # short: Ray's socket paths have a length limit
    driver = start_run(tmp, cli_env(home, ray_tmp), *TINY)
    tokens: dict[str, str] = {}
    metrics_ports: set[int] = set()

    def session() -> list[psutil.Process]:
        found = processes_of([driver.pid], marker=str(ray_tmp))
        tokens.update(token_files_of(found))
        metrics_ports.update(metrics_ports_in(ray_tmp))
        return found

    started = time.perf_counter()
    try:
        listeners = sample_while(lambda: driver.poll() is None and time.perf_counter() - started < 300, session)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, 9)
        driver.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    yield SimpleNamespace(returncode=driver.returncode, printed=(tmp / "run.log").read_text(), home=home,
                          listeners=listeners, tokens=tokens, metrics_ports=metrics_ports,
                          seconds=time.perf_counter() - started)


def test_every_listener_of_the_embedded_ray_is_on_loopback(embedded_run):
    assert embedded_run.returncode == 0, embedded_run.printed[-3000:]
    names = {l.process for l in embedded_run.listeners}
    # the sampling saw the session: its GCS, its raylet, the agents under it (one holds
    # the metrics export port) and its workers, or a clean result would prove nothing
    assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names, names
    assert any(name.startswith("ray::") and not name.endswith("Agent") for name in names), names
    assert len(embedded_run.metrics_ports) == 1 and embedded_run.metrics_ports <= {
        l.port for l in embedded_run.listeners}, (embedded_run.metrics_ports, describe(embedded_run.listeners))
    print(f"\ncollapse-ray run ({embedded_run.seconds:.0f} s): {describe(embedded_run.listeners)}")
    assert all(l.on_loopback for l in embedded_run.listeners), describe(embedded_run.listeners)


def test_the_embedded_rays_token_is_in_a_file_only_its_owner_reads(embedded_run):
    assert embedded_run.returncode == 0, embedded_run.printed[-3000:]
    # Ray's own default, ~/.ray/auth_token, is written readable by everyone (0644)
    assert not (embedded_run.home / ".ray" / "auth_token").exists(), "the token went to ~/.ray/auth_token"
    assert set(embedded_run.tokens) == {"gcs_server", "raylet"}, embedded_run.tokens
    for name, described in embedded_run.tokens.items():
        assert described.endswith(" -rw-------"), f"{name} reads its token from {described}"


def test_a_token_file_others_can_read_is_refused_before_ray_starts(tmp_path):
    token = tmp_path / "token"
    token.write_text("0" * 64)
    token.chmod(0o644)
    env = cli_env(tmp_path, tmp_path, RAY_AUTH_TOKEN_PATH=str(token))
    sets = [arg for override in TINY for arg in ("--set", override)]
    done = subprocess.run([sys.executable, "-m", "collapse_ray.cli", "run", str(QUICKSTART), "--out",
                           str(tmp_path / "results"), *sets], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: RAY_AUTH_TOKEN_PATH") and done.stderr.count("\n") == 1, done.stderr
    assert "chmod 600" in done.stderr
    assert not (tmp_path / "ray").exists(), "Ray was started"


def test_an_embedded_ray_off_loopback_is_refused(tmp_path):
    """The knob is undocumented on Linux: with it turned the other way (as a Ray that
    ignores it would behave), the run stops its Ray after ray.init and says so in one
    line, before any sweep starts."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="lb", dir="/tmp"))
    try:
        driver = start_run(tmp_path, cli_env(tmp_path, ray_tmp, **{KNOB: "1"}), *TINY)
        try:
            driver.wait(timeout=300)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, 9)
        deadline = time.monotonic() + 30  # Ray's shutdown ends its processes; give them time to go
        while processes_of([], marker=str(ray_tmp)) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [p.pid for p in processes_of([], marker=str(ray_tmp))]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    printed = (tmp_path / "run.log").read_text()
    assert driver.returncode == 1, printed[-3000:]
    # (stdout, stderr and Ray's own writers share the log: the line is not looked for at a line start)
    assert printed.count("error: ") == 1 and "error: the embedded Ray's node IP is " in printed, printed[-3000:]
    assert "not a loopback address" in printed and "Traceback" not in printed, printed[-3000:]
    assert "finished" not in printed and not (tmp_path / "results" / "quickstart").exists()
    assert not left, f"the refused Ray's processes are still running: {left}"
