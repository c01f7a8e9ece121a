"""Causal language models and tokenizers: presets built from config, or saved ones.

A model is named by a preset (built from scratch with transformers' GPT-2 or Llama
configuration), a local folder written by `save_pretrained`, or a hub id
(`google/gemma-2-2b`) on machines that can reach the hub; the last two go through the
same `from_pretrained` call. (B)'s sizes with their 8000-token vocabulary:
    gpt2_9m 8,890,880, llama2_12m 12,488,960, llama2_42m 41,755,136, llama2_126m 125,553,408
parameters (tests check these counts exactly). `tiny` fits a generation in about a minute on 2 CPU cores;
`tiny_wide` (twice as wide) stands in for a larger model in the quick variants.
`encode` turns texts into a fit's examples with a tokenizer (BOS + ids + EOS, long ones cut or
dropped): the rows path's fits and Ray Data's tokenize tasks (backends.py) alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# preset -> (architecture, config keywords); the vocabulary comes from the tokenizer
PRESETS: dict[str, tuple[str, dict]] = {
    "tiny": ("gpt2", {"n_embd": 64, "n_layer": 2, "n_head": 2, "n_positions": 256}),
    # a second CPU-scale size, for the quick variants of figures with a line per model
    "tiny_wide": ("gpt2", {"n_embd": 128, "n_layer": 2, "n_head": 4, "n_positions": 256}),
    "gpt2_9m": ("gpt2", {"n_embd": 256, "n_layer": 8, "n_head": 8, "n_positions": 2048}),
    # (B)'s 12,488,960 parameters: d 256, feed-forward 1024, 8 layers, untied embeddings
    "llama2_12m": ("llama", {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 8,
                             "num_attention_heads": 8, "max_position_embeddings": 512}),
    "llama2_42m": ("llama", {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 8,
                             "num_attention_heads": 8, "max_position_embeddings": 1024}),
    "llama2_126m": ("llama", {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                              "num_attention_heads": 12, "max_position_embeddings": 1024}),
}
# (B)'s parameter counts, which the presets match exactly with PAPER_VOCAB tokens
PAPER_PARAMETERS = {"gpt2_9m": 8_890_880, "llama2_12m": 12_488_960, "llama2_42m": 41_755_136,
                    "llama2_126m": 125_553_408}
PAPER_VOCAB = 8000
SPECIAL = "<|endoftext|>"  # BOS, EOS and padding of the locally trained tokenizers


def is_preset(name: str) -> bool:
    return name in PRESETS


def model_config(preset: str, vocab_size: int, eos_id: int):
    from transformers import GPT2Config, LlamaConfig

    arch, kwargs = PRESETS[preset]
    ids = {"bos_token_id": eos_id, "eos_token_id": eos_id, "pad_token_id": eos_id}
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, **kwargs, **ids)
    return LlamaConfig(vocab_size=vocab_size, num_key_value_heads=kwargs["num_attention_heads"],
                       tie_word_embeddings=False, **kwargs, **ids)


def context_length(model_name: str, config=None) -> int:
    if is_preset(model_name):
        kwargs = PRESETS[model_name][1]
        return kwargs.get("n_positions") or kwargs["max_position_embeddings"]
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048)


def build_model(model_name: str, tokenizer, seed: int):
    """A fresh preset (initialised from `seed`) or a saved/hub model's weights."""
    import torch
    from transformers import AutoModelForCausalLM

    if is_preset(model_name):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(model_config(model_name, len(tokenizer), tokenizer.eos_token_id))
    return AutoModelForCausalLM.from_pretrained(model_name)


def train_tokenizer(texts: Sequence[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts` (the real training split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[SPECIAL], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=SPECIAL, eos_token=SPECIAL, pad_token=SPECIAL)


def load_tokenizer(name_or_path: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def n_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def encode(tokenizer, texts, max_length: int, drop_long: bool) -> list[np.ndarray]:
    """BOS + token ids + EOS; longer examples are cut to max_length or dropped.

    The BOS makes the first tokens learnable: sampling starts from BOS alone."""
    return kept_and_encoded(tokenizer, texts, max_length, drop_long)[1]


def kept_and_encoded(tokenizer, texts, max_length: int, drop_long: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """encode's examples, and the positions in `texts` they came from."""
    if len(texts) == 0:
        return np.empty(0, dtype=np.int64), []
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    kept, out = [], []
    for i, ids in enumerate(encoded):
        ids = [bos] + ids + [tokenizer.eos_token_id]
        if len(ids) > max_length:
            if drop_long:
                continue
            ids = ids[:max_length]
        kept.append(i)
        out.append(np.asarray(ids, dtype=np.int32))
    return np.asarray(kept, dtype=np.int64), out
