"""Language-model pieces: data sources, presets, tokenizers, the training loop's
arithmetic, the SFT format, and the real loading code on files and a saved model the
tests create. End-to-end chains on Ray Train + DeepSpeed: tests/test_sweep_ray.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from collapse_ray.core.loop import chain_generators, run_chain
from collapse_ray.core.chain import ChainConfig
from collapse_ray.sweep.spec import parse_spec
from collapse_ray.tasks import PretrainingTask, SFTTask
from collapse_ray.tasks.sft import format_example, parse_example
from collapse_ray.text import corpora
from collapse_ray.text.models import PAPER_PARAMETERS, PAPER_VOCAB, PRESETS, model_config, n_parameters
from collapse_ray.text.steps import encode
from collapse_ray.text.training import IGNORE, collate, lr_lambda, micro_steps_per_epoch, token_loss
from collapse_ray.validation import SpecError

LOCAL = {"backend": "local", "sampler": "local", "max_length": 64, "n_test": 20, "vocab_size": 300}


def test_procedural_corpora_are_deterministic_and_split_apart():
    a = corpora.procedural_rows("stories", "train", 50, seed=0)["text"]
    assert a == corpora.procedural_rows("stories", "train", 50, seed=0)["text"]
    assert a[:10] == corpora.procedural_rows("stories", "train", 10, seed=0)["text"], "a prefix-stable stream"
    assert not set(a) & set(corpora.procedural_rows("stories", "validation", 50, seed=0)["text"])
    assert len(set(a)) == 50, "enough variety that stories rarely repeat"
    pairs = corpora.procedural_rows("instructions", "train", 20, seed=0)
    assert set(pairs) == {"prompt", "response"} and all(pairs["response"])


def test_sft_samples_are_accepted_by_As_rule_with_removeprefix_not_lstrip():
    """(A): starts with "user: ", splits on "assistant: " into exactly two parts, both
    stripped (empty ones kept); the prompt loses the prefix, not lstrip's characters."""
    text = format_example("sing a song about users", "ok: user")
    assert parse_example(text) == ("sing a song about users", "ok: user")  # lstrip("user: ") would eat the "s"
    assert parse_example("user: a\nassistant: b\nassistant: c") is None, "two assistant parts"
    assert parse_example("user: a assistant: b") == ("a", "b"), "split on 'assistant: ', newline or not"
    assert parse_example("assistant: b") is None and parse_example("user: a") is None
    assert parse_example(" user: a\nassistant: b") is None, "must start with 'user: '"
    assert parse_example("user: \nassistant: b ") == ("", "b"), "an empty prompt is kept, as (A) keeps it"
    assert parse_example("user: a user: b\nassistant: c") == ("a user: b", "c"), "(A) counts only the split"


