"""Sweep specs: YAML in, validated frozen dataclasses out, before anything runs.

A spec (see sweeps/quickstart.yaml):
    name: quickstart            # MLflow experiment; default: the file's stem
    task:  {name: gaussian, dim: 2}
    chain: {workflow: replace, n_real: 100, n_iterations: 20}
    seeds: 10                   # 10 -> seeds 0..9, or an explicit list
    grid:                       # Cartesian product over dotted keys
      chain.workflow: [replace, accumulate, accumulate_subsample]
    cases:                      # optional: a union of partial grids, each crossed with `grid`
      - {task.dim: [1, 3], chain.n_real: [10, 100]}
      - {task.dim: [10], chain.n_real: [100]}
    run:  {seeds_per_trial: auto}

`--set dotted.key=value` overrides use the same dotted keys; values are parsed as YAML.
Every grid point is validated up front, so a bad value anywhere fails before Ray starts.

This module is the sweep: its records (grid points, jobs, the `run:` block), `--set`
and grid expansion. A chain's own config and rules live in collapse_ray/core/chain.py, the
hardened YAML reading in collapse_ray/sweep/yaml_loading.py. Each grid cell's chain is built
and resolved once, here; its jobs carry it to the trials.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from collapse_ray.core.chain import MAX_SYNTHETIC_RATIO, ChainConfig, ExecutionConfig, WorkflowName, rows_held
from collapse_ray.core.jobs import ChainJob, GridPoint
from collapse_ray.sweep.contour_search import SearchConfig
from collapse_ray.tasks import TASKS, Task
from collapse_ray.tasks.protocol import ChecksChain, ChecksRun, FitsEmptyTrainingSet, SizesState, offers
from collapse_ray.validation import (
    INT_BITS,
    SpecError,
    as_flat_dict,
    did_you_mean,
    describe,
    fail,
    from_mapping,
    key_name,
    require,
)
from collapse_ray.sweep.yaml_loading import MAX_SPEC_BYTES, MAX_YAML_DEPTH, load_yaml, load_yaml_file, yaml_problem

# Re-exported for the modules that import them from here (chain.py and yaml_loading.py are their home).
__all__ = [
    "MAX_SPEC_BYTES", "MAX_SYNTHETIC_RATIO", "MAX_YAML_DEPTH", "ChainConfig", "ChainJob", "ExecutionConfig",
    "GridPoint", "SpecError", "SweepSpec", "WorkflowName", "build_task", "header_comment", "load_spec", "load_yaml",
    "job_from_dict", "job_to_dict", "parse_override", "parse_spec", "task_to_dict",
]


@dataclass(frozen=True)
class SweepSpec:
    name: str
    task: Task
    chain: ChainConfig
    seeds: tuple[int, ...]
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    cases: tuple[tuple[tuple[str, tuple[Any, ...]], ...], ...]
    run: ExecutionConfig
    points: tuple[GridPoint, ...]
    # the spec file's header comment (its question and expected result), for the MLflow
    # sweep run's description; not part of the resolved spec a resume compares
    description: str = dataclasses.field(default="", compare=False)
    # which cells run: every one (method grid, the default) or an adaptive search's (collapse_ray/sweep/contour_search.py)
    search: SearchConfig = SearchConfig()

    def jobs(self) -> list[ChainJob]:
        """Trials, heaviest first, so the long ones do not straggle at the end (made once per spec)."""
        return list(self._jobs)

    def n_trials(self) -> int:
        """len(self.jobs()), without making them (parse_spec bounds it before any is made)."""
        return sum(math.ceil(len(self.seeds) / n) for n in self._seeds_per_trial)

    # Derived once per spec, in the instance's __dict__ (fields and equality do not see it).
    @functools.cached_property
    def _jobs(self) -> tuple[ChainJob, ...]:
        jobs = []
        for point, per_trial in zip(self.points, self._seeds_per_trial):
            for block in _seed_blocks(self.seeds, per_trial):
                jobs.append(ChainJob(f"{point.key}__seeds{block[0]}-{block[-1]}", point, block))
        return tuple(sorted(jobs, key=_work_estimate, reverse=True))

    @functools.cached_property
    def _seeds_per_trial(self) -> tuple[int, ...]:
        """Seeds (chains) one trial of each grid point carries."""
        return tuple(self._seeds_per_trial_of(point) for point in self.points)

    def _seeds_per_trial_of(self, point: GridPoint) -> int:
        if self.run.seeds_per_trial != "auto":
            return self.run.seeds_per_trial
        if not point.task.batched:
            return 1
        per_chain = max(1, rows_held(point.task, point.chain) * point.task.row_nbytes()) * 2  # pool + a training-set copy
        memory = self.run.memory_per_trial_gb * 2**30  # inf when a huge budget overflows
        if memory >= per_chain * len(self.seeds):
            return len(self.seeds)
        return max(1, int(memory // per_chain))

    def resolved_dict(self) -> dict[str, Any]:
        """The spec with defaults filled in, for logging next to the results."""
        return {
            "name": self.name,
            "task": task_to_dict(self.task),
            "chain": as_flat_dict(self.chain),
            "seeds": list(self.seeds),
            "grid": {k: list(v) for k, v in self.grid},
            "cases": [{k: list(v) for k, v in case} for case in self.cases],
            "run": as_flat_dict(self.run),
            # only when set: a spec without `search:` resolves (and resumes) exactly as before it existed
            **({"search": as_flat_dict(self.search)} if self.search.adaptive else {}),
        }


TOP_LEVEL_KEYS = ("name", "task", "chain", "seeds", "grid", "cases", "run", "search")
MAPPING_KEYS = ("task", "chain", "run", "search")  # top-level keys whose sub-keys `--set` reaches
MAX_SEEDS = 100_000
MAX_GRID_POINTS = 10_000
MAX_TRIALS = 100_000


def _work_estimate(job: ChainJob) -> float:
    """Rough relative cost of a trial, for ordering only: rows handled x row size."""
    chain = job.point.chain
    rows = chain.n_real + chain.n_synthetic + (chain.n_train or 0)
    return len(job.seeds) * chain.n_iterations * rows * job.point.task.row_nbytes()


def task_to_dict(task: Task) -> dict[str, Any]:
    return {"name": task.name, **as_flat_dict(task)}


def build_task(data: Any, where: str) -> Task:
    if not isinstance(data, Mapping):
        fail(where, "a mapping with a 'name' key", data)
    name = data.get("name")
    if not isinstance(name, str) or name not in TASKS:
        fail(f"{where}.name", "one of {" + ", ".join(TASKS) + "}", name)
    return from_mapping(TASKS[name], {k: v for k, v in data.items() if k != "name"}, where)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise SpecError(f"--set must look like dotted.key=value; got {describe(text)}")
    key, value = text.split("=", 1)
    try:
        return key.strip(), load_yaml(value)
    except yaml.YAMLError as err:
        raise SpecError(f"--set {key_name(key.strip())}: value {describe(value)} is not valid YAML"
                        f"{yaml_problem(err, value)}") from None


def _refuse_swept_overrides(set_keys: Sequence[str], grid, cases) -> None:
    """A --set of a key the grid (or a case) sweeps would be overwritten by every cell:
    refused, naming the override that changes the axis instead."""
    for key in set_keys:
        if key in {k for k, _ in grid}:
            raise SpecError(f"--set {key_name(key)}: the grid sweeps this key, so every cell would overwrite "
                            f"it; change the axis instead: --set grid.{key}=[...]")
        if any(key in {k for k, _ in case} for case in cases):
            raise SpecError(f"--set {key_name(key)}: the spec's cases sweep this key, so every cell would "
                            "overwrite it; edit the cases in the spec instead")


def _set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    if parts[0] not in TOP_LEVEL_KEYS or not all(parts):
        raise SpecError(f"{where}: unknown key {describe(key)}{did_you_mean(key.split('.')[0] if isinstance(key, str) else key, TOP_LEVEL_KEYS)}; "
                        f"keys start with one of: {', '.join(TOP_LEVEL_KEYS)}")
    if parts[0] == "grid" and len(parts) > 1:  # grid keys are themselves dotted
        grid = raw.get("grid")
        if grid is None:
            grid = raw["grid"] = {}
        if not isinstance(grid, dict):
            fail("grid", "a mapping of dotted keys (task.x, chain.x) to lists of values", grid)
        grid[".".join(parts[1:])] = value
        return
    if len(parts) > 1 and parts[0] not in MAPPING_KEYS:
        raise SpecError(f"{where}: unknown key {describe(key)}; {parts[0]} has no sub-keys")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            if i == 0:
                fail(part, "a mapping of keys to values", child)
            raise SpecError(f"{where}: unknown key {describe(key)}; {'.'.join(parts[: i + 1])} is a value, "
                            f"not a mapping; got {describe(child)}")
        node = child
    node[parts[-1]] = value


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    path = Path(path)
    text, raw = load_yaml_file(path)
    return parse_spec(raw, default_name=path.stem, overrides=overrides, description=header_comment(text))


def header_comment(text: str) -> str:
    """The comment lines a spec file opens with, without their '#'."""
    lines = []
    for line in text.lstrip("\ufeff").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(lines).strip()[:5000]


def parse_spec(raw: Any, default_name: str = "sweep", overrides: Sequence[str] = (), description: str = "") -> SweepSpec:
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        fail("spec", "a mapping with keys " + ", ".join(TOP_LEVEL_KEYS), raw)
    raw = copy.deepcopy(dict(raw))
    set_keys = []
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(raw, key, value, "--set")
        set_keys.append(key)
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if unknown:
        raise SpecError(f"spec: unknown key {describe(unknown[0])}{did_you_mean(unknown[0], TOP_LEVEL_KEYS)}; "
                        f"allowed keys: {', '.join(TOP_LEVEL_KEYS)}")

    name = raw.get("name", default_name)
    require(isinstance(name, str) and name.strip() not in ("", ".", "..") and name.isprintable()
            and not any(c in name for c in "/\\"), "name",
            "a non-empty string without '/', '\\' or control characters (it names a folder)", name)
    seeds = _parse_seeds(raw.get("seeds", 1))
    run = from_mapping(ExecutionConfig, raw.get("run"), "run")
    search = from_mapping(SearchConfig, raw.get("search"), "search")
    grid = _parse_grid(raw.get("grid"), "grid")
    cases = _parse_cases(raw.get("cases"))
    for i, case in enumerate(cases):
        shared = sorted({k for k, _ in grid} & {k for k, _ in case})
        if shared:
            raise SpecError(f"cases[{i}].{key_name(shared[0])} is also a grid key; put it in one of the two")
    _refuse_swept_overrides(set_keys, grid, cases)

    task_raw = raw.get("task")
    if task_raw is None:
        raise SpecError("task is required: a mapping with 'name' (one of {" + ", ".join(TASKS) + "})")
    n_points = sum(math.prod(len(v) for _, v in grid + case) for case in cases or ((),))
    if n_points > MAX_GRID_POINTS:
        raise SpecError(f"grid{' and cases' if cases else ''} must make at most {MAX_GRID_POINTS} grid points; "
                        f"got {n_points}")
    points = []
    for case in cases or ((),):
        axes = grid + case
        for values in itertools.product(*(v for _, v in axes)):
            swept = tuple((key, value) for (key, _), value in zip(axes, values))
            points.append(_grid_point(task_raw, raw.get("chain"), swept))
    seen = set()
    for point in points:
        if point.key in seen:
            raise SpecError(f"{'grid and cases' if cases else 'grid'}: two cells give the same run "
                            f"{describe(point.key)}; remove duplicate values")
        seen.add(point.key)
    for point in points:  # task-specific rules for the run block (e.g. Ray Train trials)
        if isinstance(point.task, ChecksRun):
            point.task.check_run(run, "run")
    _check_chain_memory(points, run)
    search.check_grid(points, "search")
    # the spec's own task and chain blocks, without the grid: logged (resolved_dict), not run
    base_task = build_task(task_raw, "task")
    base_chain = from_mapping(ChainConfig, raw.get("chain"), "chain")
    spec = SweepSpec(name.strip(), base_task, base_chain, seeds, grid, cases, run, tuple(points), description, search)
    n_trials = spec.n_trials()
    if n_trials > MAX_TRIALS:
        raise SpecError(f"run.seeds_per_trial: the sweep would run {n_trials} trials ({len(points)} grid points x "
                        f"blocks of seeds), at most {MAX_TRIALS}: raise run.seeds_per_trial or use fewer seeds")
    return spec


def _check_chain_memory(points: Sequence[GridPoint], run: ExecutionConfig) -> None:
    """A chain that cannot fit its trial's memory budget fails here, in one line, not
    three times in Ray with "Unable to allocate 14.6 TiB"."""
    budget = run.memory_per_trial_gb * 2**30
    for point in points:
        if not point.task.batched:
            # the budget sizes seed batches; one-chain tasks (language models) hold their
            # pool as their own code decides, and their specs do not set it
            continue
        need = chain_nbytes(point.task, point.chain)
        if need > budget:
            raise SpecError(
                f"run.memory_per_trial_gb must be at least {need / 2**30:.3g} for one chain of {point.key} "
                f"(pool of {need // (2 * point.task.row_nbytes())} rows x {point.task.row_nbytes()} bytes, held "
                f"twice); got {run.memory_per_trial_gb:g}. Raise it, or make the chain smaller",
                field="run.memory_per_trial_gb")


def _grid_point(task_raw: Any, chain_raw: Any, swept: tuple[tuple[str, Any], ...]) -> GridPoint:
    cell = copy.deepcopy({"task": task_raw, "chain": chain_raw})
    for key, value in swept:
        _set_dotted(cell, key, value, "grid")
    task = build_task(cell["task"], "task")
    chain = from_mapping(ChainConfig, cell["chain"], "chain").resolved()  # the cell's one resolution
    if chain.n_real == 0 and not offers(task, FitsEmptyTrainingSet):
        fail("chain.n_real", f"an integer >= 1 for task {task.name}", chain.n_real)
    if isinstance(task, ChecksChain):  # task-specific size rules, named with the task they come from
        try:
            task.check_chain(chain, "chain")
        except SpecError as err:
            raise SpecError(f"{err} (for task {task.name})", field=err.field, allowed=err.allowed) from None
    return GridPoint(_point_key(task, chain, swept), swept, task, chain)


def _parse_seeds(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        require(value >= 1, "seeds", "a count >= 1 or a list of distinct integers >= 0", value)
        require(value <= MAX_SEEDS, "seeds", f"a count <= {MAX_SEEDS}", value)
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        require(len(value) <= MAX_SEEDS, "seeds", f"a list of at most {MAX_SEEDS} seeds", value)
        require(max(value) < 2**INT_BITS, "seeds", f"a list of integers in [0, 2**{INT_BITS})", value)
        require(len(set(value)) == len(value), "seeds", "a list of distinct integers", value)
        return tuple(value)
    fail("seeds", "a count >= 1 or a list of distinct integers >= 0", value)


def _parse_grid(value: Any, where: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        fail(where, "a mapping of dotted keys (task.x, chain.x) to lists of values", value)
    grid = []
    for key, values in value.items():
        if not (isinstance(key, str) and key.count(".") == 1 and key.split(".")[0] in ("task", "chain")
                and key.split(".")[1]):
            fail(f"{where} key", "task.<field> or chain.<field>", key)
        if not isinstance(values, list) or not values:
            fail(f"{where}.{key_name(key)}", "a non-empty list of values", values)
        for i, item in enumerate(values):
            if not (item is None or isinstance(item, (str, int, float))):  # bool is an int
                fail(f"{where}.{key_name(key)}[{i}]", "a single value (a string, number, true/false or null)", item)
        grid.append((key, tuple(values)))
    return tuple(grid)


def _parse_cases(value: Any) -> tuple[tuple[tuple[str, tuple[Any, ...]], ...], ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        fail("cases", "a non-empty list of grids (mappings of dotted keys to lists)", value)
    for i, case in enumerate(value):
        if not isinstance(case, Mapping) or not case:  # an empty case would repeat the grid's cells
            fail(f"cases[{i}]", "a non-empty mapping of dotted keys (task.x, chain.x) to lists of values", case)
    return tuple(_parse_grid(case, f"cases[{i}]") for i, case in enumerate(value))


def _point_key(task: Task, chain: ChainConfig, swept: tuple[tuple[str, Any], ...]) -> str:
    parts = [task.name, chain.workflow]
    for key, value in swept:
        field = key.split(".", 1)[1]
        if key in ("task.name", "chain.workflow"):
            continue
        parts.append(f"{field}{_key_safe(value)}")
    return "__".join(parts)


def _key_safe(value: Any) -> str:
    """A swept value as it may appear in a key, which names folders and MLflow runs:
    paths and odd characters are flattened, with a digest so distinct values stay distinct."""
    text = str(value)
    safe = re.sub(r"[^A-Za-z0-9.+-]", "_", text)
    if safe == text and len(text) <= 40:
        return text
    return f"{safe[-32:].lstrip('_.')}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def _seed_blocks(seeds: tuple[int, ...], per_trial: int) -> list[tuple[int, ...]]:
    n_blocks = math.ceil(len(seeds) / per_trial)
    base, extra = divmod(len(seeds), n_blocks)  # balanced: sizes differ by at most one
    blocks, start = [], 0
    for b in range(n_blocks):
        size = base + (b < extra)
        blocks.append(seeds[start : start + size])
        start += size
    return blocks


def chain_nbytes(task: Task, chain: ChainConfig) -> int:
    """Memory one chain needs at least: its pool at its largest, held twice (pool + the
    selected training set), plus what the task says its fitted state takes beyond that
    (`SizesState`, e.g. a d x d covariance), when it says."""
    state = task.state_nbytes() if isinstance(task, SizesState) else 0
    return 2 * rows_held(task, chain) * task.row_nbytes() + state


def job_to_dict(job: ChainJob) -> dict[str, Any]:
    """A chain job as plain data (job_from_dict reads it back)."""
    return {
        "key": job.key,
        "point_key": job.point.key,
        "swept": [list(kv) for kv in job.point.swept],
        "task": task_to_dict(job.point.task),
        "chain": as_flat_dict(job.point.chain),
        "seeds": list(job.seeds),
    }


def job_from_dict(data: Mapping[str, Any]) -> ChainJob:
    point = GridPoint(
        key=data["point_key"],
        swept=tuple((k, v) for k, v in data["swept"]),
        task=build_task(data["task"], "task"),
        chain=from_mapping(ChainConfig, data["chain"], "chain"),
    )
    return ChainJob(key=data["key"], point=point, seeds=tuple(data["seeds"]))
