"""Which sweep folder a run writes and which trials it runs: a new folder and the spec's
trials, or (`--resume`) the folder of an earlier run of the spec and the trials its
sweep.json planned, grown by new seeds; and the sweep.json that records it.

Growing: `--resume` after raising `seeds` or `chain.n_iterations` (nothing else may
change) extends the newest sweep of the spec: new seeds run as new trials (blocks of the
new seeds, so earlier trials and their runs stay as they are), and chains of a larger
n_iterations run on in their runs, logging only the iterations they had not. A chain
that finished is recomputed from iteration 1 (identically: fixed seeds) since a finished
chain's checkpoint keeps no pool to continue from; its earlier iterations are not
logged again. sweep.json lists the trials it planned, so a grown sweep resumes the same ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collapse_ray import atomic
from collapse_ray.sweep.layout import SWEEP_FILE, SweepFolder
from collapse_ray.core.jobs import ChainJob
from collapse_ray.sweep.spec import SweepSpec
from collapse_ray.validation import SpecError

SWEEP_KEYS = ("spec", "tracking_uri", "experiment", "sweep_run_id", "status")
MAX_SWEEP_FILE_BYTES = 16 * 2**20
GROWABLE = "seeds (added) and chain.n_iterations (raised)"
# an adaptive search goes on from its state with a larger budget or another confidence
SEARCH_GROWABLE = ("budget", "confidence")
GROWABLE_SEARCH = ", search.budget (raised) and search.confidence"


@dataclass(frozen=True)
class SweepPlan:
    folder: SweepFolder
    resolved: dict  # the spec as it reads back from sweep.json
    jobs: list[ChainJob]
    tracking_uri: str
    resumed_run_id: str | None  # the parent run of the sweep being resumed; None: a new sweep


def plan_sweep(spec: SweepSpec, out_root: Path, tracking_uri: str | None, resume: bool | str | Path) -> SweepPlan:
    """Where `spec` runs and which trials; on a resume, SpecError names what stops it
    before anything starts."""
    from collapse_ray.tracking.store import resolve_tracking_uri

    resolved = json.loads(json.dumps(spec.resolved_dict()))
    if not resume:
        return SweepPlan(SweepFolder.new(out_root, spec.name), resolved, spec.jobs(),
                         resolve_tracking_uri(tracking_uri, out_root), None)
    folder = (SweepFolder(Path(resume).resolve()) if not isinstance(resume, bool)
              else find_resumable(out_root, spec.name, resolved))
    saved = read_sweep_file(folder)
    if saved["spec"] != resolved:
        check_growable(saved["spec"], resolved, folder.path)
    jobs = planned_jobs(spec, saved)
    _check_chain_folders(folder, jobs)
    return SweepPlan(folder, resolved, jobs, _resumed_tracking_uri(saved["tracking_uri"], tracking_uri),
                     saved["sweep_run_id"])


def find_resumable(out_root: Path, name: str, resolved: dict | None = None) -> SweepFolder:
    """The newest sweep folder of this name that did not finish, or that a changed spec
    (`resolved`, e.g. more seeds) would grow."""
    candidates = SweepFolder.newest_first(out_root, name)
    for folder in candidates:
        saved = read_sweep_file(folder)
        if saved.get("status") != "finished" or (resolved is not None and saved["spec"] != resolved):
            return folder
    if not candidates:  # nothing ever ran: the user wants a plain run
        raise SpecError(f"--resume: no sweep named {name!r} has run under {out_root}; to start it, run without "
                        "--resume")
    raise SpecError(f"--resume: every sweep named {name!r} under {out_root} finished and the spec asks for no more "
                    "seeds or iterations than they ran; to run it again from scratch, drop --resume")


def check_growable(saved: dict, resolved: dict, sweep_dir: Path) -> None:
    """A resumed spec may differ from the one the sweep started with only by more seeds
    and a larger chain.n_iterations (grid and cases unchanged); else SpecError naming what changed."""
    changed = sorted(key for key in set(saved) | set(resolved) if saved.get(key) != resolved.get(key))
    chain_changed = sorted(key for key in set(saved.get("chain", {})) | set(resolved.get("chain", {}))
                           if saved.get("chain", {}).get(key) != resolved.get("chain", {}).get(key))
    bad = [key for key in changed if key not in ("seeds", "chain", "search")]
    bad += [f"chain.{key}" for key in chain_changed if key != "n_iterations"]
    if "search" in changed:  # absent = method grid: switching between the two is not growing
        before, after = saved.get("search"), resolved.get("search")
        if before is None or after is None:
            bad.append("search")
        else:
            bad += [f"search.{key}" for key in sorted(set(before) | set(after))
                    if before.get(key) != after.get(key) and key not in SEARCH_GROWABLE]
            if (after.get("budget") or math.inf) < (before.get("budget") or math.inf):
                bad.append("search.budget (lowered)")
    if "seeds" in changed and not set(saved["seeds"]) <= set(resolved["seeds"]):
        bad.append("seeds (some were removed)")
    if "n_iterations" in chain_changed and resolved["chain"]["n_iterations"] < saved["chain"]["n_iterations"]:
        bad.append("chain.n_iterations (lowered)")
    if bad:
        raise SpecError(f"--resume: the spec differs from the one {sweep_dir} was started with in {', '.join(bad)}; "
                        f"a sweep grows only by {GROWABLE}{GROWABLE_SEARCH if 'search' in resolved else ''}: start "
                        "a new sweep (without --resume) for other changes")


def planned_jobs(spec: SweepSpec, saved: dict | None) -> list[ChainJob]:
    """The trials of `spec`: those the sweep planned before (sweep.json's "trials", on
    the current spec's grid points, so longer chains run on in the same trials), and
    blocks of the seeds they do not cover."""
    if saved is None:
        return spec.jobs()
    points = {point.key: point for point in spec.points}
    trials = saved.get("trials")
    if trials is None:  # a sweep.json from before sweeps could grow: the trials its spec made
        trials = planned_trials(_spec_of(saved["spec"]).jobs())
    if not (isinstance(trials, list) and all(
            isinstance(t, list) and len(t) == 3 and isinstance(t[0], str) and t[1] in points
            and isinstance(t[2], list) and t[2] and all(isinstance(s, int) for s in t[2]) for t in trials)):
        raise SpecError("--resume: sweep.json's trials do not match this spec's grid points")
    jobs = [ChainJob(key, points[point_key], tuple(seeds)) for key, point_key, seeds in trials]
    covered = {seed for _, _, seeds in trials for seed in seeds}
    new_seeds = tuple(seed for seed in spec.seeds if seed not in covered)
    if new_seeds:
        jobs += dataclasses.replace(spec, seeds=new_seeds).jobs()
    return jobs


def planned_trials(jobs: list[ChainJob]) -> list[list]:
    """sweep.json's "trials": [job key, grid point key, seeds] of each."""
    return [[job.key, job.point.key, list(job.seeds)] for job in jobs]


def _spec_of(resolved: dict) -> SweepSpec:
    from collapse_ray.sweep.spec import parse_spec

    raw = {key: value for key, value in resolved.items() if not (key == "cases" and not value)}
    return parse_spec(raw)


def read_sweep_file(folder: SweepFolder) -> dict[str, Any]:
    """A sweep folder's sweep.json, or SpecError naming what is wrong with it."""
    if not folder.path.is_dir():
        raise SpecError(f"--resume: {folder.path} is not a folder (give the sweep folder that holds {SWEEP_FILE})")
    from collapse_ray.core.checkpoint import CheckpointFormatError, read_json

    path = folder.sweep_file
    if not path.exists():
        raise SpecError(f"--resume: {path} is missing: {folder.path} is not a sweep folder")
    try:
        saved = read_json(path, MAX_SWEEP_FILE_BYTES)
    except CheckpointFormatError as err:
        raise SpecError(f"--resume: {path} is {err}, so not a sweep file") from None
    if not isinstance(saved, dict) or any(key not in saved for key in SWEEP_KEYS) or not all(
            isinstance(saved[key], str) for key in SWEEP_KEYS[1:]):
        raise SpecError(f"--resume: {path} is not a sweep file (it needs the keys {', '.join(SWEEP_KEYS)})")
    return saved


def write_sweep_file(folder: SweepFolder, state: dict[str, Any]) -> None:
    atomic.write_text(folder.sweep_file, json.dumps(state, indent=2))


def _resumed_tracking_uri(saved: str, given: str | None) -> str:
    """The store a sweep was started with (sweep.json keeps it without credentials); a
    given URI is used instead when it names the same store, for its credentials."""
    from collapse_ray.tracking.credentials import redact_uri, split_credentials

    given = given or os.environ.get("MLFLOW_TRACKING_URI")
    if given and saved in (split_credentials(given)[0], redact_uri(given)):
        return given
    return saved


def _check_chain_folders(folder: SweepFolder, jobs: list[ChainJob]) -> None:
    """Before a resume starts anything: every chain's checkpoint and pool shards must be
    readable and its own, or the error names the file (not a trial failure later)."""
    from collapse_ray.core.chain_state import check_checkpoint

    keys = {job.key: job for job in jobs}
    for chain_folder in folder.chain_folders():
        job = keys.get(chain_folder.name)
        if job is None:
            raise SpecError(f"--resume: {chain_folder} belongs to no chain of this spec; move it away")
        try:
            check_checkpoint(chain_folder, job.seeds)
        except ValueError as err:
            raise SpecError(f"--resume: {err}") from None
