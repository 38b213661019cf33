"""Load-test the running server with real review sentences: closed and open loop.

    sentiment-loadtest [--concurrency 1 2 4 8 16 32] [--rates 25 50 ... 350]
                       [--seconds 10] [--out reports/]          # what `make loadtest` runs

Closed loop: N clients each send a request as soon as their previous one returned. Open loop:
requests leave on a fixed schedule whatever the server does, and latency counts from the
scheduled time, so queueing shows. Sentences come from the VADER movie-review and tweet sets
(training corpora, never the reserved test set). Each level reports throughput, p50/p95/p99
latency, errors and the load generator's own CPU share of the machine, since it shares the
cores with the server. Writes reports/loadtest.json and reports/loadtest.png.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import logging
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from tqdm import tqdm

from sentiment.console import command
from sentiment.ops.local_server import LocalServer
from sentiment.project import DEFAULT_MODEL, REPORTS_DIR
from sentiment.training.corpora import review_sentences

log = logging.getLogger(__name__)


class Client:
    """One keep-alive HTTP connection: http.client costs far less CPU per request than requests."""

    def __init__(self, url: str, headers: dict[str, str], timeout: float = 60.0):
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname, parts.port, parts.path
        self.headers = headers
        self.timeout = timeout
        self.connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def post(self, text: str) -> int:
        return self.send(text.encode(), "text/plain; charset=utf-8")[0]

    def send(self, body: bytes, content_type: str | None, method: str = "POST", query: str = "") -> tuple[int, bytes]:
        """The status and body of one request; status 0 when the connection failed."""
        headers = {**self.headers, **({"Content-Type": content_type} if content_type else {})}
        try:
            self.connection.request(method, self.path + query, body=body, headers=headers)
            response = self.connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            return 0, b""


@dataclass
class LevelResult:
    mode: str  # closed (concurrency) or open (arrival rate)
    level: float  # clients, or requests per second offered
    requests: int
    errors: int
    seconds: float
    throughput: float  # successful requests per second
    p50_ms: float
    p95_ms: float
    p99_ms: float  # of the successful requests
    generator_cpu_share: float  # of the whole machine (all cores)
    rejected: int = 0  # 503: the queue was full
    rejected_p50_ms: float = float("nan")  # how fast a rejection came back


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def summarize(mode, level, latencies, statuses, seconds, cpu_seconds) -> LevelResult:
    ok = [lat for lat, status in zip(latencies, statuses, strict=True) if status == 200]
    rejected = [lat for lat, status in zip(latencies, statuses, strict=True) if status == 503]
    return LevelResult(
        mode=mode,
        level=level,
        requests=len(statuses),
        errors=sum(status != 200 for status in statuses),
        seconds=round(seconds, 2),
        throughput=round(len(ok) / seconds, 1),
        p50_ms=round(percentile(ok, 50) * 1000, 1),
        p95_ms=round(percentile(ok, 95) * 1000, 1),
        p99_ms=round(percentile(ok, 99) * 1000, 1),
        generator_cpu_share=round(cpu_seconds / seconds / (os.cpu_count() or 1), 3),
        rejected=len(rejected),
        rejected_p50_ms=round(percentile(rejected, 50) * 1000, 1),
    )


def cpu_time() -> float:
    times = os.times()
    return times.user + times.system


def closed_loop(url, headers, sentences, concurrency: int, seconds: float, texts_per_request: int = 1):
    """`concurrency` clients, each sending back to back for `seconds`: one text per request as
    text/plain, or batch requests ({"texts": [...]}) of `texts_per_request` texts."""
    latencies: list[float] = []
    statuses: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    # disable=None: a bar on a terminal, nothing in a log file or CI output.
    progress = tqdm(total=None, desc=f"closed loop, {concurrency} clients", unit="req", leave=False, disable=None)

    def client_loop(offset: int) -> None:
        client = Client(url, headers)
        i = offset
        while time.monotonic() < deadline:
            started = time.perf_counter()
            if texts_per_request == 1:
                status = client.post(sentences[i % len(sentences)])
            else:
                texts = [sentences[(i * texts_per_request + k) % len(sentences)] for k in range(texts_per_request)]
                status = client.send(json.dumps({"texts": texts}).encode(), "application/json")[0]
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses.append(status)
            progress.update()
            i += concurrency

    cpu_before, started = cpu_time(), time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client_loop, range(concurrency)))
    wall = time.monotonic() - started
    progress.close()
    return summarize("closed", concurrency, latencies, statuses, wall, cpu_time() - cpu_before)


def open_loop(url, headers, sentences, rate: float, seconds: float, max_in_flight: int = 256):
    """Requests leave every 1/rate seconds; latency counts from the scheduled departure.

    One uvloop event loop on up to `max_in_flight` keep-alive connections, with every request's
    bytes built beforehand. The generator shares the cores with the server, so its cost shows in the
    server's figures: at 3x overload here a thread per request with http.client took 24% of the
    machine, asyncio's own loop 15-16% and uvloop 10-11%; the server's accepted throughput was 12%
    and 21% higher with uvloop than with asyncio's loop in two alternated rounds."""
    parts = urlsplit(url)
    requests_bytes = [_http_request(parts, headers, text) for text in sentences]
    total = int(rate * seconds)
    progress = tqdm(total=total, desc=f"open loop, {rate:g} req/s", unit="req", leave=False, disable=None)
    cpu_before = cpu_time()
    address = (parts.hostname, parts.port)
    latencies, statuses, wall = event_loop_runner()(
        _open_loop(address, requests_bytes, rate, total, max_in_flight, progress)
    )
    progress.close()
    return summarize("open", rate, latencies, statuses, wall, cpu_time() - cpu_before)


