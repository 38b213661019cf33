"""Side by side, on the same sentences and machine, in one run:

  (a) ceiling   the model in-process at its best batch size, in the served precision, sustained as long as
                the served rows, in the better of two layouts (one process on every core; one per core)
  (b) project   TorchServe with this project's defaults (config.json + config.properties)
  (c) tutorial  TorchServe the tutorial's way: batch size 1, every text padded to 160 tokens, fp32
  (d) batches   TorchServe with the defaults, clients sending 32 texts per request ({"texts": [...]}),
                64 on a GPU

    sentiment-bench [--seconds 15] [--concurrency 16] [--variant NAME:KEY=VALUE,...] [--against PRECISION]
                                                                                        # `make bench`

Prints throughput, idle single-request latency and worker memory, the ratios b/c, b/a and d/a, and
writes reports/bench.json and reports/bench.md. The load comes from
wrk where it is installed (it costs the machine far less CPU than Python clients), else from
Python threads; each row says which, and how much of the machine it used. A served row's texts/s is
the server's steady rate: the requests TorchServe received during the middle `--seconds` of a load
that runs 2 s longer on each side (the generator's own count, ramp and tail included, is kept in
bench.json as `generator_throughput`).

On a GPU the defaults change: 256 clients (64 for batch requests), the GPU's serving settings
(model-config.yaml's gpu section, config.gpu.properties), the tutorial row left out unless asked
for, and a table of fp16 against fp32 at batch sizes 1 to 512, first pass of each shape included. Each extra
`--variant` is another TorchServe configuration measured the same way. A KEY is a config.json key
(`--variant fp32:PRECISION=fp32`), a model-config.yaml setting (`--variant batch16:batchSize=16`,
`--variant 1x2:minWorkers=1,maxWorkers=1,THREADS=2`), the load's `clients` or `texts` per request
(`--variant big:texts=64,clients=64`), a key of config.json's GPU section (`--variant t4:GPU.THREADS=4`),
or else a config.properties key
(`--variant netty1:number_of_netty_threads=1`).

`--against PRECISION` (e.g. `int8-per-pass`, the batch-dependent int8 the default replaced) measures
(a), (b) and (d) once more in that precision, each right after the default's, and prints the
default's figures as ratios of those.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import multiprocessing
import os
import queue
import re
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sentiment.console import command
from sentiment.ops.archive import build, model_yaml_for
from sentiment.ops.local_server import LocalServer
from sentiment.perf import wrk
from sentiment.perf.loadtest import Client, closed_loop
from sentiment.project import DEFAULT_CONFIG, DEFAULT_MODEL, REPORTS_DIR
from sentiment.serving.classifier import SentimentClassifier, choose_device
from sentiment.serving.config import ModelConfig
from sentiment.training.corpora import review_sentences

log = logging.getLogger(__name__)
# TorchServe's per-model settings (model-config.yaml) that a variant may change.
MODEL_SETTINGS = {"minWorkers", "maxWorkers", "batchSize", "maxBatchDelay", "responseTimeout"}
# MAX_HANDLE_TOKENS must hold a full request of MAX_BATCH_TEXTS texts of 160 tokens.
TUTORIAL = {
    "PRECISION": "fp32",
    "PADDING": "max_length",
    "MAX_SEQUENCE_LEN": 160,
    "MAX_HANDLE_TOKENS": 10240,
    "batchSize": 1,
}
# Row (d): clients that send lists of texts, {"texts": [...]}, on the CPU and on a GPU.
BATCH_REQUEST_TEXTS = {"cpu": 32, "gpu": 64}
PRECISION_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Seconds of load before and after a served row's measured window (its ramp and its tail).
STEADY_MARGIN = 2.0
# TorchServe's count of the inference requests its models received.
RECEIVED = "ts_inference_requests_total"


@dataclass
class Row:
    name: str
    settings: str
    throughput: float  # texts per second
    idle_p50_ms: float | None  # one request at a time on an idle server
    workers: int | None  # worker processes TorchServe ran
    worker_rss_mb: float | None  # resident memory per worker (mean)
    generator_cpu_share: float | None = None
    generator: str | None = None  # wrk or python
    errors: int | None = None  # non-200 answers and failed connections during the throughput run
    p99_ms: float | None = None  # under the throughput run's load
    requests_per_second: float | None = None
    worker_devices: list[str] | None = None  # where each worker loaded the model, from its log
    generator_throughput: float | None = None  # texts/s as the generator counted them, ramp and tail included


def ceiling(
    sentences: list[str], seconds: float, batch_sizes=(8, 16, 32, 64, 256, 512), config_path: Path = DEFAULT_CONFIG
) -> Row:
    """The model in-process, with no server in the way. A quick sweep (one pass over 1,024 sentences per
    batch size, one process on every core) picks the batch size; then that batch size runs for `seconds`
    over all the sentences, as the served rows do, in each layout the machine allows: one process on
    every core, and on a CPU one single-thread process per core, as TorchServe's workers run. The best
    sustained rate is the ceiling. The sweep's own figure would overstate it: it is the largest of six
    one-second samples on a noisy machine."""
    import torch

    # The whole machine for one process: torch's default threads (every core), not the server's THREADS.
    config = dataclasses.replace(ModelConfig.from_file(config_path), threads=0)
    device = choose_device(0, torch.cuda.is_available())  # where a worker with gpu_id 0 runs
    classifier = SentimentClassifier(config, device).load()
    classifier.predict(sentences[:32])  # warm-up
    sweep: dict[int, float] = {}
    swept = sentences[:1024]
    for batch in batch_sizes:
        started = time.perf_counter()
        for i in range(0, len(swept), batch):
            classifier.predict(swept[i : i + batch])
        sweep[batch] = len(swept) / (time.perf_counter() - started)
        log.info("in-process, batch %d: %.1f texts/s (one pass)", batch, sweep[batch])
    best_batch = max(sweep, key=sweep.get)
    threads, precision = torch.get_num_threads(), classifier.precision
    del classifier
    layouts = {f"1 process x {threads} threads": (1, 0)}
    if device == "cpu":
        layouts[f"{os.cpu_count()} processes x 1 thread"] = (os.cpu_count() or 1, 1)
    rates = {}
    for layout, (processes, process_threads) in layouts.items():
        rates[layout] = sustained_rate(sentences, best_batch, seconds, processes, process_threads, config_path)
        log.info("in-process, batch %d, %s, %.0f s: %.1f texts/s", best_batch, layout, seconds, rates[layout])
    layout = max(rates, key=rates.get)
    measured = "; ".join(f"{name}: {rate:.1f}" for name, rate in rates.items())
    settings = (
        f"batch {best_batch}, {precision}, {device}, "
        f"{layout}, sustained {seconds:g} s ({measured}; the sweep's one pass: {sweep[best_batch]:.1f})"
    )
    return Row("(a) in-process ceiling", settings, round(rates[layout], 1), None, None, None)


def sustained_rate(
    sentences: list[str], batch: int, seconds: float, processes: int, threads: int, config_path: Path = DEFAULT_CONFIG
) -> float:
    """Texts per second from `processes` processes of `threads` threads each (0: torch's default), each
    predicting batches of `batch` sentences in turn for `seconds`, all starting together once loaded."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no torch thread pool inherited
    results, start = context.Queue(), context.Barrier(processes)
    workers = [
        context.Process(target=_predict_for, args=(sentences, batch, seconds, threads, config_path, k, results, start))
        for k in range(processes)
    ]
    for worker in workers:
        worker.start()
    rates: list[float] = []
    try:
        while len(rates) < processes:
            try:
                rates.append(results.get(timeout=5))
            except queue.Empty:
                failed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if failed:  # the others would wait at the barrier for ever
                    raise RuntimeError(f"an in-process ceiling process failed (exit codes {failed})") from None
    finally:
        for worker in workers:
            if len(rates) < processes:
                worker.terminate()
            worker.join()
    return sum(rates)


def _predict_for(sentences, batch, seconds, threads, config_path, offset, results, start) -> None:
    import torch

    config = dataclasses.replace(ModelConfig.from_file(config_path), threads=threads)
    classifier = SentimentClassifier(config, choose_device(0, torch.cuda.is_available())).load()
    classifier.predict(sentences[:batch])  # warm-up
    start.wait()
    i = offset * len(sentences) // start.parties  # each process its own part of the sentences
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        classifier.predict([sentences[(i + k) % len(sentences)] for k in range(batch)])
        done, i = done + batch, i + batch
    results.put(done / (time.perf_counter() - started))


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


def worker_devices(server: LocalServer) -> list[str]:
    """Where each worker loaded the model, as its log line says ("loaded ... on cuda:0 in fp16")."""
    log_text = (server.log_dir / "model_log.log").read_text(errors="replace")
    found = dict(re.findall(r"W-(\d+)-\S+ MODEL_LOG - loaded .* on (\S+) in ", log_text))
    return [found[worker] for worker in sorted(found)]


def steady_rate(server: LocalServer, run_load, seconds: float, margin: float = STEADY_MARGIN):
    """Run `run_load(duration)` for `seconds` plus `margin` on each side, and count the requests the server
    received between the margins: its rate in the steady state, as the ceiling's is.

    A closed loop's generator divides the answers that came before its deadline by its duration, which
    leaves out the work on the requests in flight when it stops and the ramp before the first answers;
    for row (d)'s batches of 32, side by side in one run, that read 1-3% below the steady rate here. In
    a closed loop every answer is followed by the next request, so past the ramp the requests received
    per second are the requests answered per second. Returns the generator's result and that rate."""
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        future = pool.submit(run_load, seconds + 2 * margin)
        time.sleep(margin)  # the measurement's clock, not a wait for readiness: the server is up and warm
        first, window_start = server.metric_total(RECEIVED), time.monotonic()
        time.sleep(max(0.0, started + margin + seconds - time.monotonic()))
        last, window_end = server.metric_total(RECEIVED), time.monotonic()
        result = future.result()
    return result, (last - first) / (window_end - window_start)


def load(url, headers, sentences, concurrency, seconds, texts_per_request, generator):
    """A closed loop of single-text (text/plain) or batch ({"texts": [...]}) requests."""
    if generator == "python":
        return closed_loop(url, headers, sentences, concurrency, seconds, texts_per_request)
    if texts_per_request == 1:
        return wrk.closed_loop(url, headers, sentences, "text/plain; charset=utf-8", concurrency, seconds)
    bodies = [
        json.dumps({"texts": sentences[i : i + texts_per_request]})
        for i in range(0, len(sentences) - texts_per_request + 1, texts_per_request)
    ]
    return wrk.closed_loop(url, headers, bodies, "application/json", concurrency, seconds)


def measure_server(
    tmp: Path,
    name: str,
    changes: dict,
    sentences,
    seconds: float,
    concurrency: int,
    texts_per_request: int = 1,
    generator: str = "python",
) -> Row:
    folder = Path(tempfile.mkdtemp(dir=tmp))
    base = ModelConfig.from_file(DEFAULT_CONFIG)
    config_keys = {k: v for k, v in changes.items() if k in ModelConfig.json_keys()}
    gpu_keys = {k.removeprefix("GPU."): v for k, v in changes.items() if k.startswith("GPU.")}
    if gpu_keys:  # GPU.THREADS=4: a key of config.json's GPU section
        config_keys["GPU"] = {**base.gpu, **gpu_keys}
    config = base.with_keys(**config_keys).write(folder / "config.json")
    model_settings = {k: v for k, v in changes.items() if k in MODEL_SETTINGS}
    archive = build(config, folder / "store", DEFAULT_MODEL, model_settings, model_yaml_for(DEFAULT_CONFIG))
    # Keys neither config.json nor model-config.yaml know are TorchServe properties.
    properties = {
        k: str(v)
        for k, v in changes.items()
        if k not in config_keys and k not in model_settings and not k.startswith("GPU.")
    }
    server = LocalServer.on_free_ports(folder / "run", archive.parent, **properties)
    server.start(timeout=180)
    try:
        latency = idle_latency_ms(server, sentences)
        url = f"{server.url('inference')}/predictions/sentiment"
        headers = server.auth_header("inference")
        # Warm-up from Python clients, which wait for every answer: wrk stops at its deadline and leaves
        # its last requests queued, and with a short queue those made the measured run's first
        # requests get 503 and cost the run their work (the tutorial row: 271 of 873 requests).
        closed_loop(url, headers, sentences, concurrency, 2, texts_per_request)

        def run_load(duration: float):
            return load(url, headers, sentences, concurrency, duration, texts_per_request, generator)

        result, received_per_second = steady_rate(server, run_load, seconds)
        if result.errors:
            log.warning("%s: %d errors of %d requests", name, result.errors, result.requests)
        workers, rss = worker_rss_mb(server)
        devices = worker_devices(server)
    finally:
        server.stop()
    described = ", ".join(f"{k}={v}" for k, v in changes.items()) or "defaults"
    if texts_per_request > 1:
        described += f', {{"texts": [...]}} of {texts_per_request}'
    described += f", {concurrency} clients"
    answered = received_per_second * (1 - result.errors / result.requests) if result.requests else 0.0
    return Row(
        name,
        described,
        round(answered * texts_per_request, 1),
        latency,
        workers,
        rss,
        result.generator_cpu_share,
        generator,
        result.errors,
        result.p99_ms,
        round(answered, 1),
        devices,
        round(result.throughput * texts_per_request, 1),
    )


def markdown(rows: list[Row], a: Row, b: Row, c: Row | None, d: Row, texts_per_request: int, command: str) -> str:
    lines = [
        "| configuration | settings | texts/s | errors | p99 under load | idle p50 latency | workers x RSS each |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        latency = f"{r.idle_p50_ms:.1f} ms" if r.idle_p50_ms is not None else "-"
        rss = f"{r.workers} x {r.worker_rss_mb:.0f} MB" if r.worker_rss_mb is not None else "-"
        p99 = f"{r.p99_ms:.1f} ms" if r.p99_ms is not None else "-"
        errors = str(r.errors) if r.errors is not None else "-"
        lines.append(f"| {r.name} | {r.settings} | {r.throughput:.1f} | {errors} | {p99} | {latency} | {rss} |")
    lines.append("")
    ratios = [] if c is None else [f"b/c = **{b.throughput / c.throughput:.1f}x** the tutorial's throughput"]
    ratios += [
        f"b/a = **{b.throughput / a.throughput:.0%}** of the in-process ceiling",
        f"d/a = **{d.throughput / a.throughput:.0%}** with {texts_per_request} texts per request",
    ]
    lines.append("; ".join(ratios) + ".")
    generators = sorted({r.generator for r in rows if r.generator})
    shares = ", ".join(f"{r.generator_cpu_share:.0%}" for r in rows if r.generator_cpu_share is not None)
    lines.append(f"Load from {' and '.join(generators)}, using {shares} of the machine's CPU. Produced by `{command}`.")
    return "\n".join(lines)


def precision_sweep(
    sentences: list[str],
    repeats: int = 5,
    batches=PRECISION_BATCHES,
    device: str = "cuda:0",
    config_path: Path = DEFAULT_CONFIG,
) -> list[dict]:
    """On a GPU: fp16 against fp32 (and fp16 with cuDNN's attention, which the classifier turns off)
    at each batch size, texts/s on the first pass of each new (batch, length) shape and warm."""
    import torch

    config = dataclasses.replace(ModelConfig.from_file(config_path), threads=0)
    rows = []
    for k, (name, precision, cudnn) in enumerate(
        (("fp32", "fp32", False), ("fp16", "fp16", False), ("fp16+cudnn", "fp16", True))
    ):
        classifier = SentimentClassifier(dataclasses.replace(config, precision=precision), device).load()
        torch.backends.cuda.enable_cudnn_sdp(cudnn)
        offset = sum(batches) * k  # other texts, so other padded lengths: shapes this process has not run
        for batch in batches:
            texts = sentences[offset : offset + batch]
            offset += batch
            started = time.perf_counter()
            classifier.predict(texts)
            first = time.perf_counter() - started
            started = time.perf_counter()
            for _ in range(repeats):
                classifier.predict(texts)
            warm = (time.perf_counter() - started) / repeats
            rows.append(
                {
                    "variant": name,
                    "batch": batch,
                    "first_texts_per_s": round(batch / first),
                    "warm_texts_per_s": round(batch / warm),
                }
            )
            log.info("%s batch %d: first pass %.0f texts/s, warm %.0f", name, batch, batch / first, batch / warm)
        del classifier
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    torch.backends.cuda.enable_cudnn_sdp(False)
    return rows


def precision_markdown(rows: list[dict]) -> str:
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    batches = list(dict.fromkeys(r["batch"] for r in rows))
    by = {(r["variant"], r["batch"]): r for r in rows}
    header = "| batch | " + " | ".join(f"{v} first / warm" for v in variants) + " | fp16 >= fp32 (first, warm) |"
    lines = [header, "|---:|" + "---:|" * (len(variants) + 1)]
    for batch in batches:
        cells = [f"{by[v, batch]['first_texts_per_s']:,} / {by[v, batch]['warm_texts_per_s']:,}" for v in variants]
        fp16, fp32 = by["fp16", batch], by["fp32", batch]
        verdict = (
            f"{'yes' if fp16['first_texts_per_s'] >= fp32['first_texts_per_s'] else 'NO'}, "
            f"{'yes' if fp16['warm_texts_per_s'] >= fp32['warm_texts_per_s'] else 'NO'}"
        )
        lines.append(f"| {batch} | " + " | ".join(cells) + f" | {verdict} |")
    return "\n".join(lines)


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, assignments = text.partition(":")
    changes = {}
    for assignment in filter(None, assignments.split(",")):
        key, value = assignment.split("=", 1)
        changes[key] = int(value) if value.isdigit() else value
    return name, changes


@command
def main() -> None:
    import sys

    import torch

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per configuration")
    parser.add_argument("--concurrency", type=int, help="clients for the throughput runs (16; 256 on a GPU)")
    parser.add_argument("--batch-concurrency", type=int, help="clients sending batch requests (16; 64 on a GPU)")
    parser.add_argument("--sentences", type=int, default=4096)
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk if installed")
    parser.add_argument("--tutorial", choices=("auto", "yes", "no"), default="auto", help="row (c); auto: not on a GPU")
    parser.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... (see above)")
    parser.add_argument("--against", metavar="PRECISION", help="(a), (b), (d) again in this PRECISION, for ratios")
    parser.add_argument("--out", type=Path, default=REPORTS_DIR)
    args = parser.parse_args()
    if args.against and args.against not in ModelConfig.__dataclass_fields__["precision"].metadata["choices"]:
        parser.error(
            f"--against must be a PRECISION: {ModelConfig.__dataclass_fields__['precision'].metadata['choices']}"
        )

    device = "gpu" if torch.cuda.is_available() else "cpu"
    concurrency = args.concurrency or (256 if device == "gpu" else 16)
    batch_concurrency = args.batch_concurrency or (64 if device == "gpu" else concurrency)
    generator = ("wrk" if wrk.available() else "python") if args.generator == "auto" else args.generator
    texts_per_request = BATCH_REQUEST_TEXTS[device]
    tutorial = args.tutorial == "yes" or (args.tutorial == "auto" and device == "cpu")
    sentences = review_sentences(args.sentences)
    log.info(
        "%d review sentences on %s, load from %s: %d clients (%d for batch requests), %.0f s per configuration",
        len(sentences),
        torch.cuda.get_device_name(0) if device == "gpu" else "the CPU",
        generator,
        concurrency,
        batch_concurrency,
        args.seconds,
    )
    sweep = precision_sweep(sentences) if device == "gpu" else []
    against: dict[str, Row] = {}
    with tempfile.TemporaryDirectory(prefix="sentiment-bench-") as tmp:
        tmp = Path(tmp)
        a = ceiling(sentences, args.seconds)
        if args.against:
            other = ModelConfig.from_file(DEFAULT_CONFIG).with_keys(PRECISION=args.against)
            against["a"] = ceiling(
                sentences, args.seconds, config_path=other.write(Path(tempfile.mkdtemp(dir=tmp)) / "config.json")
            )
            against["a"].name += f", {args.against}"

        def served(name, changes, clients=concurrency, per_request=1):
            row = measure_server(tmp, name, changes, sentences, args.seconds, clients, per_request, generator)
            log.info("ROW %s", json.dumps(dataclasses.asdict(row)))  # kept should a later row fail
            return row

        b = served("(b) TorchServe, project defaults", {})
        if args.against:
            against["b"] = served(f"(b) TorchServe, {args.against}", {"PRECISION": args.against})
        c = served("(c) TorchServe, tutorial way", TUTORIAL) if tutorial else None
        d = served("(d) TorchServe, batch requests", {}, batch_concurrency, texts_per_request)
        if args.against:
            against["d"] = served(
                f"(d) TorchServe, batch requests, {args.against}",
                {"PRECISION": args.against},
                batch_concurrency,
                texts_per_request,
            )
        extra = list(against.values())
        for name, changes in map(parse_variant, args.variant):
            # Two keys are the load's, not the server's: clients, and texts per request.
            clients, per_request = changes.pop("clients", concurrency), changes.pop("texts", 1)
            extra.append(served(f"variant {name}", changes, clients, per_request))
    rows = [r for r in (a, b, c, d, *extra) if r is not None]
    command = "make bench" + (" ARGS=..." if len(sys.argv) > 1 else "")
    table = markdown(rows, a, b, c, d, texts_per_request, command)
    ratios = {key: {"a": a, "b": b, "d": d}[key].throughput / row.throughput for key, row in against.items()}
    if ratios:
        table += (
            "\n\nThe defaults against "
            + args.against
            + ": "
            + ", ".join(f"({key}) **{ratio:.0%}**" for key, ratio in ratios.items())
            + "."
        )
    if sweep:
        table += "\n\nfp16 and fp32 in-process, texts/s (first pass of each new shape / warm):\n\n"
        table += precision_markdown(sweep)
    log.info("\n%s\n", table)
    for r in rows[1:]:
        log.info("%s: workers on %s", r.name, ", ".join(r.worker_devices or []))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.md").write_text(table + "\n")
    report = {
        "device": torch.cuda.get_device_name(0) if device == "gpu" else "cpu",
        "sentences": len(sentences),
        "concurrency": concurrency,
        "batch_concurrency": batch_concurrency,
        "generator": generator,
        "seconds": args.seconds,
        "rows": [dataclasses.asdict(r) for r in rows],
        "precision_sweep": sweep,
        "b_over_c": b.throughput / c.throughput if c else None,
        "b_over_a": b.throughput / a.throughput,
        "d_over_a": d.throughput / a.throughput,
        "against": args.against,
        "defaults_over_against": ratios,
        "argv": sys.argv[1:],
    }
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
