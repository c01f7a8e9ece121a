"""Every figure that applies to finished sweeps' results tables, in one command:

    python analysis/figures.py results/fig2_kde.parquet results/linear_regression.parquet \\
        results/discrete.parquet results/fig1_gaussian.parquet results/mixing_policies.csv --out results/figures

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
* pretraining and sft: `pretraining_workflows.png`, `fig3_sft.png`, and for value-grid
  sweeps Fig. 5, `fig5_value_grid.png`, `fig5_value_proportion.png` and `fig5_value_heatmap.png`
  (analysis/lm_figures.py);
* vae and diffusion: `{task}_workflows.png` (test loss and sample quality over
  iterations) and `{task}_{data}_samples.png` (sample grids at iterations 1, 5 and the
  last, replace vs accumulate, from the pictures logged to MLflow: `--tracking-uri`)
  (analysis/neural_figures.py).

Means are over seeds, of finite values only, with +-1 standard-error bands; settings are
never averaged together (see analysis/toy_figures.py). Bad input (a missing file, a
suffix other than .csv/.parquet, duplicate chains, no known task) exits with status 2
and one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pandas as pd


def _sibling(name: str):
    """A module of analysis/ loaded by path (analysis/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toy = _sibling("toy_figures")
lm = _sibling("lm_figures")
neural = _sibling("neural_figures")
fig1 = toy.fig1
EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """A table that cannot be drawn; the message is one line."""


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise InputError(f"table must end in .csv or .parquet; got {str(path)!r}")
    if not path.is_file():
        raise InputError(f"no such table: {str(path)!r}")
    try:
        table = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    except Exception as error:  # a truncated or foreign file
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(f"cannot read {str(path)!r}: {reason}") from None
    missing = sorted({"task", "workflow", "run_key", "seed", "iteration", "n_real", "n_synthetic"} - set(table.columns))
    if missing:
        raise InputError(f"{path} is not a `collapse-ray results` table: no column(s) {missing}")
    return table


def load_tables(paths: list[str | Path]) -> pd.DataFrame:
    """The tables concatenated; refuses the same chains from several sweeps."""
    tables = [read_table(p) for p in paths]
    table = pd.concat(tables, ignore_index=True, sort=False)
    if "sweep_run_id" not in table.columns:
        table["sweep_run_id"] = ""
    # the same chain: run key, seed, iteration and every setting (run keys name only the
    # swept settings, so two experiments can share one for different settings)
    settings = [c for c in toy.config_columns(table) if c != "sweep_run_id"]
    keys = ["run_key", "seed", "iteration"] + settings
    duplicate = table.duplicated(["run_key", "seed", "iteration"], keep=False)
    if duplicate.any():  # candidates only: comparing every setting as text is slow on big tables
        keyed = table.loc[duplicate, keys].astype(str)  # NaN-safe; bandwidth may mix numbers and words
        duplicate = keyed.duplicated(keep=False).reindex(table.index, fill_value=False)
    if duplicate.any():
        sweeps = sorted(table.loc[duplicate, "sweep_run_id"].astype(str).unique())
        first = table.loc[duplicate].iloc[0]
        where = f"sweeps {', '.join(sweeps)}" if len(sweeps) > 1 else f"sweep {sweeps[0]}: a table given twice?"
        raise InputError(
            f"chain {first['run_key']} seed {first['seed']} iteration {first['iteration']} appears more than once "
            f"({where}); keep one sweep per experiment (collapse-ray results without --all-sweeps)")
    tasks = toy.TASKS + lm.LM_TASKS + neural.NEURAL_TASKS
    known = sorted(set(table["task"]) & set(tasks))
    if not known:
        raise InputError(f"no rows of a known task ({', '.join(tasks)}); got tasks "
                         f"{sorted(map(str, set(table['task'])))}")
    return table


def draw_all(table: pd.DataFrame, out: Path, tracking_uri: str | None = None,
             kde_layout: str = "panels") -> list[Path]:
    """Every figure that applies to the table; returns the paths written. kde_layout:
    Fig. 2 as a panel per dataset ("panels") or (A)'s datasets x workflows grid ("grid")."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    summaries = {}
    for task in toy.TASKS:
        rows = toy.task_rows(table, task)
        if not rows.empty:
            summaries[task] = toy.summarise(rows)

    if "gaussian" in summaries:
        rows = toy.task_rows(table, "gaussian")
        rows = rows[rows["workflow"].isin(toy.CLASSIC)]
        if not rows.empty:
            # Fig. 1 groups by dim, sigma2, n and workflow only: one value of anything else
            rows, notes = toy.fix_settings(rows, fig1.LINE_KEYS + ["task", *toy.KNOBS])
            if notes:
                print(f"note: Fig. 1 drawn for {', '.join(notes)}", file=sys.stderr)
            written += fig1.write_figures(fig1.summarise(rows), out)

    if "kde" in summaries:
        for bandwidth in toy.kde_bandwidths(summaries["kde"]):
            path = out / f"fig2_kde_bw{toy.safe_name(bandwidth)}.png"
            written.append(toy.save(toy.plot_kde(summaries["kde"], bandwidth, kde_layout), path))
        for dataset in toy.bandwidth_study_datasets(summaries["kde"]):
            path = out / f"kde_nll_vs_bandwidth_{toy.safe_name(dataset)}.png"
            written.append(toy.save(toy.plot_kde_bandwidth(summaries["kde"], dataset), path))

    if "linear_regression" in summaries and _classic(summaries["linear_regression"]):
        path = out / "linear_regression_theory.png"
        written.append(toy.save(toy.plot_regression_theory(summaries["linear_regression"]), path))

    if "discrete" in summaries:
        rows = toy.task_rows(table, "discrete")
        collapse = toy.collapse_rows(rows)
        if not collapse.empty:  # (A)'s protocol: replace until one outcome is left
            written.append(toy.save(toy.plot_discrete_entropy(collapse), out / "discrete_entropy.png"))
            written.append(toy.save(toy.plot_discrete_collapse_time(collapse), out / "discrete_collapse_time.png"))
        fixed = rows[~toy.collapse_mask(rows)]  # chains run for a fixed number of iterations
        if not fixed.empty and _classic(toy.summarise(fixed)):
            written.append(toy.save(toy.plot_discrete(toy.summarise(fixed)), out / "discrete_diversity.png"))

    fig4 = {t: s for t, s in summaries.items() if t in toy.FIG4_TASKS and _classic(s)}
    if fig4:
        written.append(toy.save(toy.plot_fig4(fig4), out / "fig4_workflows.png"))

    for task, summary in summaries.items():
        if toy.has_mixing(summary):
            written.append(toy.save(toy.plot_mixing(task, summary), out / f"mixing_policies_{task}.png"))

    written += lm.write_figures(table, out)
    written += neural.write_figures(table, out, tracking_uri)
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
    parser.add_argument("tables", nargs="+", metavar="TABLE",
                        help="results table from `collapse-ray results` (.csv or .parquet)")
    parser.add_argument("--out", required=True, help="folder for the PNG files (created if needed)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store the sweeps logged to, for figures made of logged pictures (sample grids); "
                             "default: $MLFLOW_TRACKING_URI, else results/mlflow.db when it exists")
    parser.add_argument("--kde-layout", choices=toy.KDE_LAYOUTS, default="panels",
                        help="Fig. 2: a panel per dataset with the workflows as line styles (panels), or "
                             "(A)'s layout, datasets in rows and workflows in columns, log y (grid)")
    args = parser.parse_args(argv)
    try:
        table = load_tables(args.tables)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in draw_all(table, Path(args.out), _tracking_uri(args.tracking_uri), args.kde_layout):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
