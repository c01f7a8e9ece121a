"""(A)'s and (B)'s language-model protocol details, in process (backend local): the test
set ('n_test: all'), warm-up, the length rule, Fig. 5's several synthetic pools built
once, and (B)'s generation strategies. The sweeps that use them: tests/test_sweep_ray.py."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collapse_ray.core.loop import chain_generators
from collapse_ray.sweep.spec import parse_spec
from collapse_ray.tasks import PretrainingTask, SFTTask
from collapse_ray.tasks.sft import format_example
from collapse_ray.text import backends, corpora
from collapse_ray.text.models import load_tokenizer
from collapse_ray.text.settings import resolved_warmup_ratio
from collapse_ray.text.steps import FittedLM, encode, fit_texts, prepare_tokenizer
from collapse_ray.text.training import FitSettings, lr_lambda, warmup_length
from collapse_ray.validation import SpecError

LOCAL = {"backend": "local", "sampler": "local", "engine": "torch", "max_length": 64, "vocab_size": 300}
RUN = {"cpus_per_trial": 1}


def _helpsteer_like(folder, n_train=120, n_validation=60):
    """A local dataset folder in HelpSteer2's columns; every third validation row is too
    long for max_length 64, so 40 of the 60 fit (fewer than 1,000, as HelpSteer2's
    1,038 rows do not all fit)."""
    (folder / "data").mkdir(parents=True)
    train = corpora.procedural_rows("instructions", "train", n_train, 0)
    pq.write_table(pa.table(train), folder / "data" / "train-00000.parquet")
    prompts = [f"What is {i} plus {i}?" + ("" if i % 3 else " and" * 80) for i in range(n_validation)]
    val = {"prompt": prompts, "response": [f"{i} plus {i} is {2 * i}." for i in range(n_validation)]}
    pq.write_table(pa.table(val), folder / "data" / "validation-00000.parquet")
    return folder


def test_n_test_all_evaluates_every_validation_row_that_fits(tmp_path):
    source = str(_helpsteer_like(tmp_path / "hs"))
    task = SFTTask(source=source, n_test="all", **LOCAL).with_workdir(tmp_path / "w")
    real = task.real_data(50, [chain_generators(0)[0]])
    assert len(real.test) == 40 and all(len(x) <= 64 for x in real.test)
    spec = parse_spec({"task": {"name": "sft", "source": source, "n_test": "all", **LOCAL},
                       "chain": {"n_real": 50}, "run": RUN})
    assert spec.points[0].task.n_test == "all"
    assert len(SFTTask(source=source, n_test=40, **LOCAL).with_workdir(tmp_path / "w2")
               .real_data(50, [chain_generators(0)[0]]).test) == 40


def test_asking_more_test_rows_than_fit_is_a_spec_error_for_local_data(tmp_path):
    source = str(_helpsteer_like(tmp_path / "hs"))
    with pytest.raises(SpecError, match=r"task.n_test must be <= the 40 validation rows of .* that fit in "
                                        r"max_length=64 tokens \(or 'all'\); got 1000"):
        parse_spec({"task": {"name": "sft", "source": source, "n_test": 1000, **LOCAL},
                    "chain": {"n_real": 50}, "run": RUN})
    with pytest.raises(SpecError, match="task.n_test must be a number for the procedural source"):
        parse_spec({"task": {"name": "sft", "n_test": "all", **LOCAL}, "chain": {"n_real": 50}, "run": RUN})


def test_a_hub_style_shortfall_fails_in_one_line_naming_the_counts(tmp_path):
    """What a hub source (not read at spec time) raises in its first trial."""
    task = SFTTask(source=str(_helpsteer_like(tmp_path / "hs")), n_test=50, **LOCAL).with_workdir(tmp_path / "w")
    with pytest.raises(ValueError, match=r"split 'validation': 40 of 60 examples fit in max_length=64 tokens; "
                                         r"50 were asked for") as err:
        task.real_data(50, [chain_generators(0)[0]])
    assert "\n" not in str(err.value)


def test_warmup_steps_or_a_ratio_never_both():
    def fit_settings(**kw):
        base = dict(model_name="tiny", tokenizer_dir="", output_dir="", seed=0, epochs=1, micro_batch_size=1,
                    grad_accum_steps=1, learning_rate=1e-3, warmup_ratio=0.05, warmup_steps=None, betas=(0.9, 0.999),
                    schedule="constant", weight_decay=0.0, max_grad_norm=1.0, engine="torch", zero_stage=0,
                    precision="fp32")
        return FitSettings(**{**base, **kw})

    # HF Trainer's get_warmup_steps, which (A) runs: math.ceil(steps * warmup_ratio)
    assert [warmup_length(fit_settings(), n) for n in (1, 19, 20, 21, 34)] == [1, 1, 1, 2, 2]
    assert warmup_length(fit_settings(warmup_ratio=0.0), 19) == 0
    assert warmup_length(fit_settings(warmup_ratio=0.0, warmup_steps=16), 10) == 16
    factor = lr_lambda("constant", 16, 10)
    assert [factor(s) for s in (0, 7, 15)] == pytest.approx([1 / 16, 0.5, 1.0])
    assert resolved_warmup_ratio(SFTTask(warmup_steps=16)) == 0.0
    assert resolved_warmup_ratio(SFTTask()) == 0.05 and resolved_warmup_ratio(SFTTask(warmup_ratio=0.1)) == 0.1
    with pytest.raises(SpecError, match="task.warmup_ratio must be null when task.warmup_steps is set"):
        parse_spec({"task": {"name": "sft", "warmup_steps": 16, "warmup_ratio": 0.05}, "run": {"cpus_per_trial": 0.01}})


def test_sft_uses_adamw_default_betas_and_drops_long_rows(tmp_path):
    """(A)'s adamw_torch betas; a synthetic row longer than max_length is dropped, not cut."""
    task = SFTTask(**{**LOCAL, "n_test": 10}).with_workdir(tmp_path)
    assert (task.adam_beta1, task.adam_beta2) == (0.9, 0.999) and task.long_rows == "drop"
    assert PretrainingTask().long_rows == "cut"
    real = task.real_data(40, [chain_generators(0)[0]])
    texts = list(real.train["text"][0]) + [format_example("a long one", " and".join(["x"] * 200))]
    model = fit_texts(task, task.workdir, texts, real.context)
    assert model.figures["train_examples"] == 40.0
    cut = fit_texts(SFTTask(**{**LOCAL, "n_test": 10, "long_rows": "cut"}), tmp_path, texts, real.context)
    assert cut.figures["train_examples"] == 41.0


