"""Results tables shaped for figures: reading them, the settings of a row, means and
standard errors over seeds, and fixing the settings a figure has no axis for.

One rule for every mean in every figure, the one the MLflow charts use too
(collapse_ray.core.aggregate.mean_se): over the finite values only (a test loss is +inf once a
fit is degenerate), with `count` the finite values the mean is over and `total` all of
them, so a figure can say how many chains it left out; `se` is the sample standard
deviation / sqrt(count), NaN for a single value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from collapse_ray.core import aggregate

from analysis.style import KNOBS, missing

REQUIRED_COLUMNS = frozenset({"task", "workflow", "run_key", "seed", "iteration", "n_real", "n_synthetic"})
TASK_METRICS = {
    "gaussian": ("test_loss", "mean_sq_error", "cov_trace_ratio", "cov_det_ratio", "cov_log_det_ratio"),
    # kde also reports the bandwidth it used (`bandwidth_used`: a rule's value changes
    # with n and, under accumulate, with the iteration); the `bandwidth` column is the
    # config field
    "kde": ("test_loss", "train_var", "bandwidth_used"),
    "linear_regression": ("test_loss", "weight_sq_error"),
    "discrete": ("test_loss", "entropy", "fraction_of_initial_entropy", "n_zero_mass", "gini_simpson"),
}
ALL_METRICS = frozenset(m for metrics in TASK_METRICS.values() for m in metrics)
# Not settings: identifiers, the step, and n_iterations (a chain's value at iteration t
# does not depend on how long it runs on afterwards).
ID_COLUMNS = frozenset({"seed", "iteration", "run_key", "run_id", "sweep_run_id", "n_iterations"})
SUMMARY_FIELDS = frozenset({"metric", "mean", "se", "count", "total"})
CHAIN_COLUMNS = ("task", "workflow", "n_real", "n_synthetic", *KNOBS)


class InputError(ValueError):
    """A table that cannot be drawn; the message is one line."""


# -- reading ----------------------------------------------------------------------
def read_table(path: str | Path) -> pd.DataFrame:
    """A `collapse-ray results` table (.csv or .parquet, by suffix)."""
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
    missing_columns = sorted(REQUIRED_COLUMNS - set(table.columns))
    if missing_columns:
        raise InputError(f"{path} is not a `collapse-ray results` table: no column(s) {missing_columns}")
    return table


def load_tables(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The tables read and concatenated; refuses the same chains from several sweeps."""
    return one_sweep_per_chain(pd.concat([read_table(p) for p in paths], ignore_index=True, sort=False))


def one_sweep_per_chain(table: pd.DataFrame) -> pd.DataFrame:
    """The table, with `sweep_run_id` filled; raises InputError when a chain (run key,
    seed, iteration, with the same settings) appears more than once."""
    if "sweep_run_id" not in table.columns:
        table = table.assign(sweep_run_id="")
    # run keys name only the swept settings, so two experiments can share one for
    # different settings: the same chain is the same key, seed, iteration and settings
    settings = [c for c in config_columns(table) if c != "sweep_run_id"]
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
    return table


# -- settings ---------------------------------------------------------------------
def config_columns(frame: pd.DataFrame) -> list[str]:
    """The settings of a table or summary: every column that is not an id, the
    iteration, a metric or a summary statistic."""
    return [c for c in frame.columns if c not in ID_COLUMNS | ALL_METRICS | SUMMARY_FIELDS]


