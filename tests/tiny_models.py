"""Tiny random BERT models saved the way real ones are: for fast tests of the real loading code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

CLASS_NAMES = ["negative", "neutral", "positive"]
WORDS = [
    "good",
    "bad",
    "great",
    "awful",
    "love",
    "hate",
    "movie",
    "phone",
    "app",
    "time",
    "waste",
    "easy",
    "schedule",
    "recommend",
    "everyone",
]


def save_tiny_bert(path: Path) -> Path:
    """A 2-layer BERT with hidden size 32 and a 40-word vocabulary: loads in milliseconds."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz.,!?"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(path, safe_serialization=True)
    return path


def write_model_dir(path: Path, bert_dir: Path, **overrides) -> Path:
    """config.json plus a random classifier head, seeded so every call builds the same model."""
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    head = {"classifier.weight": torch.randn(3, 32), "classifier.bias": torch.randn(3)}
    save_file(head, str(path / "head.safetensors"), metadata={"temperature": "1.0"})
    config = {
        "MODEL_VERSION": "1.0",
        "BERT_MODEL": str(bert_dir),
        "PRE_TRAINED_MODEL": "head.safetensors",
        "CLASS_NAMES": CLASS_NAMES,
        "MAX_SEQUENCE_LEN": 16,
        "MAX_TEXT_CHARS": 200,
        **overrides,
    }
    (path / "config.json").write_text(json.dumps(config))
    return path
