"""How much a text's answer moves with the texts that share its batch, in-process or through the server.

    .venv/bin/python -m sentiment.perf.batch_drift [--sentences 1024] [--batch 8 64] [--precision int8]
    .venv/bin/python -m sentiment.perf.batch_drift --served [--clients 8]       # against `make run`

Each review sentence is predicted alone, then in batches (`--served`: in requests of that many texts,
sent by concurrent clients so that TorchServe also batches requests together); prints the median,
99th percentile and largest change of any class probability, how many sentiments differ and how
many answers are identical. `int8-per-pass` (PyTorch's dynamic quantization) picks one activation
scale per forward pass, so its answers move; `int8` (per-token scales, packed forward) and fp32 do not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from sentiment.console import command
from sentiment.project import DEFAULT_CONFIG, DEFAULT_MODEL
from sentiment.serving.classifier import SentimentClassifier
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import review_sentences

log = logging.getLogger(__name__)


def in_process(precision: str):
    """alone(texts) and together(texts, size): probabilities dicts from the classifier, one thread."""
    config = dataclasses.replace(ModelConfig.from_file(DEFAULT_CONFIG), precision=precision, threads=1)
    classifier = SentimentClassifier(config).load()

    def alone(texts):
        return [classifier.predict([text])[0].to_dict() for text in texts], classifier.precision

    def together(texts, size):
        return [
            p.to_dict() for start in range(0, len(texts), size) for p in classifier.predict(texts[start : start + size])
        ]

    return alone, together


def served(model: str, clients: int):
    """The same through the running server: single texts as text/plain, batches as {"texts": [...]}."""
    from sentiment.perf.loadtest import Client, running_server

    _, url, headers = running_server(model)

    def send(body: bytes, content_type: str):
        client = Client(url, headers)
        for _ in range(30):
            status, answer = client.send(body, content_type)
            if status != 503:
                break
            # The batch this request landed in was full: a client waits as Retry-After says (1 s), and retries.
            time.sleep(1.0)
        if status != 200:
            raise SystemExit(f"HTTP {status}: {answer[:200]!r}")
        return json.loads(answer)

    def alone(texts):
        with ThreadPoolExecutor(clients) as pool:
            return list(pool.map(lambda text: send(text.encode(), "text/plain; charset=utf-8"), texts)), "served"

    def together(texts, size):
        chunks = [texts[start : start + size] for start in range(0, len(texts), size)]
        with ThreadPoolExecutor(clients) as pool:
            bodies = pool.map(lambda chunk: send(json.dumps({"texts": chunk}).encode(), "application/json"), chunks)
            return [p for body in bodies for p in body["predictions"]]

    return alone, together


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=1024)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--precision", default="auto", help="in-process only: the served one is the archive's")
    parser.add_argument("--served", action="store_true", help="through the running server (make run)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients, with --served")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()

    alone, together = served(args.model, args.clients) if args.served else in_process(args.precision)
    texts = review_sentences(args.sentences)
    singles, how = alone(texts)
    for size in args.batch:
        batched = together(texts, size)
        shifts = sorted(
            max(abs(a["probabilities"][k] - b["probabilities"][k]) for k in a["probabilities"])
            for a, b in zip(singles, batched, strict=True)
        )
        differ = sum(a["sentiment"] != b["sentiment"] for a, b in zip(singles, batched, strict=True))
        identical = sum(a == b for a, b in zip(singles, batched, strict=True))
        log.info(
            "%s, batches of %d: probability shift median %.6f, p99 %.6f, max %.6f; sentiment differs for %d of %d; "
            "answer identical for %d",
            how,
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
