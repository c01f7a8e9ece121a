"""Property-based fuzzing of the sweep-spec loader and the CLI (bad input).

Whatever the input (random text or bytes as the spec file, mutations of every shipped
spec, random `--set` overrides, random command lines), `collapse_ray.cli.main`:
  - never raises (no traceback), and exits 0 only for a spec that validates;
  - on refusal exits non-zero with exactly one line on stderr, `error: ...`, that names
    the offending field (or file and line, for a file that is not YAML), and nothing
    on stdout;
  - starts and logs nothing for refused input: `run_sweep` is replaced by a recorder
    that a refused spec must never reach, Ray stays uninitialised, and the working
    folder (where --out and the MLflow store would go) is left exactly as it was.

The number of examples is fixed by the Hypothesis profile (tests/conftest.py): `ci`
(set CI=true) is derandomised, so CI runs the same examples every time. Each test adds
its counts (examples tried / refused with one line / accepted) to a summary printed at
the end of the module.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import io
import math
import os
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import ray
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from collapse_ray import cli
from collapse_ray.sweep import run as sweep
from collapse_ray.core.chain import ChainConfig, ExecutionConfig
from collapse_ray.sweep.spec import TOP_LEVEL_KEYS
from collapse_ray.tasks import TASKS

SWEEPS = sorted((Path(__file__).parent.parent / "sweeps").glob("*.yaml"))
SPECS = {p.stem: yaml.safe_load(p.read_text()) for p in SWEEPS}
SPEC_TEXTS = {p.stem: p.read_text() for p in SWEEPS}
QUICKSTART = SPEC_TEXTS["quickstart"]

COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not COUNTS:
        return
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        reporter.write_line("")
        reporter.write_line(f"fuzzing summary ({profile} profile, {settings().max_examples} examples per test):")
        for name, c in COUNTS.items():
            reporter.write_line(f"  {name}: {c['tried']} tried, {c['refused']} refused with one line, "
                                f"{c['accepted']} accepted" + (f" ({c['runs']} runs recorded, not started)"
                                                               if c["runs"] else ""))


# -- running the CLI in-process ------------------------------------------------------------
@dataclasses.dataclass
class Outcome:
    argv: list[str]
    rc: int
    out: str
    err: str
    runs: list  # run_sweep calls the recorder saw

    @property
    def line(self) -> str:
        return self.err.rstrip("\n")


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def call_cli(argv: list[str], cwd: Path) -> Outcome:
    """`cli.main(argv)` in `cwd`, with run_sweep recorded instead of run, and the common
    properties checked: one `error:` line or success, nothing started, nothing written."""
    runs = []

    def record_run(spec, **kwargs):
        runs.append((spec, kwargs))
        return sweep.SweepOutcome(cwd / "never", "sqlite:///never/mlflow.db", spec.name, "0", 1, 0, 0.0)

    before, ray_was_up = _tree(cwd), ray.is_initialized()  # a session-wide Ray may be up already
    out, err = io.StringIO(), io.StringIO()
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    with (contextlib.chdir(cwd), mock.patch.dict(os.environ, env, clear=True),
          mock.patch.object(sweep, "run_sweep", record_run),
          mock.patch.object(ray, "init", side_effect=AssertionError("ray.init called")) as ray_init,
          contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)):
        try:
            rc = cli.main(list(argv))
        except SystemExit as exit_:  # only --help may exit; errors return their status
            assert exit_.code == 0 and any(a.startswith(("-h", "--h")) for a in argv), (argv, exit_.code)
            assert out.getvalue().startswith("usage: collapse-ray")
            rc = 0
    o = Outcome(list(argv), rc, out.getvalue(), err.getvalue(), runs)
    assert isinstance(o.rc, int), o
    if o.rc != 0:
        assert o.err.endswith("\n") and len(o.err.splitlines()) == 1, f"not one line: {o.err!r}"
        assert o.err.startswith("error: ") and "Traceback" not in o.err, o.err
        assert o.out == "", f"refused input printed to stdout: {o.out!r}"
        assert not o.runs, "a refused spec reached run_sweep"
        assert o.rc == cli.EXIT_BAD_INPUT
    else:
        assert o.err == "", o.err
    assert not ray_init.called and ray.is_initialized() == ray_was_up, "Ray started"
    assert _tree(cwd) == before, f"files written: {_tree(cwd) - before}"
    return o


@contextlib.contextmanager
def workdir():
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        yield Path(tmp)


def count(test: str, outcome: Outcome) -> None:
    c = COUNTS[test]
    c["tried"] += 1
    c["refused" if outcome.rc else "accepted"] += 1
    c["runs"] += len(outcome.runs)


def names_one_of(outcome: Outcome, tokens) -> None:
    tokens = {str(t) for t in tokens if t not in (None, "")}
    assert any(t in outcome.line for t in tokens), f"{outcome.line!r} names none of {sorted(tokens)}"


def validate_and_run(folder: Path, spec_file: str, sets: list[str] = ()) -> tuple[Outcome, Outcome]:
    """The same input through `validate` and `run`: run reaches run_sweep iff validate says ok,
    and both refuse with the same line."""
    set_args = [f"--set={s}" for s in sets]  # `--set VALUE` would read a VALUE like -x as an option
    checked = call_cli(["validate", spec_file, *set_args], folder)
    ran = call_cli(["run", spec_file, *set_args, "--out", "out"], folder)
    if checked.rc == 0:
        assert checked.out.startswith("ok: ") and ran.rc == 0 and len(ran.runs) == 1, (checked, ran)
        assert ran.out.startswith("running ")
    else:
        assert ran.rc == checked.rc and ran.err == checked.err, (checked, ran)
    assert not (folder / "out").exists() and not list(folder.rglob("mlflow.db"))
    return checked, ran


# -- values -----------------------------------------------------------------------------------
NAMEISH = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
EDGE_NUMBERS = [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(2**63), 10**400,
                1e308, -1e308, 1e-320, 0.5, -0.0]
EDGE_STRINGS = ["", " ", "nan", "inf", "-inf", "1e999", "1e-3", "auto", "replace", "gaussian", "null", "true",
                "2001-13-45", "\t", "a\nb", "{", "- x", "é", "../x", "a/b"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from(EDGE_NUMBERS), st.floats(), st.sampled_from(EDGE_STRINGS), st.text(max_size=12),
)
BAD_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.one_of(NAMEISH, st.integers(), st.none()), inner, max_size=3)),
    max_leaves=6,
)
TASK_NAMES = sorted(TASKS) + ["gausian", "GAUSSIAN", "", "linear-regression"]
WORKFLOWS = ["replace", "accumulate", "fresh_data", "mode3", "Replace", "real fraction", ""]


# -- (1) the spec file as random text or bytes -------------------------------------------------
YAML_TOKENS = [
    "task:", "chain:", "run:", "grid:", "cases:", "seeds:", "name:", " name: gaussian", " dim: 2", "n_real: ",
    "chain.n_real: ", "task.dim: ", "\n", "\n  ", "  ", "\t", "- ", "[", "]", "{", "}", ":", ": ", ",", "&a ", "*a",
    "*b", "&b [*a, *a]", "!!int ", "!!float ", "!!binary ", "!!python/object:os.system ", "!!set ", "? ", "|", ">",
    "'", '"', "#", "---", "...", "%YAML 1.1\n", "1e400", "99999999999999999999999", "1" + "0" * 5000, ".nan",
    "-.inf", "2001-13-45", "2001-01-01", "~", "null", "true", "0x1F", "0o17", "1_000", "é", "\x00", "\ufeff",
    "\x85", "\u2028", "\r", "\\", "%", "@", "`", "!", "[" * 40, "]" * 40,
]
YAML_SOUP = st.lists(st.sampled_from(YAML_TOKENS), max_size=30).map("".join)


@st.composite
def corrupted_spec(draw):
    """A shipped spec with a few characters inserted, deleted or replaced, or cut short."""
    text = SPEC_TEXTS[draw(st.sampled_from(sorted(SPEC_TEXTS)))]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 8)))
        text = text[:i] + draw(st.one_of(st.sampled_from(YAML_TOKENS), st.text(max_size=4))) + text[j:]
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return text


SPEC_FILES = st.one_of(
    st.text(max_size=200), st.binary(max_size=200), YAML_SOUP, corrupted_spec(),
    st.builds(lambda n: "task: " + "[" * n + "]" * n, st.integers(0, 200)),
    st.builds(lambda n, v: f"task: {{name: gaussian, dim: {v}}}\nseeds: {n}\n",
              st.sampled_from(EDGE_NUMBERS), st.sampled_from(EDGE_NUMBERS)),
    st.builds(lambda v: yaml.safe_dump(v), BAD_VALUES),  # top-level lists, scalars, non-string keys
)


@given(content=SPEC_FILES)
def test_any_file_is_refused_in_one_line_or_accepted(content):
    with workdir() as folder:
        path = folder / "spec.yaml"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
        checked, _ = validate_and_run(folder, "spec.yaml")
        count("random spec files", checked)
        if checked.rc == 0:
            return
        assert checked.line.startswith("error: ")
        try:
            yaml.safe_load(content)
        except (yaml.YAMLError, ArithmeticError, LookupError, RecursionError, TypeError, ValueError):
            # PyYAML itself refuses it (or crashes on it): the line says file and where
            assert "'spec.yaml'" in checked.line and " at line " in checked.line, checked.line
        if "not valid YAML" in checked.line or "not UTF-8" in checked.line:
            assert "'spec.yaml'" in checked.line and " line " in checked.line, checked.line


# -- (2) structured mutations of every shipped spec -------------------------------------------
def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _paths(spec: dict) -> list[tuple]:
    """Every place in `spec` a mutation can hit: existing keys, and known fields it leaves unset."""
    paths = [(k,) for k in TOP_LEVEL_KEYS]
    task_cls = TASKS.get((spec.get("task") or {}).get("name"), TASKS["gaussian"])
    for section, names in (("task", ["name", *_fields(task_cls)]), ("chain", _fields(ChainConfig)),
                           ("run", _fields(ExecutionConfig))):
        paths += [(section, n) for n in names]
    paths += [("grid", k) for k in spec.get("grid") or {}]
    paths += [("cases", i, k) for i, case in enumerate(spec.get("cases") or []) for k in case]
    return paths


def _parent(raw: dict, path: tuple) -> dict | list | None:
    node = raw
    for part in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            node = node[part]
        if node is None or not isinstance(node, (dict, list)):
            return None
    return node


def _tokens(path: tuple, value=None) -> set:
    """What a refusal of a mutation at `path` may name: the dotted path, its top-level
    section, a grid key (and its task/chain section), or the offending string value."""
    dotted = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
    tokens = {dotted, str(path[0])}
    for part in path[1:]:
        if isinstance(part, str):
            tokens |= {part, part.split(".")[0]}  # a grid key and its section
    if isinstance(value, str) and value.strip():
        tokens.add(value)
    return tokens


@st.composite
def mutated_spec(draw):
    stem = draw(st.sampled_from(sorted(SPECS)))
    raw = copy.deepcopy(SPECS[stem])
    kind = draw(st.sampled_from(["set", "set", "delete", "unknown_key", "task_name", "workflow", "grid"]))
    if kind == "set":
        path = draw(st.sampled_from(_paths(raw)))
        value = draw(BAD_VALUES)
        parent = _parent(raw, path)
        if parent is None:
            return stem, raw, kind, path[:1], value
        parent[path[-1]] = value
        return stem, raw, kind, path, value
    if kind == "delete":
        path = draw(st.sampled_from(_paths(raw)))
        parent = _parent(raw, path)
        if isinstance(parent, dict):
            parent.pop(path[-1], None)
        return stem, raw, kind, path, None
    if kind == "unknown_key":
        level = draw(st.sampled_from([(), ("task",), ("chain",), ("run",), ("grid",)]
                                     + [("cases", i) for i in range(len(raw.get("cases") or []))]))
        key = draw(NAMEISH.filter(lambda k: k not in TOP_LEVEL_KEYS and k != "name"))
        if level and level[0] in ("grid", "cases"):
            key = draw(st.sampled_from(["task.", "chain.", "model.", ""])) + key
        node = raw
        for part in level:
            node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
        if isinstance(node, dict):
            node[key] = draw(BAD_VALUES)
        return stem, raw, kind, (*level, key), None
    if kind == "task_name":
        value = draw(st.sampled_from(TASK_NAMES))
        raw["task"]["name"] = value
        return stem, raw, kind, ("task", "name"), value
    if kind == "workflow":
        value = draw(st.sampled_from(WORKFLOWS))
        if draw(st.booleans()) or "chain.workflow" not in (raw.get("grid") or {}):
            raw.setdefault("chain", {})["workflow"] = value
            return stem, raw, kind, ("chain", "workflow"), value
        raw["grid"]["chain.workflow"].append(value)
        return stem, raw, kind, ("grid", "chain.workflow"), value
    # grid / cases entries: empty or non-list values, bad keys, nested values
    where = ("cases", 0) if raw.get("cases") and draw(st.booleans()) else ("grid",)
    node = raw.setdefault("grid", {}) if where == ("grid",) else raw["cases"][0]
    if node is None:
        node = raw["grid"] = {}
    key = draw(st.one_of(st.sampled_from(sorted(node) or ["chain.n_real"]),
                         st.sampled_from(["task.dim", "chain.n_real", "task", "chain.", "run.max_failures",
                                          "task.dim.x", "name", ".x"]), NAMEISH))
    value = draw(st.one_of(st.just([]), BAD_VALUES, st.lists(BAD_VALUES, min_size=1, max_size=3)))
    node[key] = value
    return stem, raw, kind, (*where, key), value


@given(case=mutated_spec())
def test_mutated_specs_are_refused_naming_the_field(case):
    _stem, raw, _kind, path, value = case
    with workdir() as folder:
        (folder / "spec.yaml").write_text(yaml.safe_dump(raw))
        checked, _ = validate_and_run(folder, "spec.yaml")
        count("mutated shipped specs", checked)
        if checked.rc:
            names_one_of(checked, _tokens(path, value))


# -- (3) random --set overrides ---------------------------------------------------------------
SET_KEYS = sorted({".".join(p) for spec in SPECS.values() for p in _paths(spec)
                   if all(isinstance(x, str) for x in p)}) + [
    "grid.chain.n_real", "grid.task.dim", "grid.chain.workflow", "grid.task.name", "task.bogus", "bogus",
    "chain.n_real.x", "name.x", "seeds.x", "cases.x", "grid", "grid.", "", "task..dim", " chain.n_real ", "run.x.y",
]
# what a command line can carry: no NUL
ARG_TEXT = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=16)
SET_VALUES = st.one_of(
    st.sampled_from(["1", "2", "5", "0.5", "0", "true", "null", "replace", "accumulate", "auto", "gaussian",
                     "[replace, accumulate]", "[1, 2]"]),  # plausible values, twice as likely
    BAD_VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True, width=10**6).removesuffix("\n...\n")
                   .rstrip("\n")),
    st.sampled_from(["1", "2", "5", "0.5", "0", "true", "null", "replace", "accumulate", "auto", "gaussian", "kde",
                     "[replace, accumulate]", "[1, 2]", "[0.1, 0.5]"]),  # plausible: some overrides are fine
    st.sampled_from(["", "[", "{a: 1", "*a", "&a [*a]", "2001-13-45", "1" + "0" * 5000,
                     "[" * 100, "!!python/object:os.system x", "a: b: c", "\t"]),
    ARG_TEXT,
)


@st.composite
def overrides(draw):
    """1-3 overrides of a shipped spec: mostly its own keys, else any spec's, or random text."""
    stem = draw(st.sampled_from(sorted(SPEC_TEXTS)))
    own = sorted({".".join(p) for p in _paths(SPECS[stem]) if all(isinstance(x, str) for x in p)})
    sets = []
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.one_of(st.sampled_from(own), st.sampled_from(own), st.sampled_from(SET_KEYS),
                             ARG_TEXT.filter(lambda k: "=" not in k)))
        sets.append((key, None if draw(st.integers(0, 19)) == 0 else draw(SET_VALUES)))  # None: no "="
    return stem, sets