@pytest.mark.parametrize("preset", sorted(PAPER_PARAMETERS))
def test_presets_have_the_papers_parameter_counts_exactly(preset):
    """(B)'s counts, to the parameter, with its 8000-token vocabulary."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(model_config(preset, PAPER_VOCAB, 0))
    assert n_parameters(model) == PAPER_PARAMETERS[preset]


def test_tiny_preset_is_small():
    from transformers import AutoModelForCausalLM

    assert n_parameters(AutoModelForCausalLM.from_config(model_config("tiny", 1024, 0))) < 300_000
    assert set(PRESETS) >= {"tiny", *PAPER_PARAMETERS}


def test_collate_masks_padding_even_where_pad_is_eos():
    batch = collate([np.array([5, 6, 0]), np.array([7, 0])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 0], [7, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 0], [7, 0, IGNORE]], "the real EOS is learned, padding is not"
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_schedule_and_step_arithmetic():
    assert micro_steps_per_epoch(103, 2, 8) == 6  # every worker takes the same number
    constant = lr_lambda("constant", 5, 100)
    assert constant(0) == pytest.approx(0.2) and constant(4) == 1.0 and constant(99) == 1.0
    cosine = lr_lambda("cosine", 0, 100)
    assert cosine(0) == 1.0 and cosine(50) == pytest.approx(0.5) and cosine(100) == pytest.approx(0.0)


def test_token_loss_matches_the_model_loss():
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config("tiny", 300, 0))
    examples = [np.array([0, 5, 9, 3, 0]), np.array([0, 7, 0])]
    ours = token_loss(model, examples, pad_id=0)
    with torch.no_grad():  # HF's mean over the 4 + 2 targets, one example at a time
        sums = [model(input_ids=torch.tensor([e.tolist()]), labels=torch.tensor([e.tolist()])).loss * (len(e) - 1)
                for e in examples]
    assert ours == pytest.approx(float(sum(sums)) / 6, rel=1e-5)


def test_local_files_resolve_through_the_loading_code(tmp_path):
    rows = {"prompt": [f"q{i}" for i in range(5)], "response": [f"a{i}" for i in range(5)]}
    pq.write_table(pa.table(rows), tmp_path / "train.parquet")
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"text": f"story {i}"}) for i in range(4)))
    folder = tmp_path / "dataset"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table(rows), folder / "data" / "train-00000.parquet")
    pq.write_table(pa.table(rows), folder / "data" / "validation-00000.parquet")

    got = corpora.load_rows(str(tmp_path / "train.parquet"), "instructions", "train", 3, ("prompt", "response"))
    assert got == {"prompt": ["q0", "q1", "q2"], "response": ["a0", "a1", "a2"]}
    assert corpora.load_rows(str(tmp_path / "train.jsonl"), "stories", "train", None, ("text",))["text"][-1] == "story 3"
    assert corpora.load_rows(str(folder), "instructions", "validation", 2, ("prompt",))["prompt"] == ["q0", "q1"]
    with pytest.raises(ValueError, match="needs \\['text'\\]"):
        corpora.load_rows(str(tmp_path / "train.parquet"), "stories", "train", 2, ("text",))
    with pytest.raises(ValueError, match="5 rows; 9 were asked for"):
        corpora.load_rows(str(tmp_path / "train.parquet"), "instructions", "train", 9, ("prompt",))


def test_a_hub_id_goes_through_the_same_call_and_fails_clearly_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="roneneldan/TinyStories"):
        corpora.load_rows("roneneldan/TinyStories", "stories", "train", 10, ("text",))


def test_sft_fine_tunes_a_saved_model_folder_with_its_own_tokenizer(tmp_path):
    """A model and tokenizer written by save_pretrained, named by path, as a hub id would be."""
    from transformers import AutoModelForCausalLM

    from collapse_ray.text.models import train_tokenizer

    texts = [format_example(p, r) for p, r in zip(*corpora.procedural_rows("instructions", "train", 300, 1).values())]
    tokenizer = train_tokenizer(texts, 300)
    model = AutoModelForCausalLM.from_config(model_config("tiny", len(tokenizer), tokenizer.eos_token_id))
    base = tmp_path / "base"
    model.save_pretrained(base)
    tokenizer.save_pretrained(base)
    pairs = corpora.procedural_rows("instructions", "train", 200, 2)
    pq.write_table(pa.table(pairs), tmp_path / "sft.parquet")

    settings = {**LOCAL, "n_test": 10, "epochs": 4, "learning_rate": 3e-3}
    task = SFTTask(model=str(base), source=str(tmp_path / "sft.parquet"), **settings).with_workdir(tmp_path / "w")
    real = task.real_data(150, [chain_generators(0)[0]])
    assert real.context.tokenizer_dir == str(base), "a saved model brings its tokenizer"
    base_loss = task.evaluate(task.fit({"text": real.train["text"][:, :0]}, real.context), real.test)["test_loss"][0]
    tuned = task.fit(real.train, real.context)
    tuned_loss = task.evaluate(tuned, real.test)["test_loss"][0]
    assert tuned_loss < base_loss - 0.5, (base_loss, tuned_loss)
    assert math.isclose(base_loss, math.log(len(tokenizer)), rel_tol=0.1), "an untrained model guesses uniformly"


def test_a_fit_is_stored_and_reused_by_its_training_set(tmp_path):
    """An iteration resumed after a crash in its sampling step finds its fit again."""
    task = PretrainingTask(**LOCAL).with_workdir(tmp_path)
    real = task.real_data(64, [chain_generators(0)[0]])
    first = task.fit(real.train, real.context)
    again = task.fit(real.train, real.context)
    assert again.model_dir == first.model_dir and again.figures == first.figures
    other = task.fit({"text": real.train["text"][:, :32]}, real.context)
    assert other.model_dir != first.model_dir


def test_chains_share_the_fits_they_would_make_alike_and_give_the_same_results(tmp_path):
    """With the sweep's shared folder, every workflow's iteration 1 is one fit (here also
    across a sampling setting, which no fit reads); iteration 2's training sets differ,
    so do their fits. Each chain's table is what it gives with fits of its own."""
    settings = {**LOCAL, "epochs": 1}
    chains = {"rep": ("replace", 1.0), "acc": ("accumulate", 0.7)}

    def run(name, shared):
        workflow, temperature = chains[name]
        task = PretrainingTask(**settings, temperature=temperature)
        if shared is not None:
            task = task.with_shared_dir(shared)
        config = ChainConfig(workflow=workflow, n_real=48, n_iterations=2)
        return run_chain(task, config, seeds=[5], checkpoint_dir=tmp_path / ("shared" if shared else "own") / name)

    shared = tmp_path / "shared" / "_shared"
    together = {name: run(name, shared) for name in chains}
    fits = sorted(p.parent.name for p in (shared / "fits").glob("*/fit.json"))
    assert len(fits) == 3, fits  # 2 chains x 2 iterations, iteration 1 once
    assert not list((shared / "fits").glob(".*")), "no attempt folder is left behind"
    assert not list((tmp_path / "shared").glob("*/task/models")), "no chain keeps fits of its own"
    for name in chains:
        alone = run(name, None)
        assert alone.table.test_loss.tolist() == together[name].table.test_loss.tolist(), name
    assert together["rep"].table.test_loss.iloc[0] == together["acc"].table.test_loss.iloc[0]
    assert together["rep"].table.test_loss.iloc[1] != together["acc"].table.test_loss.iloc[1]


