"""The vLLM sampler (`task.sampler: vllm`): (A)'s engine, as a Ray Data stage.

`ray.data.llm` runs vLLM engine replicas (`sampling_concurrency` of them, one GPU each,
or `cpus_per_worker` CPUs each on vLLM's CPU build) over a dataset of one row per
sample: continuous batching in bf16 on GPU, where HF `generate` runs fp32 static
batches until their longest member stops. It yields the same thing as the HF sampler
(`backends.iter_samples`): the n samples in order, block by block, so the pool writer
and SFT's acceptance loop use either unchanged.

Each row is one request with n = 1 and its own seed: the stage keeps only a request's
first completion, and vLLM gives the j-th of a request's n samples seed + j, so
requests with n > 1 or consecutive seeds would share samples. Seeds are base + row,
the base drawn from the caller's seed.

`sampler_seeding: koyejo_lab` reproduces (A)'s call pattern instead (its
sample_language_model.py: 64 identical empty prompts per call, one
SamplingParams(n=64, seed=batch_index)): the j-th sample of every prompt of a call has
the same seed, so a call of 4,096 samples holds 64 distinct ones, each 64 times. Calls
get disjoint seeds, as (A)'s vLLM 0.5.4 did (one generator per request, seeded by the
call's index).

Prompts are token ids (`[BOS]`, or `[BOS, first token]` for generation first_token):
an empty string prompt is refused by the stage, so the chat-template and tokenize
stages are off, and so is detokenize: texts are decoded here as the HF sampler does
(the prompt's first token kept, special tokens skipped, stripped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (A)'s call shape (its SFT sampling config: num_prompts_per_sampling_call,
# num_samples_per_prompt)
KOYEJO_PROMPTS_PER_CALL = 64
KOYEJO_SAMPLES_PER_PROMPT = 64
SEEDINGS = ("independent", "koyejo_lab")
_SEED_SPACE = 2**62  # vLLM seeds a torch.Generator: a 64-bit seed; room for base + row
CPU_KV_CACHE_GIB = "1"  # vLLM's CPU build takes its KV cache from this much memory


@dataclass(frozen=True)
class Requests:
    """One row per sample: its position, seed, prompt (token ids) and token budget."""

    row: np.ndarray  # int64 (n,): the sample's position in the call's output
    seed: np.ndarray  # int64 (n,)
    prompt: list[list[int]]
    max_tokens: np.ndarray  # int64 (n,)
    min_tokens: np.ndarray  # int64 (n,): EOS masked until this many tokens

    def __len__(self) -> int:
        return len(self.row)

    def then(self, other: Requests) -> Requests:
        """These requests, then `other`'s (numbered on): one engine pass for both."""
        return Requests(np.concatenate([self.row, other.row + len(self)]), np.concatenate([self.seed, other.seed]),
                        self.prompt + other.prompt, np.concatenate([self.max_tokens, other.max_tokens]),
                        np.concatenate([self.min_tokens, other.min_tokens]))


def requests(n: int, seed: int, s, bos: int, seeding: str = "independent") -> Requests:
    """The n requests of a sampling call with settings `s` (backends.SampleSettings)."""
    base = int(np.random.SeedSequence(seed).generate_state(1, dtype=np.uint64)[0]) % _SEED_SPACE
    rows = np.arange(n, dtype=np.int64)
    if seeding == "independent":
        seeds = base + rows
    elif seeding == "koyejo_lab":
        per_call = KOYEJO_PROMPTS_PER_CALL * KOYEJO_SAMPLES_PER_PROMPT
        # rows run prompt by prompt within a call, as (A) flattens request_output.outputs
        call, j = rows // per_call, rows % KOYEJO_SAMPLES_PER_PROMPT
        seeds = base + call * KOYEJO_SAMPLES_PER_PROMPT + j
    else:
        raise ValueError(f"sampler_seeding must be one of {SEEDINGS}; got {seeding!r}")
    max_tokens, min_tokens = s.max_new_tokens, 0
    if s.generation == "first_token":
        weights = np.asarray(s.first_token_counts, dtype=float)
        firsts = np.random.default_rng(seed).choice(np.asarray(s.first_tokens), size=n, p=weights / weights.sum())
        prompt = [[bos, int(f)] for f in firsts]
        max_tokens -= 1  # the sample stays within max_length tokens, as with HF
    else:
        prompt = [[bos]] * n
        if s.generation == "fixed_length":
            min_tokens = max_tokens  # EOS masked until max_tokens, as HF's min_new_tokens
        elif s.generation != "from_bos":
            raise ValueError(f"unknown generation {s.generation!r}")
    return Requests(rows, seeds % _SEED_SPACE, prompt, np.full(n, max_tokens, dtype=np.int64),
                    np.full(n, min_tokens, dtype=np.int64))


