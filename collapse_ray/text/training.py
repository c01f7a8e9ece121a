"""Fitting one causal language model: the per-worker training loop and the loss.

`train_worker` runs in each Ray Train worker (or once, in-process, for the local
backend): it builds the model, wraps it in a DeepSpeed engine (ZeRO stage, precision,
gradient accumulation and clipping from the settings) or plain torch (DDP when there
are several workers), and steps through the examples it is given. Every worker takes
the same number of micro-batches, so collective calls never wait on a worker that ran
out of data. Rank 0 saves the fitted model with `save_pretrained`.

Held-out loss is computed here too, on the workers (on their GPU where there is one):
each worker sums the token cross-entropy over its share of the held-out examples and
one all-reduce adds the sums, at the end of the fit and every `eval_steps` optimiser
steps (the within-fit curve). The trial gets the number back and never loads the model.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from collapse_ray import atomic

IGNORE = -100  # label of padding positions
FIGURES_FILE = "train_figures.json"  # beside the saved model: how its fit went
ORDER_FOLDER = "data_order"  # with record_order: rank-R.json, per micro-step the row_digest of each row


def row_digest(example: np.ndarray) -> str:
    """A short name of one example's token ids (what record_order writes)."""
    return hashlib.blake2b(np.asarray(example, dtype=np.int32).tobytes(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class FitSettings:
    """Everything a worker needs to fit a model (picklable: it travels to workers)."""

    model_name: str  # preset, local folder or hub id
    tokenizer_dir: str
    output_dir: str
    seed: int
    epochs: int
    micro_batch_size: int
    grad_accum_steps: int
    learning_rate: float
    warmup_ratio: float
    warmup_steps: int | None  # when set, instead of the ratio
    betas: tuple[float, float]
    schedule: str  # constant | cosine
    weight_decay: float
    max_grad_norm: float
    engine: str  # deepspeed | torch
    zero_stage: int
    precision: str  # fp32 | bf16 | fp16 | bf16_pure | auto (decided on the worker: device_precision)
    threads_per_worker: int = 0  # 0: leave torch's default
    eval_steps: int = 0  # held-out loss every eval_steps optimiser steps (0: only at the end)
    record_order: bool = False  # each worker writes the rows it trained on, step by step (ORDER_FOLDER)
    eval_loss: str = "token_mean"  # token_mean | batch_mean (held_out_loss)
    eval_batch_size: int = 16  # rows per held-out batch, batch_mean


def collate(batch: Sequence[np.ndarray], pad_id: int):
    """Right-pad token id arrays; labels ignore the padding (even where pad == EOS)."""
    import torch

    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, : len(x)] = torch.as_tensor(np.asarray(x, dtype=np.int64))
        mask[i, : len(x)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def micro_steps_per_epoch(n_examples: int, world_size: int, micro_batch_size: int) -> int:
    """Micro-batches each worker takes per epoch (equal on every worker)."""
    return (n_examples // world_size) // micro_batch_size


def warmup_length(settings: FitSettings, optimizer_steps: int) -> int:
    """Warm-up length: fixed steps ((A)'s Fig. 5: 16, so tiny fits still warm up), or
    a share of the fit, rounded up as HF Trainer's get_warmup_steps (which (A) runs)."""
    if settings.warmup_steps is not None:
        return settings.warmup_steps
    return math.ceil(settings.warmup_ratio * optimizer_steps)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    return factor


def train_worker(
    settings: FitSettings,
    n_examples: int,
    epoch_batches: Callable[[int], Iterable[Sequence[np.ndarray]]],
    rank: int,
    world_size: int,
    device: str = "cpu",
    held_out: Sequence[np.ndarray] | None = None,
) -> dict[str, float]:
    """Fit on this worker's share of the examples; returns training figures.

    epoch_batches(epoch) yields this worker's micro-batches (lists of token id arrays)
    for an epoch, in its shuffled order; it may yield more than the worker takes.
    held_out: the held-out examples (None: no evaluation), each worker evaluating its
    share (held_out_loss); the figures then hold `test_loss` and `eval_curve`
    ([optimiser step, loss] pairs, every eval_steps steps and at the end).
    n_examples 0: no step, only the evaluation, and no model saved (only the figures):
    the initial model, evaluated exactly as a fitted one.
    `setup_seconds`: from the call to the first step (imports, model, engine).
    """
    began = time.perf_counter()
    import torch

    from collapse_ray.text.models import build_model, load_tokenizer

    if settings.threads_per_worker:
        torch.set_num_threads(settings.threads_per_worker)
    if settings.precision == "auto":  # decided here, on the worker's own device
        settings = replace(settings, precision=device_precision(device))
    tokenizer = load_tokenizer(settings.tokenizer_dir)
    model = build_model(settings.model_name, tokenizer, settings.seed).to(device)
    if settings.precision == "bf16_pure":
        model = model.to(torch.bfloat16)
    torch.manual_seed(settings.seed + 1 + rank)  # dropout streams differ per worker

    micro_steps = micro_steps_per_epoch(n_examples, world_size, settings.micro_batch_size)
    optimizer_steps = max(1, settings.epochs * micro_steps // settings.grad_accum_steps)
    warmup = warmup_length(settings, optimizer_steps)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "norm" in name or "ln_" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=settings.learning_rate, betas=settings.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(settings.schedule, warmup, optimizer_steps)
    )
    engine = _Engine(settings, model, optimizer, scheduler, world_size, device)

    tokens, losses, start, steady_start, steady_tokens = 0, [], time.perf_counter(), None, 0
    step, curve, eval_seconds, order = 0, [], 0.0, []

    def evaluate_now() -> None:
        nonlocal eval_seconds
        began = time.perf_counter()
        loss = held_out_loss(engine.eval_module(), held_out, tokenizer.pad_token_id, settings.micro_batch_size,
                             device, rank, world_size, engine.dtype, settings.eval_loss, settings.eval_batch_size)
        curve.append([step // settings.grad_accum_steps, loss])
        eval_seconds += time.perf_counter() - began

    every = settings.eval_steps * settings.grad_accum_steps  # in micro-steps
    for epoch in range(settings.epochs):
        taken = 0
        for batch in epoch_batches(epoch):
            if taken == micro_steps:
                break
            if settings.record_order:
                order.append([row_digest(x) for x in batch])
            inputs = {k: v.to(device) for k, v in collate(batch, tokenizer.pad_token_id).items()}
            loss = engine.step_on(inputs)
            losses.append(loss)
            n_tok = int(inputs["attention_mask"].sum())
            tokens += n_tok
            taken += 1
            step += 1
            if step == 3:  # the first steps pay one-off costs (allocation, op builds)
                steady_start = time.perf_counter()
            elif step > 3:
                steady_tokens += n_tok
            if held_out is not None and every and step % every == 0:
                evaluate_now()  # every worker reaches the same steps: the all-reduce never waits
        if taken < micro_steps:
            raise RuntimeError(f"worker {rank} got {taken} micro-batches in epoch {epoch}; expected {micro_steps}")
    if held_out is not None and (not curve or curve[-1][0] != step // settings.grad_accum_steps):
        evaluate_now()
    seconds = time.perf_counter() - start - eval_seconds
    steady = time.perf_counter() - steady_start - eval_seconds if steady_start else float("nan")
    figures = {
        "train_loss": float(np.mean(losses[-max(1, len(losses) // 10):])) if losses else float("nan"),
        "train_tokens": float(tokens * world_size),
        "train_seconds": seconds,
        "tokens_per_s": steady_tokens * world_size / steady if steady_start and steady > 0 else float("nan"),
        "optimizer_steps": float(optimizer_steps),
        "warmup_steps": float(warmup),
        "setup_seconds": start - began,
    }
    if held_out is not None:
        figures.update(test_loss=curve[-1][1], eval_seconds=eval_seconds, eval_curve=curve)
    if n_examples == 0:
        if rank == 0:
            Path(settings.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(settings.output_dir) / FIGURES_FILE).write_text(json.dumps(figures))
        return figures
    files = {}
    if settings.record_order:  # every worker's, saved by rank 0 with the model
        orders = [order]
        if world_size > 1:
            orders = [None] * world_size
            torch.distributed.all_gather_object(orders, order)
        files = {f"{ORDER_FOLDER}/rank-{r}.json": json.dumps(o) for r, o in enumerate(orders)}
    engine.save(settings.output_dir, rank, figures, files)
    return figures


def device_precision(device: str) -> str:
    """precision auto: bf16 on a GPU that has it, else fp32."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def deepspeed_config(settings: FitSettings, world_size: int) -> dict:
    """The DeepSpeed config of a fit: batch sizes, clipping, the ZeRO stage and
    precision (the combinations text.settings.check_engine accepts)."""
    return {
        "train_micro_batch_size_per_gpu": settings.micro_batch_size,
        "gradient_accumulation_steps": settings.grad_accum_steps,
        "train_batch_size": settings.micro_batch_size * settings.grad_accum_steps * world_size,
        "gradient_clipping": settings.max_grad_norm,
        "zero_optimization": {"stage": settings.zero_stage},
        # bf16_pure: no fp32 master copy, Adam's moments in bf16 too (ZeRO 1-3 only)
        "bf16": {"enabled": settings.precision in ("bf16", "bf16_pure"),
                 **({"bf16_master_weights_and_grads": True, "bf16_optimizer_states": True}
                    if settings.precision == "bf16_pure" else {})},
        "fp16": {"enabled": settings.precision == "fp16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class _Engine:
    """One training step and saving, for DeepSpeed or plain torch."""

    def __init__(self, settings, model, optimizer, scheduler, world_size, device):
        self.settings, self.world_size = settings, world_size
        self.accum, self.micro = settings.grad_accum_steps, 0
        self.optimizer, self.scheduler = optimizer, scheduler
        self.model = model
        self.dtype = None
        if settings.engine == "deepspeed":
            from collapse_ray.text import lean_deepspeed

            deepspeed = lean_deepspeed.import_deepspeed()
            config = deepspeed_config(settings, world_size)
            # adopts the process group Ray Train (or fit_local) set up; gloo on CPU
            lean_deepspeed.init_distributed(deepspeed, "nccl" if device.startswith("cuda") else "gloo")
            self.ds, *_ = deepspeed.initialize(
                model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config
            )
            self.model = self.ds.module
        else:
            import torch

            self.ds = None
            if world_size > 1:
                self.model = torch.nn.parallel.DistributedDataParallel(model)
            if settings.precision == "bf16":
                self.dtype = torch.bfloat16  # autocast over fp32 weights
            # bf16_pure: the weights are bf16 already (train_worker), and AdamW keeps its states in their dtype

    def step_on(self, inputs) -> float:
        import torch

        if self.ds is not None:
            loss = self.ds(**inputs).loss
            self.ds.backward(loss)
            self.ds.step()
            return float(loss.detach())
        with torch.autocast(device_type=inputs["input_ids"].device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = self.model(**inputs).loss
        (loss / self.accum).backward()
        self.micro += 1
        if self.micro % self.accum == 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    def eval_module(self):
        """The model to evaluate: DeepSpeed's engine (ZeRO-3 gathers its shards in the
        forward), or the bare module under DDP (a forward without gradients needs no sync)."""
        if self.ds is not None:
            return self.ds
        return getattr(self.model, "module", self.model)

    def save(self, output_dir: str, rank: int, figures: dict, files: dict[str, str]) -> None:
        """The model in its training precision (bf16 weights stay bf16: a 27B model is
        54 GB, not 108). ZeRO-3's shards are gathered one layer at a time into rank 0's
        CPU memory (DeepSpeed's consolidated 16-bit state dict), never whole on a GPU."""
        module = self.ds.module if self.ds is not None else getattr(self.model, "module", self.model)
        state = None
        if self.ds is not None and self.settings.zero_stage == 3:
            state = self.ds._zero3_consolidated_16bit_state_dict()  # every rank takes part
        if rank == 0:
            _save(module, output_dir, figures, files, state)


def _save(module, output_dir: str, figures: dict, files: dict[str, str], state: dict | None = None) -> None:
    """The model (`state`: its weights, where the module holds only shards), its
    training figures and `files` (relative path -> text), renamed into place together."""
    out = Path(output_dir)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if state is not None:
        module.config.dtype = next(iter(state.values())).dtype
    module.save_pretrained(tmp, safe_serialization=True, state_dict=state)
    (tmp / FIGURES_FILE).write_text(json.dumps(figures))
    for name, text in files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    if out.exists():  # left by an attempt that crashed after saving
        shutil.rmtree(out)
    atomic.publish_folder(tmp, out)


def token_loss(model, examples: Sequence[np.ndarray], pad_id: int, batch_size: int = 32, device: str = "cpu") -> float:
    """Mean next-token cross-entropy (nats) over all target tokens of `examples` (the
    model is left in eval mode)."""
    model.eval()
    total, count = loss_sums(model, examples, pad_id, batch_size, device)
    return total / max(count, 1)


def held_out_loss(model, held_out: Sequence[np.ndarray], pad_id: int, batch_size: int, device: str, rank: int,
                  world_size: int, dtype=None, eval_loss: str = "token_mean", eval_batch_size: int = 16) -> float:
    """The held-out loss, each worker evaluating its share and the sums all-reduced (one
    call per worker, an empty share included). eval_loss token_mean: over every target
    token (token_loss), the workers taking every world_size-th example; batch_mean:
    (A)'s HF Trainer figure, the mean of each eval_batch_size-row batch's token mean
    weighted by its rows, over `eval_batches`, the workers taking every
    world_size-th batch."""
    import torch

    if eval_loss == "token_mean":
        total, count = loss_sums(model, held_out[rank::world_size], pad_id, batch_size, device, dtype)
    else:
        total, count = 0.0, 0
        for batch in eval_batches(len(held_out), eval_batch_size)[rank::world_size]:
            loss, tokens = loss_sums(model, [held_out[i] for i in batch], pad_id, len(batch), device, dtype)
            total, count = total + len(batch) * loss / max(tokens, 1), count + len(batch)
    if world_size > 1:
        sums = torch.tensor([total, float(count)], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums)
        total, count = float(sums[0]), int(sums[1])
    return total / max(count, 1)


def eval_batches(n: int, batch_size: int, seed: int = 0) -> list[np.ndarray]:
    """(A)'s held-out batches: the set in the order `datasets`' shuffle(seed=0) gives it
    (numpy's default_rng(seed).permutation), cut into batch_size rows, the last partial
    batch dropped (its dataloader_drop_last: True); all of it when n < batch_size."""
    order = np.random.default_rng(seed).permutation(n)
    if n < batch_size:
        return [order] if n else []
    return [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)]


def loss_sums(model, examples: Sequence[np.ndarray], pad_id: int, batch_size: int = 32, device: str = "cpu",
              dtype=None) -> tuple[float, int]:
    """(summed next-token cross-entropy, target tokens) over `examples`; the model's
    train/eval mode is restored afterwards."""
    import torch
    import torch.nn.functional as F

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    order = np.argsort([len(x) for x in examples])  # similar lengths together: less padding
    with torch.no_grad(), torch.autocast(device_type=torch.device(device).type, dtype=dtype, enabled=dtype is not None):
        for start in range(0, len(examples), batch_size):
            batch = collate([examples[i] for i in order[start : start + batch_size]], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            targets = batch["labels"][:, 1:]
            total += float(F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum"))
            count += int((targets != IGNORE).sum())
    model.train(was_training)
    return total, count
