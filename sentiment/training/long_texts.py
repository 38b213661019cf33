"""Choose how texts longer than one window are read: window overlap and aggregation rule (docs/long-texts.md).

    python -m sentiment.training.long_texts [--overlaps 0 16 32 64] [--folds 5]

Scores every candidate (overlap x rule) against truncation on the drug reviews that the shipped
model's recipe held out of training, applies the rule fixed in docs/long-texts.md, estimates by
cross-validation what choosing this way gains, and writes reports/long-texts.json and a plot. It
reads development data only: never the drug-review test split, never the reserved products.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
from pathlib import Path

from sentiment.console import command
from sentiment.project import DEFAULT_CONFIG, REPORTS_DIR
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.serving.windows import aggregate, content_tokens, windows
from sentiment.training.scores import classification_report

log = logging.getLogger(__name__)

RULES = ("mean", "length", "confidence", "ends", "geometric")  # the tie-break order of docs/long-texts.md


@dataclasses.dataclass(frozen=True)
class Candidate:
    overlap: int
    rule: str  # "truncate": the first window only

    @property
    def name(self) -> str:
        return "truncate" if self.rule == "truncate" else f"{self.rule}, overlap {self.overlap}"


def held_out_drug_reviews(model_report: Path) -> list:
    """The drug reviews the shipped model's recipe kept out of every training stage."""
    from sentiment.training.train import TrainingRecipe, load_splits

    recipe = TrainingRecipe(**json.loads(model_report.read_text())["recipe"])
    _, _, held_out = load_splits(recipe)
    return held_out


def window_probabilities(classifier: SentimentClassifier, texts: list[str], label: str) -> list[tuple[list, object]]:
    """Per text: its windows (encodings) and their calibrated probabilities [windows, classes], as served."""
    import torch
    from tqdm import tqdm

    readings = []
    for start in tqdm(range(0, len(texts), 16), desc=label, unit="batch"):
        encodings = classifier.encode(texts[start : start + 16])
        groups = [windows(encoding) for encoding in encodings]
        every = [window for group in groups for window in group]
        probabilities = torch.softmax(classifier.logits(every) / classifier.temperature, dim=-1)
        at = 0
        for group in groups:
            readings.append((group, probabilities[at : at + len(group)]))
            at += len(group)
    return readings


def answers(readings: list, candidate: Candidate) -> list[int]:
    if candidate.rule == "truncate":
        return [int(p[0].argmax()) for _, p in readings]
    return [int(aggregate(p, group, candidate.rule).argmax()) for group, p in readings]


