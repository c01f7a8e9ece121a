"""The throughput profile that `validate --cost` (collapse_ray/sweep/cost.py) times a sweep
with: reading one (plain JSON, checked once), choosing it for a spec, and saying which it
is and how old. `benchmarks/throughput_profile.py` measures one; collapse_ray/profiles/
holds the checked-in ones."""

from __future__ import annotations

import datetime
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collapse_ray.validation import SpecError

PROFILE_FORMAT = "collapse_ray.throughput_profile/1"
PROFILES = Path(__file__).parent.parent / "profiles"
DEFAULT_CPU_PROFILE = PROFILES / "cpu.json"
DEFAULT_GPU_PROFILE = PROFILES / "gpu_h100_nominal.json"
PROFILE_ENV = "COLLAPSE_RAY_PROFILE"  # a machine's own measured profile, instead of the checked-in one
MAX_PROFILE_BYTES = 1 << 20


@dataclass(frozen=True)
class Profile:
    """A throughput profile as read from its JSON file (plain data, checked once)."""

    path: Path
    name: str
    device: str  # cpu | gpu
    measured: bool
    measured_at: datetime.datetime | None
    data: dict = field(repr=False)

    def provenance(self, now: datetime.datetime | None = None) -> str:
        """Which profile, where from, and how old: the estimate's first line."""
        now = now or datetime.datetime.now(datetime.timezone.utc)
        where = _shown_path(self.path)
        if not self.measured:
            return (f"profile {self.name} ({where}): NOT MEASURED, stated placeholder: {self.data['assumptions']}")
        age = _age(now - self.measured_at)
        machine = self.data.get("machine", {})
        load = machine.get("load_average")
        on = f" on {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores" if machine else ""
        loaded = f", load average {load[0]:g}-{load[1]:g} while measuring" if load else ""
        return (f"profile {self.name} ({where}), measured {self.measured_at:%Y-%m-%d %H:%M} UTC, {age} old"
                f"{on}{loaded}")

    def number(self, *keys: str) -> float:
        value: Any = self.data
        for key in keys:
            value = value[key]
        return float(value)


def _shown_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _age(delta: datetime.timedelta) -> str:
    seconds = max(0.0, delta.total_seconds())
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def load_profile(path: str | Path, where: str = "--profile") -> Profile:
    """The profile in `path`; SpecError (one line, exit 2) if it is missing, is not a
    profile, or lacks what the estimate reads. JSON only: nothing in it runs."""
    path = Path(path).expanduser()
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise SpecError(f"{where} {str(path)!r} is not a throughput profile (over {MAX_PROFILE_BYTES} bytes)")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{where} {str(path)!r} does not exist (write one with python "
                        "benchmarks/throughput_profile.py --out PATH)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(f"{where} {str(path)!r} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    except json.JSONDecodeError as err:
        raise SpecError(f"{where} {str(path)!r} is not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != PROFILE_FORMAT:
        raise SpecError(f"{where} {str(path)!r} is not a throughput profile (its 'format' must be {PROFILE_FORMAT!r})")
    device = data.get("device")
    if device not in ("cpu", "gpu"):
        raise SpecError(f"{where} {str(path)!r}: 'device' must be 'cpu' or 'gpu'; got {device!r}")
    required = (("sweep_start_s",), ("toy_trial_s",), ("lm_trial_s", "local"), ("lm_trial_s", "ray"))
    if device == "gpu":
        required += tuple(("gpu", k) for k in GPU_FIELDS)
    else:
        required += (("fit", "local", "models"), ("fit", "ray_train", "models"), ("sample", "local", "models"),
                     ("sample", "ray_data", "models"))
    for keys in required:
        value: Any = data
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        ok = isinstance(value, dict) if keys[-1] == "models" else (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0)
        if not ok:
            raise SpecError(f"{where} {str(path)!r}: {'.'.join(keys)} is missing or not a number >= 0")
    measured = data.get("measured") is True
    stamp = None
    if measured:
        try:
            stamp = datetime.datetime.strptime(str(data.get("measured_at")), "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=datetime.timezone.utc)
        except ValueError:
            raise SpecError(f"{where} {str(path)!r}: measured_at must be a UTC time like 2026-12-06T13:40:00Z; "
                            f"got {data.get('measured_at')!r}") from None
    elif not isinstance(data.get("assumptions"), str):
        raise SpecError(f"{where} {str(path)!r}: a profile that is not measured must state its 'assumptions'")
    return Profile(path, str(data.get("name", path.stem)), device, measured, stamp, data)


GPU_FIELDS = ("memory_gb", "train_flops_per_s", "sample_flops_per_s", "fit_start_s", "sampler_start_s")


def choose_profile(spec, given: str | None) -> Profile:
    """--profile when given (it must be measured on the device the spec runs on); else
    $COLLAPSE_RAY_PROFILE or the checked-in CPU profile for CPU specs, and the stated GPU
    placeholder for GPU specs."""
    gpu = any(getattr(p.task, "use_gpu", False) for p in spec.points)
    if given is not None:
        profile = load_profile(given)
        if profile.device != ("gpu" if gpu else "cpu"):
            raise SpecError(f"--profile {given!r} is a {profile.device} profile; this spec runs on "
                            f"{'GPUs (task.use_gpu)' if gpu else 'CPUs'}: name a {'gpu' if gpu else 'cpu'} profile, or "
                            "leave --profile out for the default")
        return profile
    if gpu:
        return load_profile(DEFAULT_GPU_PROFILE, "the GPU placeholder profile")
    env = os.environ.get(PROFILE_ENV)
    if not env:
        return load_profile(DEFAULT_CPU_PROFILE, "the CPU profile")
    profile = load_profile(env, f"${PROFILE_ENV}")
    if profile.device != "cpu":
        raise SpecError(f"${PROFILE_ENV} {env!r} is a {profile.device} profile; this spec runs on CPUs")
    return profile
