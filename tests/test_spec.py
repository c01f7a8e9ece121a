"""Sweep specs: every shipped spec validates; bad input is one line naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from collapse_ray import cli
from collapse_ray.core.chain import ChainConfig
from collapse_ray.sweep.spec import job_from_dict, job_to_dict, load_spec, parse_spec
from collapse_ray.tasks import TASKS
from collapse_ray.validation import SpecError

SWEEPS = sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml"))
BASE = {"task": {"name": "gaussian", "dim": 2}, "chain": {"n_real": 10, "n_iterations": 3}, "seeds": 2}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_shipped_spec_validates_and_documents_itself(path):
    spec = load_spec(path)
    jobs = spec.jobs()
    assert jobs
    for job in jobs:  # what a Tune trial receives rebuilds the same job
        assert job_from_dict(job_to_dict(job)) == job
    header = path.read_text().splitlines()[0]
    assert header.startswith("# "), "a spec opens with a header comment stating its question"
    assert "collapse-ray run sweeps/" in path.read_text(), "the header gives the command"


def test_fig1_spec_is_the_papers_grid():
    spec = load_spec(Path(__file__).parent.parent / "sweeps" / "fig1_gaussian.yaml")
    dims = sorted({p.task.dim for p in spec.points})
    ns = sorted({p.chain.n_real for p in spec.points})
    assert dims == [1, 3, 10, 31, 100] and ns == [10, 32, 100, 316, 1000]
    assert {p.chain.workflow for p in spec.points} == {"replace", "accumulate", "accumulate_subsample"}
    assert len(spec.seeds) == 100 and all(p.chain.n_iterations == 100 for p in spec.points)
    assert sum(len(j.seeds) for j in spec.jobs()) == 7500
    assert all(p.task.sigma2 == 1.0 for p in spec.points)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"chain": {"workflow": "mode3"}}, "chain.workflow must be one of {replace, accumulate, accumulate_subsample, fresh_data, iterative_retraining, real_fraction}; got 'mode3'"),
        ({"chain": {"n_real": -5}}, "chain.n_real must be an integer >= 1; got -5"),
        ({"chain": {"n_iterations": 0}}, "chain.n_iterations must be an integer >= 1; got 0"),
        ({"chain": {"n_real": 2.5}}, "chain.n_real must be an integer; got 2.5"),
        ({"chain": {"n_real": "ten"}}, "chain.n_real must be an integer; got 'ten'"),
        ({"chain": {"n_reals": 3}}, "chain: unknown key 'n_reals' (did you mean 'n_real'?); allowed keys:"),
        ({"task": {"name": "gausian"}}, "task.name must be one of {gaussian"),
        ({"task": {"name": "gaussian", "dim": 0}}, "task.dim must be an integer >= 1; got 0"),
        ({"task": {"name": "gaussian", "sigma2": -1.0}}, "task.sigma2 must be a number in (0, inf); got -1.0"),
        ({"task": {"name": "gaussian", "colour": 1}}, "task: unknown key 'colour'"),
        ({"seeds": 0}, "seeds must be a count >= 1 or a list of distinct integers >= 0; got 0"),
        ({"seeds": [1, 1]}, "seeds must be a list of distinct integers"),
        ({"grid": {"chain.workflow": []}}, "grid.chain.workflow must be a non-empty list of values"),
        ({"grid": {"chain.n_real": [10, -1]}}, "chain.n_real must be an integer >= 1; got -1"),
        ({"grid": {"model.depth": [1]}}, "grid key must be task.<field> or chain.<field>"),
        ({"run": {"cpus_per_trial": 0}}, "run.cpus_per_trial must be a number in (0, inf); got 0.0"),
        ({"run": {"seeds_per_trial": "many"}}, "run.seeds_per_trial must be an integer or one of {auto}"),
        ({"chain": {"n_train": 5}}, "chain.n_train must be null unless workflow is one of {accumulate_subsample, real_fraction}; got 5"),
        ({"chain": {"workflow": "real_fraction", "real_fraction": 1.5}}, "chain.real_fraction must be a number in [0, 1]; got 1.5"),
        ({"chain": {"workflow": "replace", "n_fresh_real": 10}}, "chain.n_fresh_real must be null unless workflow is one of {accumulate, accumulate_subsample, fresh_data}"),
        ({"task": {"name": "linear_regression", "dim": 2}, "chain": {"n_real": 10, "n_synthetic": 20}}, "chain.n_synthetic must be null or equal to n_real (10) for linear_regression"),
        ({"wokflow": "replace"}, "spec: unknown key 'wokflow'"),
    ],
)
def test_bad_spec_is_one_line_naming_the_field(change, message):
    raw = {**BASE, **change}
    if "task" in change and "name" not in change["task"]:
        raw["task"] = {**BASE["task"], **change["task"]}
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    text = str(err.value)
    assert "\n" not in text
    assert message in text, text


def test_overrides_use_dotted_keys_and_yaml_values():
    spec = parse_spec(BASE, overrides=["chain.n_iterations=7", "grid.chain.workflow=[replace, accumulate]", "task.sigma2=1e-3"])
    assert {p.chain.n_iterations for p in spec.points} == {7}
    assert spec.points[0].task.sigma2 == pytest.approx(1e-3)
    assert [p.chain.workflow for p in spec.points] == ["replace", "accumulate"]
    with pytest.raises(SpecError, match="--set must look like dotted.key=value"):
        parse_spec(BASE, overrides=["chain.n_iterations"])


def test_defaults_are_resolved_and_logged_explicitly():
    spec = parse_spec({**BASE, "grid": {"chain.workflow": ["replace", "accumulate_subsample"]}})
    replace, subsample = spec.points
    assert replace.chain.n_synthetic == 10 and replace.chain.n_train is None
    assert subsample.chain.n_train == 10
    assert replace.key == "gaussian__replace" and subsample.key == "gaussian__accumulate_subsample"


def test_seeds_are_split_into_balanced_trial_blocks():
    spec = parse_spec({**BASE, "seeds": 10, "run": {"seeds_per_trial": 4}})
    assert [j.seeds for j in spec.jobs()] == [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]
    auto = parse_spec({**BASE, "seeds": 100, "task": {"name": "gaussian", "dim": 100},
                       "chain": {"n_real": 1000, "n_iterations": 100, "workflow": "accumulate_subsample"}})
    blocks = [len(j.seeds) for j in auto.jobs()]
    assert sum(blocks) == 100 and max(blocks) < 100 and max(blocks) - min(blocks) <= 1  # memory-capped


def test_task_and_chain_field_names_do_not_collide():
    import dataclasses

    chain_fields = {f.name for f in dataclasses.fields(ChainConfig)}
    for cls in TASKS.values():
        assert not chain_fields & {f.name for f in dataclasses.fields(cls)}, cls


def test_cli_refuses_bad_spec_before_anything_starts(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({**BASE, "chain": {"workflow": "collapse"}}))
    out = tmp_path / "results"
    assert cli.main(["run", str(spec), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: chain.workflow must be one of")
    assert not out.exists(), "nothing may be created for a refused spec"


@pytest.mark.parametrize("text", ["task: [unclosed", "- just\n- a list", "42", "task:\n  name: gaussian\n  dim: {a: 1}"])
def test_cli_malformed_yaml_is_one_line(tmp_path, capsys, text):
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    assert cli.main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_cli_missing_file_and_bad_tracking_uri(tmp_path, capsys):
    assert cli.main(["validate", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(BASE))
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "r"), "--tracking-uri", "./mlruns"]) == 2
    assert "tracking URI must be" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_cases_are_a_union_of_partial_grids_crossed_with_the_grid():
    spec = parse_spec({**BASE, "grid": {"chain.workflow": ["replace", "accumulate"]},
                       "cases": [{"task.dim": [1, 3], "chain.n_real": [10, 20]}, {"task.dim": [10], "chain.n_real": [20]}]})
    cells = {(p.chain.workflow, p.task.dim, p.chain.n_real) for p in spec.points}
    assert len(spec.points) == 2 * (4 + 1) == len(cells)
    assert ("accumulate", 10, 20) in cells and ("replace", 10, 10) not in cells
    with pytest.raises(SpecError, match=r"cases\[0\].chain.workflow is also a grid key"):
        parse_spec({**BASE, "grid": {"chain.workflow": ["replace"]}, "cases": [{"chain.workflow": ["accumulate"]}]})
    with pytest.raises(SpecError, match=r"cases\[1\].task.dim must be a non-empty list"):
        parse_spec({**BASE, "cases": [{"task.dim": [1]}, {"task.dim": []}]})


# -- regressions found by tests/test_fuzz_spec_cli.py: each was a traceback, a hang, or a
# -- line that did not name the field
@pytest.mark.parametrize(
    "text, message",
    [
        ("task: {name: gaussian}\nname: 2001-13-45\n", "at line 2, column 7: cannot read '2001-13-45': month must be"),
        ("task: !!int ''\n", "at line 1, column 7: cannot read ''"),  # PyYAML: IndexError
        ("task: {name: gaussian, dim: 1" + "0" * 5000 + "}\n", "at line 1, column 29: cannot read"),  # int() digit limit
        ("task: " + "[" * 5000 + "]" * 5000, "nested deeper than 32 levels"),  # RecursionError
        ("task: &t {name: gaussian, dim: *t}\n", "at line 1, column 7: an alias refers to a node that contains it"),
        ("task:\n\tname: gaussian\n", "at line 2, column 1: found character '\\t' that cannot start any token"),
    ],
)
def test_yaml_the_loader_chokes_on_is_one_line_with_file_and_line(tmp_path, capsys, text, message):
    spec = tmp_path / "s.yaml"
    spec.write_text(text)
    assert cli.main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"error: spec file '{spec}' is not valid YAML " in err and message in err, err


def test_unreadable_spec_files_are_one_line(tmp_path, capsys):
    (tmp_path / "b.yaml").write_bytes(b"task:\n  name: \xff\xfe")
    for path, message in [(tmp_path / "b.yaml", "is not UTF-8 text: byte 0xff at line 2, offset 14"),
                          (tmp_path, "cannot be read: Is a directory"), ("a\x00b", "cannot be read: embedded null byte")]:
        assert cli.main(["validate", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(
    "change, message",
    [
        ({"task": {"name": ["gaussian"]}}, "task.name must be one of {gaussian"),  # was TypeError: unhashable
        ({"task": {"name": "gaussian", "dim": 2**64}}, "task.dim must be an integer in (-2**63, 2**63); got 1844"),
        ({"task": {"name": "gaussian", "sigma2": 10**400}}, "task.sigma2 must be a number in (-2**1023, 2**1023)"),
        ({"seeds": 10**9}, "seeds must be a count <= 100000; got 1000000000"),  # was tuple(range(10**9))
        ({"seeds": [2**64]}, "seeds must be a list of integers in [0, 2**63)"),
        ({"seeds": 100_000, "run": {"seeds_per_trial": 1}, "grid": {"chain.n_real": [10, 20]}},
         "run.seeds_per_trial: the sweep would run 200000 trials"),
        ({"grid": {f"task.{k}": list(range(30)) for k in ("dim", "n_test", "sigma2")}},
         "grid must make at most 10000 grid points; got 27000"),
        ({"grid": {"chain.n_real": [[10, 20]]}}, "grid.chain.n_real[0] must be a single value"),  # was unhashable
        ({"grid": {"task.": [1]}}, "grid key must be task.<field> or chain.<field>; got 'task.'"),
        ({"grid": {"task.a\nb": 1}}, "grid.'task.a\\nb' must be a non-empty list of values; got 1"),  # two lines
        ({"cases": [None, None]}, "cases[0] must be a non-empty mapping"),  # was "two cells give the same run"
        ({"name": "../elsewhere"}, "name must be a non-empty string without '/'"),
        ({"chain": 0}, "chain must be a mapping of keys to values; got 0"),
    ],
)
def test_fuzzed_bad_values_are_one_line_naming_the_field(change, message):
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE, **change})
    assert "\n" not in str(err.value) and message in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "raw, overrides, message",
    [
        ({**BASE, "grid": 0}, ["grid.chain.n_real=[1]"], "grid must be a mapping"),  # was TypeError
        (BASE, ["name.x=1"], "--set: unknown key 'name.x'; name has no sub-keys"),
        (BASE, ["chain.n_real.x=1"], "--set: unknown key 'chain.n_real.x'; chain.n_real is a value, not a mapping"),
        (BASE, ["task.dim=2001-13-45"], "--set task.dim: value '2001-13-45' is not valid YAML at line 1, column 1"),
        (BASE, ["task.dim=[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["], "nested deeper than 32 levels"),
    ],
)
def test_fuzzed_bad_overrides_are_one_line_naming_the_key(raw, overrides, message):
    with pytest.raises(SpecError) as err:
        parse_spec(raw, overrides=overrides)
    assert "\n" not in str(err.value) and message in str(err.value), str(err.value)


def test_a_huge_memory_budget_puts_all_seeds_in_one_trial():
    spec = parse_spec({**BASE, "seeds": 7, "run": {"memory_per_trial_gb": 1e300}})  # was int(nan): ValueError
    assert [len(j.seeds) for j in spec.jobs()] == [7] and spec.n_trials() == 1


def test_bad_command_line_is_one_error_line(capsys):
    assert cli.main(["run", "sweeps/quickstart.yaml", "--out"]) == 2  # argparse: usage block, then SystemExit
    assert capsys.readouterr().err == "error: argument --out: expected one argument (see collapse-ray run --help)\n"
