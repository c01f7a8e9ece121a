"""A full or read-only disk is not a tracking outage: it fails fast, in one line naming
the path, leaves no temporary file behind, and a resume finishes the sweep once there
is space. Real disks: a small tmpfs mounted for the test (needs root and mount rights;
skipped otherwise), filled with a real file while the sweep runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from collapse_ray import cli
from tests.test_faults import (
    ENV,
    SLOW_CHAIN,
    SLOW_TASK,
    cli as cli_command,
    checkpointed_iterations,
    lost_and_duplicated,
    start_driver,
    steps_per_run,
    wait_until,
    write_spec,
)

pytestmark = pytest.mark.ray


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of 256 MiB at tmp_path/disk, unmounted afterwards."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_read_only_out_is_one_line_before_anything_starts(small_disk, tmp_path, capsys):
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump({"name": "ro", "task": {"name": "gaussian", "dim": 2}, "chain": {"n_iterations": 2}}))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    assert cli.main(["run", str(spec), "--out", str(small_disk / "results")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --out") and "not writable" in err and str(small_disk) in err, err


@pytest.mark.slow
@pytest.mark.slow_lane("a sweep filling a small disk, then its resume, ~45 s; fast lane: a read-only --out is refused "
                       "before anything starts (this file), a shard write killed part-way (tests/test_faults.py)")
def test_a_disk_that_fills_mid_sweep_fails_fast_and_resumes(small_disk, tmp_path):
    name = "disk_full"
    chain = {**SLOW_CHAIN, "n_iterations": 20}  # the disk fills at iteration 3, in well under a second
    spec = write_spec(tmp_path, name, task=SLOW_TASK, chain=chain, seeds=4, run={"max_failures": 1})
    out = small_disk / "results"
    driver = start_driver("run", str(spec), "--out", str(out))
    filler = small_disk / "filler"
    try:
        wait_until(lambda: max(checkpointed_iterations(out, name).values(), default=0) >= 3, 300, "iteration 3", driver)
        with open(filler, "wb") as f:  # take every free block
            block = b"\0" * (1 << 20)
            try:
                while True:
                    f.write(block)
            except OSError:
                pass
        full_at = time.time()
        printed, _ = driver.communicate(timeout=240)
        seconds = time.time() - full_at
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    errors = [line for line in printed.splitlines() if line.startswith("error: ")]
    assert driver.returncode == 1, printed[-3000:]
    assert len(errors) == 1 and "full or read-only" in errors[0] and "--resume" in errors[0], printed[-3000:]
    assert "Traceback" not in printed.split(errors[0])[-1], "the driver's own ending is the one line"
    assert seconds < 120, f"failed {seconds:.0f} s after the disk filled: a full disk is not waited out"
    ours = [p for p in out.rglob(".*.tmp*") if "tune" not in p.relative_to(out).parts[:3]]
    assert not ours, f"temporary files left behind: {ours}"

    filler.unlink()
    resumed = subprocess.run(cli_command("run", str(spec), "--out", str(out), "--resume"),
                             env=ENV, capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    steps = steps_per_run(f"sqlite:///{out / 'mlflow.db'}", name)
    lost, duplicated = lost_and_duplicated(steps, chain["n_iterations"])
    assert lost == 0 and duplicated == 0, steps
    print(f"\nfault injected: disk filled at iteration ~3; the sweep failed {seconds:.0f} s later (exit 1, "
          f"one line: {errors[0][:120]}); --resume finished it; metrics lost: {lost}; duplicated: {duplicated}")
