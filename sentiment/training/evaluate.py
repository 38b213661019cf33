"""Score the served model on the reserved products (the test set) and the drug-review test split.

The test set is the reserved products of VADER's amazonReviewSnippets (reviews 99-175 and
216-309, 2,387 sentences); all 3,708 sentences, development products (1-98, 176-215) included, are
scored too, for continuity with earlier reports.

    sentiment-eval [--config config.json] [--out reports/]       # what `make eval` runs

The model runs through `SentimentClassifier`, the class the TorchServe handler wraps, on the device
a worker on this machine would use (the first GPU, else the CPU), so the tokenizer settings,
windows, precision and temperature are those of the server here. The VADER
lexicon is scored on the same sentences for comparison. Texts longer than one window are read whole,
as the server reads them; the drug reviews longer than one window are scored read whole and
truncated side by side, and every answer on the reserved products is checked to equal truncation's
(docs/long-texts.md). Writes reports/eval.json and, per test
set, a confusion-matrix PNG and a reliability diagram.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

from tqdm import tqdm

from sentiment.console import command
from sentiment.project import DEFAULT_CONFIG, REPORTS_DIR
from sentiment.serving.classifier import SentimentClassifier, choose_device
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import (
    RESERVED_PRODUCTS,
    RESERVED_SET,
    Example,
    load_drug_reviews,
    load_vader,
    of_products,
)
from sentiment.training.scores import calibration_bins, classification_report, probability_report

log = logging.getLogger(__name__)
BATCH_SIZE = 64


def model_probabilities(
    classifier: SentimentClassifier, texts: list[str], truncate: bool | None = None
) -> list[list[float]]:
    """Each text's probabilities in CLASS_NAMES order, read as the server reads it (or truncated)."""
    # Length-sorted batches: the server pads each batch to its longest text, so this is how it runs.
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    probabilities: list[list[float]] = [[]] * len(texts)
    label = f"model {classifier.precision}" + (", truncated" if truncate else "")
    for start in tqdm(range(0, len(order), BATCH_SIZE), desc=label, unit="batch"):
        idx = order[start : start + BATCH_SIZE]
        for i, prediction in zip(idx, classifier.predict([texts[i] for i in idx], truncate=truncate), strict=True):
            probabilities[i] = [prediction.probabilities[name] for name in classifier.config.class_names]
    return probabilities


