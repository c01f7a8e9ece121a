"""Where a language model is fitted and sampled: in-process, or on Ray.

- `fit_ray_train`: Ray Train's TorchTrainer runs `training.train_worker` on
  `num_workers` workers (gloo on CPU, NCCL on GPU); the training set travels as a Ray
  Dataset and each worker streams its equal shard. The held-out examples travel with
  the loop's config: each worker evaluates every world_size-th one and the sums are
  all-reduced (training.held_out_loss), so `test_loss` comes back with the figures.
  Every fit's rows are shuffled globally first, seeded by the fit (`fit_order`,
  `shuffle_keys`): a selection is read in pool order (real rows, then each iteration's
  samples), and Ray Data's blocks, the split between workers and the local shuffle
  buffer would keep that order, so an accumulate fit would see its real rows first and
  end on the newest samples. (A) shuffles the whole concatenation every fit.
- `sample_ray_data`: Ray Data batch inference, one task per chunk of samples, each
  generating with the KV cache on an actor that loaded the fitted model once.
- `fit_local` / `sample_local`: the same code in this process (debugging, benchmarks).
- sampler `vllm`: vLLM engines as a Ray Data stage (`vllm_sampler.py`), the same samples' shape.
Results do not depend on the sampler's concurrency: each chunk has its own seed.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from collapse_ray.environment import environment_restored
from collapse_ray.text.placement import Placement, quiet_ray_data
from collapse_ray.text.training import FIGURES_FILE, FitSettings, train_worker

HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = "0.5"


# -- fitting ---------------------------------------------------------------------------
def fit(settings: FitSettings, examples: Sequence[np.ndarray], placement: Placement,
        held_out: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """Fit; with `held_out` the figures hold its test_loss and eval_curve, computed
    where the fit ran."""
    start = time.perf_counter()
    if placement.backend == "local":
        figures = fit_local(settings, examples, held_out)
    else:
        figures = fit_ray_train(settings, examples, placement, held_out)
    figures["fit_seconds"] = time.perf_counter() - start
    return figures


def evaluate(settings: FitSettings, placement: Placement, held_out: Sequence[np.ndarray]) -> dict[str, float]:
    """The held-out figures of settings.model_name untrained, computed where and as a
    fit's are (its workers, its precision, its loss): a fit on no examples."""
    if placement.backend == "local":
        return fit_local(settings, [], held_out)
    return _train_on_dataset(settings, None, 0, placement, held_out)


