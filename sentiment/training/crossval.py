"""Cross-validate a training recipe on the development products (docs/model-protocol.md).

    sentiment-crossval --general-weights W [sentiment-train's options] [--folds 5] [--name NAME]
    sentiment-crossval --compare reports/crossval-A.json reports/crossval-B.json [--plot PNG]

The development sentences are split into folds by review. For each fold, the recipe's in-domain
stage trains from the general-stage weights W on the other folds, exactly as `make model` trains on
all of them (its own split of their reviews for early stopping, temperature and class biases), and
the resulting model scores the held-out fold as the server runs it. The out-of-fold probabilities
of every development sentence are pooled into one accuracy, macro-F1 and ECE. Writes
reports/crossval-NAME.json. Reads development data and the held-out drug reviews only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from sentiment.console import command
from sentiment.project import DEFAULT_CONFIG, REPORTS_DIR
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import (
    RESERVED_PRODUCTS,
    Example,
    load_development_products,
    review_number,
    without_product_texts,
)
from sentiment.training.scores import probability_report
from sentiment.training.train import TrainingRecipe, parse_bool, train

log = logging.getLogger(__name__)


def folds_by_review(examples: list[Example], folds: int, seed: int) -> list[list[Example]]:
    """`folds` groups of whole reviews: reviews shuffled with `seed`, each dealt to the fold with the fewest
    sentences so far, so that folds hold about as many sentences as each other."""
    by_review: dict[int, list[Example]] = {}
    for example in examples:
        by_review.setdefault(review_number(example), []).append(example)
    reviews = sorted(by_review)
    random.Random(seed).shuffle(reviews)
    groups: list[list[Example]] = [[] for _ in range(folds)]
    for review in reviews:
        min(groups, key=len).extend(by_review[review])
    return groups


def development_sentences() -> list[Example]:
    return without_product_texts(load_development_products(), RESERVED_PRODUCTS)


def crossvalidate(recipe: TrainingRecipe, config: ModelConfig, folds: int, work_dir: Path) -> dict:
    """Train the in-domain stage once per fold and pool the held-out folds' predictions as served."""
    if not recipe.general_weights:
        raise SystemExit("--general-weights is required: every fold starts from the same general stage")
    class_names = config.class_names
    groups = folds_by_review(development_sentences(), folds, recipe.seed)
    probabilities: list[list[float]] = []
    labels: list[int] = []
    per_fold, drug_reviews = [], []
    for k, held_out in enumerate(groups):
        started = time.monotonic()
        training = [e for j, group in enumerate(groups) if j != k for e in group]
        weights = work_dir / f"fold-{k + 1}.safetensors"
        report = train(recipe, config, weights, domain_corpus=training)
        served = SentimentClassifier(dataclasses.replace(config, pre_trained_model=str(weights))).load()
        predictions = served.predict([e.text for e in held_out])
        fold_probabilities = [[p.probabilities[name] for name in class_names] for p in predictions]
        fold_labels = [class_names.index(e.label) for e in held_out]
        fold_score = probability_report(fold_probabilities, fold_labels, class_names)
        probabilities += fold_probabilities
        labels += fold_labels
        drug_reviews.append(report.get("held_out_drug_reviews"))
        per_fold.append(
            {
                "fold": k + 1,
                "sentences": len(held_out),
                "reviews": len({review_number(e) for e in held_out}),
                "accuracy": fold_score["accuracy"],
                "macro_f1": fold_score["macro_f1"],
                "ece": fold_score["ece"],
                "temperature": report["temperature"],
                "minutes": round((time.monotonic() - started) / 60, 1),
            }
        )
        log.info(
            "fold %d/%d (%d sentences): accuracy %.3f macro-F1 %.3f ECE %.3f",
            k + 1,
            folds,
            len(held_out),
            fold_score["accuracy"],
            fold_score["macro_f1"],
            fold_score["ece"],
        )
    pooled = probability_report(probabilities, labels, class_names)
    f1s = [fold["macro_f1"] for fold in per_fold]
    drugs = [d for d in drug_reviews if d]
    return {
        "recipe": asdict(recipe),
        "folds": folds,
        "sentences": len(labels),
        "out_of_fold": {key: pooled[key] for key in ("accuracy", "macro_f1", "ece", "per_class", "confusion_matrix")},
        # The spread of the fold figures, over the square root of their count: the standard error of the mean.
        "macro_f1_standard_error": statistics.stdev(f1s) / math.sqrt(len(f1s)) if len(f1s) > 1 else None,
        "per_fold": per_fold,
        "held_out_drug_reviews_mean": (
            {key: statistics.mean(d[key] for d in drugs) for key in ("accuracy", "macro_f1", "ece")} if drugs else None
        ),
    }


