"""The command line itself: quiet by default (-v for Ray's, Tune's and MLflow's own
output), --set on a swept key refused, `validate --print / --trials`, --version, and
`results` refusing a bad --out or an unknown experiment in one line before any work."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

import collapse_ray
from collapse_ray import cli
from collapse_ray.sweep.spec import job_to_dict, load_spec, parse_spec
from collapse_ray.tracking.params import TABLE_NAME_WIDTH, cell_run_names

TINY = {"name": "clitiny", "task": {"name": "gaussian", "dim": 2}, "chain": {"n_real": 20, "n_iterations": 2},
        "seeds": 2, "grid": {"chain.workflow": ["replace", "accumulate"]}}
# What Ray, Tune and MLflow print on their own; none of it is the sweep's news.
NOISE = {
    "Ray's token-auth warning": "Token authentication is enabled",
    "MLflow's table creation": "Creating initial MLflow database tables",
    "Tune's configuration box": "Configuration for experiment",
    "Tune's TensorBoard hint": "tensorboard --logdir",
    "Tune's results folder": "View detailed results here",
}
DOWNLOAD_BARS = "Downloading artifacts"
RUN_LINK = "View run"  # MLflow's link for each run it ends on a server
HEADER = "# A tiny sweep: does replace drift?\n#\n# Expected: it does.\n"
ROOT = Path(__file__).resolve().parent.parent


def write_spec(folder: Path, spec: dict = TINY) -> Path:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(HEADER + yaml.safe_dump(spec))
    return path


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- quiet by default ---------------------------------------------------------------------------

@pytest.mark.ray
@pytest.mark.slow
def test_a_default_run_prints_only_its_own_progress_and_summary(tmp_path):
    """A fresh process, as a user runs it (its own Ray, a new SQLite store): the noise
    above is gone, the per-trial progress with an ETA and the closing summary stay."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "RAY_AUTH_MODE",
                                                           "RAY_AIR_NEW_OUTPUT")}
    spec = write_spec(tmp_path, {**TINY, "grid": {}, "seeds": 1})
    done = subprocess.run([sys.executable, "-m", "collapse_ray.cli", "run", str(spec), "--out", str(tmp_path / "out")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for what, text in NOISE.items():
        assert text not in output, f"{what} in a default run:\n{output}"
    assert "[1/1] gaussian__replace__seeds0-0 done" in done.stdout and "eta" in done.stdout, output
    assert "finished: 1/1 trials" in done.stdout and "collapse-ray results clitiny" in done.stdout, output


@pytest.mark.ray
def test_results_from_a_server_has_no_progress_bars_unless_verbose(tmp_path, local_ray, tracking_server, capfd):
    """Artifacts from a tracking server are downloaded: MLflow draws a progress bar per
    file unless told not to. -v brings the bars (and Tune's box) back, so the default's
    silence is the flag's doing."""
    spec = write_spec(tmp_path)
    uri = tracking_server.uri
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "out"), "--tracking-uri", uri]) == 0
    run = capfd.readouterr()
    assert NOISE["Tune's configuration box"] not in run.out + run.err, run.out + run.err
    assert "[2/2]" in run.out and "finished: 2/2 trials" in run.out

    # the UI's runs table: the sweep by its name and description, its runs by cell
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("clitiny").experiment_id])
    parent = next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.run_name.startswith("clitiny ") and len(parent.info.run_name) == len("clitiny 1201-104430")
    assert parent.data.tags["mlflow.note.content"] == "A tiny sweep: does replace drift?\n\nExpected: it does."
    assert sorted(r.info.run_name for r in runs if "collapse_ray.job_key" in r.data.tags) == ["acc", "rep"]

    table = tmp_path / "table.csv"
    assert cli.main(["results", "clitiny", "--tracking-uri", uri, "--out", str(table)]) == 0
    quiet = capfd.readouterr()
    assert DOWNLOAD_BARS not in quiet.out + quiet.err, quiet.err
    assert quiet.out.startswith("wrote 8 rows") and quiet.err == "", quiet

    assert cli.main(["results", "clitiny", "--tracking-uri", uri, "--out", str(table), "-v"]) == 0
    assert DOWNLOAD_BARS in capfd.readouterr().err
    assert cli.main(["run", str(spec), "--out", str(tmp_path / "out"), "--tracking-uri", uri, "--verbose"]) == 0
    assert NOISE["Tune's configuration box"] in capfd.readouterr().out
    assert os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR") is None  # restored after each command

    # MLflow prints two "View run ... at" lines for every run it ends on a server; each
    # trial ends one, so they would flood the driver. Ours leave them out, MLflow's own prints
    from collapse_ray.tracking.store import SUPPRESS_RUN_LINKS, client_for

    ours = client_for(uri)
    experiment_id = client.get_experiment_by_name("clitiny").experiment_id
    capfd.readouterr()
    ours.set_terminated(client.create_run(experiment_id).info.run_id, "FINISHED")
    assert RUN_LINK not in capfd.readouterr().out and SUPPRESS_RUN_LINKS not in os.environ
    client.set_terminated(client.create_run(experiment_id).info.run_id, "FINISHED")
    assert RUN_LINK in capfd.readouterr().out  # (so the check above can fail)