def fit_local(settings: FitSettings, examples: Sequence[np.ndarray],
              held_out: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """One process. DeepSpeed still wants a process group: a single-member one, kept
    for the life of the process (DeepSpeed caches groups derived from it)."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if settings.engine == "deepspeed" and not torch.distributed.is_initialized():
        _init_single_process_group(device)
    rng = np.random.default_rng(settings.seed)

    def epoch_batches(epoch: int):
        order = rng.permutation(len(examples))
        for i in range(0, len(order) - settings.micro_batch_size + 1, settings.micro_batch_size):
            yield [examples[j] for j in order[i : i + settings.micro_batch_size]]

    return train_worker(settings, len(examples), epoch_batches, rank=0, world_size=1, device=device,
                        held_out=held_out)


def _init_single_process_group(device: str) -> None:
    import torch.distributed as dist

    with socket.socket() as s:  # a free local port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # what a launcher would set; DeepSpeed checks for them
    os.environ.update({"LOCAL_RANK": "0", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group(
        "nccl" if device == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1
    )


def _ray_train_loop(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import ray.train.torch

    settings: FitSettings = config["settings"]
    ctx = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train") if config["n_examples"] else None  # none to evaluate only

    def epoch_batches(epoch: int):
        for batch in shard.iter_batches(
            batch_size=settings.micro_batch_size, batch_format="numpy", drop_last=True,
            local_shuffle_buffer_size=settings.micro_batch_size * 8, local_shuffle_seed=settings.seed + epoch,
        ):
            yield list(batch["input_ids"])  # list columns arrive as an object array of arrays

    device = str(ray.train.torch.get_device())
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    figures = train_worker(settings, config["n_examples"], epoch_batches, rank, world_size, device,
                           held_out=config["held_out"])
    ray.train.report(figures)  # for Ray Train's own logs


def fit_ray_train(settings: FitSettings, examples: Sequence[np.ndarray], placement: Placement,
                  held_out: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    dataset = examples_dataset(examples, settings.seed, placement.num_workers)
    return _train_on_dataset(settings, dataset, len(examples), placement, held_out)


def examples_dataset(examples: Sequence[np.ndarray], shuffle_seed: int, num_workers: int):
    """Token id arrays in memory as the workers' Ray Dataset: in a seeded random order
    (fit_order), 2 blocks a worker, materialised here, before the workers hold the
    CPUs: Ray Data tasks that started later would wait for a CPU forever (the workers
    hold them until the fit ends)."""
    import pyarrow as pa
    import ray.data

    ordered = [np.asarray(examples[i], dtype=np.int32) for i in fit_order(len(examples), shuffle_seed)]
    quiet_ray_data()
    table = pa.table({"input_ids": pa.array(ordered, type=pa.list_(pa.int32()))})
    return ray.data.from_arrow(table).repartition(2 * num_workers).materialize()


def fit_ray_train_texts(settings: FitSettings, texts, placement: Placement, max_length: int, drop_long: bool,
                        held_out: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """A fit on a Ray Dataset of `text` rows (e.g. readers.selection_dataset): Ray Data
    tasks tokenize them (BOS + ids + EOS, long rows cut or dropped) into the object
    store and the workers stream their shards from there; the caller never holds the
    texts or their tokens. Micro-batches are clamped to each worker's share of the
    examples (as fit_texts does before a fit on rows). No example left (all dropped as
    long): no fit, figures {"train_examples": 0}. `data_seconds`: reading and
    tokenizing, before the trainer starts."""
    from dataclasses import replace

    start = time.perf_counter()
    dataset = tokenized_dataset(texts, settings.tokenizer_dir, max_length, drop_long, placement.num_workers,
                                shuffle_seed=settings.seed)
    n = dataset.count()
    if n == 0:
        return {"train_examples": 0.0}
    settings = replace(settings, micro_batch_size=min(settings.micro_batch_size, max(1, n // placement.num_workers)))
    data_seconds = time.perf_counter() - start
    figures = _train_on_dataset(settings, dataset, n, placement, held_out)
    return {**figures, "data_seconds": data_seconds}


def fit_order(n: int, seed: int) -> np.ndarray:
    """The order a fit on rows in memory streams its n examples in: a permutation
    seeded by the fit."""
    return np.random.default_rng([seed, 0x5EED]).permutation(n)


def tokenized_dataset(texts, tokenizer_dir: str, max_length: int, drop_long: bool, num_workers: int,
                      shuffle_seed: int | None = None):
    """`texts` (a Ray Dataset of `text` rows) tokenized by Ray Data tasks into
    `input_ids` rows (BOS + ids + EOS; long rows cut, or dropped with drop_long), cut
    into 2 blocks a worker and materialised in the object store: before the workers
    hold the CPUs (see fit_ray_train), and its count sizes every worker's equal number
    of micro-batches. With `shuffle_seed` the rows are put in a seeded random order, a
    global sort on `shuffle_keys` (_sorted_by_key): the same order whatever Ray Data's
    blocks were, so a fit stays reproducible and shared fits stay shared."""
    from functools import partial

    quiet_ray_data()
    tokens = texts.map_batches(partial(_tokenize_batch, tokenizer_dir, max_length, drop_long, shuffle_seed),
                               batch_format="pyarrow")
    blocks = 2 * num_workers
    if shuffle_seed is not None:
        return _sorted_by_key(tokens.materialize(), blocks)
    return tokens.repartition(blocks).materialize()


def _sorted_by_key(tokens, n_blocks: int):
    """The materialised `tokens` in SHUFFLE_KEY order, as n_blocks blocks (the key column
    dropped): each block is split at even key boundaries (the keys are uniform), then
    each range merged and sorted. Our own Ray tasks rather than Dataset.sort: a sort's
    map tasks take no scheduling strategy, so inside a Tune trial they fall into the
    trial's placement group (0.01 CPU) and can never run; these are spread like Ray
    Data's own map tasks."""
    import ray

    bounds = [k * (2**63 // n_blocks) for k in range(1, n_blocks)]
    split = ray.remote(_split_at_keys).options(num_returns=n_blocks, scheduling_strategy="SPREAD")
    parts = [split.remote(ref, bounds) for ref in tokens.to_arrow_refs()]
    parts = [p if isinstance(p, list) else [p] for p in parts]  # num_returns 1: one ref
    merge = ray.remote(_merged_by_key).options(scheduling_strategy="SPREAD")
    return ray.data.from_arrow_refs([merge.remote(*[p[b] for p in parts]) for b in range(n_blocks)])


def _split_at_keys(table, bounds: list[int]):
    """`table`'s rows in len(bounds) + 1 key ranges (a tuple, or the one table)."""
    at = np.searchsorted(np.asarray(bounds, dtype=np.int64), table[SHUFFLE_KEY].to_numpy(), side="right")
    parts = [table.filter(at == b) for b in range(len(bounds) + 1)]
    return tuple(parts) if len(parts) > 1 else parts[0]


def _merged_by_key(*tables):
    import pyarrow as pa

    table = pa.concat_tables(tables)
    return table.take(np.argsort(table[SHUFFLE_KEY].to_numpy(), kind="stable")).select(["input_ids"])


SHUFFLE_KEY = "shuffle_key"


def shuffle_keys(batch, seed: int) -> np.ndarray:
    """One int64 >= 0 per row, a seeded hash of the row's identity: its pool position
    (iteration, source, row) where the rows come from the pool, else its text (equal
    texts then sort together: only where the rows carry no position). Sorting by the
    keys is a uniformly random order for each seed."""
    import hashlib

    from collapse_ray.core.shards import SOURCES

    if all(c in batch.column_names for c in ("iteration", "source", "row")):
        identity = ((batch["iteration"].to_numpy().astype(np.uint64) << np.uint64(33))
                    | (np.asarray([SOURCES.index(s) for s in batch["source"].to_pylist()], np.uint64) << np.uint64(32))
                    | batch["row"].to_numpy().astype(np.uint64))
    else:
        identity = np.asarray([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8).digest(), "little")
                               for t in batch["text"].to_pylist()], dtype=np.uint64)
    mixed = _splitmix64(identity ^ _splitmix64(np.full(len(identity), seed, dtype=np.uint64)))
    return (mixed >> np.uint64(1)).astype(np.int64)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al. 2014): a bijective mix of 64-bit words."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)).astype(np.uint64)
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)).astype(np.uint64)
        return x ^ (x >> np.uint64(31))


