"""Checkpoints in the tutorial's layout and in save_pretrained's, served by a real TorchServe."""

from __future__ import annotations

import pytest
import requests
from conftest import local_server
from import_checkpoint import import_checkpoint
from tiny_models import save_hf_checkpoint, save_tiny_bert, save_tutorial_checkpoint

from build_archive import build
from sentiment_model import ModelConfig, SentimentClassifier

pytestmark = pytest.mark.integration
TEXTS = ["good movie", "awful waste of time", "love the app , easy schedule !"]


@pytest.mark.parametrize("layout", ["tutorial", "hf"])
def test_own_checkpoint_serves_what_it_computes_in_process(tmp_path, layout):
    bert_dir = save_tiny_bert(tmp_path / "bert")
    if layout == "tutorial":
        _, state_dict = save_tutorial_checkpoint(tmp_path / "state.bin", bert_dir)
        config = import_checkpoint(tmp_path / "model", bert_dir=bert_dir, state_dict=state_dict)
    else:
        _, folder = save_hf_checkpoint(tmp_path / "hf", bert_dir)
        config = import_checkpoint(tmp_path / "model", hf_dir=folder)
    classifier = SentimentClassifier(ModelConfig.from_file(config)).load()
    # One text per call, like the sequential requests below: int8 scales activations per batch.
    expected = [classifier.predict([text])[0] for text in TEXTS]

    server = local_server(tmp_path, build(config, tmp_path / "store").parent)
    server.start(timeout=180)
    try:
        for text, prediction in zip(TEXTS, expected):
            response = requests.post(
                f"{server.url('inference')}/predictions/sentiment",
                json={"text": text},
                headers=server.auth_header("inference"),
                timeout=30,
            )
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["sentiment"] == prediction.sentiment
            assert body["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-5)
    finally:
        server.stop()