# -- --set on a swept key -------------------------------------------------------------------------

def test_set_on_a_swept_key_is_refused_with_the_axis_override(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert cli.main(["validate", str(spec), "--set", "chain.workflow=replace"]) == cli.EXIT_BAD_INPUT
    line = one_error_line(capsys.readouterr().err)
    assert "--set chain.workflow" in line and "--set grid.chain.workflow=[...]" in line, line

    assert cli.main(["run", str(spec), "--set", "chain.workflow=replace", "--out", str(tmp_path / "out")]) == 2
    one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # refused before anything started

    assert cli.main(["validate", str(spec), "--set", "grid.chain.workflow=[accumulate]"]) == 0
    assert "1 grid points x 2 seeds" in capsys.readouterr().out
    # an unswept key is still set as before
    assert cli.main(["validate", str(spec), "--set", "chain.n_real=7"]) == 0

    with_cases = write_spec(tmp_path, {**TINY, "name": "withcases", "cases": [{"chain.n_real": [10, 20]}]})
    assert cli.main(["validate", str(with_cases), "--set", "chain.n_real=7"]) == 2
    assert "cases sweep this key" in one_error_line(capsys.readouterr().err)


def test_help_names_the_axis_override(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["validate", "--help"])
    assert exit_.value.code == 0
    assert "grid.task.bandwidth=" in " ".join(capsys.readouterr().out.split())


# -- validate --print / --trials -----------------------------------------------------------------

def test_validate_print_gives_the_resolved_spec_that_runs_the_same_trials(tmp_path, capsys):
    spec = write_spec(tmp_path)
    assert cli.main(["validate", str(spec), "--print", "--set", "chain.n_iterations=4", "--set", "seeds=3"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_spec(spec, ["chain.n_iterations=4", "seeds=3"])
    assert printed["chain"]["n_iterations"] == 4 and printed["seeds"] == [0, 1, 2]
    assert printed["task"]["sigma2"] == 1.0  # a default, filled in
    assert [job_to_dict(j) for j in parse_spec(printed).jobs()] == [job_to_dict(j) for j in expected.jobs()]


def test_validate_trials_lists_one_line_per_grid_point_and_seed_block(tmp_path, capsys):
    spec = write_spec(tmp_path, {**TINY, "seeds": 4, "run": {"seeds_per_trial": 2}})
    assert cli.main(["validate", str(spec), "--trials"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[:-1] == ["gaussian__replace__seeds0-1", "gaussian__replace__seeds2-3",
                          "gaussian__accumulate__seeds0-1", "gaussian__accumulate__seeds2-3"]
    assert lines[-1].startswith("# clitiny: 2 grid points x 4 seeds -> 4 trials")
    assert cli.main(["validate", str(spec), "--trials", "--print"]) == 2  # one or the other
    one_error_line(capsys.readouterr().err)


# -- --version, results' refusals ------------------------------------------------------------------

def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"collapse-ray {collapse_ray.__version__}"
    assert collapse_ray.__version__ == version("collapse_ray")


def test_results_refuses_a_bad_out_before_touching_the_store(tmp_path, capsys):
    """An unreachable server would take MLflow's retries to report: the refusal is immediate."""
    started = time.perf_counter()
    rc = cli.main(["results", "quickstart", "--tracking-uri", "http://127.0.0.1:9", "--out", str(tmp_path / "x.xlsx")])
    assert rc == 2 and time.perf_counter() - started < 1.0
    line = one_error_line(capsys.readouterr().err)
    assert "--out must end in one of {.csv, .parquet}" in line and "x.xlsx" in line
    assert list(tmp_path.iterdir()) == []


def test_results_for_an_unknown_experiment_suggests_the_store_flags(tmp_path, capsys):
    from mlflow import MlflowClient

    MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment("another_sweep")
    capsys.readouterr()
    rc = cli.main(["results", "quickstart", "--results-dir", str(tmp_path), "--out", str(tmp_path / "q.csv")])
    assert rc == 2
    line = one_error_line(capsys.readouterr().err)
    assert "another_sweep" in line and "'quickstart'" in line, line
    assert "--results-dir" in line and "--tracking-uri" in line, line


# -- run names ----------------------------------------------------------------------------------

def test_run_names_say_the_cell_and_differ_within_the_table_width():
    quickstart = cell_run_names(load_spec(ROOT / "sweeps" / "quickstart.yaml").jobs())
    assert sorted(quickstart.values()) == ["acc nr20", "acc nr50", "accsub nr20", "accsub nr50", "rep nr20", "rep nr50"]
    spec = load_spec(ROOT / "sweeps" / "quickstart.yaml", ["run.seeds_per_trial=25"])
    assert cell_run_names(spec.jobs())[spec.jobs()[0].key].endswith((" s0-24", " s25-49"))
    for name in ("fig2_kde", "linear_regression", "discrete", "sft_helpsteer2"):  # too many axes: numbered
        jobs = load_spec(ROOT / "sweeps" / f"{name}.yaml").jobs()
        names = cell_run_names(jobs)
        assert len({n[:TABLE_NAME_WIDTH] for n in names.values()}) == len(jobs), name
    assert "swiss_roll b0.1 nr1000" in " | ".join(cell_run_names(load_spec(ROOT / "sweeps" / "fig2_kde.yaml").jobs())
                                                 .values())


def test_the_spec_header_is_its_description(tmp_path):
    assert load_spec(write_spec(tmp_path)).description == "A tiny sweep: does replace drift?\n\nExpected: it does."
    assert load_spec(ROOT / "sweeps" / "quickstart.yaml").description.startswith("Quickstart: does a fitted Gaussian")


def test_resume_with_nothing_ever_run_says_to_drop_resume(tmp_path, capsys):
    """Issue 26, 7: a newcomer's `--resume` before any run is told what to run instead."""
    spec = tmp_path / "fresh.yaml"
    spec.write_text("name: fresh\ntask: {name: gaussian, dim: 2}\nchain: {n_real: 20, n_iterations: 2}\nseeds: 1\n")
    assert cli.main(["run", str(spec), "--resume", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no sweep named 'fresh' has run" in err and "run without --resume" in err
    assert not (tmp_path / "out" / "fresh").exists()


def test_run_help_says_resume_also_grows_a_finished_sweep(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    assert "grow a finished one" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv, hint", [
    (["--set", "grid.chain.workflow=[acumulate]"], "got 'acumulate' (did you mean 'accumulate'?)"),
    (["--set", "task.name=gausian"], "(did you mean 'gaussian'?)"),
    (["--set", "task.dimm=3"], "unknown key 'dimm' (did you mean 'dim'?)"),
    (["--set", "chian.n_real=3"], "(did you mean 'chain'?)"),
])
def test_a_mistyped_value_or_key_gets_a_did_you_mean(argv, hint, capsys):
    """Issue 26, 7: unknown workflows, tasks and keys name the closest allowed one."""
    assert cli.main(["validate", str(ROOT / "sweeps" / "quickstart.yaml"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and hint in err, err


def test_a_mistyped_spec_path_names_the_closest_spec_in_its_folder(capsys):
    assert cli.main(["validate", str(ROOT / "sweeps" / "quickstar.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "(did you mean 'quickstart.yaml'?)" in err, err


def test_validate_says_an_adaptive_search_runs_only_the_cells_it_picks(capsys):
    spec = Path(__file__).resolve().parents[1] / "sweeps" / "linear_regression_value_grid_quick.yaml"
    assert cli.main(["validate", str(spec)]) == 0
    assert "search" not in capsys.readouterr().out  # the full grid, as before
    assert cli.main(["validate", str(spec), "--set", "search.method=level_set", "--set", "search.budget=8"]) == 0
    out = capsys.readouterr().out
    assert "22 trials" in out and "search level_set (straddle): runs only the cells it picks, at most 8" in out, out