@given(case=overrides())
def test_set_overrides_are_refused_naming_the_key(case):
    stem, sets = case
    args = [k if v is None else f"{k}={v}" for k, v in sets]
    with workdir() as folder:
        (folder / "spec.yaml").write_text(SPEC_TEXTS[stem])
        checked, _ = validate_and_run(folder, "spec.yaml", args)
        count("--set overrides", checked)
        if checked.rc:
            tokens = {"--set"}
            for key, value in sets:  # the key, one of its parts (a section, a grid key's section) or the value
                key = key.strip()
                tokens |= {key, key.removeprefix("grid."), *key.split(".")}
                if value is not None and value.strip():
                    tokens.add(value.strip())
            names_one_of(checked, tokens)


# -- (4) random command lines -------------------------------------------------------------------
ARGV_TOKENS = ["validate", "run", "results", "bogus", "VALIDATE", "", "--set", "--out", "--resume", "--tracking-uri",
               "--address", "--results-dir", "--sweep-run-id", "--all-sweeps", "--bogus", "-x", "--", "-", "--out=",
               "--set=", "ok.yaml", "bad.yaml", "missing.yaml", "adir", "chain.n_iterations=2", "x=1", "chain.n_real",
               "sqlite:///results/mlflow.db", "./mlruns", "http://127.0.0.1:9", "postgresql://", "out.csv", "quickstart",
               "results", "auto"]
