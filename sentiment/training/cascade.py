"""Measure a cascade before building it (docs/model-protocol.md, trial 2): the default model answers when its
margin is large, `sentiment-large` answers the rest.

    python -m sentiment.training.cascade [--large models/sentiment-large/config.json]

Both models score the development sentences they kept out of training, as served; for each margin threshold the
routed share, mean cost per text (in default-model units, from their measured rates) and macro-F1 are printed and
plotted, and the threshold is chosen out of fold within the cost bound. Writes reports/cascade.json and .png.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from sentiment.console import command
from sentiment.project import DEFAULT_CONFIG, LARGE_MODEL, PROJECT_DIR, REPORTS_DIR
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.training.scores import classification_report

log = logging.getLogger(__name__)
THRESHOLDS = [round(0.05 * i, 2) for i in range(21)]  # on the margin: top probability minus the second
COST_BOUND = 4.0  # mean cost per text, in units of the default model's (the bound)
GAIN_SHARE = 0.8  # of the large model's macro-F1 gain over the default, at least


def margins(probabilities: torch.Tensor) -> torch.Tensor:
    top = probabilities.topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def cascade(default: torch.Tensor, large: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The cascade's predicted classes and which texts it routed to the large model."""
    routed = margins(default) < threshold
    return torch.where(routed, large.argmax(-1), default.argmax(-1)), routed


def macro_f1(labels: list[int], predicted: torch.Tensor, class_names) -> float:
    return classification_report(labels, predicted.tolist(), class_names)["macro_f1"]


def sweep(default, large, labels, class_names, large_cost: float, indices: list[int]) -> list[dict]:
    rows = []
    for threshold in THRESHOLDS:
        predicted, routed = cascade(default[indices], large[indices], threshold)
        share = float(routed.float().mean())
        rows.append(
            {
                "threshold": threshold,
                "routed_share": share,
                "mean_cost": 1.0 + share * large_cost,
                "macro_f1": macro_f1([labels[i] for i in indices], predicted, class_names),
            }
        )
    return rows


def choose(rows: list[dict]) -> dict:
    """The best macro-F1 within the cost bound; ties: the cheaper."""
    affordable = [row for row in rows if row["mean_cost"] <= COST_BOUND]
    return max(affordable, key=lambda row: (row["macro_f1"], -row["mean_cost"]))


@command
def main() -> None:
    from sentiment.training.teacher import calibration_folds

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--large", type=Path, default=PROJECT_DIR / "models" / LARGE_MODEL / "config.json")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR)
    args = parser.parse_args()
    if not args.large.is_file():
        raise FileNotFoundError(f"{args.large} (build it with `make teacher large`)")

    default = SentimentClassifier(ModelConfig.from_file(args.config).with_keys(THREADS=1)).load()
    large = SentimentClassifier(ModelConfig.from_file(args.large).with_keys(THREADS=1)).load()
    class_names = default.config.class_names
    groups = calibration_folds()
    sentences = [e for group in groups for e in group]
    texts, labels = [e.text for e in sentences], [class_names.index(e.label) for e in sentences]
    fold_of = [k for k, group in enumerate(groups) for _ in group]
    probabilities = {
        name: torch.tensor([[p.probabilities[c] for c in class_names] for p in model.predict(texts)])
        for name, model in (("default", default), ("large", large))
    }
    # Both rates in one run, one thread each, on the costliest texts (128 tokens): the large model's cost per text.
    rates = {name: model.tokens_per_second() for name, model in (("default", default), ("large", large))}
    large_cost = rates["default"] / rates["large"]
    everything = list(range(len(texts)))
    rows = sweep(probabilities["default"], probabilities["large"], labels, class_names, large_cost, everything)
    alone = {name: macro_f1(labels, p.argmax(-1), class_names) for name, p in probabilities.items()}

    pooled_labels, pooled_predicted, pooled_routed, picks = [], [], [], []
    for k in range(len(groups)):
        train = [i for i in everything if fold_of[i] != k]
        test = [i for i in everything if fold_of[i] == k]
        pick = choose(sweep(probabilities["default"], probabilities["large"], labels, class_names, large_cost, train))
        picks.append(pick["threshold"])
        predicted, routed = cascade(probabilities["default"][test], probabilities["large"][test], pick["threshold"])
        pooled_labels += [labels[i] for i in test]
        pooled_predicted += predicted.tolist()
        pooled_routed += routed.tolist()
    share = sum(pooled_routed) / len(pooled_routed)
    cross_validated = {
        "thresholds": picks,
        "macro_f1": macro_f1(pooled_labels, torch.tensor(pooled_predicted), class_names),
        "routed_share": share,
        "mean_cost": 1.0 + share * large_cost,
    }
    gain = alone["large"] - alone["default"]
    reached = (cross_validated["macro_f1"] - alone["default"]) / gain if gain > 0 else 0.0
    build = reached >= GAIN_SHARE and cross_validated["mean_cost"] <= COST_BOUND
    report = {
        "sentences": len(texts),
        "tokens_per_second": rates,
        "large_cost_in_default_units": large_cost,
        "macro_f1_alone": alone,
        "sweep": rows,
        "cross_validated": cross_validated,
        "share_of_large_gain": reached,
        "build": build,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cascade.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(rows, alone, args.out / "cascade.png")
    lines = [f"{'margin <':>9s} {'routed':>7s} {'cost':>6s} {'macro-F1':>9s}"]
    lines += [
        f"{r['threshold']:9.2f} {r['routed_share']:7.1%} {r['mean_cost']:6.2f} {r['macro_f1']:9.3f}" for r in rows
    ]
    log.info("\n%s", "\n".join(lines))
    log.info(
        "%d sentences; default alone macro-F1 %.3f, large alone %.3f (cost %.1fx the default's per text); "
        "cross-validated cascade (thresholds %s): macro-F1 %.3f, %.0f%% routed, mean cost %.2f: %.0f%% of the "
        "large model's gain -> %s",
        len(texts),
        alone["default"],
        alone["large"],
        large_cost,
        picks,
        cross_validated["macro_f1"],
        100 * share,
        cross_validated["mean_cost"],
        100 * reached,
        "build it" if build else "do not build it (needs 80% of the gain at a cost of at most 4)",
    )


def plot(rows: list[dict], alone: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["mean_cost"] for r in rows], [r["macro_f1"] for r in rows], marker="o", label="cascade")
    ax.axhline(alone["default"], color="grey", linestyle="--", label="default alone")
    ax.axhline(alone["large"], color="black", linestyle="--", label="large alone")
    ax.axvline(COST_BOUND, color="red", linestyle=":", label="cost bound")
    ax.set_xlabel("mean cost per text (default model = 1)")
    ax.set_ylabel("macro-F1, held-out development sentences")
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
