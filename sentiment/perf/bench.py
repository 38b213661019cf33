"""Side by side, on the same sentences and machine, in one run:

  (a) ceiling   the model in-process at its best batch size, in the served precision
  (b) project   TorchServe with this project's defaults (config.json + config.properties)
  (c) tutorial  TorchServe the tutorial's way: batch size 1, every text padded to 160 tokens, fp32
  (d) batches   TorchServe with the defaults, clients sending 32 texts per request ({"texts": [...]})

    sentiment-bench [--seconds 15] [--concurrency 16] [--variant NAME:KEY=VALUE,...]    # `make bench`

Prints throughput, idle single-request latency and worker memory, the ratios b/c, b/a and d/a, and
writes reports/bench.json and reports/bench.md (the table the README shows). Each extra
`--variant` is another TorchServe configuration measured the same way. A KEY is a config.json key
(`--variant fp32:PRECISION=fp32`), a model-config.yaml setting (`--variant batch16:batchSize=16`,
`--variant 1x2:minWorkers=1,maxWorkers=1,THREADS=2`) or else a config.properties key
(`--variant netty1:number_of_netty_threads=1`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sentiment.ops.archive import build, model_yaml_for
from sentiment.ops.local_server import LocalServer
from sentiment.perf.loadtest import Client, closed_loop
from sentiment.project import DEFAULT_CONFIG, DEFAULT_MODEL, REPORTS_DIR
from sentiment.serving.classifier import SentimentClassifier, choose_device
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import review_sentences

log = logging.getLogger(__name__)
# TorchServe's per-model settings (model-config.yaml) that a variant may change.
MODEL_SETTINGS = {"minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"}
TUTORIAL = {"PRECISION": "fp32", "PADDING": "max_length", "MAX_SEQUENCE_LEN": 160, "batchSize": 1}
BATCH_REQUEST_TEXTS = 32  # row (d): clients that send lists of texts, {"texts": [...]}


@dataclass
class Row:
    name: str
    settings: str
    throughput: float  # texts per second
    idle_p50_ms: float | None  # one request at a time on an idle server
    workers: int | None  # worker processes TorchServe ran
    worker_rss_mb: float | None  # resident memory per worker (mean)
    generator_cpu_share: float | None = None


def ceiling(sentences: list[str], batch_sizes=(8, 16, 32, 64, 256)) -> Row:
    import torch

    # The whole machine for one process: torch's default threads (every core), not the server's THREADS.
    config = dataclasses.replace(ModelConfig.from_file(DEFAULT_CONFIG), threads=0)
    device = choose_device(0, torch.cuda.is_available())  # where a worker with gpu_id 0 runs
    classifier = SentimentClassifier(config, device).load()
    classifier.predict(sentences[:32])  # warm-up
    best, best_batch = 0.0, 0
    for batch in batch_sizes:
        started = time.perf_counter()
        for i in range(0, len(sentences), batch):
            classifier.predict(sentences[i : i + batch])
        rate = len(sentences) / (time.perf_counter() - started)
        log.info("in-process, batch %d: %.1f texts/s", batch, rate)
        if rate > best:
            best, best_batch = rate, batch
    settings = f"batch {best_batch}, {classifier.precision}, {device}, {torch.get_num_threads()} threads"
    return Row("(a) in-process ceiling", settings, round(best, 1), None, None, None)


def worker_rss_mb(server: LocalServer) -> tuple[int, float]:
    """How many Python workers run, and the resident memory of each (mean; the JVM is left out)."""
    workers = server.processes()[1:]
    return len(workers), round(sum(p.memory_info().rss for p in workers) / len(workers) / 1e6, 0)


def idle_latency_ms(server: LocalServer, sentences: list[str], n: int = 60) -> float:
    client = Client(f"{server.url('inference')}/predictions/sentiment", server.auth_header("inference"))
    timings = []
    for text in sentences[:n]:
        started = time.perf_counter()
        assert client.post(text) == 200
        timings.append(time.perf_counter() - started)
    return round(statistics.median(timings[5:]) * 1000, 1)


def measure_server(
    tmp: Path, name: str, changes: dict, sentences, seconds: float, concurrency: int, texts_per_request: int = 1
) -> Row:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    config_keys = {k: v for k, v in changes.items() if k in ModelConfig.json_keys()}
    config = ModelConfig.from_file(DEFAULT_CONFIG).with_keys(**config_keys).write(folder / "config.json")
    model_settings = {k: v for k, v in changes.items() if k in MODEL_SETTINGS}
    archive = build(config, folder / "store", DEFAULT_MODEL, model_settings, model_yaml_for(DEFAULT_CONFIG))
    # Keys neither config.json nor model-config.yaml know are TorchServe properties.
    properties = {k: str(v) for k, v in changes.items() if k not in config_keys and k not in model_settings}
    server = LocalServer.on_free_ports(folder / "run", archive.parent, **properties)
    server.start(timeout=180)
    try:
        latency = idle_latency_ms(server, sentences)
        url = f"{server.url('inference')}/predictions/sentiment"
        headers = server.auth_header("inference")
        closed_loop(url, headers, sentences, concurrency, 2, texts_per_request)  # warm-up
        result = closed_loop(url, headers, sentences, concurrency, seconds, texts_per_request)
        if result.errors:
            log.warning("%s: %d errors of %d requests", name, result.errors, result.requests)
        workers, rss = worker_rss_mb(server)
    finally:
        server.stop()
    described = ", ".join(f"{k}={v}" for k, v in changes.items()) or "defaults"
    if texts_per_request > 1:
        described += f', {{"texts": [...]}} of {texts_per_request}'
    texts_per_second = round(result.throughput * texts_per_request, 1)
    return Row(name, described, texts_per_second, latency, workers, rss, result.generator_cpu_share)


def markdown(rows: list[Row], a: Row, b: Row, c: Row, d: Row, command: str) -> str:
    lines = [
        "| configuration | settings | texts/s | idle p50 latency | workers x RSS each |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        latency = f"{r.idle_p50_ms:.1f} ms" if r.idle_p50_ms is not None else "-"
        rss = f"{r.workers} x {r.worker_rss_mb:.0f} MB" if r.worker_rss_mb is not None else "-"
        lines.append(f"| {r.name} | {r.settings} | {r.throughput:.1f} | {latency} | {rss} |")
    lines.append("")
    lines.append(
        f"b/c = **{b.throughput / c.throughput:.1f}x** the tutorial's throughput; "
        f"b/a = **{b.throughput / a.throughput:.0%}** of the in-process ceiling; "
        f"d/a = **{d.throughput / a.throughput:.0%}** with {BATCH_REQUEST_TEXTS} texts per request."
    )
    lines.append(f"Produced by `{command}`.")
    return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, assignments = text.partition(":")
    changes = {}
    for assignment in filter(None, assignments.split(",")):
        key, value = assignment.split("=", 1)
        changes[key] = int(value) if value.isdigit() else value
    return name, changes


def main() -> None:
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="closed-loop time per server configuration")
    parser.add_argument("--concurrency", type=int, default=16, help="clients for the throughput runs")
    parser.add_argument("--sentences", type=int, default=1024)
    parser.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... (see above)")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR)
    args = parser.parse_args()

    sentences = review_sentences(args.sentences)
    log.info(
        "%d review sentences, %d clients, %.0f s per server configuration",
        len(sentences),
        args.concurrency,
        args.seconds,
    )
    a = ceiling(sentences)
    with tempfile.TemporaryDirectory(prefix="sentiment-bench-") as tmp:
        tmp = Path(tmp)
        b = measure_server(tmp, "(b) TorchServe, project defaults", {}, sentences, args.seconds, args.concurrency)
        c = measure_server(tmp, "(c) TorchServe, tutorial way", TUTORIAL, sentences, args.seconds, args.concurrency)
        d = measure_server(
            tmp, "(d) TorchServe, batch requests", {}, sentences, args.seconds, args.concurrency, BATCH_REQUEST_TEXTS
        )
        extra = [
            measure_server(tmp, f"variant {name}", changes, sentences, args.seconds, args.concurrency)
            for name, changes in map(parse_variant, args.variant)
        ]
    rows = [a, b, c, d, *extra]
    command = "make bench" + (" ARGS=..." if args.variant else "")
    table = markdown(rows, a, b, c, d, command)
    log.info("\n%s\n", table)
    for r in rows[1:]:
        log.info("%s: load generator used %.0f%% of the machine", r.name, 100 * (r.generator_cpu_share or 0))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(table + "\n")
    report = {
        "sentences": len(sentences),
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "rows": [r.__dict__ for r in rows],
        "b_over_c": b.throughput / c.throughput,
        "b_over_a": b.throughput / a.throughput,
        "d_over_a": d.throughput / a.throughput,
        "argv": sys.argv[1:],
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
