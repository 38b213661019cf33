"""Two or more precisions of the default model in-process, side by side: alternated rounds, medians.

    .venv/bin/python -m sentiment.perf.precisions [--precisions int8 int8-per-pass] [--rounds 5]
        [--config models/sentiment-large/config.json] [--agreement 1000]

One thread each, as a worker runs. Prints texts/s for batches of 8 and 256 review sentences and for
texts of 128 tokens, and each precision's ratio to the last one named. Machines are noisy: the rounds
alternate so that a slow spell falls on every precision alike. `--agreement N` also prints how many
of N development-product sentences (never the reserved products) each precision gives the same
sentiment as the last one named, and whether every answer is the same alone as in batches of 64.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import time
from pathlib import Path

from sentiment.console import command
from sentiment.project import DEFAULT_CONFIG
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import load_development_products, review_sentences

log = logging.getLogger(__name__)
LONG = "The battery lasts two days and the screen is bright, but the speaker crackles at volume. " * 6


@command
def main() -> None:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precisions", nargs="+", default=["int8", "int8-per-pass"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the model's config.json")
    parser.add_argument("--agreement", type=int, default=0, metavar="N", help="development sentences to compare")
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = ModelConfig.from_file(args.config)
    classifiers = {
        precision: SentimentClassifier(dataclasses.replace(base, precision=precision, threads=1)).load()
        for precision in args.precisions
    }
    sentences = review_sentences(512)
    workloads = {
        "batches of 8": [sentences[i : i + 8] for i in range(0, 512, 8)],
        "batches of 256": [sentences[i : i + 256] for i in range(0, 512, 256)],
        "16 texts of 128 tokens": [[f"{LONG} ({i})" for i in range(16)]],
    }
    reference = args.precisions[-1]
    if args.agreement:
        development = [example.text for example in load_development_products()][: args.agreement]
        answers = {}
        for precision, classifier in classifiers.items():
            answers[precision] = [
                p for i in range(0, len(development), 64) for p in classifier.predict(development[i : i + 64])
            ]
            alone = sum(
                classifier.predict([text])[0] == p for text, p in zip(development, answers[precision], strict=True)
            )
            log.info("%s: %d of %d answers the same alone as in batches of 64", precision, alone, len(development))
        for precision, predictions in answers.items():
            same = sum(a.sentiment == b.sentiment for a, b in zip(predictions, answers[reference], strict=True))
            log.info(
                "%s agrees with %s on %d of %d (%.2f%%)",
                precision,
                reference,
                same,
                len(development),
                100 * same / len(development),
            )
    for name, batches in workloads.items():
        rates: dict[str, list[float]] = {precision: [] for precision in classifiers}
        for _ in range(args.rounds):
            for precision, classifier in classifiers.items():
                started = time.perf_counter()
                for batch in batches:
                    classifier.predict(batch)
                rates[precision].append(sum(map(len, batches)) / (time.perf_counter() - started))
        medians = {precision: statistics.median(values) for precision, values in rates.items()}
        log.info(
            "%s: %s",
            name,
            ", ".join(
                f"{precision} {rate:.1f} texts/s ({rate / medians[reference]:.2f}x)"
                for precision, rate in medians.items()
            ),
        )


if __name__ == "__main__":
    main()