# pools 10% larger than the largest value_synthetic below (30), as the Fig. 5 specs: a few samples run long
POOLS = {**LOCAL, "n_test": 10, "epochs": 4, "learning_rate": 3e-3, "value_pool_size": 33, "value_pool_real": 400,
         "n_value_pools": 2, "warmup_steps": 16}


@pytest.mark.slow  # two fine-tunes and their samplers: ~30 s on 2 idle cores
def test_value_pools_are_built_once_each_from_its_own_fine_tune(tmp_path):
    """...each warming up for 5% of its steps, as (A)'s iteration-1 fine-tunes, not for
    the cells' 16 steps."""
    import json

    shared = tmp_path / "chains" / "_shared"
    pools = [SFTTask(**POOLS, value_pool=p) for p in (0, 1)]
    for task in pools:
        task.prepare_sweep(shared)
    files = sorted(shared.glob("value_pool-*/pool.parquet"))
    assert len(files) == 2, "one pool per value_pool, not per cell"
    pool_fits = list(shared.glob("value_pool-*/models/*/fit.json"))
    assert len(pool_fits) == 2
    for fit in pool_fits:
        figures = json.loads(fit.read_text())
        assert figures["warmup_steps"] == np.ceil(0.05 * figures["optimizer_steps"]) != 16, figures
    stamps = [f.stat().st_mtime_ns for f in files]
    for task in pools:  # a later cell (or a resumed sweep) finds them
        SFTTask(**{**POOLS, "value_pool": task.value_pool}).prepare_sweep(shared)
    assert [f.stat().st_mtime_ns for f in files] == stamps

    rows = {}
    for p in (0, 1):
        for n_syn in (10, 30):
            cell = SFTTask(**POOLS, value_pool=p, value_synthetic=n_syn).with_workdir(tmp_path / "cells" / f"c{p}{n_syn}")
            real = cell.with_shared_dir(shared).real_data(20, [chain_generators(p)[0]])  # as the sweep's trial does
            rows[p, n_syn] = list(real.train["text"][0])
            assert len(rows[p, n_syn]) == 20 + n_syn
    assert rows[0, 10][20:] == rows[0, 30][20:30], "a cell takes the first rows of its pool"
    assert rows[0, 10][:20] == rows[1, 10][:20], "the real rows do not depend on the pool"
    assert rows[0, 30][20:] != rows[1, 30][20:], "two pools, two samplers"
    assert len(list(shared.glob("value_pool-*/pool.parquet"))) == 2, "cells read the pools, never rebuild them"


