"""Figures of finished sweeps, drawn from `collapse-ray results` tables.

Layout, bottom to top:

* `tables`       reading results tables, the settings of a row, mean and standard error
                 over seeds (of finite values only), fixing the settings a figure has no
                 axis for;
* `style`        the workflows' order, colours, line styles and labels (names taken from
                 `collapse_ray.core.workflows`), the colour ramps for n;
* `drawing`      the canvas (Agg, chosen when a figure is made), the one save helper, the
                 panel grid and the mean +- SE lines every figure draws;
* `closed_forms` the expectations of `collapse_ray.theory` as figure overlays;
* the figure modules: `fig1_gaussian`, `toy_figures`, `lm_figures`, `neural_figures`;
* `sweep_run`    a sweep's results table and its parent MLflow run, where figures are logged;
* `figures`      the command line (`python analysis/figures.py ...`).
"""
