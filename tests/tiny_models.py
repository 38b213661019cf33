"""Tiny random BERT models saved the way real ones are: for fast tests of the real loading code."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sentiment.serving.classifier import weights_metadata
from sentiment.serving.config import ModelConfig

CLASS_NAMES = list(ModelConfig().class_names)
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

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *"abcdefghijklmnopqrstuvwxyz.,!?"]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(path / "vocab.txt"), do_lower_case=True).save_pretrained(path)
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


def save_tiny_mpnet(path: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer MPNet (the large model's architecture) with the tiny BERT's tokenizer."""
    from transformers import MPNetConfig, MPNetModel

    path.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            (path / name).write_bytes((tokenizer_dir / name).read_bytes())
    torch.manual_seed(0)
    config = MPNetConfig(
        vocab_size=len((tokenizer_dir / "vocab.txt").read_text().split()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=140,
        pad_token_id=0,  # the tiny tokenizer's [PAD]
    )
    MPNetModel(config).save_pretrained(path, safe_serialization=True)
    return path


def save_trained_teacher(folder: Path, tokenizer_dir: Path, temperature: float):
    """A tiny MPNet "teacher trained before", laid out as `make teacher` leaves it: the backbone folder
    and teacher.safetensors with its training record. Returns (backbone, weights, the model)."""
    from transformers import AutoModel

    from sentiment.serving.classifier import mean_pooling_encoder_classifier

    backbone = save_tiny_mpnet(folder / "mpnet", tokenizer_dir)
    torch.manual_seed(5)
    trained = mean_pooling_encoder_classifier(AutoModel.from_pretrained(backbone), tuple(CLASS_NAMES)).eval()
    weights = folder / "teacher.safetensors"
    state = {name: t.contiguous() for name, t in trained.state_dict().items()}
    save_file(state, str(weights), metadata={"training": json.dumps({"temperature": temperature})})
    return backbone, weights, trained


def write_model_dir(path: Path, bert_dir: Path, **overrides) -> Path:
    """config.json plus a random classifier head, seeded so every call builds the same model.

    `overrides` are config.json keys, written as given (valid or not): tests of bad configs use them.
    """
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    head = {"classifier.weight": torch.randn(3, 32), "classifier.bias": torch.randn(3)}
    save_file(head, str(path / "head.safetensors"), metadata=weights_metadata(tuple(CLASS_NAMES), 1.0))
    tiny = ModelConfig(
        bert_model=str(bert_dir),
        pre_trained_model=str(path / "head.safetensors"),
        max_sequence_len=16,
        max_text_chars=200,
        precision="fp32",
        pooling="pooler",
        threads=0,
    )
    (path / "config.json").write_text(json.dumps({**tiny.to_dict(path), **overrides}))
    return path


class TutorialClassifier(torch.nn.Module):
    """The classic tutorial's model: BERT's pooled output, dropout, a Linear called `out`."""

    def __init__(self, bert_dir, n_classes):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel.from_pretrained(bert_dir)
        self.drop = torch.nn.Dropout(p=0.3)
        self.out = torch.nn.Linear(self.bert.config.hidden_size, n_classes)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        pooled = self.bert(input_ids=input_ids, attention_mask=attention_mask).pooler_output
        return self.out(self.drop(pooled))


def save_tutorial_checkpoint(path: Path, bert_dir: Path, n_classes: int = 3, seed: int = 3):
    """The state dict the tutorial saved (bert.*, out.*); returns the model and the file."""
    torch.manual_seed(seed)
    model = TutorialClassifier(bert_dir, n_classes)
    torch.save(model.state_dict(), path)
    return model, path


def save_hf_checkpoint(folder: Path, bert_dir: Path, seed: int = 4):
    """A BertForSequenceClassification folder from save_pretrained, class names in id2label."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(bert_dir, id2label=dict(enumerate(CLASS_NAMES)))
    config.label2id = {name: i for i, name in enumerate(CLASS_NAMES)}
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(bert_dir).save_pretrained(folder)
    return model, folder