def test_a_fit_key_reads_the_fitting_settings_not_the_sampling_ones(tmp_path):
    from collapse_ray.text.steps import TextContext, fit_key

    context = TextContext(str(tmp_path), seed=1, held_out=(np.arange(5),))
    key = fit_key(PretrainingTask(**LOCAL), "texts", context)
    assert fit_key(PretrainingTask(**LOCAL, temperature=0.5, generation="fixed_length", sampling_concurrency=1),
                   "texts", context) == key
    assert fit_key(SFTTask(**LOCAL), "texts", context) == fit_key(SFTTask(**LOCAL, value_pool=2, value_synthetic=0),
                                                                   "texts", context)
    for changed in ({"learning_rate": 0.01}, {"epochs": 2}, {"num_workers": 1}, {"max_length": 32}):
        assert fit_key(PretrainingTask(**{**LOCAL, **changed}), "texts", context) != key, changed
    assert fit_key(PretrainingTask(**LOCAL), "other texts", context) != key
    assert fit_key(PretrainingTask(**LOCAL), "texts", TextContext(str(tmp_path), seed=2, held_out=(np.arange(5),))) != key
    assert fit_key(PretrainingTask(**LOCAL), "texts", TextContext(str(tmp_path), seed=1, held_out=(np.arange(4),))) != key


def test_a_fit_appears_whole_and_the_first_of_two_alike_wins(tmp_path):
    from collapse_ray.text.steps import publish_fit

    def fit_into(value):
        def write(folder):
            folder.mkdir(parents=True)
            (folder / "model.bin").write_text(value)
            return {"value": value}
        return write

    fits, chain_a, chain_b = tmp_path / "fits", tmp_path / "a" / "task", tmp_path / "b" / "task"
    out = fits / "key"
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")  # a fit that stopped part-way, fitted in place by an earlier version
    assert publish_fit(out, fit_into("first"), chain_a) == {"value": "first"}
    # a chain that fitted the same key at the same time finds the first one there and keeps it
    assert publish_fit(out, fit_into("second"), chain_b) == {"value": "first"}
    assert (out / "model.bin").read_text() == "first" and not (out / "config.json").exists()
    assert sorted(p.name for p in fits.iterdir()) == ["key"]
    assert publish_fit(fits / "none", lambda folder: None, chain_a) is None
    assert sorted(p.name for p in fits.iterdir()) == ["key"]