NOT_HELP = ARG_TEXT.filter(lambda a: not a.startswith(("-h", "--h")))
OPTIONS = [["--set=chain.n_iterations=2"], ["--set", "seeds=3"], ["--out", "out"], ["--out=elsewhere"], ["--resume"],
           ["--resume", "adir"], ["--address", "auto"], ["--tracking-uri", "sqlite:///results/mlflow.db"],
           ["--tracking-uri", "http://127.0.0.1:9"], ["--results-dir", "adir"], ["--all-sweeps"],
           ["--sweep-run-id", "abc"]]
BAD_OPTIONS = [["--set", "x=1"], ["--set", "chain.n_real"], ["--tracking-uri", "./mlruns"], ["--bogus"], ["--out"],
               ["--set", "-1"], ["--resume=adir", "extra"]]


@st.composite
def command_lines(draw):
    """Mostly well-formed: a subcommand, its positional, a few options, sometimes one token dropped."""
    command = draw(st.sampled_from(["validate", "run", "results"]))
    if command == "results":
        argv = [command, draw(st.sampled_from(["quickstart", ""]) | NOT_HELP), "--out",
                draw(st.sampled_from(["out.csv", "out.parquet", "out.txt"]))]
    else:
        argv = [command, draw(st.sampled_from(["ok.yaml", "bad.yaml", "missing.yaml", "adir", ""]) | st.just("ok.yaml"))]
    for option in draw(st.lists(st.sampled_from(OPTIONS) | st.sampled_from(BAD_OPTIONS), max_size=3)):
        argv += option
    if draw(st.integers(0, 5)) == 0:
        del argv[draw(st.integers(0, len(argv) - 1))]
    return argv