def test_a_cell_takes_the_first_pool_rows_that_fit(tmp_path):
    """As (A): the pool's long rows are dropped before its first value_synthetic rows are
    taken, so a cell trains on exactly n_real + value_synthetic rows; a pool without
    enough rows that fit says so in one line."""
    cell = SFTTask(**{**POOLS, "value_pool_size": 12, "value_synthetic": 6}).with_workdir(tmp_path / "cells" / "c")
    shared = tmp_path / "shared"
    path = cell.value_pool_path(shared)
    path.parent.mkdir(parents=True)
    long = " and".join(["x"] * 80)
    pool = [format_example(f"q{i}", long if i % 2 else f"a{i}") for i in range(12)]  # every other row too long
    pq.write_table(pa.table({"text": pool}), path)
    real = cell.with_shared_dir(shared).real_data(20, [chain_generators(0)[0]])
    texts = list(real.train["text"][0])
    assert texts[20:] == pool[0:12:2], "the first six that fit, in pool order"
    tokenizer = load_tokenizer(real.context.tokenizer_dir)
    assert len(encode(tokenizer, texts, 64, drop_long=True)) == 26, "none dropped at the fit"
    with pytest.raises(ValueError, match=r"value pool 0: 6 of its 12 rows fit in max_length=64 tokens; "
                                         r"value_synthetic=7 were asked for"):
        SFTTask(**{**POOLS, "value_pool_size": 12, "value_synthetic": 7}).with_workdir(
            tmp_path / "cells" / "d").with_shared_dir(shared).real_data(20, [chain_generators(0)[0]])


def test_sampling_gives_up_after_its_rounds_in_one_line(tmp_path, monkeypatch):
    """Sampling goes on until n samples are accepted, as (A)'s loop; an untrained model,
    whose samples never parse, is given up on after MAX_SAMPLING_ROUNDS rounds."""
    from collapse_ray.tasks import sft

    monkeypatch.setattr(sft, "MAX_SAMPLING_ROUNDS", 1)
    task = SFTTask(**{**LOCAL, "n_test": 4, "sampling_batch_size": 32}).with_workdir(tmp_path)
    real = task.real_data(20, [chain_generators(0)[0]])
    untrained = fit_texts(task, task.workdir, [], real.context)
    with pytest.raises(RuntimeError, match=r"sft sampler: 0 of 2 samples accepted after 1 rounds \((\d+) drawn") as err:
        task.sample(untrained, 2, [np.random.default_rng(0)], real.context)
    assert "\n" not in str(err.value)


def test_value_pool_grid_is_validated():
    base = {"task": {"name": "sft", "value_pool_size": 100, "value_pool_real": 50, "n_value_pools": 3},
            "chain": {"n_iterations": 1}, "run": {"cpus_per_trial": 0.01}}
    spec = parse_spec({**base, "grid": {"chain.n_real": [0, 10], "task.value_pool": [0, 1, 2]}})
    assert len(spec.points) == 6 and len({p.key for p in spec.points}) == 6
    with pytest.raises(SpecError, match=r"task.value_pool must be < n_value_pools \(3\)"):
        parse_spec({**base, "grid": {"task.value_pool": [3]}})


