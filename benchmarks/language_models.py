"""Language-model fitting and sampling costs, printed as a table.

    python benchmarks/language_models.py            # ~4 minutes on 2 CPU cores
    python benchmarks/language_models.py --model llama2_12m --examples 512 --use-gpu

1. Training throughput of one fit on the same model, batch and data: a plain
   single-process PyTorch loop against Ray Train (2 workers, gloo) driving DeepSpeed
   ZeRO-1. Steady-state tokens/s skip each fit's first steps; the fixed start-up cost
   of a Ray Train fit (workers, process group, DeepSpeed engine) is reported apart.
2. Sampling throughput with the KV cache against regenerating the whole prefix.
3. Peak memory (RSS) of a CPU-scale chain run in-process.
On a GPU (--use-gpu) the fit also reports model FLOPs utilisation (6 N tokens/s over
the device's bf16 peak given by --peak-tflops).
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--examples", type=int, default=2048, help="stories in the training set")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--use-gpu", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    args = parser.parse_args()

    import ray

    from collapse_ray.tasks import PretrainingTask
    from collapse_ray.text import backends, corpora
    from transformers import AutoModelForCausalLM

    from collapse_ray.text.models import load_tokenizer, model_config, n_parameters
    from collapse_ray.text.steps import encode, prepare_tokenizer
    from collapse_ray.text.training import FitSettings

    work = Path(tempfile.mkdtemp(prefix="lm-bench-"))
    task = PretrainingTask(model=args.model, max_length=args.max_length).with_workdir(work)
    texts = corpora.procedural_rows("stories", "train", args.examples, 0)["text"]
    tokenizer_dir = prepare_tokenizer(task, task.workdir, texts)
    tokenizer = load_tokenizer(tokenizer_dir)
    examples = encode(tokenizer, texts, args.max_length, drop_long=False)
    n_params = n_parameters(AutoModelForCausalLM.from_config(
        model_config(args.model, len(tokenizer), tokenizer.eos_token_id)))
    print(f"model {args.model}: {n_params / 1e6:.2f}M parameters; {len(examples)} examples, "
          f"{sum(map(len, examples))} tokens per epoch; micro-batch {args.micro_batch} per worker")

    def settings(name: str, engine: str) -> FitSettings:
        return FitSettings(
            model_name=args.model, tokenizer_dir=tokenizer_dir, output_dir=str(work / name), seed=0,
            epochs=args.epochs, micro_batch_size=args.micro_batch, grad_accum_steps=1, learning_rate=1e-3,
            warmup_ratio=0.0, warmup_steps=None, betas=(0.9, 0.999), schedule="constant", weight_decay=0.0, max_grad_norm=1.0, engine=engine,
            zero_stage=1, precision="bf16" if args.use_gpu else "fp32",
        )

    rows = []
    start = time.perf_counter()
    plain = backends.fit_local(settings("plain", "torch"), examples)
    plain["wall"] = time.perf_counter() - start
    rows.append(("plain PyTorch, 1 process", plain))

    ray.init(include_dashboard=False, logging_level="ERROR")
    placement = backends.Placement("ray_train", args.workers, args.use_gpu, 1.0, "ray_data", args.workers)
    start = time.perf_counter()
    distributed = backends.fit_ray_train(settings("ray_train", "deepspeed"), examples, placement)
    distributed["wall"] = time.perf_counter() - start
    rows.append((f"Ray Train x{args.workers} + DeepSpeed ZeRO-1", distributed))

    print("\n1. training throughput (same model, data, per-worker micro-batch)")
    print(f"{'fit':38s} {'tokens/s':>10s} {'train s':>8s} {'wall s':>7s} {'start-up s':>10s}")
    for label, fig in rows:
        print(f"{label:38s} {fig['tokens_per_s']:10.0f} {fig['train_seconds']:8.1f} {fig['wall']:7.1f} "
              f"{fig['wall'] - fig['train_seconds']:10.1f}")
    overhead = plain["tokens_per_s"] / distributed["tokens_per_s"] - 1
    print(f"steady-state overhead of Ray Train + DeepSpeed vs plain: {100 * overhead:+.1f}% "
          f"(time per token; negative = faster)")
    if args.use_gpu:
        mfu = 6 * n_params * distributed["tokens_per_s"] / (args.workers * args.peak_tflops * 1e12)
        print(f"model FLOPs utilisation: {100 * mfu:.1f}% of {args.workers} x {args.peak_tflops:.0f} TFLOP/s")

    print("\n2. sampling throughput (unconditional, batch 32, up to max_length tokens)")
    model, tok, device = backends.load_for_inference(str(work / "plain"), tokenizer_dir)
    for use_cache in (True, False):
        s = backends.SampleSettings(str(work / "plain"), tokenizer_dir, 1.0, None, args.max_length - 1, 32, use_cache)
        start = time.perf_counter()
        made = backends.generate(model, tok, 64, 0, s, device)
        seconds = time.perf_counter() - start
        n_tokens = sum(len(ids) for ids in tok(made, add_special_tokens=False)["input_ids"])
        print(f"{'KV cache' if use_cache else 'no cache (whole prefix each step)':38s} {n_tokens / seconds:10.0f} tokens/s")
    ray.shutdown()

    print("\n3. peak memory of a CPU-scale chain (pretraining, 600 stories, 3 iterations, in-process)")
    from collapse_ray.core.loop import run_chain
    from collapse_ray.core.chain import ChainConfig

    chain_task = PretrainingTask(backend="local", sampler="local", max_length=96, vocab_size=512, epochs=4,
                                 learning_rate=3e-3)
    start = time.perf_counter()
    run_chain(chain_task, ChainConfig(workflow="accumulate", n_real=600, n_iterations=3), seeds=[0],
              checkpoint_dir=work / "chain")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {rss:.0f} MiB (chain took {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
