"""How much a text's answer moves with the texts that share its forward pass, in the served precision.

    .venv/bin/python -m sentiment.perf.batch_drift [--sentences 1024] [--batch 8 64] [--precision int8]

Each review sentence is predicted alone, then in batches; prints the median, 99th percentile and
largest change of any class probability, and how many sentiments differ. `int8-per-pass`
(PyTorch's dynamic quantization) picks one activation scale per forward pass, so its answers move;
`int8` (per-token scales, packed forward) and fp32 do not.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from sentiment.project import DEFAULT_CONFIG
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import review_sentences

log = logging.getLogger(__name__)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=1024)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--precision", default="auto")
    args = parser.parse_args()

    config = dataclasses.replace(ModelConfig.from_file(DEFAULT_CONFIG), precision=args.precision, threads=1)
    classifier = SentimentClassifier(config).load()
    texts = review_sentences(args.sentences)
    alone = [classifier.predict([text])[0] for text in texts]
    for size in args.batch:
        batched = [p for start in range(0, len(texts), size) for p in classifier.predict(texts[start : start + size])]
        shifts = sorted(
            max(abs(a.probabilities[k] - b.probabilities[k]) for k in a.probabilities)
            for a, b in zip(alone, batched, strict=True)
        )
        differ = sum(a.sentiment != b.sentiment for a, b in zip(alone, batched, strict=True))
        identical = sum(a == b for a, b in zip(alone, batched, strict=True))
        log.info(
            "%s, batches of %d: probability shift median %.6f, p99 %.6f, max %.6f; sentiment differs for %d of %d; "
            "answer identical for %d",
            classifier.precision,
            size,
            shifts[len(shifts) // 2],
            shifts[int(0.99 * len(shifts))],
            shifts[-1],
            differ,
            len(texts),
            identical,
        )


if __name__ == "__main__":
    main()
