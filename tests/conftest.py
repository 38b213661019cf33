"""Shared fixtures: a tiny random BERT saved like a Hugging Face folder, and model folders laid
out the way the archive lays them out (config.json + bert/ + fine-tuned tensors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from tests.tiny_models import save_tiny_bert, write_model_dir


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture()
def model_dir(tmp_path, tiny_bert_dir) -> Path:
    return write_model_dir(tmp_path / "model", tiny_bert_dir)


@pytest.fixture()
def classifier(model_dir):
    return SentimentClassifier(ModelConfig.from_file(model_dir / "config.json")).load()
