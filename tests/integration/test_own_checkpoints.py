"""Checkpoints in the tutorial's layout and in save_pretrained's, served by a real TorchServe."""

from __future__ import annotations

import pytest
import yaml

from sentiment.ops.archive import build
from sentiment.ops.local_server import LocalServer
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.training.import_checkpoint import import_checkpoint
from tests.integration.conftest import ask
from tests.tiny_models import save_hf_checkpoint, save_tiny_bert, save_tutorial_checkpoint

pytestmark = pytest.mark.integration
TEXTS = ["good movie", "awful waste of time", "love the app , easy schedule !"]


@pytest.mark.parametrize("layout", ["tutorial", "hf"])
def test_own_checkpoint_serves_beside_the_default_under_its_own_name(tmp_path, default_archive, layout):
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

    store = tmp_path / "store"
    archive = build(config, store)  # named after the model's folder, not `sentiment`
    assert archive.name == "model.mar"
    (store / "sentiment.mar").symlink_to(default_archive / "sentiment.mar")
    server = LocalServer.on_free_ports(tmp_path / "run", store, models=("sentiment", "model"))
    server.start(timeout=180)
    try:
        default = ask(server, "This app is a total waste of time!")
        assert default.json()["sentiment"] == "negative"  # the default model, untouched, beside it
        for text, prediction in zip(TEXTS, expected, strict=True):
            response = ask(server, text, model="model")
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["sentiment"] == prediction.sentiment
            assert body["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-5)
    finally:
        server.stop()


def test_the_large_models_layout_serves_beside_the_default_with_its_own_settings(
    tmp_path, default_archive, monkeypatch
):
    """What `make large` builds (an MPNet encoder, fp32, its own limits and model-config.yaml), on a
    tiny random MPNet standing in for the 438 MB teacher."""
    import requests

    from sentiment.training import teacher
    from tests.tiny_models import save_trained_teacher

    backbone, weights, _ = save_trained_teacher(tmp_path, save_tiny_bert(tmp_path / "bert"), temperature=1.2)
    monkeypatch.setattr(teacher, "WEIGHTS", weights)
    monkeypatch.setattr(teacher, "unpack_backbone", lambda: backbone)
    config = teacher.export_served_model(tmp_path / "sentiment-large", max_sequence_len=16)
    classifier = SentimentClassifier(ModelConfig.from_file(config)).load()
    expected = classifier.predict(TEXTS)  # fp32: the same alone or batched

    store = tmp_path / "store"
    assert build(config, store).name == "sentiment-large.mar"
    (store / "sentiment.mar").symlink_to(default_archive / "sentiment.mar")
    server = LocalServer.on_free_ports(tmp_path / "run", store, models=("sentiment", "sentiment-large"))
    server.start(timeout=180)
    try:
        for text, prediction in zip(TEXTS, expected, strict=True):
            response = ask(server, text, model="sentiment-large")
            assert response.status_code == 200, response.text
            assert response.json()["probabilities"] == pytest.approx(prediction.probabilities, abs=1e-5)
        too_many = requests.post(
            f"{server.url('inference')}/predictions/sentiment-large",
            json={"texts": ["good"] * 17},
            headers=server.auth_header("inference"),
            timeout=30,
        )
        assert too_many.status_code == 400 and "1 to 16 texts. Given: 17" in too_many.json()["error"]
        described = requests.get(
            f"{server.url('management')}/models/sentiment-large", headers=server.auth_header("management"), timeout=10
        ).json()
        # Its own model-config.yaml (sized from its speed when it was exported) travelled in its archive.
        own = yaml.safe_load((config.parent / "model-config.yaml").read_text())
        assert described[0]["responseTimeout"] == own["responseTimeout"]
        assert ask(server, "This app is a total waste of time!").json()["sentiment"] == "negative"
    finally:
        server.stop()
