"""Every figure that applies to finished sweeps' results tables, in one command:

    python analysis/figures.py results/fig2_kde.parquet results/linear_regression.parquet \\
        results/discrete.parquet results/fig1_gaussian.parquet results/mixing_policies.csv --out results/figures

or pointed at a sweep in its MLflow store, which also logs the figures on the sweep's
parent run (artifacts folder `figures/`), so the MLflow UI shows them beside the runs:

    python analysis/figures.py --sweep quickstart --results-dir results --out results/figures

(--sweep reads the newest sweep of that experiment from --tracking-uri, else
$MLFLOW_TRACKING_URI, else RESULTS_DIR/mlflow.db; --out defaults to the sweep's own folder's
figures/, where `collapse-ray run` drew them, so no sweep's figures overwrite another's.)

Each TABLE is what `collapse-ray results EXPERIMENT --out TABLE` wrote (.csv or .parquet);
the tables are read and concatenated. The same chain (run_key, seed, iteration, with the
same settings) from several sweeps is refused: pick one sweep per experiment. Written
into --out, each path printed:

* gaussian rows (replace, accumulate_subsample, accumulate): Fig. 1,
  `fig1_gaussian_d{d}.png` and `fig1_gaussian_overview.png` (analysis/fig1_gaussian.py);
* kde: Fig. 2, `fig2_kde_bw{h}.png` per bandwidth: test NLL vs iteration, a panel per
  dataset, colour = n, solid replace, dashed accumulate, dotted accumulate-subsample
  (`--kde-layout grid`: (A)'s layout, datasets in rows, workflows in columns, log y);
  for a dataset swept over 3+ bandwidths, `kde_nll_vs_bandwidth_{dataset}.png`, test NLL
  against the bandwidth, a row per n, a column per workflow, a line per iteration
  ((A)'s notebooks 11 and 12);
* linear_regression: `linear_regression_theory.png`, test MSE of a few (d, n, sigma2)
  cells against the closed forms, and Monte Carlo / closed form below;
* discrete: `discrete_diversity.png`, Gini-Simpson and outcomes with zero mass against
  the closed forms; for chains run until collapse ((A)'s protocol, task.stop_when_collapsed)
  `discrete_entropy.png` (fraction of initial entropy vs iteration, a panel per K) and
  `discrete_collapse_time.png` (iteration of collapse vs n per K, with the Wright-Fisher
  closed form);
* any of gaussian, kde, linear_regression: Fig. 4, `fig4_workflows.png`, the three
  workflows side by side, a row per task;
* any workflow beyond those three: `mixing_policies_{task}.png` per task, a line per
  workflow;
* value grids of linear_regression (and gaussian): `{task}_value_grid.png` (with the
  closed form), `{task}_value_proportion.png`, `{task}_value_heatmap.png` and
  `{task}_value_sign.png` (the sign of L(n, s) - L(n, 0) and the closed-form crossover)
  (analysis/value_grid_figures.py);
* pretraining and sft: `pretraining_workflows.png`, `fig3_sft.png`, and for value-grid
  sweeps Fig. 5, `fig5_value_grid.png`, `fig5_value_proportion.png` and `fig5_value_heatmap.png`
  (analysis/lm_figures.py);
* vae and diffusion: `{task}_workflows.png` (test loss and sample quality over
  iterations) and `{task}_{data}_samples.png` (sample grids at iterations 1, 5 and the
  last, replace vs accumulate, from the pictures logged to MLflow: `--tracking-uri`)
  (analysis/neural_figures.py).

Means are over seeds, of finite values only, with +-1 standard-error bands; settings are
never averaged together (analysis/tables.py). `--pdf` writes a PDF beside each PNG. Bad
input (a missing file, a suffix other than .csv/.parquet, duplicate chains, no known
task, an unknown sweep or store) exits with status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: import the analysis package, not the folder's files
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import pandas as pd  # noqa: E402

from analysis import fig1_gaussian as fig1  # noqa: E402
from analysis import lm_figures as lm  # noqa: E402
from analysis import neural_figures as neural  # noqa: E402
from analysis import sweep_run, tables  # noqa: E402
from analysis import toy_figures as toy  # noqa: E402
from analysis import value_grid_figures  # noqa: E402
from analysis.drawing import save  # noqa: E402
from analysis.tables import InputError  # noqa: E402

EXIT_BAD_INPUT = 2
KNOWN_TASKS = toy.TASKS + lm.LM_TASKS + neural.NEURAL_TASKS
read_table = tables.read_table


def load_tables(paths: list[str | Path]) -> pd.DataFrame:
    """The tables concatenated; refuses the same chains from several sweeps, and tables
    without a task that has figures."""
    return known_tasks(tables.load_tables(paths))


def known_tasks(table: pd.DataFrame) -> pd.DataFrame:
    if not set(table["task"]) & set(KNOWN_TASKS):
        raise InputError(f"no rows of a known task ({', '.join(KNOWN_TASKS)}); got tasks "
                         f"{sorted(map(str, set(table['task'])))}")
    return table


def draw_all(table: pd.DataFrame, out: Path, tracking_uri: str | None = None,
             kde_layout: str = "panels", pdf: bool = False) -> list[Path]:
    """Every figure that applies to the table; returns the PNG paths written (a PDF
    beside each with `pdf`). kde_layout: Fig. 2 as a panel per dataset ("panels") or
    (A)'s datasets x workflows grid ("grid")."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    toy_value_grid = value_grid_figures.rows(table)  # Fig. 5's protocol on a toy task: its own figures only
    written += value_grid_figures.write_figures(toy_value_grid, out, pdf)
    table = table.drop(toy_value_grid.index)
    rows = {task: tables.task_rows(table, task) for task in toy.TASKS}
    summaries = {task: tables.summarise(r) for task, r in rows.items() if not r.empty}

    def draw(fig, name: str) -> None:
        written.append(save(fig, out / name, pdf))

    if "gaussian" in summaries:
        classic = rows["gaussian"][rows["gaussian"]["workflow"].isin(toy.CLASSIC)]
        if not classic.empty:
            # Fig. 1 groups by dim, sigma2, n and workflow only: one value of anything else
            classic, notes = tables.fix_settings(classic, fig1.LINE_KEYS + ["task", *toy.KNOBS])
            if notes:
                print(f"note: Fig. 1 drawn for {', '.join(notes)}", file=sys.stderr)
            written += fig1.write_figures(fig1.summarise(classic), out, pdf)

    if "kde" in summaries:
        for bandwidth in toy.kde_bandwidths(summaries["kde"]):
            draw(toy.plot_kde(summaries["kde"], bandwidth, kde_layout), f"fig2_kde_bw{toy.safe_name(bandwidth)}.png")
        for dataset in toy.bandwidth_study_datasets(summaries["kde"]):
            name = f"kde_nll_vs_bandwidth_{toy.safe_name(dataset)}.png"
            draw(toy.plot_kde_bandwidth(summaries["kde"], dataset), name)

    if "linear_regression" in summaries and _classic(summaries["linear_regression"]):
        draw(toy.plot_regression_theory(summaries["linear_regression"]), "linear_regression_theory.png")

    if "discrete" in summaries:
        collapse = toy.collapse_rows(rows["discrete"])
        if not collapse.empty:  # (A)'s protocol: replace until one outcome is left
            draw(toy.plot_discrete_entropy(collapse), "discrete_entropy.png")
            draw(toy.plot_discrete_collapse_time(collapse), "discrete_collapse_time.png")
        fixed = rows["discrete"][~toy.collapse_mask(rows["discrete"])]  # chains run for a fixed number of iterations
        if not fixed.empty and _classic(tables.summarise(fixed)):
            draw(toy.plot_discrete(tables.summarise(fixed)), "discrete_diversity.png")

    fig4 = {t: s for t, s in summaries.items() if t in toy.FIG4_TASKS and _classic(s)}
    if fig4:
        draw(toy.plot_fig4(fig4), "fig4_workflows.png")

    for task, summary in summaries.items():
        if toy.has_mixing(summary):
            draw(toy.plot_mixing(task, summary), f"mixing_policies_{task}.png")

    written += lm.write_figures(table, out, pdf)
    written += neural.write_figures(table, out, tracking_uri, pdf)
    return written


