"""Bad things on disk or on the network are refused before any work starts, with one
line naming what is wrong: a corrupt or foreign file in a chain's pool or checkpoint
(on --resume), a missing model folder, a data file of the wrong shape, an unreachable
tracking store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from collapse_ray import cli
from collapse_ray.core.loop import CHECKPOINT_FILE
from tests.helpers import free_ports

SPEC = {
    "name": "preflight",
    "task": {"name": "gaussian", "dim": 3},
    "chain": {"n_real": 50, "n_iterations": 4, "checkpoint_every": 1, "persist_pool": True},
    "seeds": 4,
    "grid": {"chain.workflow": ["replace", "accumulate"]},
}


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, local_ray):
    """A small sweep with its pool on disk, run once; tests copy it and damage the copy."""
    root = tmp_path_factory.mktemp("preflight")
    spec = root / "preflight.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    assert cli.main(["run", str(spec), "--out", str(root / "results")]) == 0
    return spec, root / "results"


def damaged_copy(finished_sweep, tmp_path):
    import shutil

    spec, results = finished_sweep
    out = tmp_path / "results"
    shutil.copytree(results, out)
    sweep_dir = next((out / "preflight").iterdir())
    state = json.loads((sweep_dir / "sweep.json").read_text())
    state["status"] = "running"  # as if the driver had died
    (sweep_dir / "sweep.json").write_text(json.dumps(state))
    return spec, out, sweep_dir


def shard(sweep_dir: Path, iteration: int = 1) -> Path:
    return sorted(sweep_dir.glob(f"chains/*/pool/iteration={iteration}/source=synthetic/part-0.parquet"))[0]


DAMAGE = {
    "corrupt shard": (lambda d: shard(d).write_bytes(b"PAR1 not really parquet"), "not a readable Parquet pool shard"),
    "foreign parquet": (lambda d: pq.write_table(pa.table({"x": [1, 2, 3]}), shard(d)), "was not written by collapse_ray"),
    "stray file": (lambda d: pq.write_table(pa.table({"x": [1]}), shard(d).parent.parent.parent / "extra.parquet"),
                   "is not a pool shard"),
    "truncated checkpoint": (lambda d: next(d.glob(f"chains/*/{CHECKPOINT_FILE}")).write_bytes(b'{"format": "coll'),
                             "not a readable chain checkpoint"),
    "checkpoint naming a foreign class": (lambda d: forge_checkpoint(d, "os:system"), "is not one of collapse_ray's"),
    "checkpoint naming a class outside the allowed set": (
        lambda d: forge_checkpoint(d, "collapse_ray.validation:SpecError"), "is not a dataclass"),
    "altered checkpoint arrays": (lambda d: flip_last_byte(next(d.glob("chains/*/state-*.npz"))),
                                  "differs from the sha256 it recorded"),
    "pickle that runs code": (lambda d: plant_pickle(d), "is a pickle, which collapse_ray no longer reads"),
    "foreign chain folder": (lambda d: (d / "chains" / "someone_else").mkdir(), "belongs to no chain of this spec"),
}


class _RunsCode:
    """Unpickling this runs a shell command (what a crafted checkpoint.pkl did)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"id > {self.marker}",)


def plant_pickle(sweep_dir: Path) -> None:
    """A checkpoint.pkl that runs code when unpickled, where a checkpoint used to be."""
    import pickle

    folder = next(sweep_dir.glob(f"chains/*/{CHECKPOINT_FILE}")).parent
    (folder / CHECKPOINT_FILE).unlink()
    (folder / "checkpoint.pkl").write_bytes(pickle.dumps(_RunsCode(sweep_dir.parent / "ran_code")))


