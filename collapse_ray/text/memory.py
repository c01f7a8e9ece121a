"""Per-GPU memory of a language-model fit and of its sampler, estimated before a sweep starts.

`validate` (and `run`, before anything starts) refuses a GPU spec whose fit or sampler
needs more memory per GPU than the GPU it names (`task.gpu_memory_gb`), and
`validate --cost` prints the same figures (collapse_ray/sweep/cost.py). The estimate:
- model states, counted as DeepSpeed's own estimators count them
  (`estimate_zero2_model_states_mem_needs`, `estimate_zero3_model_states_mem_needs`,
  without offload): bytes per parameter of the training weights, their gradients, the
  optimiser's master copy and its gradients, and AdamW's two moments:
    mixed bf16/fp16: weights 2, gradients 2 + 4 (fp32 copy), master weights 4, moments 8
      (DeepSpeed's 2 + 18: its ZeRO-2 estimate is exactly 2 P + 18 P / n);
    bf16_pure (bf16 master weights, gradients and moments): weights 2, gradients 2 + 2,
      master weights 2, moments 4;
    fp32: weights 4, gradients 4 + 4, master weights 4, moments 8;
  ZeRO-1 shards the master copy, its gradients and the moments over the data-parallel
  workers, ZeRO-2 also the 16-bit gradients, ZeRO-3 also the weights and keeps no 16-bit
  gradient copy (its estimator: 4 L + 18 P / n in mixed precision), adding the buffer
  DeepSpeed reserves for gathering the largest layer (4 bytes a parameter of it, L:
  Gemma-2's embedding). The plain-torch engine (DDP) keeps weights,
  gradients and moments whole in the weights' dtype: fp32 (also under bf16 autocast)
  4 + 4 + 8, bf16_pure 2 + 2 + 4;
- activations of one micro-batch without recomputation (Korthikanti et al. 2022, eq. 2:
  s b h (34 + 5 a s / h) bytes per layer in 16-bit; twice that in fp32), plus the
  logits (s b V in fp32, for the loss);
- the sampler: one copy of the weights in the sampling precision (vLLM: bf16 on GPU),
  which must fit in the share of the GPU vLLM takes (gpu_memory_utilization 0.9),
  the rest being its KV cache (kv_cache_bytes_per_token: keys and values of every
  layer's key-value heads).
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
    kv_heads: int = 0  # key-value heads (grouped-query attention); 0: as many as heads
    head_dim: int = 0  # 0: hidden / heads
    largest_layer: int = 0  # parameters of the largest module (ZeRO-3 gathers it whole)

    def kv_cache_bytes_per_token(self, precision: str) -> int:
        """Keys and values of one token in every layer (the sampler's KV cache)."""
        kv_heads = self.kv_heads or self.heads
        head_dim = self.head_dim or self.hidden // self.heads
        return 2 * self.layers * kv_heads * head_dim * (4 if precision == "fp32" else 2)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU."""

    weights: float
    gradients: float
    optimizer: float  # the master copy and AdamW's moments
    activations: float
    sampler_weights: float
    gathered: float = 0.0  # ZeRO-3's buffer for the largest layer, gathered whole

    @property
    def model_states(self) -> float:
        """What DeepSpeed's estimators count: everything but the activations."""
        return self.weights + self.gradients + self.optimizer + self.gathered

    @property
    def fit(self) -> float:
        return self.model_states + self.activations

    def describe_fit(self) -> str:
        gathered = f", largest layer gathered {self.gathered / GIB:.1f}" if self.gathered else ""
        return (f"{self.fit / GIB:.1f} GiB (weights {self.weights / GIB:.1f}, gradients {self.gradients / GIB:.1f}, "
                f"optimiser {self.optimizer / GIB:.1f}{gathered}, activations {self.activations / GIB:.1f})")


# DeepSpeed's bytes per parameter: (weights, their gradients, the master copy's gradients,
# the master weights, AdamW's moments); the last three are what ZeRO-1 shards
DEEPSPEED_STATE_BYTES = {"bf16": (2, 2, 4, 4, 8), "fp16": (2, 2, 4, 4, 8), "bf16_pure": (2, 2, 2, 2, 4),
                         "fp32": (4, 4, 4, 4, 8)}
# plain torch (DDP): (weights, gradients, moments), nothing sharded; bf16 autocasts fp32 weights
TORCH_STATE_BYTES = {"bf16": (4, 4, 8), "fp32": (4, 4, 8), "bf16_pure": (2, 2, 4)}
ZERO3_GATHER_BYTES = 4  # per parameter of the largest layer (estimate_zero3_model_states_mem_needs)


def estimate(arch: Architecture, precision: str, zero_stage: int, workers: int, micro_batch: int,
             max_length: int, sampling_precision: str, engine: str = "deepspeed") -> MemoryEstimate:
    """Per-GPU bytes of a fit (DeepSpeed ZeRO stage `zero_stage` over `workers`; engine
    torch: DDP) and of the sampler's weights."""
    P = arch.parameters
    gathered = 0.0
    if engine == "torch":
        w, g, o = (b * P for b in TORCH_STATE_BYTES.get(precision, TORCH_STATE_BYTES["fp32"]))
    else:
        weights, grads16, master_grads, master, moments = DEEPSPEED_STATE_BYTES[precision]
        n = workers if zero_stage >= 1 else 1
        w = weights * P / (workers if zero_stage >= 3 else 1)
        # ZeRO-3 reduce-scatters 16-bit gradients straight into the master's gradient
        # partition: its estimator counts no 16-bit gradient copy (18 = 2 + 16 bytes sharded)
        g = (0 if zero_stage >= 3 else grads16 * P / (workers if zero_stage >= 2 else 1)) + master_grads * P / n
        o = (master + moments) * P / n
        if zero_stage >= 3:
            gathered = ZERO3_GATHER_BYTES * arch.largest_layer
    s, b, h, a = max_length, micro_batch, arch.hidden, arch.heads
    scale = 2 if precision == "fp32" else 1
    activations = arch.layers * s * b * h * (34 + 5 * a * s / h) * scale + 4 * s * b * arch.vocab
    sampler = (4 if sampling_precision == "fp32" else 2) * arch.parameters
    return MemoryEstimate(w, g, o, activations, sampler, gathered)


@functools.lru_cache(maxsize=32)
def architecture(model: str, vocab_size: int) -> Architecture:
    """The model's exact parameter count and shape: a preset, a saved folder's
    config.json, or a hub model in HUB_ARCHITECTURES; ValueError otherwise."""
    from collapse_ray.text.models import PRESETS, model_config

    if model in PRESETS:
        config = model_config(model, vocab_size, 0)
    elif (Path(model) / "config.json").is_file():
        config = _config_from(json.loads((Path(model) / "config.json").read_text()))
    elif model in HUB_ARCHITECTURES:
        config = _config_from(HUB_ARCHITECTURES[model])
    else:
        raise ValueError(f"no architecture known for {model!r} (a preset, a saved folder, or one of "
                         f"{', '.join(sorted(HUB_ARCHITECTURES))})")
    parameters, largest = count_parameters(config, with_largest_layer=True)
    return Architecture(parameters=parameters, layers=_get(config, "num_hidden_layers", "n_layer"),
                        hidden=_get(config, "hidden_size", "n_embd"), heads=_get(config, "num_attention_heads", "n_head"),
                        vocab=config.vocab_size, kv_heads=int(getattr(config, "num_key_value_heads", 0) or 0),
                        head_dim=int(getattr(config, "head_dim", 0) or 0), largest_layer=largest)


def _config_from(fields: dict):
    from transformers import AutoConfig

    fields = dict(fields)
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _get(config, *names: str) -> int:
    return next(int(getattr(config, n)) for n in names if getattr(config, n, None) is not None)


def count_parameters(config, with_largest_layer: bool = False):
    """The parameters of a model built from `config`, on the meta device (no memory);
    with_largest_layer: (parameters, those of its largest module, as DeepSpeed's
    estimate_zero3_model_states_mem_needs_all_live counts a layer: its own parameters)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    seen, total = set(), 0
    for p in model.parameters():  # tied weights once
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    if not with_largest_layer:
        return total
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


@dataclass(frozen=True)
class Placement:
    """A language-model task's fit as the memory estimate sees it."""

    model: str
    parameters: int
    precision: str  # of the fit: auto resolved to bf16 (a GPU that has it)
    engine: str
    zero_stage: int  # 0 for the plain-torch engine
    workers: int
    micro_batch: int
    sampling_precision: str

    def describe(self) -> str:
        how = f"ZeRO-{self.zero_stage}" if self.engine == "deepspeed" else "torch DDP"
        return f"{self.precision}, {how} over {self.workers} workers"


def settings_estimate(settings, zero_stage: int | None = None, workers: int | None = None,
                      micro_batch: int | None = None) -> tuple[Architecture, Placement, MemoryEstimate]:
    """The per-GPU estimate of a language-model task's settings (text/settings.py), at
    its own placement or with zero_stage, workers or micro_batch changed (what-ifs:
    `validate --cost` shows why a 27B fit needs ZeRO-3). ValueError for a model whose
    architecture is unknown."""
    arch = architecture(settings.model, settings.vocab_size)
    precision = "bf16" if settings.precision == "auto" else settings.precision
    stage = settings.zero_stage if zero_stage is None else zero_stage
    stage = stage if settings.engine == "deepspeed" else 0
    sampling = "bf16" if settings.sampler == "vllm" or precision != "fp32" else "fp32"
    placement = Placement(settings.model, arch.parameters, precision, settings.engine, stage,
                          settings.num_workers if workers is None else workers,
                          settings.micro_batch_size if micro_batch is None else micro_batch, sampling)
    need = estimate(arch, precision, stage, placement.workers, placement.micro_batch, settings.max_length, sampling,
                    settings.engine)
    return arch, placement, need
