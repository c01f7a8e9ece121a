"""The vLLM sampler (task.sampler: vllm): its requests (seeds, prompts, token budgets),
its settings, and the stage itself on vLLM's CPU build (one engine pass for every case)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from collapse_ray.text import backends, vllm_sampler
from collapse_ray.validation import SpecError

BOS = EOS = 0
SETTINGS = backends.SampleSettings(model_dir="", tokenizer_dir="", temperature=1.0, top_p=None, max_new_tokens=31,
                                   batch_size=32)
PER_CALL = vllm_sampler.KOYEJO_PROMPTS_PER_CALL * vllm_sampler.KOYEJO_SAMPLES_PER_PROMPT


def test_independent_requests_never_share_a_seed_within_or_across_calls():
    first = vllm_sampler.requests(3 * PER_CALL, 7, SETTINGS, BOS)
    second = vllm_sampler.requests(3 * PER_CALL, 8, SETTINGS, BOS)
    assert len(np.unique(first.seed)) == 3 * PER_CALL
    assert not set(first.seed) & set(second.seed)
    assert np.array_equal(first.seed, vllm_sampler.requests(3 * PER_CALL, 7, SETTINGS, BOS).seed)  # reproducible
    assert all(p == [BOS] for p in first.prompt) and set(first.max_tokens) == {31} and set(first.min_tokens) == {0}


def test_koyejo_lab_requests_share_their_seeds_as_a_call_of_a():
    """(A): 64 identical prompts, SamplingParams(n=64, seed=call): vLLM seeds the j-th
    sample of each prompt seed + j, so a call's 4,096 requests carry 64 seeds."""
    asked = vllm_sampler.requests(3 * PER_CALL, 7, SETTINGS, BOS, "koyejo_lab")
    calls = asked.seed.reshape(3, PER_CALL)
    assert [len(np.unique(c)) for c in calls] == [64, 64, 64]
    assert len(np.unique(asked.seed)) == 3 * 64  # calls never share a seed
    assert np.array_equal(calls[0].reshape(64, 64), np.tile(calls[0][:64], (64, 1)))  # each prompt the same 64


def test_generation_strategies_set_prompts_and_token_budgets():
    fixed = vllm_sampler.requests(8, 1, replace(SETTINGS, generation="fixed_length"), BOS)
    assert set(fixed.min_tokens) == set(fixed.max_tokens) == {31}  # EOS masked to the end
    firsts = replace(SETTINGS, generation="first_token", first_tokens=(5, 9), first_token_counts=(1, 3))
    first = vllm_sampler.requests(400, 1, firsts, BOS)
    assert {p[0] for p in first.prompt} == {BOS} and {p[1] for p in first.prompt} == {5, 9}
    assert 0.65 < np.mean([p[1] == 9 for p in first.prompt]) < 0.85  # 3 : 1, n = 400: sd 0.022
    assert set(first.max_tokens) == {30}  # BOS + first + 30 = max_length, as with HF


def test_settings_refuse_koyejo_seeding_without_vllm():
    from collapse_ray.tasks.pretraining import PretrainingTask

    PretrainingTask(sampler="vllm", sampler_seeding="koyejo_lab").validate("task")
    with pytest.raises(SpecError, match="task.sampler_seeding must be independent unless task.sampler is vllm"):
        PretrainingTask(sampler="ray_data", sampler_seeding="koyejo_lab").validate("task")


@pytest.fixture(scope="module")
def untrained_tiny(tmp_path_factory):
    """The tiny preset, untrained, and its tokenizer: EOS has probability ~1/300 a token."""
    from collapse_ray.text import corpora, models

    folder = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    tokenizer = models.train_tokenizer([corpora.procedural_story(rng) for _ in range(200)], 300)
    tokenizer.save_pretrained(folder)
    models.build_model("tiny", tokenizer, 0).save_pretrained(folder)
    return str(folder), tokenizer.eos_token_id


@pytest.mark.ray
@pytest.mark.slow_lane("vLLM's engine starts in ~60-90 s on 2 CPUs; fast lane: the requests it is sent "
                       "(seeds, prompts, token budgets) in this file")
def test_the_stage_samples_distinct_seeded_and_strategy_shaped(untrained_tiny, local_ray):
    """One engine pass: (A)'s seeding against independent seeds, and (B)'s strategies."""
    model, eos = untrained_tiny
    s = replace(SETTINGS, model_dir=model, tokenizer_dir=model, max_new_tokens=40)
    placement = backends.Placement("local", 1, False, 0.9, "vllm", 1)
    independent = vllm_sampler.requests(128, 3, s, eos)
    koyejo = vllm_sampler.requests(128, 3, s, eos, "koyejo_lab")
    fixed = vllm_sampler.requests(64, 4, replace(s, generation="fixed_length"), eos)
    first = vllm_sampler.requests(64, 5, replace(s, generation="first_token", first_tokens=(100, 200),
                                                 first_token_counts=(1, 1)), eos)
    asked = independent.then(koyejo).then(fixed).then(first)
    ids = [tuple(x) for block in vllm_sampler.iter_token_ids(asked, s, placement, eos) for x in block]
    assert len(ids) == len(asked)
    free, a, fixed_ids, first_ids = ids[:128], ids[128:256], ids[256:320], ids[320:]
    # distinct samples: every seed its own; (A)'s first two prompts of a call: the same 64
    assert len(set(free)) == 128
    assert len(set(a)) == 64 and a[:64] == a[64:]
    # EOS stops a sample (and only ends one); fixed_length never stops before max_tokens
    for x in free:
        assert len(x) <= 40 and eos not in x[:-1] and (len(x) == 40 or x[-1] == eos)
    assert sum(x[-1] == eos for x in free) >= 5  # ~1/300 a token over <= 40 tokens: ~15 of 128 expected
    assert all(len(x) == 40 and eos not in x for x in fixed_ids)
    # first_token: the drawn first token kept, then at most max_new_tokens - 1 generated
    assert {x[0] for x in first_ids} == {100, 200} and all(len(x) <= 40 for x in first_ids)


def test_the_sampler_and_its_seeding_do_not_key_fits(tmp_path):
    """A fit does not read them: chains that differ only in sampler share their fits."""
    from collapse_ray.tasks.pretraining import PretrainingTask
    from collapse_ray.text.steps import TextContext, fit_key

    context = TextContext(str(tmp_path), seed=1, held_out=(np.arange(5),))
    hf = fit_key(PretrainingTask(sampler="ray_data"), "texts", context)
    assert fit_key(PretrainingTask(sampler="vllm", sampler_seeding="koyejo_lab"), "texts", context) == hf