def event_loop_runner():
    """uvloop's run where it is installed (requirements.txt pins it), else asyncio's own (the lent GPU
    machine cannot install packages). Imported here, not at the top, so that bench.py, which imports
    this module, runs there too."""
    try:
        import uvloop
    except ImportError:
        log.info("uvloop is not installed: the open loop runs on asyncio's own event loop, at more CPU per request")
        return asyncio.run
    return uvloop.run


def _http_request(parts, headers: dict[str, str], text: str) -> bytes:
    body = text.encode()
    lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Content-Type: text/plain; charset=utf-8"]
    lines += [f"{key}: {value}" for key, value in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _exchange(connection, request: bytes) -> tuple[int, bool]:
    """Send one request on a keep-alive connection and read its whole answer: the status, and
    whether the connection stays open (TorchServe closes it after a 503)."""
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    pairs = (line.split(":", 1) for line in lines[1:] if ":" in line)
    fields = {key.strip().lower(): value.strip() for key, value in pairs}
    await reader.readexactly(int(fields.get("content-length", "0")))
    return int(lines[0].split()[1]), fields.get("connection", "").lower() != "close"


async def _open_loop(address, requests_bytes, rate, total, max_in_flight, progress):
    """The latency and status of each of `total` requests, and the wall time of them all."""
    latencies, statuses = [0.0] * total, [0] * total
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    slots = asyncio.Semaphore(max_in_flight)

    async def send(i: int, scheduled: float) -> None:
        async with slots:
            connection = idle.pop() if idle else None
            try:
                connection = connection or await asyncio.open_connection(*address)
                statuses[i], keep_alive = await _exchange(connection, requests_bytes[i % len(requests_bytes)])
                if keep_alive:
                    idle.append(connection)
                else:
                    connection[1].close()
            except (OSError, ValueError, IndexError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                statuses[i] = 0  # a failed connection counts as an error and is not reused
                if connection:
                    connection[1].close()
        latencies[i] = time.perf_counter() - scheduled
        progress.update()

    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # keep the schedule: this is the arrival process, not a readiness wait
        tasks.append(asyncio.create_task(send(i, scheduled)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    for _, writer in idle:
        writer.close()
    return latencies, statuses, wall


def plot(results: list[LevelResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    closed = [r for r in results if r.mode == "closed"]
    opened = [r for r in results if r.mode == "open"]
    for key, style in (("p50_ms", "o-"), ("p95_ms", "s--"), ("p99_ms", "^:")):
        axes[0].plot([r.throughput for r in closed], [getattr(r, key) for r in closed], style, label=key[:3])
        axes[1].plot([r.level for r in opened], [getattr(r, key) for r in opened], style, label=key[:3])
    for r in closed:
        axes[0].annotate(
            f"{r.level:g}", (r.throughput, r.p50_ms), textcoords="offset points", xytext=(3, -10), fontsize=7
        )
    axes[0].set(title="closed loop (labels: clients)", xlabel="throughput (req/s)", ylabel="latency (ms)")
    axes[1].set(title="open loop", xlabel="offered rate (req/s)", ylabel="latency (ms)")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(results: list[LevelResult]) -> None:
    header = (
        f"{'mode':8s} {'level':>6s} {'req/s':>7s} {'p50 ms':>7s} {'p95 ms':>7s} {'p99 ms':>7s} "
        f"{'errors':>6s} {'503s':>6s} {'503 p50':>7s} {'gen CPU':>7s}"
    )
    lines = [header]
    for r in results:
        lines.append(
            f"{r.mode:8s} {r.level:6.0f} {r.throughput:7.1f} {_ms(r.p50_ms)} {_ms(r.p95_ms)} "
            f"{_ms(r.p99_ms)} {r.errors:6d} {r.rejected:6d} {_ms(r.rejected_p50_ms)} {r.generator_cpu_share:7.1%}"
        )
    log.info("\n%s", "\n".join(lines))


def _ms(value: float) -> str:
    """A latency column: "-" where no request of that kind happened (no 503s: no 503 latency)."""
    return f"{value:7.1f}" if math.isfinite(value) else f"{'-':>7s}"


def recovery_seconds(url, headers, sentence: str, normal_ms: float, timeout: float = 30.0) -> float:
    """After overload: seconds until five requests in a row answer 200 within twice `normal_ms`."""
    client, started, streak = Client(url, headers), time.monotonic(), 0
    while streak < 5:
        if time.monotonic() - started > timeout:
            return float("inf")
        sent = time.perf_counter()
        ok = client.post(sentence) == 200 and (time.perf_counter() - sent) * 1000 <= 2 * normal_ms
        streak = streak + 1 if ok else 0
        time.sleep(0.02)  # pacing of the probe requests, not a readiness wait
    return round(time.monotonic() - started, 2)


def overload(url, headers, sentences, capacity: float, seconds: float, normal_ms: float, factor: float = 3.0):
    """Offer `factor` times the capacity: the accepted requests' latency, the rejections, the recovery."""
    result = open_loop(url, headers, sentences, factor * capacity, seconds)
    result.mode = "overload"
    return result, recovery_seconds(url, headers, sentences[0], normal_ms)


def running_server(model: str) -> tuple[LocalServer, str, dict[str, str]]:
    """The running `make run` server, its prediction URL for `model` and the token header; exits
    at once, saying why, when it does not answer a first request (not after minutes of failures)."""
    server = LocalServer()
    if server.pid() is None:
        raise SystemExit(f"TorchServe is not running from {server.run_dir}: is it running? (`make run`)")
    try:
        server.workers(model)
    except requests.RequestException as error:
        raise SystemExit(f"TorchServe does not serve {model!r} at {server.url('management')}: {error}") from None
    url = f"{server.url('inference')}/predictions/{model}"
    headers = server.auth_header("inference")
    status = Client(url, headers).post("a first request to check the server")
    if status != 200:
        raise SystemExit(f"a first request to {url} got HTTP {status or 'no answer'}; see `make status`")
    return server, url, headers


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--rates", type=float, nargs="*", default=[25, 50, 100, 150, 200, 250, 300, 350])
    parser.add_argument("--seconds", type=float, default=10.0, help="per level")
    parser.add_argument(
        "--overload", type=float, default=3.0, help="a last level at this multiple of the capacity measured (0: none)"
    )
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=REPORTS_DIR)
    args = parser.parse_args()

    _, url, headers = running_server(args.model)
    sentences = review_sentences()
    results = [closed_loop(url, headers, sentences, c, args.seconds) for c in args.concurrency]
    results += [open_loop(url, headers, sentences, r, args.seconds) for r in args.rates]
    report = {"url": url, "seconds_per_level": args.seconds}
    if args.overload:
        capacity = max(r.throughput for r in results)
        at_capacity = max((r for r in results if r.mode == "closed"), key=lambda r: r.throughput)
        normal_ms = next(r.p50_ms for r in results if r.mode == "closed" and r.level == min(args.concurrency))
        over, recovery = overload(url, headers, sentences, capacity, args.seconds, normal_ms, args.overload)
        results.append(over)
        report["overload"] = {
            "offered": over.level,
            "accepted_p99_ms": over.p99_ms,
            "p99_at_capacity_ms": at_capacity.p99_ms,
            "rejected_share": round(over.rejected / max(over.requests, 1), 3),
            "rejected_p50_ms": over.rejected_p50_ms,
            "recovery_seconds": recovery,
        }
        summary = report["overload"]
        log.info(
            "overload at %.0f req/s offered: %.0f%% shed with 503 (their p50 %s ms); accepted p99 %s ms against "
            "%s ms at capacity; back to normal after %s s",
            over.level,
            100 * summary["rejected_share"],
            _ms(summary["rejected_p50_ms"]).strip(),
            _ms(summary["accepted_p99_ms"]).strip(),
            _ms(summary["p99_at_capacity_ms"]).strip(),
            summary["recovery_seconds"],
        )
    print_table(results)
    args.out.mkdir(parents=True, exist_ok=True)
    report["results"] = [asdict(r) for r in results]
    (args.out / "loadtest.json").write_text(json.dumps(report, indent=2) + "\n")
    plot(results, args.out / "loadtest.png")
    log.info("wrote %s and %s", args.out / "loadtest.json", args.out / "loadtest.png")


if __name__ == "__main__":
    main()