def forge_checkpoint(sweep_dir: Path, class_name: str) -> None:
    """checkpoint.json edited to rebuild some other class from the file's data."""
    path = next(sweep_dir.glob(f"chains/*/{CHECKPOINT_FILE}"))
    document = json.loads(path.read_text())
    document["state"] = {"dataclass": class_name, "fields": {"command": "id"}}
    path.write_text(json.dumps(document))


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.ray
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_resume_refuses_a_damaged_chain_folder_before_starting(damage, finished_sweep, tmp_path, capsys):
    spec, out, sweep_dir = damaged_copy(finished_sweep, tmp_path)
    break_it, message = DAMAGE[damage]
    break_it(sweep_dir)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "mlflow.db"}
    capsys.readouterr()

    assert cli.main(["run", str(spec), "--out", str(out), "--resume"]) == 2
    line = one_error_line(capsys)
    assert message in line and "--resume" in line, line
    after = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.name != "mlflow.db"}
    assert after == before, "nothing written before the refusal"
    assert not (out / "preflight" / "ran_code").exists(), "the checkpoint ran code"


def lm_spec(tmp_path: Path, **task) -> Path:
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump({"name": "lm", "task": {"name": "sft", "backend": "local", "sampler": "local", **task},
                                    "chain": {"n_real": 10, "n_iterations": 2}, "seeds": 1}))
    return path


def test_a_missing_model_folder_is_refused_by_validate(tmp_path, capsys):
    assert cli.main(["validate", str(lm_spec(tmp_path, model=str(tmp_path / "no_such_model")))]) == 2
    assert "task.model must be an existing file or folder" in one_error_line(capsys)
    (tmp_path / "empty_model").mkdir()
    assert cli.main(["validate", str(lm_spec(tmp_path, model=str(tmp_path / "empty_model")))]) == 2
    assert "task.model must be a saved model folder" in one_error_line(capsys)


def test_a_data_file_of_another_shape_is_refused_by_validate(tmp_path, capsys):
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"text": ["a story"]}), foreign)  # a pretraining file given to SFT
    assert cli.main(["validate", str(lm_spec(tmp_path, source=str(foreign)))]) == 2
    line = one_error_line(capsys)
    assert "task.source must be a Parquet file with columns ['prompt', 'response']" in line and "['text']" in line
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    assert cli.main(["validate", str(lm_spec(tmp_path, source=str(garbage)))]) == 2
    assert "task.source must be a readable Parquet file" in one_error_line(capsys)
    assert cli.main(["validate", str(lm_spec(tmp_path, source=str(tmp_path / "missing.parquet")))]) == 2
    assert "task.source must be an existing file or folder" in one_error_line(capsys)


@pytest.mark.parametrize("uri", ["http://127.0.0.1:{port}", "postgresql://user:pw@127.0.0.1:{port}/mlflow"])
def test_an_unreachable_tracking_store_is_refused_before_ray_starts(uri, tmp_path, capsys):
    import ray

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    uri = uri.format(port=free_ports(1)[0])
    was_running = ray.is_initialized()
    environment = dict(os.environ)
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "r"), "--tracking-uri", uri]) == 2
    line = one_error_line(capsys)
    assert "tracking" in line and ("unreachable" in line or "unusable" in line), line
    assert "pw@" not in line, "the password is not printed"
    assert ray.is_initialized() == was_running and not (tmp_path / "r").exists()
    assert dict(os.environ) == environment, "credentials are not left in the environment"


@pytest.mark.parametrize("uri", [
    "postgresql://127.0.0.1:{port}/mlflow?user=u&password=Pa55word-in-query",
    "postgresql://u:Pa55#word/with?raw@127.0.0.1:{port}/mlflow",
    "postgresql://u@127.0.0.1:{port}/mlflow?sslmode=require&sslpassword=Pa55word-ssl",
    "mysql+pymysql://u:Pa55word%2Fenc@127.0.0.1:{port}/mlflow?token=Pa55token",
])
def test_every_credential_form_is_redacted_in_the_error_line(uri, tmp_path, capsys):
    """Userinfo with raw '#', '/', '?', and credentials as query parameters: the error
    line names the store without them."""
    from urllib.parse import unquote

    from collapse_ray.tracking.credentials import uri_secrets

    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    uri = uri.format(port=free_ports(1)[0])
    secrets = uri_secrets(uri)
    assert secrets and all("Pa55" in s for s in secrets), secrets
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "r"), "--tracking-uri", uri]) == 2
    line = one_error_line(capsys)
    assert "tracking" in line and "***" in line, line
    assert "Pa55" not in line and "Pa55" not in unquote(line), line
    assert not (tmp_path / "r").exists()