def _classic(summary: pd.DataFrame) -> bool:
    return bool(summary["workflow"].isin(toy.CLASSIC).any())


def _tracking_uri(given: str | None) -> str | None:
    import os

    if given or os.environ.get("MLFLOW_TRACKING_URI"):
        return given or os.environ["MLFLOW_TRACKING_URI"]
    default = Path("results") / "mlflow.db"
    return f"sqlite:///{default.resolve()}" if default.exists() else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("tables", nargs="*", metavar="TABLE",
                        help="results table from `collapse-ray results` (.csv or .parquet)")
    parser.add_argument("--sweep", metavar="NAME", default=None,
                        help="instead of tables: the newest sweep of experiment NAME in its MLflow store; its figures "
                             "are also logged on the sweep's parent run")
    parser.add_argument("--results-dir", default="results",
                        help="with --sweep: the folder `collapse-ray run --out` wrote (its mlflow.db); "
                             "default: results")
    parser.add_argument("--out", default=None,
                        help="folder for the PNG files (created if needed); with --sweep default the sweep's own folder's "
                             "figures/ (SWEEP_FOLDER/figures)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store the sweeps logged to, for --sweep and for figures made of logged pictures "
                             "(sample grids); default: $MLFLOW_TRACKING_URI, else results/mlflow.db when it exists")
    parser.add_argument("--kde-layout", choices=toy.KDE_LAYOUTS, default="panels",
                        help="Fig. 2: a panel per dataset with the workflows as line styles (panels), or "
                             "(A)'s layout, datasets in rows and workflows in columns, log y (grid)")
    parser.add_argument("--pdf", action="store_true", help="also write each figure as PDF beside its PNG")
    args = parser.parse_args(argv)
    try:
        if bool(args.tables) == bool(args.sweep):
            raise InputError("give results TABLEs or --sweep NAME (one of the two)")
        if args.sweep:
            sweep = sweep_run.read_sweep(sweep_run.tracking_uri_for(args.results_dir, args.tracking_uri), args.sweep)
            table, tracking_uri = known_tasks(tables.one_sweep_per_chain(sweep.table)), sweep.tracking_uri
            out = Path(args.out) if args.out else sweep_run.sweep_folder(sweep, Path(args.results_dir)) / "figures"
        else:
            if not args.out:
                raise InputError("--out is required with results tables (the folder for the figures)")
            table, tracking_uri, out = load_tables(args.tables), _tracking_uri(args.tracking_uri), Path(args.out)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    written = draw_all(table, out, tracking_uri, args.kde_layout, args.pdf)
    for path in written:
        print(path)
    if args.sweep:
        logged = sweep_run.log_figures(sweep, written, args.pdf)
        print(f"logged {len(logged)} file(s) on the parent run {sweep.parent_run_id} of sweep {args.sweep} "
              f"(MLflow UI: that run's Artifacts, {sweep_run.FIGURES_FOLDER}/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
