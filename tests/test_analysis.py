"""The analysis package: one mean/SE rule, one style, one save helper, no global
matplotlib state at import; the Fig. 1 module on a real results table; the command
lines; and a real sweep's figures logged on its parent MLflow run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import drawing, lm_figures, neural_figures, style, tables
from analysis import fig1_gaussian as fig1
from analysis import figures
from collapse_ray.core.loop import run_chain
from collapse_ray.sweep.spec import parse_spec
from collapse_ray.tracking.params import job_params

ROOT = Path(__file__).parent.parent


def results_table(seeds=5, iterations=8):
    """A table of the same shape `collapse-ray results` writes, without Ray or MLflow."""
    spec = parse_spec({
        "task": {"name": "gaussian", "dim": 2, "n_test": 50},
        "chain": {"n_iterations": iterations},
        "seeds": seeds,
        "grid": {"chain.workflow": ["replace", "accumulate", "accumulate_subsample"], "chain.n_real": [10, 40]},
    })
    frames = []
    for job in spec.jobs():
        table = run_chain(job.point.task, job.point.chain, job.seeds).table
        frames.append(table.assign(**job_params(job), run_id=job.key, sweep_run_id="s"))
    return pd.concat(frames, ignore_index=True)


def test_summarise_is_mean_and_standard_error_over_finite_seeds():
    table = results_table()
    table.loc[0, "test_loss"] = np.inf  # a collapsed chain
    summary = fig1.summarise(table)
    row = summary[(summary.metric == "cov_trace_ratio") & (summary.workflow == "replace")
                  & (summary.n_real == 10) & (summary.iteration == 3)].iloc[0]
    values = table[(table.workflow == "replace") & (table.n_real == 10) & (table.iteration == 3)].cov_trace_ratio
    assert row["mean"] == pytest.approx(values.mean())
    assert row["se"] == pytest.approx(values.std() / np.sqrt(len(values)))
    first = table.iloc[0]
    nll = summary[(summary.metric == "test_loss") & (summary.workflow == first.workflow)
                  & (summary.n_real == first.n_real) & (summary.iteration == first.iteration)].iloc[0]
    assert nll["count"] == 4 and nll["total"] == 5


def test_every_figure_module_means_over_finite_values_only():
    # the language-model and neural figures once averaged an +inf in (a mean of inf)
    rows = pd.DataFrame({"task": "vae", "source": "digits", "workflow": "replace", "iteration": [1, 1, 1, 2, 2],
                         "seed": [0, 1, 2, 0, 1], "test_loss": [1.0, 3.0, np.inf, 2.0, 4.0]})
    summary = tables.mean_se(rows, ["workflow", "iteration"])
    assert summary["mean"].tolist() == [2.0, 3.0] and summary["count"].tolist() == [2, 2]
    assert summary["total"].tolist() == [3, 2]
    assert summary["se"].iloc[0] == pytest.approx(np.std([1.0, 3.0], ddof=1) / np.sqrt(2))
    drawn = neural_figures.plot_workflows(rows, "vae").axes[0].get_lines()[0].get_ydata()
    assert list(drawn) == [2.0, 3.0]
    sft = rows.assign(task="sft", model="tiny")
    assert list(lm_figures.plot_fig3(sft).axes[0].get_lines()[0].get_ydata()) == [2.0, 3.0]


def test_one_style_covers_every_workflow_and_every_module_draws_with_it():
    from collapse_ray.core.workflows import WORKFLOW_NAMES

    assert set(style.ORDER) == set(WORKFLOW_NAMES) and len(style.ORDER) == len(WORKFLOW_NAMES)
    assert set(style.COLOURS) == set(WORKFLOW_NAMES) == set(style.TITLES)
    assert len(set(style.COLOURS.values())) == len(style.COLOURS), "one colour per workflow"
    assert style.ordered(["accumulate", "zeta", "replace", "accumulate_subsample"]) == [
        "replace", "accumulate_subsample", "accumulate", "zeta"]
    import matplotlib.colors as mcolors

    rows = pd.DataFrame([{"task": "pretraining", "model": "tiny", "workflow": w, "iteration": t, "seed": s,
                          "test_loss": 1.0 + t + s} for w in style.CLASSIC for t in (1, 2) for s in (0, 1)])
    expected = {style.title(w): mcolors.to_rgba(style.colour(w)) for w in style.CLASSIC}
    for fig in (lm_figures.plot_workflows(rows, "pretraining"),
                neural_figures.plot_workflows(rows.assign(task="vae", source="digits"), "vae")):
        lines = {line.get_label(): mcolors.to_rgba(line.get_color()) for line in fig.axes[0].get_lines()}
        assert lines == expected


def test_importing_analysis_leaves_matplotlib_alone_and_saves_at_one_dpi(tmp_path):
    probe = ("import sys, matplotlib\n"
             "before = matplotlib.rcParams._get('backend')\n"
             "import analysis.figures\n"
             "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n"
             "assert matplotlib.rcParams._get('backend') == before, 'backend chosen at import'\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    fig = drawing.figure((4.0, 3.0))
    fig.subplots().plot([0, 1], [0, 1])
    png = drawing.save(fig, tmp_path / "sub" / "line.png", pdf=True)
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (3 * drawing.DPI, 4 * drawing.DPI)
    assert png.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"


def test_script_draws_pngs_from_a_results_table(tmp_path, capsys):
    path = tmp_path / "table.csv"
    results_table().to_csv(path, index=False)
    assert fig1.main([str(path), "--out", str(tmp_path / "figs")]) == 0
    pngs = sorted((tmp_path / "figs").glob("*.png"))
    assert {p.name for p in pngs} == {"fig1_gaussian_d2.png", "fig1_gaussian_overview.png"}
    assert all(p.stat().st_size > 20_000 and p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    d2 = fig1.plot_dimension(fig1.summarise(pd.read_csv(path)), 2)
    top = [ax.get_title() for ax in d2.axes[:3]]
    assert top == ["Gaussian, d = 2: replace", "Gaussian, d = 2: accumulate-subsample", "Gaussian, d = 2: accumulate"]
    trace = d2.axes[3]  # row 2: the trace ratio; replace's closed form is drawn darker and dashed
    assert len(trace.get_lines()) == 2 * 2, "a mean and a closed form per n"


def test_script_refuses_a_table_with_two_sweeps_of_the_same_chains(tmp_path):
    table = results_table(seeds=2, iterations=2)
    path = tmp_path / "twice.parquet"
    pd.concat([table, table.assign(sweep_run_id="t")]).to_parquet(path)
    with pytest.raises(ValueError, match="keep one sweep per experiment"):
        fig1.load_table(path)


def test_the_makefile_command_line_runs_as_a_script(tmp_path):
    """`python analysis/figures.py TABLE --out DIR`, the Makefile's quickstart line, as its
    own process from another directory (the script imports the analysis package); a
    discrete table, whose one figure is cheap to draw."""
    spec = parse_spec({"task": {"name": "discrete", "n_outcomes": 4}, "chain": {"n_iterations": 3, "n_real": 10},
                       "seeds": 2, "grid": {"chain.workflow": ["replace", "accumulate"]}})
    table = pd.concat([run_chain(job.point.task, job.point.chain, job.seeds).table.assign(**job_params(job))
                       for job in spec.jobs()], ignore_index=True)
    table.to_csv(tmp_path / "table.csv", index=False)
    done = subprocess.run([sys.executable, str(ROOT / "analysis" / "figures.py"), "table.csv", "--out", "figs"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["figs/discrete_diversity.png"]
    assert [p.name for p in (tmp_path / "figs").iterdir()] == ["discrete_diversity.png"]


@pytest.mark.parametrize("argv, says", [
    (["--out", "x"], "give results TABLEs or --sweep NAME"),
    (["t.csv", "--sweep", "quickstart"], "give results TABLEs or --sweep NAME"),
    (["t.csv"], "--out is required"),
    (["--sweep", "quickstart", "--results-dir", "nowhere"], "no MLflow store at"),
    (["--sweep", "quickstart", "--tracking-uri", "mlruns"], "tracking URI must be"),
])
def test_bad_command_lines_are_one_line_and_status_2(argv, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert figures.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and says in err
    assert not (tmp_path / "nowhere").exists(), "no empty store created"


def _results_csv(out: Path, tmp: Path) -> Path:
    from collapse_ray import cli

    assert cli.main(["results", "quickstart", "--results-dir", str(out), "--out", str(tmp / "q.csv")]) == 0
    return tmp / "q.csv"


@pytest.mark.ray
@pytest.mark.slow
def test_a_sweeps_figures_are_logged_on_its_parent_run(tmp_path, local_ray, capsys, monkeypatch):
    """A real quickstart sweep (3 trials of 2 seeds x 3 iterations) in a SQLite store; the
    figure command pointed at it draws the figures and logs them on the parent run."""
    from collapse_ray import cli
    from collapse_ray import theory
    from collapse_ray.tracking.layout import CELL_SEEDS_TAG, PARENT_TAG, SWEEP_TAG
    from collapse_ray.tracking.store import client_for
    from collapse_ray.tracking.view import cell_filter, read_view_state

    out = tmp_path / "results"
    monkeypatch.setenv("COLLAPSE_RAY_SWEEP_FIGURES", "1")  # as a user's run draws them (conftest turns them off)
    assert cli.main(["run", str(ROOT / "sweeps" / "quickstart.yaml"), "--out", str(out), "--set", "seeds=2",
                     "--set", "chain.n_iterations=3", "--set", "grid.chain.n_real=[20]"]) == 0
    summary = capsys.readouterr().out
    client = client_for(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    (sweep,) = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{SWEEP_TAG}` != ''")
    sweep_dir = Path(sweep.data.tags[SWEEP_TAG])
    # issue 26, 3: a plain `collapse-ray run` leaves the figures and the per-cell table on the sweep run
    drawn = {"fig1_gaussian_d2.png", "fig1_gaussian_overview.png", "fig4_workflows.png"}
    on_run = {a.path for a in client.list_artifacts(sweep.info.run_id, "figures")}
    assert on_run == {f"figures/{n}" for n in drawn}, on_run
    assert {p.name for p in (sweep_dir / "figures").glob("*.png")} == drawn  # in the sweep's own folder
    assert {"cells.csv", "cells.json"} <= {a.path for a in client.list_artifacts(sweep.info.run_id)}
    cells = pd.read_csv(sweep_dir / "cells.csv")
    trace = cells[cells["metric"] == "cov_trace_ratio"].set_index("workflow")
    assert sorted(trace.index) == ["accumulate", "accumulate_subsample", "replace"]
    assert (trace["iteration"] == 3).all() and (trace["chains"] == 2).all()
    assert trace.loc["replace", "closed_form"] == pytest.approx(float(theory.gaussian_replace_trace_ratio(20, np.array([3]))[0]))
    assert np.isnan(trace.loc["accumulate_subsample", "closed_form"])
    # issue 26, 4: the terminal ends with that table's answer and the header's claim, judged
    lines = summary.splitlines()
    answer = next(line for line in lines if line.strip().startswith("t=3 cov_trace_ratio"))
    rep = trace.loc["replace"]
    assert f"replace {rep['mean']:.3g} ± {rep['se']:.3g} (theory {rep['closed_form']:.3g})" in answer, answer
    assert answer.index("replace") < answer.index("accumulate_subsample") < answer.index("| accumulate ")
    # issue 26, 1: the saved view shows this sweep's cell runs, one per cell, ungrouped (no
    # average over unlike cells, no min-max band), each the mean over its seeds
    state = read_view_state(experiment)
    assert state["searchFilter"] == cell_filter(sweep.info.run_id) and state["groupBy"] is None
    assert "aggregateFunction" not in json.dumps(state) and state["runsHiddenMode"] == "SHOW_ALL"
    cell_runs = client.search_runs([experiment.experiment_id], filter_string=state["searchFilter"])
    assert sorted(r.info.run_name for r in cell_runs) == ["acc nr20", "accsub nr20", "rep nr20"]
    table = pd.read_csv(_results_csv(out, tmp_path))
    for run in cell_runs:
        seeds = table[(table.workflow == run.data.tags["workflow"]) & (table.iteration == 3)]["test_loss"]
        assert run.data.metrics["test_loss"] == pytest.approx(seeds.mean(), rel=1e-12)
        assert run.data.metrics["test_loss_se"] == pytest.approx(seeds.std(ddof=1) / np.sqrt(len(seeds)), rel=1e-9)
        assert run.data.tags[CELL_SEEDS_TAG] == "2" and "run_key" not in run.data.params
    # each drawn in its workflow's colour of the figures (MLflow's own picks repeated across workflows)
    from matplotlib.colors import to_hex

    from analysis.style import colour
    assert {r.data.tags["workflow"]: r.data.tags["mlflow.runColor"] for r in cell_runs} == {
        w: to_hex(colour(w)) for w in ("replace", "accumulate", "accumulate_subsample")}
    claim = next(line for line in lines if line.strip().startswith('Expected: "replace'))
    assert " -> holds: " in claim or " -> does NOT hold: " in claim
    assert "replace's test_loss above accumulate's in " in claim and "of 1 cells" in claim
    capsys.readouterr()
    figs = tmp_path / "figs"
    assert figures.main(["--sweep", "quickstart", "--results-dir", str(out), "--out", str(figs), "--pdf"]) == 0
    captured = capsys.readouterr()
    assert "Downloading artifacts" not in captured.err, "the table is read in place, without progress bars"
    printed = captured.out.splitlines()
    names = {"fig1_gaussian_d2.png", "fig1_gaussian_overview.png", "fig4_workflows.png"}
    assert sorted(printed[:-1]) == sorted(str(figs / n) for n in names)

    parent = sweep.info.run_id
    assert parent in printed[-1] and "parent run" in printed[-1]
    logged = {a.path for a in client.list_artifacts(parent, "figures")}
    assert logged == {f"figures/{n}" for n in names} | {f"figures/{n.replace('.png', '.pdf')}" for n in names}
    fetched = Path(client.download_artifacts(parent, "figures/fig4_workflows.png", str(tmp_path / "fetched")))
    assert fetched.read_bytes() == (figs / "fig4_workflows.png").read_bytes()
    children = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent}'")
    assert len(children) == 6  # 3 chain runs and 3 cell runs
    assert all(not client.list_artifacts(c.info.run_id, "figures") for c in children), "figures on the parent only"
    # without --out the figures go to the sweep's own folder, never a folder all sweeps share
    capsys.readouterr()
    assert figures.main(["--sweep", "quickstart", "--results-dir", str(out)]) == 0
    redrawn = capsys.readouterr().out.splitlines()[:-1]
    assert sorted(redrawn) == sorted(str(sweep_dir / "figures" / n) for n in names) and not (out / "figures").exists()
    # an experiment the store does not have: one line naming the ones it does
    capsys.readouterr()
    assert figures.main(["--sweep", "nosuch", "--results-dir", str(out), "--out", str(figs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "quickstart" in err