def processor(s, placement):
    """The Ray Data stage: vLLM engines with the fitted model and the tokenizer folder."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    engine = {
        "tokenizer": s.tokenizer_dir,
        "dtype": "bfloat16" if placement.use_gpu else "float32",
        "max_model_len": s.max_new_tokens + 1,
        "generation_config": "vllm",  # sampling as set per row, never from the model's folder
        "enable_prefix_caching": False,  # every prompt is [BOS] (+ one token): nothing to reuse
    }
    runtime_env = None
    placement_group = None
    if not placement.use_gpu:
        # vLLM's CPU build: no CUDA graphs, its KV cache from RAM, and a CPU bundle
        # (without one the stage asks for a GPU and waits forever)
        engine["enforce_eager"] = True
        runtime_env = {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": CPU_KV_CACHE_GIB}}
        placement_group = {"bundles": [{"CPU": placement.cpus_per_worker}]}
    config = vLLMEngineProcessorConfig(
        model_source=s.model_dir,
        engine_kwargs=engine,
        runtime_env=runtime_env,
        placement_group_config=placement_group,
        concurrency=placement.sampling_concurrency,
        batch_size=s.batch_size,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        log_engine_metrics=False,
    )
    # the identity pre/post maps the processor always adds ask for a whole CPU by
    # default: with the engines holding the CPUs they would wait forever
    light = {"num_cpus": 0.01}
    return build_processor(config, preprocess_map_kwargs=light, postprocess_map_kwargs=light)


def iter_token_ids(asked: Requests, s, placement, eos: int):
    """Each request's sample as token ids after BOS (a first_token prompt's token first,
    then the generated ones, EOS included where it stopped), in row order, block by block."""
    import pyarrow as pa
    import ray.data

    from collapse_ray.text.placement import quiet_ray_data

    quiet_ray_data()
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    params = {"temperature": s.temperature, "top_p": s.top_p if s.top_p is not None else 1.0,
              "stop_token_ids": [eos], "detokenize": False}
    table = pa.table({
        "row": asked.row,
        "tokenized_prompt": pa.array(asked.prompt, type=pa.list_(pa.int64())),
        "sampling_params": pa.array([{**params, "seed": int(seed), "max_tokens": int(most), "min_tokens": int(least)}
                                     for seed, most, least in zip(asked.seed, asked.max_tokens, asked.min_tokens)]),
    })
    # blocks of the engine's batch size, built on the driver (no repartition task
    # waiting for CPUs the engines hold)
    blocks = [table.slice(i, s.batch_size) for i in range(0, len(asked), s.batch_size)]
    dataset = processor(s, placement)(ray.data.from_arrow(blocks))
    expected = 0
    for batch in dataset.select_columns(["row", "prompt_token_ids", "generated_tokens"]).iter_batches(
            batch_size=None, batch_format="pandas"):
        rows = batch["row"].to_numpy()
        if len(rows) and not np.array_equal(rows, np.arange(expected, expected + len(rows))):
            raise RuntimeError(f"vLLM samples arrived out of order after row {expected - 1}: {rows[:5].tolist()}")
        expected += len(rows)
        yield [[int(t) for t in p[1:]] + [int(t) for t in g]
               for p, g in zip(batch["prompt_token_ids"], batch["generated_tokens"])]
    if expected != len(asked):
        raise RuntimeError(f"vLLM returned {expected} samples; {len(asked)} were asked")


def iter_samples(n: int, seed: int, s, placement, seeding: str = "independent"):
    """The n samples in row order, block by block (as backends.iter_samples): decoded
    as the HF sampler decodes (special tokens skipped, stripped)."""
    if n == 0:
        return
    from collapse_ray.text.models import load_tokenizer

    tokenizer = load_tokenizer(s.tokenizer_dir)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for ids in iter_token_ids(requests(n, seed, s, bos, seeding), s, placement, tokenizer.eos_token_id):
        yield [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