@pytest.fixture(scope="module")
def story_model(tmp_path_factory):
    """The untrained tiny preset with a tokenizer trained on procedural stories."""
    from collapse_ray.text.steps import TextContext, initial_model

    work = tmp_path_factory.mktemp("stories")
    task = PretrainingTask(**LOCAL).with_workdir(work)
    texts = corpora.procedural_rows("stories", "train", 100, 0)["text"]
    tokenizer_dir = prepare_tokenizer(task, task.workdir, texts)
    model_dir = initial_model(task, load_tokenizer(tokenizer_dir), TextContext(tokenizer_dir, 0), work / "model")
    return texts, FittedLM(model_dir, tokenizer_dir, {})


def test_generation_strategies_first_token_and_fixed_length(story_model):
    import torch

    from collapse_ray.text.steps import first_token_counts

    texts, model = story_model
    loaded, tokenizer, device = backends.load_for_inference(model.model_dir, model.tokenizer_dir)
    firsts, counts = first_token_counts(tokenizer, texts)
    assert sum(counts) == 100 and set(firsts) == {tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in texts}
    # a first token that starts most stories, so a draw by count, not uniform, shows
    weights = tuple(1000 if i == 0 else 1 for i in range(len(firsts)))

    def ids(generation, n=200):
        s = backends.SampleSettings(model.model_dir, model.tokenizer_dir, 1.0, None, 20, 50, generation=generation,
                                    first_tokens=firsts, first_token_counts=weights)
        return torch.cat(list(backends.generate_ids(loaded, tokenizer, n, 0, s, device)))

    eos = tokenizer.eos_token_id
    first = ids("first_token")
    assert first.shape[1] <= 21 and set(first[:, 1].tolist()) <= set(firsts), "BOS, a real first token, the rest"
    assert (first[:, 1] == firsts[0]).float().mean() > 0.9
    fixed = ids("fixed_length")
    assert fixed.shape == (200, 21) and not (fixed[:, 1:] == eos).any(), "always 20 new tokens, never an EOS"
    stopped = (ids("from_bos")[:, 1:] == eos).any(dim=1).float().mean()
    assert stopped > 0.01, "from BOS, an untrained model stops early at times: what fixed_length prevents"
    assert backends.sample_local(3, 0, backends.SampleSettings(model.model_dir, model.tokenizer_dir, 1.0, None, 20, 8,
                                                              generation="fixed_length")) != []


