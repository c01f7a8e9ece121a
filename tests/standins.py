"""Same-shape local stand-ins for the hub (session fixtures shared by the slow tests).

Hub downloads are impossible here, so the paper-scale specs are rehearsed on folders of
the same shape, built once per session (a few seconds):
  - `helpsteer2_standin`: a folder laid out like the hub's nvidia/HelpSteer2
    (`train.jsonl.gz`, `validation.jsonl.gz`) with its columns (prompt, response and the
    five attribute scores 0-4), a validation split under 1,000 rows;
  - `tinystories_standin`: laid out like roneneldan/TinyStories (`data/train-*.parquet`,
    `data/validation-*.parquet`, one `text` column);
  - `gemma2_standin`: a tiny model of the Gemma-2 architecture (transformers'
    Gemma2Config: sliding-window and global attention layers, logit soft-capping,
    grouped-query attention) saved with `save_pretrained`, its own BPE tokenizer beside
    it (<bos>, <eos>, <pad> as Gemma's). Like a base model it has been trained: a few
    hundred steps on the HelpSteer2-shaped rows in the SFT task's format, so that its
    unconditional samples parse the way a real base model's fine-tunes do.
All three go through the same loading code as the hub ids (`corpora.load_split`,
`from_pretrained`). Built outside pytest too (cluster/rehearse.sh):

    python -m tests.standins OUT_DIR     # prints the three paths as shell exports
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
HELPSTEER2_ROWS = {"train": 800, "validation": 120}   # the hub's: 20,324 / 1,038
TINYSTORIES_ROWS = {"train": 800, "validation": 120}  # the hub's: 2,119,719 / 21,990
GEMMA2_VOCAB = 512
GEMMA2_CONTEXT = 512  # max_position_embeddings: the paper specs' max_length fits
GEMMA2_PRETRAIN_STEPS = 300
SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>")  # Gemma's ids 0..3


def build_helpsteer2(folder: Path, seed: int = 0) -> Path:
    """HelpSteer2's files and columns, rows from the procedural instruction corpus."""
    from collapse_ray.text import corpora

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in HELPSTEER2_ROWS.items():
        rows = corpora.procedural_rows("instructions", split, n, seed)
        with gzip.open(folder / f"{split}.jsonl.gz", "wt") as f:
            for prompt, response in zip(rows["prompt"], rows["response"]):
                scores = {a: int(rng.integers(5)) for a in HELPSTEER2_ATTRIBUTES}
                f.write(json.dumps({"prompt": prompt, "response": response, **scores}) + "\n")
    return folder


def build_tinystories(folder: Path, seed: int = 0) -> Path:
    """TinyStories' parquet layout (data/<split>-NNNNN-of-NNNNN.parquet), procedural stories."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from collapse_ray.text import corpora

    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split, n in TINYSTORIES_ROWS.items():
        texts = corpora.procedural_rows("stories", split, n, seed)["text"]
        shards = 2 if split == "train" else 1  # the hub's train split is sharded too
        for i, part in enumerate(np.array_split(np.arange(n), shards)):
            table = pa.table({"text": pa.array([texts[j] for j in part], type=pa.string())})
            pq.write_table(table, data / f"{split}-{i:05d}-of-{shards:05d}.parquet")
    return folder


def build_gemma2(folder: Path, helpsteer2: Path, seed: int = 0, pretrain_steps: int = GEMMA2_PRETRAIN_STEPS) -> Path:
    """A tiny Gemma-2 with its own tokenizer, pre-trained briefly on `helpsteer2`'s train
    rows (pretrain_steps 0: untrained, for checks that read only its shape)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

    from collapse_ray.tasks.sft import format_example

    with gzip.open(helpsteer2 / "train.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for line in f]
    texts = [format_example(r["prompt"], r["response"]) for r in rows]

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=GEMMA2_VOCAB, special_tokens=list(SPECIALS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                        bos_token="<bos>", unk_token="<unk>")
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIALS}
    config = Gemma2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
        max_position_embeddings=GEMMA2_CONTEXT, sliding_window=64,
        pad_token_id=ids["<pad>"], eos_token_id=ids["<eos>"], bos_token_id=ids["<bos>"],
    )
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(config)

    # the base model's pre-training: next-token loss on <bos> text <eos>, padded batches
    encoded = [[ids["<bos>"], *tokenizer(t, add_special_tokens=False)["input_ids"], ids["<eos>"]] for t in texts]
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 2-core machine shared with other tests
    loss = None
    try:
        model.train()
        for _ in range(pretrain_steps):
            batch = [encoded[i] for i in rng.choice(len(encoded), 16, replace=False)]
            width = max(map(len, batch))
            input_ids = torch.full((len(batch), width), ids["<pad>"])
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, seq in enumerate(batch):
                input_ids[row, : len(seq)] = torch.tensor(seq)
                mask[row, : len(seq)] = 1
            labels = input_ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    last_loss = None if loss is None else loss.item()
    (folder / "pretraining.json").write_text(json.dumps({"steps": pretrain_steps, "last_loss": last_loss}))
    return folder


def build_all(root: Path) -> dict[str, Path]:
    helpsteer2 = build_helpsteer2(root / "helpsteer2")
    return {
        "helpsteer2": helpsteer2,
        "tinystories": build_tinystories(root / "tinystories"),
        "gemma2": build_gemma2(root / "gemma2", helpsteer2),
    }


@pytest.fixture(scope="session")
def helpsteer2_standin(tmp_path_factory) -> Path:
    return build_helpsteer2(tmp_path_factory.mktemp("standins") / "helpsteer2")


@pytest.fixture(scope="session")
def tinystories_standin(tmp_path_factory) -> Path:
    return build_tinystories(tmp_path_factory.mktemp("standins") / "tinystories")


@pytest.fixture(scope="session")
def gemma2_standin(tmp_path_factory, helpsteer2_standin) -> Path:
    return build_gemma2(tmp_path_factory.mktemp("standins") / "gemma2", helpsteer2_standin)


@pytest.fixture(scope="session")
def standins(helpsteer2_standin, tinystories_standin, gemma2_standin) -> dict[str, Path]:
    """All three stand-ins, each built once per session."""
    return {"helpsteer2": helpsteer2_standin, "tinystories": tinystories_standin, "gemma2": gemma2_standin}


@pytest.fixture(scope="session")
def shaped_standins(tmp_path_factory, helpsteer2_standin, tinystories_standin) -> dict[str, Path]:
    """The three stand-ins with an untrained Gemma-2 (seconds, not the base model's
    pre-training): for checks that read only their shape, such as `validate`."""
    gemma2 = build_gemma2(tmp_path_factory.mktemp("standins") / "gemma2_untrained", helpsteer2_standin, pretrain_steps=0)
    return {"helpsteer2": helpsteer2_standin, "tinystories": tinystories_standin, "gemma2": gemma2}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m tests.standins OUT_DIR", file=sys.stderr)
        raise SystemExit(2)
    built = build_all(Path(sys.argv[1]).resolve())
    for name, path in built.items():
        print(f"export STANDIN_{name.upper()}={path}")