def bandwidth_label(value) -> str:
    """A KDE bandwidth as a label: numbers as %g ("0.5"), rules as they are ("scott")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "nan" if math.isnan(number) else f"{number:g}"


def label_order(label: str) -> tuple:
    """Sort key: numeric labels numerically, then words alphabetically."""
    try:
        return (0, float(label), "")
    except ValueError:
        return (1, 0.0, label)


def task_rows(table: pd.DataFrame, task: str) -> pd.DataFrame:
    """The rows of one task, without the task columns only other tasks fill; a KDE bandwidth
    becomes a string label (CSV mixes numbers and rule names in one column)."""
    rows = table[table["task"] == task]
    keep = rows.notna().any() | rows.columns.isin(CHAIN_COLUMNS)
    rows = rows.loc[:, keep].reset_index(drop=True)
    if task == "kde" and "bandwidth" in rows.columns:
        rows["bandwidth"] = rows["bandwidth"].map(bandwidth_label)
    return rows


# -- means over seeds -------------------------------------------------------------
def summarise_long(rows: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (keys, metric): `mean`, `se`, `count` and `total` of the metric's
    values in that group, over finite values only (see the module docstring)."""
    keys = list(keys)
    long = rows.melt(id_vars=keys, value_vars=list(metrics), var_name="metric", value_name="value")
    grouped = long.groupby(keys + ["metric"], sort=True, dropna=False)
    stats = aggregate.mean_se(long["value"].astype(np.float64).to_numpy(), grouped.ngroup().to_numpy(), grouped.ngroups)
    out = pd.DataFrame({"mean": stats.mean, "count": stats.count, "total": stats.total, "se": stats.se},
                       index=grouped.size().index)  # ngroup numbers the groups in this order
    return out.reset_index()


def mean_se(rows: pd.DataFrame, keys: Sequence[str], metric: str = "test_loss") -> pd.DataFrame:
    """One row per group of `keys`: mean, se, count, total of `metric` (finite values)."""
    return summarise_long(rows, keys, [metric]).drop(columns="metric")


def summarise(rows: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and standard error over seeds, long format, for the rows of one task.

    One row per (setting, iteration, metric), the setting being every config column
    (those that vary split groups, so settings are never averaged together; missing
    values, e.g. n_train under replace, are a value of their own).
    """
    if metrics is None:
        metrics = [m for task in rows["task"].unique() for m in TASK_METRICS.get(task, ())]
    metrics = list(dict.fromkeys(m for m in metrics if m in rows.columns))
    config = config_columns(rows)
    varying = [c for c in config if rows[c].nunique(dropna=False) > 1]
    out = summarise_long(rows, varying + ["iteration"], metrics)
    for column in config:
        if column not in varying:
            out[column] = rows[column].iloc[0]
    return out[config + ["iteration", "metric", "mean", "se", "count", "total"]]


# -- one value of the settings a figure has no axis for ---------------------------
def equals(series: pd.Series, value) -> pd.Series:
    """series == value, where a missing value (None, NaN) equals a missing one."""
    return series.isna() if missing(value) else series == value


def _sorted_values(series: pd.Series) -> list:
    return sorted(series.drop_duplicates(), key=lambda v: label_order(bandwidth_label(v)))


def fix_settings(frame: pd.DataFrame, free: Sequence[str],
                 prefer: Mapping[str, Sequence | Callable] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Keep one value of each config column that is not one of the figure's axes.

    `free` are the axes (panels, colours, line styles): left alone. A workflow knob
    (n_train, ...) set by the workflow and n is left alone too unless it varies with the
    free columns fixed; any other column with several values is fixed to one.
    `prefer[column]` is a list of values to take if present (first found wins) or a
    function scoring a value (lowest wins); else the smallest value is kept. Returns the
    rows kept and "column = value (of k)" notes for the columns that were fixed.
    """
    prefer = prefer or {}
    free = [c for c in free if c in frame.columns]
    notes = []
    for column in config_columns(frame):
        if column in free or frame.empty or frame[column].nunique(dropna=False) < 2:
            continue
        if column in KNOBS and free:
            spread = frame.groupby(free, dropna=False)[column].nunique(dropna=False)
            if not (spread > 1).any():
                continue
        values = _sorted_values(frame[column])
        choice = prefer.get(column)
        if callable(choice):
            value = min(values, key=choice)
        else:
            value = next((v for v in (choice or ()) if v in values), values[0])
        frame = frame[equals(frame[column], value)]
        notes.append(f"{column} = {bandwidth_label(value)} (of {len(values)})")
    return frame, notes


def near_half(label: str) -> tuple:
    """Score for `fix_settings` on KDE bandwidth labels: 0.5, else the number closest to
    it on a log scale, else a rule (scott before silverman)."""
    kind, number, word = label_order(label)
    return (kind, abs(math.log(number / 0.5)) if kind == 0 and number > 0 else math.inf, word)


def closest(target: float) -> Callable[[float], float]:
    """Score for `fix_settings`: distance to target on a log scale."""
    return lambda v: abs(math.log(float(v)) - math.log(target)) if float(v) > 0 else math.inf