def compare(paths: list[Path], plot_path: Path | None = None) -> list[dict]:
    """One row per cross-validation report (pooled figures, the standard error, the drug reviews), logged as a
    table and, with `plot_path`, drawn: each recipe's fold macro-F1s beside its pooled figure."""
    rows = []
    for path in paths:
        report = json.loads(path.read_text())
        drugs = report.get("held_out_drug_reviews_mean") or {}
        rows.append(
            {
                "name": path.stem.removeprefix("crossval-"),
                **{key: report["out_of_fold"][key] for key in ("accuracy", "macro_f1", "ece")},
                "standard_error": report["macro_f1_standard_error"],
                "drug_accuracy": drugs.get("accuracy"),
                "fold_macro_f1": [fold["macro_f1"] for fold in report["per_fold"]],
            }
        )
    for row in rows:
        log.info(
            "%-12s accuracy %.3f macro-F1 %.3f +- %.3f ECE %.3f held-out drug reviews %s",
            row["name"],
            row["accuracy"],
            row["macro_f1"],
            row["standard_error"] or 0.0,
            row["ece"],
            "-" if row["drug_accuracy"] is None else f"{row['drug_accuracy']:.3f}",
        )
    if plot_path:
        _plot(rows, plot_path)
    return rows


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(1.6 * len(rows) + 2.5, 4))
    for x, row in enumerate(rows):
        folds = row["fold_macro_f1"]
        for k, fold in enumerate(folds):  # one colour per fold: the folds are the same for every recipe
            axis.scatter(x + (k - (len(folds) - 1) / 2) * 0.06, fold, s=14, color=f"C{k + 1}", alpha=0.7)
        axis.errorbar(x, row["macro_f1"], yerr=row["standard_error"] or 0, fmt="o", color="C0", capsize=6)
    axis.set_xticks(range(len(rows)), [row["name"] for row in rows])
    axis.set_xlim(-0.6, len(rows) - 0.4)
    axis.set_ylabel("macro-F1")
    axis.set_title("out of fold on the development products (dots: folds 1-5; blue: pooled +- SE)", fontsize=9)
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    log.info("wrote %s", path)


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--name", default="recipe", help="reports/crossval-NAME.json")
    parser.add_argument("--compare", type=Path, nargs="+", metavar="REPORT", help="tabulate these reports instead")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="with --compare: draw them")
    for name, value in asdict(TrainingRecipe()).items():
        parse = parse_bool if isinstance(value, bool) else type(value)
        parser.add_argument(f"--{name.replace('_', '-')}", type=parse, default=value)
    args = parser.parse_args()
    if args.compare:
        missing = [str(path) for path in args.compare if not path.is_file()]
        if missing:
            parser.error(f"no such report: {', '.join(missing)}")
        compare(args.compare, args.plot)
        return
    if args.folds < 2:
        parser.error("--folds must be at least 2")
    recipe = TrainingRecipe(**{name: getattr(args, name) for name in asdict(TrainingRecipe())})
    if recipe.general_weights and not Path(recipe.general_weights).is_file():
        parser.error(f"--general-weights {recipe.general_weights} does not exist")
    config = ModelConfig.from_file(args.config)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as work_dir:
        result = crossvalidate(recipe, config, args.folds, Path(work_dir))
    result["minutes"] = round((time.monotonic() - started) / 60, 1)
    REPORTS_DIR.mkdir(exist_ok=True)
    path = REPORTS_DIR / f"crossval-{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    pooled = result["out_of_fold"]
    log.info(
        "out of fold, %d sentences in %d folds: accuracy %.3f, macro-F1 %.3f (standard error %.3f), ECE %.3f; "
        "wrote %s (%.1f minutes)",
        result["sentences"],
        args.folds,
        pooled["accuracy"],
        pooled["macro_f1"],
        result["macro_f1_standard_error"] or 0.0,
        pooled["ece"],
        path,
        result["minutes"],
    )


if __name__ == "__main__":
    main()
