"""What a run records about its chains, and what it is called: params, tags, run names.

Parameters use the spec's dotted keys on parent and chain runs alike (`chain.n_real`,
`task.dim`; the parent's swept axes as `grid.chain.n_real`); unset (null) values are left
out. What a grown sweep changes (`chain.n_iterations`, the seeds) are tags, since MLflow
parameters cannot change once logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from collapse_ray.core.jobs import ChainJob
from collapse_ray.validation import as_flat_dict

EXECUTION_ONLY = ("checkpoint_every", "persist_pool")  # chain fields that do not change results
N_ITERATIONS_TAG = "chain.n_iterations"  # tags, not params: a grown sweep changes them
SEEDS_TAG = "seeds"


def dotted_params(prefix: str, values: dict[str, Any], leave_out: Sequence[str] = ()) -> dict[str, str]:
    """`prefix.field` -> value as MLflow params, unset (None) values and `leave_out` fields left out."""
    return {f"{prefix}.{k}": str(v)[:500] for k, v in values.items() if v is not None and k not in leave_out}


def sweep_params(resolved_spec: dict) -> dict[str, str]:
    """The sweep run's params: the base task and chain (fields the grid or cases sweep
    left out: they are `grid.<key>`), and each swept axis as `grid.<key>`."""
    grid = resolved_spec.get("grid", {})
    swept = set(grid) | {key for case in resolved_spec.get("cases", []) for key in case}
    params = {}
    for prefix in ("task", "chain"):
        leave_out = [key.split(".", 1)[1] for key in swept if key.startswith(prefix + ".")]
        if prefix == "chain":
            leave_out += [*EXECUTION_ONLY, "n_iterations"]
        params.update(dotted_params(prefix, resolved_spec[prefix], leave_out))
    params.update({f"grid.{k}": str(v)[:500] for k, v in grid.items()})
    for i, case in enumerate(resolved_spec.get("cases", [])):
        params.update({f"cases.{i}.{k}": str(v)[:500] for k, v in case.items()})
    return params


def sweep_tags(resolved_spec: dict) -> dict[str, str]:
    """What a grown sweep changes, as tags: its seeds and the base iteration count."""
    return {SEEDS_TAG: _seed_range(resolved_spec["seeds"]),
            N_ITERATIONS_TAG: str(resolved_spec["chain"]["n_iterations"])}


def job_params(job: ChainJob) -> dict[str, Any]:
    """Typed columns describing a job's chains; the same names in params and tables."""
    point = job.point
    chain = point.chain
    cols: dict[str, Any] = {"run_key": point.key, "task": point.task.name}
    cols.update(as_flat_dict(point.task))
    cols.update((k, v) for k, v in as_flat_dict(chain).items() if k not in EXECUTION_ONLY)
    return cols


def chain_run_params(job: ChainJob) -> dict[str, str]:
    """A chain run's params under the spec's dotted keys (as the sweep run's), unset ones
    left out, and `run_key`, the cell's key (as in the results table); the iteration
    count and seeds are tags (chain_run_tags)."""
    params = {"run_key": job.point.key, "task.name": job.point.task.name}
    params.update(dotted_params("task", as_flat_dict(job.point.task)))
    params.update(dotted_params("chain", as_flat_dict(job.point.chain.resolved()),
                                leave_out=(*EXECUTION_ONLY, "n_iterations")))
    return params


def chain_run_tags(job: ChainJob) -> dict[str, str]:
    return {N_ITERATIONS_TAG: str(job.point.chain.n_iterations), SEEDS_TAG: _seed_range(job.seeds)}


def _seed_range(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))[:500]


WORKFLOW_ABBREVIATIONS = {"replace": "rep", "accumulate": "acc", "accumulate_subsample": "accsub"}
TABLE_NAME_WIDTH = 15  # the MLflow runs table cuts run names about here


def _short_value(field: str, value: Any) -> str:
    """A swept value for a run name: numbers behind the field's initials (n_real 20 ->
    nr20, bandwidth 0.1 -> b0.1), other values as themselves (a path by its last part)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "".join(part[:1] for part in field.split("_")) + f"{value:g}"
    return str(value).rstrip("/").rsplit("/", 1)[-1]


def cell_run_names(jobs: list[ChainJob]) -> dict[str, str]:
    """Child run names by cell, short enough to tell apart where the UI's table cuts
    them: the workflow, then the other swept values ("acc nr20"), then the seeds when a
    cell has several trials. Where the sweep has too many axes for that, every name
    starts with its trial's number ("07 acc moons ..."); the full key stays a tag."""
    blocks: dict[str, int] = {}
    for job in jobs:
        blocks[job.point.key] = blocks.get(job.point.key, 0) + 1
    names = {}
    for job in jobs:
        parts = [WORKFLOW_ABBREVIATIONS.get(job.point.chain.workflow, job.point.chain.workflow)]
        parts += [_short_value(key.split(".", 1)[1], value) for key, value in job.point.swept
                  if key not in ("task.name", "chain.workflow")]
        if blocks[job.point.key] > 1:
            parts.append(f"s{_seed_range(job.seeds)}")
        names[job.key] = " ".join(parts)
    if len({name[:TABLE_NAME_WIDTH] for name in names.values()}) < len(names):
        width = len(str(len(names)))
        names = {key: f"{i:0{width}d} {name}" for i, (key, name) in enumerate(names.items(), 1)}
    return names
