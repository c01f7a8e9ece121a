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
from collapse_ray.loop import CHECKPOINT_FILE
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