def _tokenize_batch(tokenizer_dir: str, max_length: int, drop_long: bool, shuffle_seed: int | None, batch):
    import pyarrow as pa

    from collapse_ray.text.models import kept_and_encoded, load_tokenizer

    kept, examples = kept_and_encoded(load_tokenizer(tokenizer_dir), batch["text"].to_pylist(), max_length, drop_long)
    columns = {"input_ids": pa.array(examples, type=pa.list_(pa.int32()))}
    if shuffle_seed is not None:
        columns[SHUFFLE_KEY] = pa.array(shuffle_keys(batch, shuffle_seed)[kept])
    return pa.table(columns)


def _train_on_dataset(settings: FitSettings, dataset, n_examples: int, placement: Placement,
                      held_out: Sequence[np.ndarray] | None) -> dict[str, float]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    out = Path(settings.output_dir)
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={"settings": settings, "n_examples": n_examples,
                           "held_out": None if held_out is None else list(held_out)},
        scaling_config=ScalingConfig(
            num_workers=placement.num_workers,
            use_gpu=placement.use_gpu,
            resources_per_worker={"CPU": placement.cpus_per_worker, **({"GPU": 1} if placement.use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if placement.use_gpu else "gloo"),
        datasets={"train": dataset} if dataset is not None else {},
        run_config=RunConfig(name=f"fit-{out.name}", storage_path=str(out.parent / "ray_train")),
    )
    # The controller polls its workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (Ray's
    # default 2 s), so a finished fit waited up to that long, several times over, before
    # returning: an empty fit took 16-19 s here with 2 s, 11-14 s with 0.5 s.
    # A value the user set is kept; the controller reads it from this process's environment.
    with environment_restored([HEALTH_CHECK_ENV]):
        os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S)
        trainer.fit()
    # rank 0 leaves its figures beside the model (a report without a checkpoint does
    # not reach Result.metrics in Ray Train V2)
    return {**json.loads((out / FIGURES_FILE).read_text()), "train_examples": float(n_examples)}