ARGV = st.one_of(command_lines(), command_lines(), st.lists(st.one_of(st.sampled_from(ARGV_TOKENS), NOT_HELP), max_size=8))


@given(argv=ARGV)
def test_random_command_lines(argv):
    with workdir() as folder:
        (folder / "ok.yaml").write_text(QUICKSTART)
        (folder / "bad.yaml").write_text(QUICKSTART.replace("dim: 2", "dim: two"))
        (folder / "adir").mkdir()
        outcome = call_cli(argv, folder)
        count("random command lines", outcome)
        if outcome.runs:  # reached run_sweep: `validate` of the same spec and overrides says ok
            with contextlib.chdir(folder):
                args = cli._parser().parse_args(argv)
            assert args.command == "run" and outcome.out.startswith("running ")
            assert call_cli(["validate", args.spec, *(a for s in args.overrides for a in ("--set", s))], folder).rc == 0


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["-h"], ["results", "-h"]])
def test_help_still_exits_zero(argv):
    with workdir() as folder:
        assert call_cli(argv, folder).rc == 0


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "error: the following arguments are required: command (see collapse-ray --help)"),
        (["bogus"], "error: argument command: invalid choice: 'bogus'"),
        (["run", "ok.yaml", "--out"], "error: argument --out: expected one argument (see collapse-ray run --help)"),
        (["validate", "ok.yaml", "--bogus"], "error: unrecognized arguments: --bogus"),
        (["validate", "ok.yaml", "--set"], "error: argument --set: expected one argument"),
        (["results", "quickstart"], "error: the following arguments are required: --out"),
        (["results", "q", "--out", "x.csv", "--all-sweeps", "--sweep-run-id", "1"], "not allowed with argument"),
        (["validate", "ok.yaml", "x\ny"], "unrecognized arguments: x\\ny"),
        (["results", "q", "--out", "x.csv", "--tracking-uri", "http://127.0.0.1:9"],
         "error: tracking server http://127.0.0.1:9 is unreachable"),
    ],
)
def test_bad_command_lines_are_one_error_line(argv, message):
    with workdir() as folder:
        (folder / "ok.yaml").write_text(QUICKSTART)
        outcome = call_cli(argv, folder)
        assert outcome.rc == 2 and message in outcome.line, outcome.line


def test_a_valid_spec_is_accepted_and_would_run():
    with workdir() as folder:
        (folder / "ok.yaml").write_text(QUICKSTART)
        checked, ran = validate_and_run(folder, "ok.yaml", ["chain.n_iterations=2"])
        assert checked.rc == 0 and ran.runs[0][0].points[0].chain.n_iterations == 2
        assert math.isclose(ran.runs[0][0].points[0].task.sigma2, 1.0)