def test_a_chain_retrying_a_fit_replaces_its_own_leftover_and_no_other_chains(tmp_path):
    """A crash mid-fit leaves the attempt's folder (a whole model at paper scale): the
    chain's retry replaces it; another chain's attempt of the same key (it may be fitting
    right now) is left alone."""
    from collapse_ray.text.steps import publish_fit

    fits, mine, theirs = tmp_path / "fits", tmp_path / "a" / "task", tmp_path / "b" / "task"

    def crash(folder):
        folder.mkdir(parents=True)
        (folder / "half.bin").write_text("x")
        raise KeyboardInterrupt

    for owner in (mine, theirs):
        with pytest.raises(KeyboardInterrupt):
            publish_fit(fits / "key", crash, owner)
    assert len(list(fits.glob(".key.*"))) == 2

    def fit_into(folder):
        assert not (folder / "half.bin").exists(), "the retry starts from an empty folder"
        folder.mkdir(parents=True)
        return {"value": 1}

    assert publish_fit(fits / "key", fit_into, mine) == {"value": 1}
    (left,) = fits.glob(".key.*")  # the other chain's attempt, untouched
    assert (left / "half.bin").exists()


def test_encode_adds_bos_and_eos_and_drops_or_cuts_long_examples(tmp_path):
    from collapse_ray.text.models import train_tokenizer

    tok = train_tokenizer(corpora.procedural_rows("stories", "train", 100, 0)["text"], 300)
    short, long = "a cat", " ".join(["the big dog"] * 50)
    kept = encode(tok, [short, long], max_length=16, drop_long=True)
    assert len(kept) == 1 and kept[0][0] == tok.bos_token_id and kept[0][-1] == tok.eos_token_id
    cut = encode(tok, [short, long], max_length=16, drop_long=False)
    assert len(cut) == 2 and len(cut[1]) == 16


def test_language_model_chain_runs_in_process_with_the_loop(tmp_path):
    """The loop, workflows and checkpoints unchanged: a 2-iteration replace chain."""
    task = PretrainingTask(**{**LOCAL, "epochs": 1})
    result = run_chain(task, ChainConfig(workflow="replace", n_real=64, n_iterations=2), seeds=[3],
                       checkpoint_dir=tmp_path / "chain")
    assert list(result.table.iteration) == [1, 2] and np.isfinite(result.table.test_loss).all()
    assert (tmp_path / "chain" / "task" / "models").is_dir(), "fitted models kept with the chain's checkpoint"


def test_paper_scale_and_value_grid_rules_are_validated():
    base = {"task": {"name": "sft", "value_pool_size": 100, "value_pool_real": 50},
            "chain": {"n_iterations": 1}, "run": {"cpus_per_trial": 0.01}}
    spec = parse_spec({**base, "grid": {"chain.n_real": [0, 10], "task.value_synthetic": [0, 100]}})
    assert len(spec.points) == 4
    with pytest.raises(SpecError, match="task.value_synthetic must be <= value_pool_size"):
        parse_spec({**base, "grid": {"task.value_synthetic": [200]}})
    with pytest.raises(SpecError, match="chain.n_iterations must be 1 for value-grid cells"):
        parse_spec({**base, "chain": {"n_iterations": 3}})
    with pytest.raises(SpecError, match="chain.n_real must be an integer >= 1 for task gaussian"):
        parse_spec({"task": {"name": "gaussian"}, "chain": {"n_real": 0}})
    with pytest.raises(SpecError, match="run.cpus_per_trial must be <= 0.1 for task pretraining"):
        parse_spec({"task": {"name": "pretraining"}})
    with pytest.raises(SpecError, match="task.model must be a preset"):
        parse_spec({"task": {"name": "pretraining", "model": "google/gemma-2-2b"}, "run": {"cpus_per_trial": 0.01}})
    with pytest.raises(SpecError, match="task.zero_stage must be one of"):
        parse_spec({"task": {"name": "sft", "zero_stage": 4}, "run": {"cpus_per_trial": 0.01}})
    # engine, precision and ZeRO stage: combinations the loop would not honour are refused
    run = {"cpus_per_trial": 0.01}
    with pytest.raises(SpecError, match="task.zero_stage must be left at its default with task.engine torch"):
        parse_spec({"task": {"name": "sft", "engine": "torch", "zero_stage": 2}, "run": run})
    with pytest.raises(SpecError, match="task.precision must be auto, fp32 or bf16 with task.engine torch"):
        parse_spec({"task": {"name": "pretraining", "engine": "torch", "precision": "fp16"}, "run": run})
    with pytest.raises(SpecError, match="task.precision must be auto, fp32 or bf16 without a GPU"):
        parse_spec({"task": {"name": "sft", "precision": "fp16"}, "run": run})
    parse_spec({"task": {"name": "sft", "engine": "torch", "precision": "bf16"}, "run": run})
    parse_spec({"task": {"name": "sft", "precision": "fp16", "use_gpu": True, "zero_stage": 3}, "run": run})
    with pytest.raises(SpecError, match="task.zero_stage must be 1, 2 or 3 with task.precision bf16_pure"):
        parse_spec({"task": {"name": "sft", "precision": "bf16_pure", "zero_stage": 0}, "run": run})
    parse_spec({"task": {"name": "sft", "engine": "torch", "precision": "bf16_pure"}, "run": run})