# -- sampling --------------------------------------------------------------------------
@dataclass(frozen=True)
class SampleSettings:
    model_dir: str
    tokenizer_dir: str
    temperature: float
    top_p: float | None
    max_new_tokens: int
    batch_size: int
    use_cache: bool = True
    generation: str = "from_bos"
    """from_bos: from BOS until EOS; first_token: from BOS and a first token drawn from
    the real stories' first tokens (kept in the sample); fixed_length: from BOS,
    always max_new_tokens tokens (EOS suppressed)."""
    first_tokens: tuple[int, ...] = ()  # first_token: the real first tokens ...
    first_token_counts: tuple[int, ...] = ()  # ... and how many stories start with each
    seeding: str = "independent"  # sampler vllm: independent, or koyejo_lab (vllm_sampler)


def generate(model, tokenizer, n: int, seed: int, s: SampleSettings, device: str = "cpu") -> list[str]:
    """n unconditional samples (from the BOS token), in batches, with the KV cache."""
    texts = []
    for ids in generate_ids(model, tokenizer, n, seed, s, device):
        texts.extend(tokenizer.batch_decode(ids[:, 1:], skip_special_tokens=True))
    return [t.strip() for t in texts]


def generate_ids(model, tokenizer, n: int, seed: int, s: SampleSettings, device: str = "cpu"):
    """Token ids per batch, BOS first (padding after an EOS), as `s.generation` says."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for start in range(0, n, s.batch_size):
        b = min(s.batch_size, n - start)
        prompt = torch.full((b, 1), bos, dtype=torch.long, device=device)
        new_tokens, min_new = s.max_new_tokens, 0
        if s.generation == "first_token":
            weights = np.asarray(s.first_token_counts, dtype=float)
            first = rng.choice(np.asarray(s.first_tokens), size=b, p=weights / weights.sum())
            prompt = torch.cat([prompt, torch.as_tensor(first, dtype=torch.long, device=device)[:, None]], dim=1)
            new_tokens -= 1  # the sample stays within max_length tokens
        elif s.generation == "fixed_length":
            min_new = new_tokens
        with torch.no_grad():
            yield model.generate(
                prompt, attention_mask=torch.ones_like(prompt), do_sample=True, temperature=s.temperature,
                top_p=s.top_p if s.top_p is not None else 1.0, top_k=0, max_new_tokens=new_tokens,
                min_new_tokens=min_new, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                use_cache=s.use_cache,
            ).cpu()


def load_for_inference(model_dir: str, tokenizer_dir: str):
    import torch
    from transformers import AutoModelForCausalLM

    from collapse_ray.text.models import load_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir).to(device).eval()
    return model, load_tokenizer(tokenizer_dir), device


def _chunks(n: int, seed: int, chunk: int) -> list[tuple[int, int, int]]:
    """(index, count, seed) per chunk of at most `chunk` samples."""
    seeds = np.random.SeedSequence(seed).generate_state(max(1, -(-n // chunk)))
    return [(i, min(chunk, n - i * chunk), int(seeds[i])) for i in range(-(-n // chunk))]


def sample_local(n: int, seed: int, s: SampleSettings) -> list[str]:
    model, tokenizer, device = load_for_inference(s.model_dir, s.tokenizer_dir)
    texts = []
    for _, count, chunk_seed in _chunks(n, seed, s.batch_size):
        texts.extend(generate(model, tokenizer, count, chunk_seed, s, device))
    return texts


class _Generator:
    """A Ray Data actor: loads the fitted model once, then generates chunk after chunk."""

    def __init__(self, settings: SampleSettings):
        self.settings = settings
        self.model, self.tokenizer, self.device = load_for_inference(settings.model_dir, settings.tokenizer_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        index, texts = [], []
        for i, count, seed in zip(batch["chunk"], batch["count"], batch["seed"]):
            made = generate(self.model, self.tokenizer, int(count), int(seed), self.settings, self.device)
            texts.extend(made)
            index.extend((int(i), j) for j in range(len(made)))
        return {"chunk": np.array([i for i, _ in index]), "pos": np.array([j for _, j in index]),
                "text": np.array(texts, dtype=object)}


def _sampling_dataset(n: int, seed: int, s: SampleSettings, placement: Placement):
    """Ray Data batch inference: a block per chunk of samples, mapped by generator actors."""
    import pandas as pd
    import ray.data

    quiet_ray_data()
    chunks = _chunks(n, seed, s.batch_size)
    # one block per chunk, built on the driver: a repartition task would wait forever
    # for a CPU that the generator actors hold
    frames = [pd.DataFrame([c], columns=["chunk", "count", "seed"]) for c in chunks]
    dataset = ray.data.from_pandas(frames)
    gpu = {"num_gpus": 1} if placement.use_gpu else {"num_cpus": placement.cpus_per_worker}
    return dataset.map_batches(
        _Generator, fn_constructor_kwargs={"settings": s}, batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=max(1, min(placement.sampling_concurrency, len(chunks)))), **gpu,
    )


def sample_ray_data(n: int, seed: int, s: SampleSettings, placement: Placement) -> list[str]:
    made = _sampling_dataset(n, seed, s, placement).to_pandas()
    made = made.sort_values(["chunk", "pos"])  # actors finish out of order
    return [str(t) for t in made["text"]]


def iter_samples(n: int, seed: int, s: SampleSettings, placement: Placement):
    """The n samples `sample` returns, in the same order, chunk by chunk: a caller that
    writes them as they come holds one chunk at a time, never all n."""
    if n == 0:
        return
    if placement.sampler == "vllm":  # vLLM engines as a Ray Data stage (vllm_sampler.py)
        from collapse_ray.text import vllm_sampler

        yield from vllm_sampler.iter_samples(n, seed, s, placement, s.seeding)
        return
    if placement.sampler == "local":
        model, tokenizer, device = load_for_inference(s.model_dir, s.tokenizer_dir)
        for _, count, chunk_seed in _chunks(n, seed, s.batch_size):
            yield generate(model, tokenizer, count, chunk_seed, s, device)
        return
    import ray.data

    # in input (chunk) order, however the actors finish: this process's context only
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    last = -1  # chunk of the previous row: each next row continues it or starts the next
    for batch in _sampling_dataset(n, seed, s, placement).iter_batches(batch_size=None, batch_format="numpy"):
        steps = np.diff(np.concatenate([[last], batch["chunk"]]))
        if ((steps < 0) | (steps > 1)).any():
            raise RuntimeError(f"sampled chunks arrived out of order after chunk {last}: {batch['chunk'][:5].tolist()}")
        if len(batch["chunk"]):
            last = int(batch["chunk"][-1])
        yield [str(t) for t in batch["text"]]


def sample(n: int, seed: int, s: SampleSettings, placement: Placement) -> list[str]:
    if placement.sampler == "vllm":
        return [text for texts in iter_samples(n, seed, s, placement) for text in texts]
    if placement.sampler == "local" or n == 0:
        return sample_local(n, seed, s)
    return sample_ray_data(n, seed, s, placement)

