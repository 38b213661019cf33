"""Is the model right on the GPU? For a machine with one (CI has none; the CPU tests cover the rest).

    python -m sentiment.perf.gpu_check [--sentences 1000] [--out reports/]

1. The tutorial's two sentences, served the GPU way (PRECISION auto: fp16), get the tutorial's labels.
2. fp16 on the GPU against fp32 on the CPU over review sentences (training corpora, never the
   reserved set): the share of equal labels and the largest probability difference.
Prints the figures, writes reports/gpu_check.json, and exits 1 when a check fails. Which GPU each
served worker ran on is checked by `sentiment-bench` on the server it starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from sentiment.console import command
from sentiment.project import DEFAULT_CONFIG, REPORTS_DIR
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import review_sentences

log = logging.getLogger(__name__)
TUTORIAL = {
    "This app is a total waste of time!": "negative",
    "OMG. I love how easy it is to stick to my schedule. Would recommend to everyone!": "positive",
}
MIN_AGREEMENT = 0.99


def compare(reference: list, candidate: list) -> dict:
    """Label agreement and the largest difference of any class probability, text by text."""
    same = sum(r.sentiment == c.sentiment for r, c in zip(reference, candidate, strict=True))
    largest = max(
        abs(r.probabilities[name] - c.probabilities[name])
        for r, c in zip(reference, candidate, strict=True)
        for name in r.probabilities
    )
    return {"texts": len(reference), "label_agreement": round(same / len(reference), 4), "max_prob_diff": largest}


@command
def main() -> None:
    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out", type=Path, default=REPORTS_DIR)
    parser.add_argument("--device", default="cuda:0", help="cpu only to try this script where no GPU is")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no GPU here: this check is for a machine with one")

    config = ModelConfig.from_file(args.config)
    gpu = SentimentClassifier(dataclasses.replace(config, threads=0), args.device).load()
    cpu = SentimentClassifier(dataclasses.replace(config, precision="fp32", threads=0), "cpu").load()
    sentences = review_sentences(args.sentences)

    tutorial = {text: p.sentiment for text, p in zip(TUTORIAL, gpu.predict(list(TUTORIAL)), strict=True)}
    started = time.perf_counter()
    on_gpu = gpu.predict(sentences)
    gpu_seconds = time.perf_counter() - started
    on_cpu = cpu.predict(sentences)
    agreement = compare(on_cpu, on_gpu)
    report = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "gpu_precision": gpu.precision,
        "tutorial": tutorial,
        "tutorial_ok": tutorial == TUTORIAL,
        f"{gpu.precision}_gpu_vs_fp32_cpu": agreement,
        "agreement_ok": agreement["label_agreement"] >= MIN_AGREEMENT,
        "gpu_seconds_for_all": round(gpu_seconds, 3),
    }
    log.info("%s", json.dumps(report, indent=2))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    if not (report["tutorial_ok"] and report["agreement_ok"]):
        log.error("GPU check FAILED")
        sys.exit(1)
    log.info("GPU check passed")


if __name__ == "__main__":
    main()