def vader_predictions(texts: list[str]) -> list[str]:
    """The VADER lexicon's compound score in -1..1, cut at +-0.05 as its authors recommend."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    analyzer = SentimentIntensityAnalyzer()
    predictions = []
    for text in tqdm(texts, desc="VADER lexicon", unit="text"):
        compound = analyzer.polarity_scores(text)["compound"]
        predictions.append("negative" if compound <= -0.05 else "positive" if compound >= 0.05 else "neutral")
    return predictions


def score_model(
    classifier: SentimentClassifier, texts: list[str], labels: list[int], truncate: bool | None = None
) -> dict:
    started = time.monotonic()
    probabilities = model_probabilities(classifier, texts, truncate)
    seconds = time.monotonic() - started
    report = probability_report(probabilities, labels, classifier.config.class_names)
    report["calibration_bins"] = calibration_bins(probabilities, labels)
    report["texts_per_second"] = len(texts) / seconds
    return report


def evaluate_set(name: str, examples: list[Example], classifiers: dict, out: Path) -> dict:
    """Every precision of the model, then the VADER lexicon; plots for the served precision."""
    class_names = next(iter(classifiers.values())).config.class_names
    texts = [e.text for e in examples]
    labels = [class_names.index(e.label) for e in examples]
    scores = {f"model {precision}": score_model(c, texts, labels) for precision, c in classifiers.items()}
    served = scores[f"model {next(iter(classifiers))}"]
    plot_confusion(served["confusion_matrix"], class_names, f"{name}: confusion matrix", out / f"{name}-confusion.png")
    plot_reliability(served["calibration_bins"], served["ece"], f"{name}: reliability", out / f"{name}-reliability.png")
    vader = [class_names.index(label) for label in vader_predictions(texts)]
    scores["VADER lexicon"] = classification_report(labels, vader, class_names)
    return {"examples": len(examples), "scores": scores, "long_texts": long_texts(examples, classifiers)}


def long_texts(examples: list[Example], classifiers: dict) -> dict:
    """The texts longer than one window, read whole (as served) and truncated, by the served precision; and
    whether every other text answers exactly as truncation answers it."""
    served = next(iter(classifiers.values()))
    class_names = served.config.class_names
    texts = [e.text for e in examples]
    overflows = [bool(encoding.overflowing) for encoding in served.encode(texts)]
    long = [i for i, overflowing in enumerate(overflows) if overflowing]
    short = [text for text, overflowing in zip(texts, overflows, strict=True) if not overflowing]
    identical = sum(
        a == b
        for start in range(0, len(short), BATCH_SIZE)
        for a, b in zip(
            served.predict(short[start : start + BATCH_SIZE]),
            served.predict(short[start : start + BATCH_SIZE], truncate=True),
            strict=True,
        )
    )
    report = {"long": len(long), "short": len(short), "short_identical_to_truncation": identical}
    if long:
        labels = [class_names.index(examples[i].label) for i in long]
        report["whole"] = score_model(served, [texts[i] for i in long], labels)
        report["truncated"] = score_model(served, [texts[i] for i in long], labels, truncate=True)
    return report


def plot_confusion(matrix: list[list[int]], class_names: tuple[str, ...], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(matrix, cmap="Blues")
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(
                j,
                i,
                str(count),
                ha="center",
                va="center",
                color="white" if count > max(map(max, matrix)) / 2 else "black",
            )
    ax.set_xticks(range(len(class_names)), class_names)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("human label")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(bins: list[dict], ece: float, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    filled = [b for b in bins if b["count"]]
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar(
        [b["lower"] for b in filled],
        [b["accuracy"] for b in filled],
        width=1 / len(bins),
        align="edge",
        edgecolor="black",
        alpha=0.7,
        label="accuracy in bin",
    )
    ax.plot(
        [b["confidence"] for b in filled],
        [b["accuracy"] for b in filled],
        "o",
        color="C3",
        label="mean confidence",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title} (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_summary(results: dict) -> None:
    rows = [("test set", "scorer", "n", "accuracy", "macro-F1", "ECE")]
    for name, result in results.items():
        for scorer, r in result["scores"].items():
            rows.append(
                (
                    name,
                    scorer,
                    str(result["examples"]),
                    f"{r['accuracy']:.3f}",
                    f"{r['macro_f1']:.3f}",
                    f"{r['ece']:.3f}" if "ece" in r else "-",
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    for name, result in results.items():
        scorer, served = next(iter(result["scores"].items()))
        lines.append(f"\n{name}, {scorer} (served), per class (precision / recall / F1):")
        for label, c in served["per_class"].items():
            lines.append(f"  {label:9s} {c['precision']:.3f} / {c['recall']:.3f} / {c['f1']:.3f}  (n={c['support']})")
        lines.append(f"  confusion matrix (rows: human label, columns: predicted): {served['confusion_matrix']}")
        long = result["long_texts"]
        lines.append(
            f"  {long['short']} texts fit one window; their answers equal truncation's for "
            f"{long['short_identical_to_truncation']} of them"
        )
        if long["long"]:
            whole, cut = long["whole"], long["truncated"]
            lines.append(
                f"  {long['long']} texts longer than one window: read whole {whole['accuracy']:.3f} / "
                f"{whole['macro_f1']:.3f} / ECE {whole['ece']:.3f}, truncated {cut['accuracy']:.3f} / "
                f"{cut['macro_f1']:.3f} / ECE {cut['ece']:.3f} (accuracy / macro-F1)"
            )
    log.info("\n%s", "\n".join(lines))


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out", type=Path, default=REPORTS_DIR)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    config = ModelConfig.from_file(args.config)
    device = choose_device(0, torch.cuda.is_available())  # where a worker with gpu_id 0 runs
    served = SentimentClassifier(config, device).load()
    classifiers = {served.precision: served}
    if served.precision != "fp32":  # the served precision must stay within 0.5 point of fp32
        classifiers["fp32"] = SentimentClassifier(dataclasses.replace(config, precision="fp32"), device).load()
    product_reviews = load_vader(RESERVED_SET)
    test_sets = {
        # The test set: the reserved products only.
        "reserved-products": of_products(product_reviews, RESERVED_PRODUCTS),
        "drugs-test": load_drug_reviews("Test"),
        # All five products, for continuity with earlier reports: includes the development products.
        "all-products-incl-development": product_reviews,
    }
    results = {name: evaluate_set(name, examples, classifiers, args.out) for name, examples in test_sets.items()}
    report = {
        "config": str(args.config),
        "weights": Path(config.pre_trained_model).name,
        "temperature": served.temperature,
        "served_precision": served.precision,
        "device": device,
        "results": results,
    }
    (args.out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    print_summary(results)
    log.info("\nwrote %s and the PNGs beside it", args.out / "eval.json")


if __name__ == "__main__":
    main()
