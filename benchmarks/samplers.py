"""The two samplers on the same model and settings, in one run: HF `generate` on Ray Data
actors (`task.sampler: ray_data`) against vLLM engines as a Ray Data stage (`vllm`).

    python benchmarks/samplers.py                       # ~4 minutes on 2 CPU cores
    python benchmarks/samplers.py --seeding-call        # + one (A)-shaped call's distinct samples
    python benchmarks/samplers.py --model llama2_12m --samples 20000 --use-gpu

Each sampler draws the same number of samples from the same saved model (a preset's
weights, trained for --train-steps steps on procedural stories so that samples end at
EOS at varied lengths, where continuous batching differs from static batches), with the
same temperature, token budget, batch size and number of actors/engines. Printed per
sampler: the wall time of one batch (mostly start-up: the actors load the model; vLLM
also starts its engine processes) and of all samples, and the rate past start-up, from
the difference of the two runs, in samples/s and tokens/s (tokens: the samples
re-encoded, plus EOS). On a GPU the HF
sampler runs in the precision it loads (fp32, as the samplers do today) and vLLM in bf16.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def trained_model(preset: str, folder: Path, steps: int, max_length: int) -> None:
    """A preset with a tokenizer trained on procedural stories, fitted `steps` steps."""
    import torch

    from collapse_ray.text import corpora
    from collapse_ray.text.models import build_model, train_tokenizer
    from collapse_ray.text.steps import encode

    texts = corpora.procedural_rows("stories", "train", 2048, 0)["text"]
    tokenizer = train_tokenizer(texts, 512)
    model = build_model(preset, tokenizer, 0)
    examples = encode(tokenizer, texts, max_length, drop_long=False)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = [examples[i] for i in torch.randint(len(examples), (16,), generator=rng)]
        width = max(map(len, batch))
        ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for row, example in enumerate(batch):
            ids[row, : len(example)] = torch.as_tensor(example)
            mask[row, : len(example)] = 1
        loss = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    print(f"model {preset}: trained {steps} steps, last loss {loss.item():.2f} nats")


def draw(n: int, settings, placement, tokenizer) -> tuple[float, list[str], int]:
    """Wall seconds, the texts and their tokens (re-encoded, plus EOS) of n samples."""
    from collapse_ray.text import backends

    start = time.perf_counter()
    texts = [text for block in backends.iter_samples(n, 0, settings, placement) for text in block]
    wall = time.perf_counter() - start
    tokens = sum(len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return wall, texts, tokens


def measure(name: str, n: int, settings, placement, tokenizer) -> dict:
    """A run of one batch (start-up: actors or engines, model loading) and a run of n:
    the rate is the difference's, so start-up is left out of it."""
    small_wall, _, small_tokens = draw(settings.batch_size, settings, placement, tokenizer)
    wall, texts, tokens = draw(n, settings, placement, tokenizer)
    extra = wall - small_wall
    return {"sampler": name, "samples": n, "distinct": len(set(texts)), "wall_s": wall, "one_batch_s": small_wall,
            "samples_per_s": (n - settings.batch_size) / extra if extra > 0 else float("nan"),
            "tokens_per_s": (tokens - small_tokens) / extra if extra > 0 else float("nan"),
            "samples_per_s_overall": n / wall, "mean_tokens": tokens / n}


def seeding_call(settings, placement, tokenizer) -> None:
    """One (A)-shaped call (64 prompts x 64 samples) with (A)'s seeding and with
    independent seeds, in one vLLM pass: distinct samples of each."""
    from collapse_ray.text import vllm_sampler

    n = vllm_sampler.KOYEJO_PROMPTS_PER_CALL * vllm_sampler.KOYEJO_SAMPLES_PER_PROMPT
    eos = tokenizer.eos_token_id
    asked = vllm_sampler.requests(n, 0, settings, eos, "koyejo_lab").then(vllm_sampler.requests(n, 0, settings, eos))
    ids = [tuple(x) for block in vllm_sampler.iter_token_ids(asked, settings, placement, eos) for x in block]
    print(f"one call of {n} samples: (A)'s seeding {len(set(ids[:n]))} distinct, independent seeds "
          f"{len(set(ids[n:]))} distinct")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=64, help="HF: sequences per generate call; vLLM: rows per request batch")
    parser.add_argument("--concurrency", type=int, default=1, help="actors / engines")
    parser.add_argument("--cpus", type=float, default=0.9, help="CPUs per actor / engine (CPU only)")
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--seeding-call", action="store_true",
                        help="also count the distinct samples of one (A)-shaped call, (A)'s seeding against independent")
    args = parser.parse_args()

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    from collapse_ray.text import backends
    from collapse_ray.text.models import load_tokenizer

    folder = Path(tempfile.mkdtemp(prefix="sampler-bench-"))
    trained_model(args.model, folder, args.train_steps, args.max_length)
    tokenizer = load_tokenizer(folder)
    settings = backends.SampleSettings(model_dir=str(folder), tokenizer_dir=str(folder), temperature=1.0, top_p=None,
                                       max_new_tokens=args.max_length - 1, batch_size=args.batch_size)
    ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             **({} if args.use_gpu else {"num_cpus": max(2, int(args.concurrency * args.cpus + 1))}))
    rows = []
    for name in ("ray_data", "vllm"):
        placement = backends.Placement("local", 1, args.use_gpu, args.cpus, name, args.concurrency)
        rows.append(measure(name, args.samples, settings, placement, tokenizer))
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    if args.seeding_call:
        seeding_call(settings, backends.Placement("local", 1, args.use_gpu, args.cpus, "vllm", args.concurrency),
                     tokenizer)
    ray.shutdown()

    print(f"\n{args.samples} samples of {args.model}, max {args.max_length - 1} new tokens, temperature 1, "
          f"batch {args.batch_size}, {args.concurrency} actor(s)/engine(s), {'GPU' if args.use_gpu else 'CPU'}")
    print(f"{'sampler':10} {'wall s':>8} {'1 batch s':>11} {'samples/s':>10} {'tokens/s':>10} "
          f"{'overall samples/s':>17} {'mean tokens':>11} {'distinct':>8}")
    for r in rows:
        print(f"{r['sampler']:10} {r['wall_s']:8.1f} {r['one_batch_s']:11.1f} {r['samples_per_s']:10.1f} "
              f"{r['tokens_per_s']:10.0f} {r['samples_per_s_overall']:17.1f} {r['mean_tokens']:11.1f} "
              f"{r['distinct']:8d}")
    hf, vllm = rows
    print(f"vLLM / HF, samples/s past start-up: {vllm['samples_per_s'] / hf['samples_per_s']:.2f}x; "
          f"overall (start-up included): {vllm['samples_per_s_overall'] / hf['samples_per_s_overall']:.2f}x")


if __name__ == "__main__":
    main()
