"""The MLflow UI: links into it, and the saved view a sweep's experiment opens with.

MLflow 3.17 opens an experiment and a run page in its GenAI layout whatever the
experiment says (its GenAI / Model training switch decides; the `mlflow.experimentKind`
tag is set but not read there), so `ui_url` and `run_url` give links with
`workflowType=machine_learning`; `ui_url`'s opens the saved view "collapse-ray" (the
newest sweep's cell runs, one line per cell, test loss first, log axis where the values
span decades, standard errors in a folded section; a value grid's contour), which
`save_sweep_view` writes as an experiment tag the UI reads.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from collapse_ray.tracking.layout import CELL_ROLE, CELL_SEEDS_TAG, PARENT_TAG, ROLE_TAG

VIEW_KEY = "collapse-ray"  # the saved view's key: experiment tag mlflow.sharedViewState.<key>
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
SE_SUFFIX = "_se"
LOG_AXIS_SPAN = 10.0  # test_loss charts get a log axis when the runs' values span this factor
MAX_VIEW_TAG_CHARS = 20_000  # MLflow's limit on an experiment tag's value


def ui_url(server: str, experiment_id: str) -> str:
    """The link that opens the sweep's experiment in the model-training view with the
    saved view "collapse-ray" (one line per cell of the newest sweep)."""
    return (f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}&compareRunsMode=CHART")


def run_url(server: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the model-training layout (3.17 reads the layout from this parameter
    or the browser's last choice, never from the experiment: see store.EXPERIMENT_KIND_TAG)."""
    return f"{server.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"


def cell_filter(sweep_run_id: str) -> str:
    """The runs-table filter that keeps the cell runs of one sweep (not its chain runs, not
    an earlier sweep's cells)."""
    return f"tags.`{ROLE_TAG}` = '{CELL_ROLE}' and tags.`{PARENT_TAG}` = '{sweep_run_id}'"


@dataclass(frozen=True)
class ValueGrid:
    """A sweep whose question is a surface (Fig. 5): test loss over two swept params."""

    x: str  # dotted param key, e.g. chain.n_real
    y: str  # e.g. task.value_synthetic


VALUE_GRID = ValueGrid("chain.n_real", "task.value_synthetic")