def test_a_credential_that_would_be_written_is_refused(tmp_path, capsys):
    """When a password also appears in what the sweep writes (here: its folder's path),
    redaction cannot keep it out: refuse to start."""
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    out = tmp_path / "Pa55word-also-a-folder"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}?password=Pa55word-also-a-folder"
    assert cli.main(["run", str(spec), "--out", str(out), "--tracking-uri", uri]) == 2
    line = one_error_line(capsys)
    assert "refusing to start" in line and "Pa55word" not in line, line
    assert not out.exists()


def small_spec(tmp_path: Path, **chain) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump({**SPEC, "chain": {**SPEC["chain"], **chain}, "grid": {}}))
    return path


@pytest.mark.parametrize("override", ["chain.n_real=1000000000000", "task.dim=1000000"])
def test_a_chain_too_big_for_its_memory_budget_is_refused_by_validate(override, tmp_path, capsys):
    assert cli.main(["validate", str(small_spec(tmp_path)), "--set", override]) == 2
    line = one_error_line(capsys)
    assert "run.memory_per_trial_gb must be at least" in line and "got 1" in line, line
    assert cli.main(["validate", str(small_spec(tmp_path)), "--set", override.replace("000000", "")]) == 0


def test_a_spec_that_is_not_a_small_regular_file_is_refused(tmp_path, capsys):
    import subprocess
    import sys

    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * (2 << 20) + b"\nname: big\n")
    for path in (big, Path("/dev/zero")):
        assert cli.main(["validate", str(path)]) == 2
        line = one_error_line(capsys)
        assert "must be at most 1024 KiB" in line or "must be a regular file" in line, line
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)  # opening it would wait for a writer forever: run in a process with a timeout
    done = subprocess.run([sys.executable, "-m", "collapse_ray.cli", "validate", str(fifo)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: spec file {str(fifo)!r} must be a regular file; got a FIFO"), done.stderr


def test_out_at_the_filesystem_root_is_refused(tmp_path, capsys):
    import ray

    was_running = ray.is_initialized()
    assert cli.main(["run", str(small_spec(tmp_path)), "--out", "/"]) == 2
    assert "--out must be a folder of its own" in one_error_line(capsys)
    assert ray.is_initialized() == was_running


def test_a_bad_resume_folder_is_one_line(tmp_path, capsys):
    import ray

    spec = small_spec(tmp_path)
    out = tmp_path / "results"
    was_running = ray.is_initialized()
    assert cli.main(["run", str(spec), "--out", str(out), "--resume", str(tmp_path / "no_such_sweep")]) == 2
    assert "is not a folder" in one_error_line(capsys)
    sweep_dir = out / "preflight" / "20260101T000000000000Z"
    sweep_dir.mkdir(parents=True)
    assert cli.main(["run", str(spec), "--out", str(out), "--resume", str(sweep_dir)]) == 2
    assert "sweep.json is missing" in one_error_line(capsys)
    for corrupt, message in [(b'{"spec": ', "is not readable JSON"), (b"\xff\xfe", "is not readable JSON"),
                             (b"[1, 2]", "is not a sweep file"), (b'{"status": "running"}', "is not a sweep file")]:
        (sweep_dir / "sweep.json").write_bytes(corrupt)
        for resume in (["--resume", str(sweep_dir)], ["--resume"]):  # named, or found as the newest
            assert cli.main(["run", str(spec), "--out", str(out), *resume]) == 2
            line = one_error_line(capsys)
            assert message in line and "sweep.json" in line, line
    assert ray.is_initialized() == was_running
