"""One contract for every registered task (scikit-learn's common-checks style):
a task is covered the moment it is listed in collapse_ray.tasks.TASKS."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest

from collapse_ray.core.loop import chain_generators
from collapse_ray.sweep.spec import build_task
from collapse_ray.tasks import TASKS, Task
from collapse_ray.validation import SpecError

# language models: in-process fits and samples, short examples, one quick epoch
# (trained enough that SFT samples keep the user/assistant format the sampler requires)
SMALL_LM = {"backend": "local", "sampler": "local", "max_length": 64, "n_test": 20, "vocab_size": 300,
            "sampling_batch_size": 100, "epochs": 3, "learning_rate": 3e-3}
SMALL = {"gaussian": {"dim": 3, "n_test": 50}, "pretraining": SMALL_LM, "sft": SMALL_LM,
         "vae": {"hidden": 32, "epochs": 2, "n_test": 50, "n_eval_samples": 50, "n_grid": 16},
         "diffusion": {"n_steps": 20, "hidden": 32, "epochs": 2, "n_test": 50, "n_eval_noise": 2, "n_quality": 50,
                       "n_grid": 16},
         # 4 small molecules x 55 conformers (200 training ones: the contract fits 200 real rows)
         "conformer_diffusion": {"n_molecules": 4, "n_conformers": 55, "n_test_conformers": 5, "n_steps": 10,
                                 "hidden": 8, "n_layers": 1, "epochs": 1, "batch_size": 100, "n_eval_noise": 1}}


def make(name: str) -> Task:
    return build_task({"name": name, **SMALL.get(name, {})}, "task")


def rngs(seeds, stream=0):
    return [chain_generators(s)[stream] for s in seeds]


@pytest.fixture(params=sorted(TASKS))
def task(request) -> Task:
    return make(request.param)


def test_registered_under_its_own_name(task):
    assert TASKS[task.name] is type(task) and isinstance(task, Task)
    assert dataclasses.is_dataclass(task) and task.__dataclass_params__.frozen


def test_importing_the_registry_does_not_import_torch():
    """`collapse-ray validate`, tracking and workflows import the registry: tasks import
    torch where they train, so a spec is checked without loading it."""
    import subprocess
    import sys

    code = "import sys, collapse_ray.tasks; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def seeds_for(task, seeds):
    """Unbatched tasks (language models) run one chain per call."""
    return seeds if task.batched else seeds[:1]


def test_real_data_is_deterministic_per_seed(task):
    if not task.batched:  # a fixed data set (a corpus), the same for every chain
        a, b = task.real_data(20, rngs([0])), task.real_data(20, rngs([0]))
        assert all(a.train[c].shape[:2] == (1, 20) and np.array_equal(a.train[c], b.train[c]) for c in a.train)
        return
    a = task.real_data(20, rngs([0, 1]))
    b = task.real_data(20, rngs([0, 1]))
    c = task.real_data(20, rngs([2, 1]))
    for col in a.train:
        assert a.train[col].shape[:2] == (2, 20)
        assert np.array_equal(a.train[col], b.train[col])
        assert np.array_equal(a.train[col][1], c.train[col][1]), "a chain's data ignores its batch mates"
    assert any(not np.array_equal(a.train[col][0], c.train[col][0]) for col in a.train), "seeds differ"


def test_fit_sample_evaluate_shapes_and_finite_first_loss(task):
    n = 200  # enough real rows that iteration 1's fit is well posed for every task
    seeds = seeds_for(task, [0, 1, 2])
    real = task.real_data(n, rngs(seeds))
    model = task.fit(real.train, real.context)
    metrics = task.evaluate(model, real.test)
    assert "test_loss" in metrics
    assert all(np.asarray(v).shape == (len(seeds),) for v in metrics.values())
    assert np.isfinite(metrics["test_loss"]).all()
    for rows in (task.sample(model, n, rngs(seeds, stream=1), real.context),
                 task.sample_real(n, rngs(seeds, stream=1), real.context)):
        assert set(rows) == set(real.train)
        for col in rows:
            assert rows[col].shape[:2] == (len(seeds), n) and rows[col].dtype == real.train[col].dtype
            assert rows[col].shape[2:] == real.train[col].shape[2:]
    assert task.row_nbytes() > 0


def test_statistics_path_agrees_with_fitting_rows(task):
    from collapse_ray.tasks import AdditiveStatisticsTask

    if not isinstance(task, AdditiveStatisticsTask):
        pytest.skip("task has no additive statistics")
    real = task.real_data(60, rngs([0, 1]))
    half = {k: v[:, :30] for k, v in real.train.items()}
    rest = {k: v[:, 30:] for k, v in real.train.items()}
    merged = task.fit_statistics(task.merge(task.statistics(half, real.context), task.statistics(rest, real.context)))
    direct = task.fit(real.train, real.context)
    assert np.allclose(np.asarray(task.evaluate(merged, real.test)["test_loss"]),
                       np.asarray(task.evaluate(direct, real.test)["test_loss"]), rtol=1e-9)
    model = task.fit(real.train, real.context)
    stats = task.sample_statistics(model, 60, rngs([0, 1], stream=1), real.context)
    assert stats.count == 60


def test_metric_names_do_not_collide_with_config_columns(task):
    from collapse_ray.core.chain import ChainConfig
    from collapse_ray.core.jobs import ChainJob, GridPoint
    from collapse_ray.tracking.params import job_params

    real = task.real_data(50, rngs([0]))
    metrics = task.evaluate(task.fit(real.train, real.context), real.test)
    chain = ChainConfig().resolved()
    columns = job_params(ChainJob("k", GridPoint("k", (), task, chain), (0,)))
    assert not set(metrics) & (set(columns) | {"seed", "iteration", "run_id", "sweep_run_id"})


def test_bad_parameters_are_refused_naming_the_field(task):
    hints = typing.get_type_hints(type(task))
    numeric = [f.name for f in dataclasses.fields(task) if hints[f.name] in (int, float)]
    assert numeric, "every task has numeric parameters to check"
    for name in numeric:
        with pytest.raises(SpecError, match=rf"task\.{name} must be"):
            build_task({"name": task.name, **SMALL.get(task.name, {}), name: -1}, "task")
    with pytest.raises(SpecError, match="unknown key"):
        build_task({"name": task.name, "no_such_field": 1}, "task")


def hook_members(hook: type) -> set[str]:
    """The names a hook protocol declares (its methods and class attributes)."""
    names = {n for n, v in vars(hook).items() if callable(v) and not n.startswith("_")}
    return names | {n for n in vars(hook).get("__annotations__", {}) if not n.startswith("_")}


def test_every_optional_hook_a_task_defines_is_declared_whole(task):
    """A task that defines any member of a hook protocol defines all of it, with the
    protocol's parameters, and isinstance agrees (stop_condition without take_chains,
    say, would fail in the loop only once a chain stopped)."""
    import inspect

    from collapse_ray.tasks.protocol import OPTIONAL_HOOKS

    for hook in OPTIONAL_HOOKS:
        members = hook_members(hook)
        defined = {n for n in members if hasattr(type(task), n)}
        if not defined:
            assert not isinstance(task, hook)
            continue
        assert defined == members, f"{task.name} defines {sorted(defined)} of {hook.__name__} {sorted(members)}"
        assert isinstance(task, hook)
        for name in members:
            declared = vars(hook)[name] if name in vars(hook) else None
            if callable(declared):
                assert (list(inspect.signature(getattr(type(task), name)).parameters)
                        == list(inspect.signature(declared).parameters)), f"{task.name}.{name} vs {hook.__name__}"


def test_no_hook_is_looked_up_that_protocol_py_does_not_declare():
    """Every attribute the engine modules (collapse_ray/**/*.py) read off a task, and every
    name they getattr/hasattr on one, is a `Task` member, a declared optional hook or a
    config field of some task (tracking reads `source` where a task has one): the one
    file protocol.py lists all a task may offer."""
    import ast
    from pathlib import Path

    from collapse_ray.tasks.protocol import OPTIONAL_HOOKS, AdditiveStatisticsTask

    def is_task(node) -> bool:  # task, self.task, point.task, job.point.task
        return (isinstance(node, ast.Name) and node.id == "task") or (isinstance(node, ast.Attribute)
                                                                       and node.attr == "task")

    declared = set().union(*(hook_members(h) for h in (Task, AdditiveStatisticsTask, *OPTIONAL_HOOKS)))
    assert {"name", "batched", "fit", "stop_condition", "take_chains", "validate"} <= declared
    found: dict[str, str] = {}
    for path in sorted((Path(__file__).parents[1] / "collapse_ray").rglob("*.py")):  # core/, sweep/, ... too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and is_task(node.value):
                found.setdefault(node.attr, path.name)
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                    and len(node.args) >= 2 and is_task(node.args[0]) and isinstance(node.args[1], ast.Constant)):
                found.setdefault(node.args[1].value, path.name)
    assert len(found) > 10, "the scan finds the loop's task calls"
    fields = {f.name for cls in TASKS.values() for f in dataclasses.fields(cls)}
    undeclared = {name: where for name, where in found.items() if name not in declared | fields}
    assert not undeclared, f"looked up on a task but not declared in tasks/protocol.py: {undeclared}"


def test_the_empty_training_set_flag_is_read_as_a_flag():
    from collapse_ray.tasks.protocol import FitsEmptyTrainingSet, offers

    assert offers(make("sft"), FitsEmptyTrainingSet) and not offers(make("gaussian"), FitsEmptyTrainingSet)
