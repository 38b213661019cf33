"""The training script end to end on a tiny BERT and a toy corpus: it must write servable weights."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open
from tiny_models import write_model_dir

from datasets import Example
from sentiment_model import ModelConfig, SentimentClassifier
from train import TrainingRecipe, train

TOY = [("good great love", 2), ("bad awful hate", 0), ("movie phone app", 1)]


def test_training_writes_calibrated_weights_the_server_loads(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, PRECISION="auto")
    config = ModelConfig.from_file(model_dir / "config.json")
    corpus = [Example(text, label, "toy") for text, label in TOY * 20]
    recipe = TrainingRecipe(epochs=2, batch_size=8, learning_rate=1e-3, validation_fraction=0.25, max_sequence_len=16)
    output = model_dir / "head.safetensors"

    report = train(recipe, config, output, corpus=corpus)

    with safe_open(str(output), "pt") as weights:
        names = set(weights.keys())
        assert float(weights.metadata()["temperature"]) == pytest.approx(report["temperature"], abs=1e-5)
    assert "classifier.weight" in names
    assert "bert.embeddings.word_embeddings.weight" not in names  # frozen: the backbone provides it
    assert json.loads(output.with_suffix(".json").read_text())["validation_examples"] == 15
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    classifier = SentimentClassifier(config).load()  # what a worker does with the file
    assert classifier.precision == "int8"
    assert classifier.temperature == pytest.approx(report["temperature"], abs=1e-5)
    assert len(classifier.predict(["good great love", "bad awful hate"])) == 2