def score(labels: list[int], predictions: list[int], class_names) -> dict:
    report = classification_report(labels, predictions, class_names)
    return {"n": len(labels), "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]}


def choose(scores: dict[Candidate, dict], baseline: dict) -> Candidate | None:
    """docs/long-texts.md's rule: of the candidates whose macro-F1 is at least truncation's, the highest
    accuracy; then macro-F1, smaller overlap, RULES order."""
    eligible = [c for c, s in scores.items() if c.rule != "truncate" and s["macro_f1"] >= baseline["macro_f1"]]
    if not eligible:
        return None
    return min(eligible, key=lambda c: (-scores[c]["accuracy"], -scores[c]["macro_f1"], c.overlap, RULES.index(c.rule)))


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--overlaps", type=int, nargs="+", default=[0, 16, 32, 64], help="in tokens")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=REPORTS_DIR)
    args = parser.parse_args()

    config = ModelConfig.from_file(args.config)
    report_path = Path(config.pre_trained_model).with_suffix(".json")
    reviews = held_out_drug_reviews(report_path)
    class_names = config.class_names
    labels = [class_names.index(e.label) for e in reviews]
    texts = [e.text for e in reviews]

    classifier = SentimentClassifier(config).load()
    per_overlap = {}
    for overlap in args.overlaps:  # in tokens, as docs/long-texts.md lists the candidates
        classifier.encoder.enable_truncation(config.max_sequence_len, stride=overlap)
        per_overlap[overlap] = window_probabilities(classifier, texts, f"overlap {overlap}")
    first = per_overlap[args.overlaps[0]]
    long = [i for i, (group, _) in enumerate(first) if len(group) > 1]
    log.info("%d held-out drug reviews, %d longer than one window", len(texts), len(long))

    candidates = [Candidate(0, "truncate")] + [Candidate(o, r) for o in args.overlaps for r in RULES]
    predictions = {c: answers(per_overlap[c.overlap] if c.rule != "truncate" else first, c) for c in candidates}

    def scores_on(indices: list[int]) -> dict[Candidate, dict]:
        truth = [labels[i] for i in indices]
        return {c: score(truth, [predictions[c][i] for i in indices], class_names) for c in candidates}

    on_long = scores_on(long)
    truncation = on_long[candidates[0]]
    chosen = choose(on_long, truncation)

    # Cross-validation of the choice itself: chosen on four folds, scored on the fifth.
    shuffled = list(range(len(texts)))
    random.Random(args.seed).shuffle(shuffled)
    folds = [sorted(shuffled[k :: args.folds]) for k in range(args.folds)]
    pooled_truth, pooled_chosen, pooled_truncate, picks = [], [], [], []
    for k, fold in enumerate(folds):
        train_long = [i for j, other in enumerate(folds) if j != k for i in other if i in long]
        test_long = [i for i in fold if i in long]
        fold_scores = scores_on(train_long)
        pick = choose(fold_scores, fold_scores[candidates[0]]) or candidates[0]
        picks.append(pick.name)
        pooled_truth += [labels[i] for i in test_long]
        pooled_chosen += [predictions[pick][i] for i in test_long]
        pooled_truncate += [predictions[candidates[0]][i] for i in test_long]
    cross_validated = {
        "picks": picks,
        "chosen": score(pooled_truth, pooled_chosen, class_names),
        "truncate": score(pooled_truth, pooled_truncate, class_names),
    }

    truncated_tokens = max(1, sum(len(first[i][0][0]) for i in long))
    tokens = {o: sum(len(w) for i in long for w in per_overlap[o][i][0]) / truncated_tokens for o in args.overlaps}
    whole = scores_on(list(range(len(texts))))
    result = {
        "data": f"{len(texts)} drug reviews held out of training ({report_path.name}), {len(long)} of them long",
        "window_tokens": config.max_sequence_len,
        "windows_per_long_review": {o: sum(len(per_overlap[o][i][0]) for i in long) / len(long) for o in args.overlaps},
        "tokens_vs_truncation": tokens,
        "long_reviews": {c.name: s for c, s in on_long.items()},
        "all_held_out_reviews": {c.name: s for c, s in whole.items()},
        "chosen": chosen.name if chosen else "truncate",
        "cross_validated": cross_validated,
        "content_tokens_of_long_reviews": sorted(sum(content_tokens(w) for w in first[i][0]) for i in long),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "long-texts.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(on_long, truncation, args.overlaps, args.out / "long-texts.png", len(long))

    lines = [
        f"{len(long)} long held-out reviews (of {len(texts)})",
        f"{'candidate':<26} {'acc long':>9} {'F1 long':>8} {'acc all':>8} {'F1 all':>7}",
    ]
    for c in candidates:
        long_score, all_score = on_long[c], whole[c]
        lines.append(
            f"{c.name:<26} {long_score['accuracy']:>9.3f} {long_score['macro_f1']:>8.3f} "
            f"{all_score['accuracy']:>8.3f} {all_score['macro_f1']:>7.3f}"
        )
    lines.append("tokens read per long review vs truncation: " + ", ".join(f"{o}: {t:.2f}x" for o, t in tokens.items()))
    lines.append(f"chosen by the rule: {result['chosen']}")
    chosen_cv, truncate_cv = cross_validated["chosen"], cross_validated["truncate"]
    lines.append(
        f"cross-validated ({args.folds} folds, picks {picks}): chosen {chosen_cv['accuracy']:.3f} / "
        f"{chosen_cv['macro_f1']:.3f} against truncation {truncate_cv['accuracy']:.3f} / {truncate_cv['macro_f1']:.3f} "
        f"(accuracy / macro-F1, n={chosen_cv['n']})"
    )
    log.info("\n%s", "\n".join(lines))
    log.info("wrote %s and %s", args.out / "long-texts.json", args.out / "long-texts.png")


def plot(scores: dict, truncation: dict, overlaps: list[int], path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, metric, title in ((axes[0], "accuracy", "accuracy"), (axes[1], "macro_f1", "macro-F1")):
        for rule in RULES:
            ax.plot(overlaps, [scores[Candidate(o, rule)][metric] for o in overlaps], marker="o", label=rule)
        ax.axhline(truncation[metric], color="black", linestyle="--", label="truncate (first 128 tokens)")
        ax.set_title(f"{title}, {n} long held-out drug reviews")
        ax.set_xlabel("window overlap (tokens)")
        ax.set_xticks(overlaps)
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
