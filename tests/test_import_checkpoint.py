"""Bring-your-own checkpoints: the tutorial's layout and a save_pretrained folder, on tiny BERTs."""

from __future__ import annotations

import json

import pytest
import torch

from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.training.import_checkpoint import CheckpointError, import_checkpoint
from tests.tiny_models import CLASS_NAMES, TutorialClassifier, save_hf_checkpoint, save_tutorial_checkpoint

TEXTS = ["good movie", "awful waste of time", "love the app , easy schedule !"]


def served_probabilities(config_path):
    # fp32 here: the comparison is about weights and keys, not about int8 rounding.
    raw = json.loads(config_path.read_text())
    config = ModelConfig.from_dict({**raw, "PRECISION": "fp32"}, config_path.parent)
    classifier = SentimentClassifier(config).load()
    return torch.tensor(
        [[p.probabilities[c] for c in classifier.config.class_names] for p in classifier.predict(TEXTS)]
    )


def reference_probabilities(model, tokenizer_dir):
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(tokenizer_dir)(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model.eval()(**batch)
    return torch.softmax(getattr(logits, "logits", logits), dim=-1)


@pytest.fixture()
def tutorial_checkpoint(tmp_path, tiny_bert_dir):
    return save_tutorial_checkpoint(tmp_path / "best_model_state.bin", tiny_bert_dir)


@pytest.fixture()
def hf_checkpoint(tmp_path, tiny_bert_dir):
    return save_hf_checkpoint(tmp_path / "hf", tiny_bert_dir)


def test_tutorial_layout_serves_the_same_probabilities(tmp_path, tiny_bert_dir, tutorial_checkpoint):
    model, state_dict = tutorial_checkpoint
    config = import_checkpoint(tmp_path / "out", bert_dir=tiny_bert_dir, state_dict=state_dict)
    assert json.loads(config.read_text())["CLASS_NAMES"] == CLASS_NAMES
    expected = reference_probabilities(model, tiny_bert_dir)
    assert torch.allclose(served_probabilities(config), expected, atol=1e-5)


def test_hf_layout_takes_class_names_from_id2label(tmp_path, hf_checkpoint):
    model, folder = hf_checkpoint
    config = import_checkpoint(tmp_path / "out", hf_dir=folder)
    assert json.loads(config.read_text())["CLASS_NAMES"] == CLASS_NAMES
    assert torch.allclose(served_probabilities(config), reference_probabilities(model, folder), atol=1e-5)


def test_class_count_mismatch_is_refused(tmp_path, tiny_bert_dir):
    state_dict = tmp_path / "two_classes.bin"
    torch.save(TutorialClassifier(tiny_bert_dir, 2).state_dict(), state_dict)
    with pytest.raises(CheckpointError, match=r"has 2 classes .* but 3 class names"):
        import_checkpoint(tmp_path / "out", bert_dir=tiny_bert_dir, state_dict=state_dict)


def test_missing_and_foreign_keys_are_named(tmp_path, tiny_bert_dir, tutorial_checkpoint):
    model, _ = tutorial_checkpoint
    state = model.state_dict()
    del state["bert.encoder.layer.1.output.dense.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.bin"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"missing.*layer\.1\.output\.dense\.weight.*unexpected.*extra\.weight"):
        import_checkpoint(tmp_path / "out", bert_dir=tiny_bert_dir, state_dict=path)


def test_shapes_from_another_bert_are_refused(tmp_path, tiny_bert_dir, hf_checkpoint):
    _, folder = hf_checkpoint
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 40  # the weights were trained with 37
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"shapes differ.*intermediate\.dense\.weight \(37, 32\) vs \(40, 32\)"):
        import_checkpoint(tmp_path / "out", hf_dir=folder)


def test_a_state_dict_without_out_keys_is_not_a_tutorial_checkpoint(tmp_path, tiny_bert_dir, hf_checkpoint):
    model, _ = hf_checkpoint
    path = tmp_path / "hf_keys.bin"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"no out\.\* keys"):
        import_checkpoint(tmp_path / "out", bert_dir=tiny_bert_dir, state_dict=path)


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path, tiny_bert_dir):
    path = tmp_path / "evil.bin"
    torch.save({"out.weight": torch.zeros(3, 32), "payload": TutorialClassifier}, path)
    with pytest.raises(Exception, match=r"Weights only load failed|Unsupported global"):
        import_checkpoint(tmp_path / "out", bert_dir=tiny_bert_dir, state_dict=path)


def test_imported_config_keeps_the_defaults_it_does_not_set(tmp_path, hf_checkpoint):
    _, folder = hf_checkpoint
    config = ModelConfig.from_file(import_checkpoint(tmp_path / "out", hf_dir=folder, max_sequence_len=32))
    assert config.max_sequence_len == 32 and config.pooling == "pooler"
    assert config.threads == ModelConfig().threads == 1  # one thread per worker, as for the default model


def test_a_token_limit_beyond_the_position_limit_is_refused_not_clamped(tmp_path, hf_checkpoint):
    _, folder = hf_checkpoint
    with pytest.raises(CheckpointError, match="--max-sequence-len 512 exceeds the model's position limit of 64"):
        import_checkpoint(tmp_path / "out", hf_dir=folder, max_sequence_len=512)


def test_the_imported_model_gets_a_timeout_sized_from_its_measured_speed(tmp_path, hf_checkpoint, monkeypatch):
    """A model 100x slower than another gets a timeout 100x longer (when that exceeds the floor), so that a
    full request of it still fits a worker's budget; the default's floor applies to fast models."""
    import yaml

    from sentiment.serving import batch
    from sentiment.training import import_checkpoint as importer

    _, folder = hf_checkpoint
    fast = yaml.safe_load(
        (import_checkpoint(tmp_path / "fast", hf_dir=folder).parent / "model-config.yaml").read_text()
    )
    assert fast["responseTimeout"] == importer.DEFAULT_RESPONSE_TIMEOUT
    monkeypatch.setattr(SentimentClassifier, "tokens_per_second", lambda self: 100.0)
    config_path = import_checkpoint(tmp_path / "slow", hf_dir=folder)
    slow = yaml.safe_load((config_path.parent / "model-config.yaml").read_text())
    config = ModelConfig.from_file(config_path)
    full_request = config.max_batch_texts * config.max_sequence_len
    assert slow["responseTimeout"] == batch.response_timeout_for(full_request, 100.0)
    # At the measured speed a full request takes a twelfth of it: a quarter, with 3x headroom.
    assert full_request / 100.0 <= slow["responseTimeout"] * batch.TIMEOUT_FRACTION / 3
    assert slow["gpu"]["responseTimeout"] == slow["responseTimeout"]