def save_sweep_view(client, experiment_id: str, sweep_run_id: str, metric_keys: Sequence[str],
                    spans_decades: bool, swept: Sequence[str] = (), n_cells: int = 20,
                    value_grid: ValueGrid | None = None, contour_metric: str | None = None) -> dict:
    """The experiment's saved view "collapse-ray" (the UI's own format of a saved and shared
    view, an experiment tag): chart mode over the cell runs of this sweep only (one run,
    so one line, per cell: its seed blocks combined, never an average of unlike cells; no
    grouping, so no min-max band), test_loss first and on a log axis when `spans_decades`,
    the other means after it, standard errors and within-fit curves in folded sections,
    the swept parameters as columns. A value grid (`value_grid`, one fit per chain) gets a
    contour of test_loss over its two axes and test_loss against its x axis instead of
    line charts of one point; an adaptive search's (`contour_metric`, P(synthetic rows hurt)
    on every cell, run or estimated) comes first, as a contour over the same axes. Returns
    the view's state (what the tag holds, unpacked)."""
    import zlib
    import base64

    def section(uid: str, name: str, display: bool) -> dict:
        return {"uuid": uid, "name": name, "display": display, "isReordered": True, "deleted": False,
                "isGenerated": False}

    sections = [section("means", "Model metrics", True), section("se", "Standard errors (over seeds)", False)]
    means = sorted((k for k in metric_keys if not k.endswith(SE_SUFFIX) and "/" not in k),
                   key=lambda k: (k != "test_loss", k))
    errors = sorted(k for k in metric_keys if k.endswith(SE_SUFFIX) and "/" not in k)
    nested = sorted({k.split("/", 1)[0] for k in metric_keys if "/" in k})
    sections += [section(f"prefix-{p}", p, False) for p in nested]
    charts = []
    shown = max(n_cells, 1)

    def base(kind: str, section_id: str, name: str) -> dict:
        return {"uuid": f"chart-{len(charts)}", "type": kind, "runsCountToCompare": shown,
                "metricSectionId": section_id, "deleted": False, "isGenerated": False, "displayName": name}

    def chart(key: str, section_id: str, log: bool = False) -> None:
        charts.append({**base("LINE", section_id, key),
                       "metricKey": key, "lineSmoothness": 0, "xAxisScaleType": "linear",
                       "scaleType": "log" if log else "linear", "range": {}, "xAxisKey": "step",
                       "selectedXAxisMetricKey": "", "yAxisKey": "metric", "yAxisExpressions": [],
                       "ignoreOutliers": False, "useGlobalXaxisKey": True, "useGlobalLineSmoothing": True})

    if value_grid is not None and contour_metric is not None:
        charts.append({**base("CONTOUR", "means", f"{contour_metric}: the search's estimate (0.5 = the contour)"),
                       "xaxis": {"key": value_grid.x, "type": "PARAM"}, "yaxis": {"key": value_grid.y, "type": "PARAM"},
                       "zaxis": {"key": contour_metric, "type": "METRIC"}})
    if value_grid is not None:
        charts.append({**base("CONTOUR", "means", f"test_loss over {value_grid.x} and {value_grid.y}"),
                       "xaxis": {"key": value_grid.x, "type": "PARAM"}, "yaxis": {"key": value_grid.y, "type": "PARAM"},
                       "zaxis": {"key": "test_loss", "type": "METRIC"}})
        charts.append({**base("SCATTER", "means", f"test_loss against {value_grid.x} (a point per cell)"),
                       "xaxis": {"key": value_grid.x, "type": "PARAM"},
                       "yaxis": {"key": "test_loss", "type": "METRIC"}})
        for key in errors:
            charts.append({**base("SCATTER", "se", f"{key} against {value_grid.x}"),
                           "xaxis": {"key": value_grid.x, "type": "PARAM"}, "yaxis": {"key": key, "type": "METRIC"}})
        for key in [*means, *errors]:  # the UI would add a line chart of lone dots per metric: marked deleted
            chart(key, "means" if key in means else "se")
            charts[-1]["deleted"] = True
    else:
        for key in means:
            chart(key, "means", log=key == "test_loss" and spans_decades)
        for key in errors:
            chart(key, "se")
        for key in sorted(k for k in metric_keys if "/" in k):
            chart(key, f"prefix-{key.split('/', 1)[0]}")
    state = {
        "searchFilter": cell_filter(sweep_run_id), "orderByKey": "attributes.run_name", "orderByAsc": True,
        "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [], "modelVersionFilter": "All Runs",
        "selectedColumns": [*(["tags.`workflow`"] if "chain.workflow" not in swept else []),
                            *(f"params.`{key}`" for key in swept), f"tags.`{CELL_SEEDS_TAG}`",
                            *(["tags.`collapse_ray.sweep.contour_search`", f"metrics.`{contour_metric}`"]
                              if contour_metric else [])],
        "columnOrder": [], "columnWidths": {}, "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts, "compareRunSections": sections, "viewMaximized": False,
        "runListHidden": False, "isAccordionReordered": True, "useGroupedValuesInCharts": False,
        "hideEmptyCharts": True, "groupsExpanded": {}, "groupBy": None,
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0, "selectedXAxisMetricKey": ""},
    }
    now = int(time.time() * 1000)

    def tag_value() -> str:
        packed = base64.b64encode(zlib.compress(json.dumps(state).encode())).decode()
        return json.dumps({"name": "collapse-ray: a line per cell of the newest sweep", "createdAt": now,
                           "updatedAt": now, "state": f"deflate;{packed}"})

    value = tag_value()
    if len(value) > MAX_VIEW_TAG_CHARS:  # many within-fit curves: the UI adds their charts by itself
        state["compareRunCharts"] = [c for c in charts if c["metricSectionId"] in ("means", "se")]
        state["compareRunSections"] = sections[:2]
        value = tag_value()
    if len(value) <= MAX_VIEW_TAG_CHARS:
        client.set_experiment_tag(experiment_id, VIEW_TAG, value)
    return state


def read_view_state(experiment) -> dict:
    """The saved view's state as the UI unpacks it (for tests and tools)."""
    import base64
    import zlib

    packed = json.loads(experiment.tags[VIEW_TAG])["state"].removeprefix("deflate;")
    return json.loads(zlib.decompress(base64.b64decode(packed)))


def sweep_view_inputs(client, experiment_id: str, sweep_run_id: str) -> tuple[list[str], bool, int]:
    """The metric keys of the sweep's cell runs, whether their last test_loss values span
    decades (then its chart gets a log axis), and how many cells there are."""
    cells = client.search_runs([experiment_id], filter_string=cell_filter(sweep_run_id), max_results=5000)
    keys = sorted({key for run in cells for key in run.data.metrics})
    losses = [run.data.metrics["test_loss"] for run in cells if "test_loss" in run.data.metrics]
    finite = [v for v in losses if math.isfinite(v)]
    spans = bool(finite) and min(finite) > 0 and max(finite) / min(finite) >= LOG_AXIS_SPAN
    return keys, spans, len(cells)
