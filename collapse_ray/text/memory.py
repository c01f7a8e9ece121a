"""Per-GPU memory of a language-model fit and of its sampler, estimated before a sweep starts.

`validate` (and `run`, before anything starts) refuses a GPU spec whose fit or sampler
needs more memory per GPU than the GPU it names (`task.gpu_memory_gb`). The estimate:
- model states, as DeepSpeed's own estimators count them
  (`estimate_zero{2,3}_model_states_mem_needs`): bytes per parameter for weights,
  gradients and AdamW's states by precision, the parts ZeRO's stage shards divided by
  the data-parallel workers:
    mixed bf16/fp16: weights 2, gradients 2, fp32 master weights + Adam moments 12;
    bf16_pure: weights 2, gradients 2, Adam moments 4 (bf16, no master copy);
    fp32: weights 4, gradients 4, Adam moments 8;
  ZeRO-1 shards the optimiser states, ZeRO-2 also the gradients, ZeRO-3 also the weights;
- activations of one micro-batch without recomputation (Korthikanti et al. 2022, eq. 2:
  s b h (34 + 5 a s / h) bytes per layer in 16-bit; twice that in fp32), plus the
  logits (s b V in fp32, for the loss);
- the sampler: one copy of the weights in the sampling precision (vLLM: bf16 on GPU),
  which must fit in the share of the GPU vLLM takes (gpu_memory_utilization 0.9),
  the rest being its KV cache.
Parameter counts are exact: presets and saved folders from their config, hub models from
their published architecture (HUB_ARCHITECTURES) on PyTorch's meta device, no download.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
SAMPLER_MEMORY_SHARE = 0.9  # vLLM's default gpu_memory_utilization

# The architectures of the hub models the paper specs name, as their config.json files
# publish them, so validate counts their parameters without the hub.
HUB_ARCHITECTURES: dict[str, dict] = {
    "google/gemma-2-2b": {"model_type": "gemma2", "vocab_size": 256000, "hidden_size": 2304,
                          "intermediate_size": 9216, "num_hidden_layers": 26, "num_attention_heads": 8,
                          "num_key_value_heads": 4, "head_dim": 256},
    "google/gemma-2-9b": {"model_type": "gemma2", "vocab_size": 256000, "hidden_size": 3584,
                          "intermediate_size": 14336, "num_hidden_layers": 42, "num_attention_heads": 16,
                          "num_key_value_heads": 8, "head_dim": 256},
    "google/gemma-2-27b": {"model_type": "gemma2", "vocab_size": 256000, "hidden_size": 4608,
                           "intermediate_size": 36864, "num_hidden_layers": 46, "num_attention_heads": 32,
                           "num_key_value_heads": 16, "head_dim": 128},
}


@dataclass(frozen=True)
class Architecture:
    parameters: int
    layers: int
    hidden: int
    heads: int
    vocab: int


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    sampler_weights: float

    @property
    def fit(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe_fit(self) -> str:
        return (f"{self.fit / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, gradients {self.gradients / GIB:.1f}, "
                f"optimiser {self.optimizer / GIB:.1f}, activations {self.activations / GIB:.1f})")


# bytes per parameter: (weights, gradients, optimiser states)
STATE_BYTES = {"bf16": (2, 2, 12), "fp16": (2, 2, 12), "bf16_pure": (2, 2, 4), "fp32": (4, 4, 8)}


def estimate(arch: Architecture, precision: str, zero_stage: int, workers: int, micro_batch: int,
             max_length: int, sampling_precision: str) -> MemoryEstimate:
    """Per-GPU bytes of a fit (DeepSpeed ZeRO stage `zero_stage` over `workers`, or DDP
    for stage 0) and of the sampler's weights."""
    w, g, o = (b * arch.parameters for b in STATE_BYTES[precision])
    if zero_stage >= 1:
        o /= workers
    if zero_stage >= 2:
        g /= workers
    if zero_stage >= 3:
        w /= workers
    s, b, h, a = max_length, micro_batch, arch.hidden, arch.heads
    scale = 2 if precision == "fp32" else 1
    activations = arch.layers * s * b * h * (34 + 5 * a * s / h) * scale + 4 * s * b * arch.vocab
    sampler = (4 if sampling_precision == "fp32" else 2) * arch.parameters
    return MemoryEstimate(w, g, o, activations, sampler)


@functools.lru_cache(maxsize=32)
def architecture(model: str, vocab_size: int) -> Architecture:
    """The model's exact parameter count and shape: a preset, a saved folder's
    config.json, or a hub model in HUB_ARCHITECTURES; ValueError otherwise."""
    from .models import PRESETS, model_config

    if model in PRESETS:
        config = model_config(model, vocab_size, 0)
    elif (Path(model) / "config.json").is_file():
        config = _config_from(json.loads((Path(model) / "config.json").read_text()))
    elif model in HUB_ARCHITECTURES:
        config = _config_from(HUB_ARCHITECTURES[model])
    else:
        raise ValueError(f"no architecture known for {model!r} (a preset, a saved folder, or one of "
                         f"{', '.join(sorted(HUB_ARCHITECTURES))})")
    return Architecture(parameters=count_parameters(config), layers=_get(config, "num_hidden_layers", "n_layer"),
                        hidden=_get(config, "hidden_size", "n_embd"), heads=_get(config, "num_attention_heads", "n_head"),
                        vocab=config.vocab_size)


def _config_from(fields: dict):
    from transformers import AutoConfig

    fields = dict(fields)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _get(config, *names: str) -> int:
    return next(int(getattr(config, n)) for n in names if getattr(config, n, None) is not None)


def count_parameters(config) -> int:
    """The parameters of a model built from `config`, on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    seen, total = set(), 0
    for p in model.parameters():  # tied weights once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