def test_gemma_2s_parameter_counts_and_memory_per_gpu_are_checked_before_a_sweep_starts():
    """The three Gemma-2 sizes, counted exactly from their published architecture on the
    meta device (no download); a GPU spec whose fit or sampler needs more memory per GPU
    than task.gpu_memory_gb is refused in one line that says what takes the memory."""
    from collapse_ray.text import memory

    assert {m: memory.architecture(m, 0).parameters for m in memory.HUB_ARCHITECTURES} == {
        "google/gemma-2-2b": 2_614_341_888, "google/gemma-2-9b": 9_241_705_984, "google/gemma-2-27b": 27_227_128_320}
    gpu = {"name": "sft", "use_gpu": True, "max_length": 512, "micro_batch_size": 4, "grad_accum_steps": 4}
    run = {"cpus_per_trial": 0.01}

    def task(**kw):
        return {"task": {**gpu, **kw}, "run": run}

    # (A)'s placements on 80 GB GPUs: 2B ZeRO-2 x 8, 9B ZeRO-3 x 8, 27B ZeRO-3 x 16 (micro-batch 2)
    parse_spec(task(model="google/gemma-2-2b", zero_stage=2, num_workers=8, gpu_memory_gb=80))
    parse_spec(task(model="google/gemma-2-2b", zero_stage=2, num_workers=8, gpu_memory_gb=40))  # Fig. 5's >= 40 GB
    parse_spec(task(model="google/gemma-2-9b", zero_stage=3, num_workers=8, gpu_memory_gb=80))
    parse_spec(task(model="google/gemma-2-27b", zero_stage=3, num_workers=16, micro_batch_size=2, gpu_memory_gb=80))
    # 27B with ZeRO-2 on 8 GPUs: 2 bytes of bf16 weights a parameter stay whole on each GPU (54 GB), plus the shards
    with pytest.raises(SpecError, match=r"task.gpu_memory_gb must be enough for the fit: google/gemma-2-27b "
                                        r"\(27,227,128,320 parameters, bf16, ZeRO-2 over 8 workers\) needs 1\d\d\.\d GiB"):
        parse_spec(task(model="google/gemma-2-27b", zero_stage=2, num_workers=8, gpu_memory_gb=80))
    # 9B under DeepSpeed ZeRO-0: 20 bytes a parameter on every GPU (bf16 weights and gradients, fp32 gradients,
    # master weights and moments, as DeepSpeed counts them)
    with pytest.raises(SpecError, match=r"needs 1\d\d\.\d GiB \(weights 17\.2, gradients 51\.6, optimiser 103\.3"):
        parse_spec(task(model="google/gemma-2-9b", zero_stage=0, num_workers=8, gpu_memory_gb=80))
    # pure bf16 halves the optimiser: 9B ZeRO-1 x 8 fits 80 GB in bf16_pure, not in mixed bf16
    parse_spec(task(model="google/gemma-2-9b", zero_stage=1, num_workers=8, gpu_memory_gb=80, precision="bf16_pure"))
    with pytest.raises(SpecError, match="enough for the fit"):
        parse_spec(task(model="google/gemma-2-9b", zero_stage=1, num_workers=8, gpu_memory_gb=48, precision="bf16"))
    # sampling 27B in fp32 (the HF sampler of an fp32 fit) needs 101 GiB of weights
    with pytest.raises(SpecError, match=r"enough for the sampler: google/gemma-2-27b's weights in fp32 take 101\.4 GiB"):
        parse_spec(task(model="google/gemma-2-27b", zero_stage=3, num_workers=64, micro_batch_size=1, gpu_memory_gb=80,
                        precision="fp32", sampler="ray_data"))
    with pytest.raises(SpecError, match="task.gpu_memory_gb must be set only for models whose size is known"):
        parse_spec(task(model="someone/unknown-7b", gpu_memory_gb=80))
    parse_spec({"task": {"name": "sft", "gpu_memory_gb": 1}, "run": run})  # no GPU: nothing to check
