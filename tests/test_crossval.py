"""Cross-validation of a recipe (docs/model-protocol.md) on a tiny BERT and toy product reviews."""

from __future__ import annotations

import pytest

from sentiment.serving.config import ModelConfig
from sentiment.training import crossval
from sentiment.training.corpora import review_number
from sentiment.training.train import train
from tests.test_train import TOY, _toy_reviews, toy_recipe
from tests.tiny_models import write_model_dir


def test_folds_keep_reviews_whole_cover_every_sentence_once_and_hold_about_as_many_each():
    reviews = _toy_reviews(23)
    folds = crossval.folds_by_review(reviews, 5, seed=1234)
    assert sorted(e.id for fold in folds for e in fold) == sorted(e.id for e in reviews)
    owners = {review_number(e): k for k, fold in enumerate(folds) for e in fold}
    assert all(owners[review_number(e)] == k for k, fold in enumerate(folds) for e in fold)
    sizes = [len(fold) for fold in folds]
    assert max(sizes) - min(sizes) <= 3  # one review of 3 sentences at most
    assert folds == crossval.folds_by_review(reviews, 5, seed=1234)
    assert folds != crossval.folds_by_review(reviews, 5, seed=7)


def test_every_development_sentence_is_predicted_once_by_a_model_that_did_not_train_on_it(
    tmp_path, tiny_bert_dir, monkeypatch
):
    from sentiment.training.corpora import Example

    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, POOLING="mean", PRECISION="auto")
    config = ModelConfig.from_file(model_dir / "config.json")
    general = tmp_path / "general.safetensors"
    corpus = [Example(text, label, "toy") for text, label in TOY * 20]
    train(toy_recipe(epochs=1, batch_size=8, validation_fraction=0.25, domain_epochs=0), config, general, corpus)
    reviews = _toy_reviews(15)
    monkeypatch.setattr(crossval, "development_sentences", lambda: reviews)
    trained_on: list[set[str]] = []
    real_train = crossval.train

    def recording_train(recipe, config, output, domain_corpus):
        trained_on.append({e.text for e in domain_corpus})
        return real_train(recipe, config, output, domain_corpus=domain_corpus)

    monkeypatch.setattr(crossval, "train", recording_train)
    recipe = toy_recipe(general_weights=str(general), domain_epochs=1, domain_batch_size=4)
    result = crossval.crossvalidate(recipe, config, 3, tmp_path)

    assert result["sentences"] == len(reviews)
    assert [fold["sentences"] for fold in result["per_fold"]] == [15, 15, 15]
    folds = crossval.folds_by_review(reviews, 3, recipe.seed)
    for fold, seen in zip(folds, trained_on, strict=True):
        assert not seen & {e.text for e in fold}  # the fold's model never trained on it
    pooled = result["out_of_fold"]
    assert sum(map(sum, pooled["confusion_matrix"])) == len(reviews)
    assert 0.0 <= pooled["macro_f1"] <= 1.0 and 0.0 <= pooled["ece"] <= 1.0


def test_crossval_without_general_weights_is_refused(tmp_path, tiny_bert_dir):
    config = ModelConfig.from_file(write_model_dir(tmp_path / "m", tiny_bert_dir) / "config.json")
    with pytest.raises(SystemExit, match="--general-weights is required"):
        crossval.crossvalidate(toy_recipe(), config, 5, tmp_path)


def test_reports_compare_in_a_table_and_a_plot(tmp_path):
    import json

    def report(name, f1s, drugs):
        folds = [{"fold": k + 1, "macro_f1": f1} for k, f1 in enumerate(f1s)]
        body = {
            "out_of_fold": {"accuracy": 0.7, "macro_f1": sum(f1s) / len(f1s), "ece": 0.03},
            "macro_f1_standard_error": 0.01,
            "per_fold": folds,
            "held_out_drug_reviews_mean": drugs,
        }
        path = tmp_path / f"crossval-{name}.json"
        path.write_text(json.dumps(body))
        return path

    paths = [report("A", [0.7, 0.72], {"accuracy": 0.66}), report("B", [0.71, 0.75], None)]

    rows = crossval.compare(paths, tmp_path / "compare.png")

    assert [row["name"] for row in rows] == ["A", "B"]
    assert rows[1]["macro_f1"] == pytest.approx(0.73) and rows[1]["drug_accuracy"] is None
    assert rows[0]["fold_macro_f1"] == [0.7, 0.72]
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
