"""analysis/figures.py and analysis/toy_figures.py: aggregation arithmetic, and every
figure drawn from tables of the shape `collapse-ray results` writes (built without Ray
or MLflow, as tests/test_analysis.py does)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from collapse_ray.core.loop import run_chain
from collapse_ray.sweep.spec import parse_spec
from collapse_ray.tracking.params import job_params

from analysis import figures
from analysis import tables as shaping
from analysis import toy_figures as toy

CLASSIC = ["replace", "accumulate", "accumulate_subsample"]


def results_table(spec: dict, sweep_run_id: str = "s") -> pd.DataFrame:
    """A table of the same shape `collapse-ray results` writes, without Ray or MLflow."""
    frames = []
    for job in parse_spec(spec).jobs():
        table = run_chain(job.point.task, job.point.chain, job.seeds).table
        frames.append(table.assign(**job_params(job), run_id=job.key, sweep_run_id=sweep_run_id))
    return pd.concat(frames, ignore_index=True).sort_values(["run_key", "seed", "iteration"], ignore_index=True)


@pytest.fixture(scope="module")
def tables() -> dict[str, pd.DataFrame]:
    return {
        "kde": results_table({
            "task": {"name": "kde", "n_test": 30},
            "chain": {"n_iterations": 6},
            "seeds": 3,
            "grid": {"task.dataset": ["moons", "blobs"], "task.bandwidth": [0.5, "scott"],
                     "chain.n_real": [10, 20], "chain.workflow": CLASSIC},
        }),
        "linear_regression": results_table({
            "task": {"name": "linear_regression", "dim": 3, "n_test": 20},
            "chain": {"n_iterations": 6},
            "seeds": 4,
            "grid": {"task.sigma2": [1.0, 0.1], "chain.n_real": [10, 20], "chain.workflow": CLASSIC},
        }),
        "discrete": results_table({
            "task": {"name": "discrete", "n_outcomes": 5},
            "chain": {"n_iterations": 8},
            "seeds": 4,
            "grid": {"chain.n_real": [10, 20], "chain.workflow": CLASSIC},
        }),
        "mixing": results_table({
            "task": {"name": "gaussian", "dim": 2, "n_test": 20},
            "chain": {"n_real": 10, "n_iterations": 6},
            "seeds": 4,
            "grid": {"chain.workflow": CLASSIC + ["fresh_data", "iterative_retraining", "real_fraction"]},
        }),
    }


def test_summary_is_mean_and_standard_error_over_finite_seeds(tables):
    table = tables["linear_regression"].copy()
    cell = (table.workflow == "accumulate") & (table.n_real == 10) & (table.sigma2 == 1.0) & (table.iteration == 4)
    table.loc[table.index[cell][0], "test_loss"] = np.inf  # a degenerate fit
    summary = shaping.summarise(shaping.task_rows(table, "linear_regression"))
    row = summary[(summary.metric == "test_loss") & (summary.workflow == "accumulate") & (summary.n_real == 10)
                  & (summary.sigma2 == 1.0) & (summary.iteration == 4)]
    assert len(row) == 1  # one group per setting: sigma2 = 0.1 is not averaged in
    row = row.iloc[0]
    values = table.loc[cell, "test_loss"]
    finite = values[np.isfinite(values)]
    assert (row["count"], row["total"]) == (3, 4)
    assert row["mean"] == pytest.approx(finite.mean())
    assert row["se"] == pytest.approx(finite.std() / np.sqrt(len(finite)))
    other = summary[(summary.metric == "test_loss") & (summary.workflow == "accumulate") & (summary.n_real == 10)
                    & (summary.sigma2 == 0.1) & (summary.iteration == 4)].iloc[0]
    cell_01 = (table.workflow == "accumulate") & (table.n_real == 10) & (table.sigma2 == 0.1) & (table.iteration == 4)
    assert other["mean"] == pytest.approx(table.loc[cell_01, "test_loss"].mean())
    assert (other["count"], other["total"]) == (4, 4)


def test_kde_bandwidth_labels_sort_numbers_then_rules(tables, tmp_path):
    path = tmp_path / "kde.csv"
    tables["kde"].to_csv(path, index=False)  # CSV mixes "0.5" and "scott" in one column
    summary = shaping.summarise(shaping.task_rows(figures.read_table(path), "kde"))
    assert toy.kde_bandwidths(summary) == ["0.5", "scott"]
    labels = ["scott", "10", "0.5", "silverman", "2"]
    assert sorted(labels, key=shaping.label_order) == ["0.5", "2", "10", "scott", "silverman"]


def test_one_command_draws_every_figure(tables, tmp_path, capsys):
    paths = []
    for name, table in tables.items():
        path = tmp_path / (f"{name}.parquet" if name == "linear_regression" else f"{name}.csv")
        table.to_parquet(path) if path.suffix == ".parquet" else table.to_csv(path, index=False)
        paths.append(str(path))
    out = tmp_path / "figs"
    assert figures.main([*paths, "--out", str(out)]) == 0
    expected = {
        "fig1_gaussian_d2.png", "fig1_gaussian_overview.png",  # the mixing sweep's classic workflows
        "fig2_kde_bw0.5.png", "fig2_kde_bwscott.png",
        "linear_regression_theory.png", "discrete_diversity.png", "fig4_workflows.png",
        "mixing_policies_gaussian.png",
    }
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == expected
    assert all(p.stat().st_size > 20_000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    printed = capsys.readouterr().out.split()
    assert sorted(printed) == sorted(str(out / name) for name in expected)


def test_refuses_the_same_chains_from_two_sweeps(tables, tmp_path, capsys):
    table = tables["discrete"]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    table.to_csv(a, index=False)
    table.assign(sweep_run_id="t").to_csv(b, index=False)
    assert figures.main([str(a), str(b), "--out", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "one sweep per experiment" in err
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("case", ["missing", "suffix", "task"])
def test_bad_input_is_one_line_and_status_2(case, tables, tmp_path, capsys):
    if case == "missing":
        path = tmp_path / "absent.csv"
    elif case == "suffix":
        path = tmp_path / "table.json"
        path.write_text("{}")
    else:
        path = tmp_path / "other.csv"
        tables["discrete"].assign(task="language_model").to_csv(path, index=False)
    assert figures.main([str(path), "--out", str(tmp_path / "figs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")


def test_discrete_collapse_figures_from_chains_that_stop(tmp_path, capsys):
    # (A)'s protocol: replace until one outcome is left; one more chain meets a cap of 2
    table = results_table({
        "task": {"name": "discrete", "stop_when_collapsed": True},
        "chain": {"workflow": "replace", "n_iterations": 400},
        "seeds": 12,
        "grid": {"task.n_outcomes": [3, 10], "chain.n_real": [4, 16]},
    })
    capped = results_table({
        "task": {"name": "discrete", "stop_when_collapsed": True, "n_outcomes": 10},
        "chain": {"workflow": "replace", "n_iterations": 2, "n_real": 64},
        "seeds": 1,
    }, sweep_run_id="s")
    both = pd.concat([table, capped], ignore_index=True)
    times = toy.collapse_times(shaping.task_rows(both, "discrete"))
    assert len(times) == 2 * 2 * 12 + 1 and (~times.collapsed).sum() == 1
    # a chain's collapse iteration is its last row, where its entropy first fell below 1e-8
    first = table[table.entropy < 1e-8].groupby(["run_key", "seed"]).iteration.min().sort_index().to_numpy()
    assert np.array_equal(np.sort(times[times.collapsed].iteration.to_numpy()), np.sort(first))
    carried = toy.carried_to_group_end(shaping.task_rows(table, "discrete"), "fraction_of_initial_entropy")
    end = carried.groupby(["n_outcomes", "n_real"]).tail(1)
    assert np.allclose(end["mean"], 0.0)  # every chain of the group has collapsed by its end
    path = tmp_path / "discrete.csv"
    both.to_csv(path, index=False)
    out = tmp_path / "figs"
    assert figures.main([str(path), "--out", str(out)]) == 0
    assert {p.name for p in out.glob("*.png")} == {"discrete_entropy.png", "discrete_collapse_time.png"}


def test_kde_bandwidth_study_and_a_layout(tmp_path):
    table = results_table({
        "task": {"name": "kde", "n_test": 30},
        "chain": {"n_iterations": 4},
        "seeds": 3,
        "grid": {"chain.n_real": [10, 20], "chain.workflow": ["replace", "accumulate"]},
        "cases": [{"task.dataset": ["moons", "swiss_roll"], "task.bandwidth": [0.1, 1.0, "scott"]},
                  {"task.dataset": ["circles"], "task.bandwidth": [0.5]}],
    })
    summary = shaping.summarise(shaping.task_rows(table, "kde"))
    assert toy.bandwidth_study_datasets(summary) == ["moons", "swiss_roll"]  # circles has one bandwidth
    path = tmp_path / "kde.csv"
    table.to_csv(path, index=False)
    for layout in ("panels", "grid"):
        out = tmp_path / layout
        assert figures.main([str(path), "--out", str(out), "--kde-layout", layout]) == 0
        names = {p.name for p in out.glob("*.png")}
        assert {"kde_nll_vs_bandwidth_moons.png", "kde_nll_vs_bandwidth_swiss_roll.png", "fig2_kde_bw0.5.png",
                "fig2_kde_bwscott.png"} <= names
        assert all(p.stat().st_size > 20_000 for p in out.glob("*.png"))
    grid = toy.plot_kde(summary, "1", layout="grid")
    assert len(grid.axes) == 2 * 2  # datasets in rows, workflows in columns
    assert all(ax.get_yscale() == "log" for ax in grid.axes)
    assert [ax.get_title() for ax in grid.axes[:2]] == ["replace", "accumulate"]
    assert [ax.get_ylabel() for ax in grid.axes[::2]] == ["moons\ntest NLL", "swiss roll\ntest NLL"]
    assert [bool(ax.get_xlabel()) for ax in grid.axes] == [False, False, True, True]  # under the bottom row
    panels = toy.plot_kde(summary, "1", layout="panels")
    lines = panels.axes[0].get_lines()
    assert len(lines) == 2 * 2  # per n, per workflow: the workflow as the line style, n as the colour
    assert {line.get_linestyle() for line in lines} == {"-", "--"}


def test_every_figure_of_the_quick_sweeps_has_no_overlapping_or_clipped_text(tables, tmp_path, monkeypatch):
    """Issue 26, 5: each figure drawn from tables of the quick sweeps' shape (and a
    quickstart-shaped Gaussian one), checked as drawn: no text over another, none past the
    canvas (matplotlib's tight bounding boxes)."""
    from analysis import drawing

    gaussian = results_table({"task": {"name": "gaussian", "dim": 2, "n_test": 20}, "chain": {"n_iterations": 5},
                              "seeds": 3, "grid": {"chain.workflow": CLASSIC, "chain.n_real": [20, 50]}})
    problems, drawn = {}, []
    real_save = drawing.save

    def checked_save(fig, path, pdf=False):
        problems[path.name] = drawing.layout_problems(fig)
        drawn.append(path.name)
        return real_save(fig, path, pdf)

    monkeypatch.setattr(drawing, "save", checked_save)
    monkeypatch.setattr(figures, "save", checked_save)
    from analysis import fig1_gaussian

    for name, table in [*tables.items(), ("gaussian", gaussian)]:
        figures.draw_all(table, tmp_path / name)
    assert {"fig1_gaussian_overview.png", "fig1_gaussian_d2.png", "fig4_workflows.png", "discrete_diversity.png",
            "linear_regression_theory.png", "mixing_policies_gaussian.png"} <= set(drawn), drawn
    assert any(n.startswith("fig2_kde_bw") for n in drawn), drawn
    bad = {name: found for name, found in problems.items() if found}
    assert not bad, bad
    assert fig1_gaussian.drawing.save is checked_save  # the Fig. 1 module saves through the same check