def _lm_figures():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "analysis" / "lm_figures.py"
    module_spec = importlib.util.spec_from_file_location("lm_figures", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_fig5_panels_band_over_pools_and_fig3_has_a_line_per_model(tmp_path):
    import pandas as pd
    from matplotlib.collections import PolyCollection

    figures = _lm_figures()
    rng = np.random.default_rng(0)
    grid = pd.DataFrame([{"task": "sft", "value_pool_size": 600, "n_real": r, "value_synthetic": s, "value_pool": p,
                          "seed": 0, "iteration": 1, "test_loss": 2.0 + rng.random()}
                         for r in (0, 50, 400) for s in (0, 150, 600) for p in (0, 1)])
    for plot in (figures.plot_fig5, figures.plot_fig5_proportion):
        fig = plot(grid)
        ax = fig.axes[0]
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert ax.get_yscale() == "log" and len(bands) == len(ax.get_lines()) > 1, "a band per curve, over the 2 pools"
        assert "2 pools x 1 seed" in ax.get_title()
    assert figures.plot_fig5(grid).axes[0].get_xscale() == "symlog"
    proportion = figures.plot_fig5_proportion(grid).axes[0]
    assert len(proportion.get_lines()) == 3, "a curve per n_real"
    assert max(max(line.get_xdata()) for line in proportion.get_lines()) == 1.0, "no synthetic rows: all real"

    chains = pd.DataFrame([{"task": "sft", "value_pool_size": 0, "model": m, "workflow": w, "iteration": t, "seed": s,
                            "test_loss": 1.0 + t * (w == "replace") + rng.random() * 0.1}
                           for m in ("tiny", "tiny_wide") for w in ("replace", "accumulate") for t in (1, 2, 3)
                           for s in (0, 1)])
    fig = figures.plot_fig3(chains)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["replace", "accumulate"], "side by side, as (A)"
    assert all(ax.get_yscale() == "log" and len(ax.get_lines()) == 2 for ax in fig.axes[:2]), "a line per model"
    written = figures.write_figures(pd.concat([grid, chains]), tmp_path)
    assert {p.name for p in written} == {"fig3_sft.png", "fig5_value_grid.png", "fig5_value_proportion.png",
                                         "fig5_value_heatmap.png"}


PAPER_LM_SPECS = ("fig5_value_grid", "sft_helpsteer2", "sft_fig4_subsample", "pretraining_tinystories",
                  "pretraining_ablations")


@pytest.mark.parametrize("name", PAPER_LM_SPECS)
def test_paper_scale_lm_specs_follow_the_papers_and_name_what_they_do_not(name):
    from pathlib import Path

    from collapse_ray.sweep.spec import load_spec

    path = Path(__file__).parent.parent / "sweeps" / f"{name}.yaml"
    header = "".join(line for line in path.read_text().splitlines(keepends=True) if line.startswith("#"))
    assert "deviation" in header.lower() or "assumption" in header.lower()
    # (A) never passes torch_compile and runs Gemma-2 with eager attention: no deviation to claim
    assert "torch.compile" not in header and "sdpa" not in header
    spec = load_spec(path)
    tasks = [p.task for p in spec.points]
    if tasks[0].name == "sft":
        assert all(t.n_test == "all" and t.adam_beta2 == 0.999 and t.long_rows == "drop" for t in tasks)
        assert all(t.learning_rate == 8e-6 and t.max_length == 512 for t in tasks)
        assert all(t.micro_batch_size * t.grad_accum_steps * t.num_workers == 128 for t in tasks), "(A)'s batch"
        assert all(t.sampler == "vllm" and t.sampler_seeding == "independent" for t in tasks)
        # which sampling each reproduces, and how to get (A)'s repeated samples instead
        assert "sampler_seeding: koyejo_lab" in header and "64 times" in header and "lstrip" in header
    if name == "fig5_value_grid":
        assert len(spec.points) * len(spec.seeds) == 2052 and {t.value_pool for t in tasks} == {0, 1, 2}
        assert all(t.warmup_steps == 16 and t.n_value_pools == 3 and t.value_pool_size == 200_000 for t in tasks)
    if name == "sft_helpsteer2":
        assert {t.model for t in tasks} == {"google/gemma-2-2b", "google/gemma-2-9b", "google/gemma-2-27b"}
        assert all(t.zero_stage == 3 for t in tasks if t.model != "google/gemma-2-2b")
        assert spec.points[0].chain.n_iterations == 10
    if name == "sft_fig4_subsample":
        assert spec.points[0].chain.workflow == "accumulate_subsample" and spec.points[0].chain.n_iterations == 20
    if name == "pretraining_ablations":
        assert {(t.temperature, t.epochs, t.generation) for t in tasks} == {
            (0.3, 1, "first_token"), (1.0, 3, "first_token"), (1.0, 1, "fixed_length"), (1.0, 1, "from_bos")}
    if name == "pretraining_tinystories":  # (B)'s recorded first_token_inclusive
        assert {t.generation for t in tasks} == {"first_token"}
    if name in ("sft_helpsteer2", "sft_fig4_subsample", "fig5_value_grid"):  # as (A) trains and evaluates
        assert {(t.precision, t.eval_loss, t.eval_batch_size) for t in tasks} == {("bf16_pure", "batch_mean", 16)}
