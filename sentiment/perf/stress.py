"""Heavy requests against the running server: does any get a 5xx, does any worker die?

    sentiment-stress [--texts cjk|emoji|english|review] [--clients 6] [--seconds 60] [--per-request 64]
                     [--hog N] [--model sentiment]

Each client sends requests of `--per-request` texts of about MAX_SEQUENCE_LEN tokens, back to back:
`cjk` (Chinese and Japanese, one WordPiece token per character: four times what a characters/4
estimate says), `emoji` (emoji and mixed scripts), `english` (long review-like text); `review` is one
whole review of almost MAX_TEXT_CHARS (5,000) characters, read in about nine windows (use it with
`--per-request 1`; `--clients 1` on an idle server gives its latency alone). With `--hog N`,
N processes spin on the CPU for the whole run, so that the workers run slower than they measured at
start (two per core: about a third of the speed). Prints the status counts, latency and whether any
worker process changed (a restart), and writes reports/stress-<texts>.json. Exits 1 on any 5xx other
than 503, or a restart. Not part of `make test`: it takes a minute.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import threading
import time
from collections import Counter

from sentiment.console import command
from sentiment.perf.loadtest import Client, percentile, running_server
from sentiment.project import DEFAULT_MODEL, REPORTS_DIR

log = logging.getLogger(__name__)


def _whole_review(chars: int) -> str:
    """A long product review of at most `chars` characters, its verdict spread over the text."""
    sentences = [
        "I was sceptical when I ordered this, because the reviews were mixed and the price is not small.",
        "The first week was rough: the battery drained overnight twice and the app kept logging me out.",
        "Support answered within the hour, though, and walked me through a reset that fixed the logouts.",
        "A firmware update a few days later fixed the battery drain, and it has lasted two days since.",
        "The screen is bright enough to read outside, and the colours look natural rather than oversaturated.",
        "The speaker is the weak point: at full volume it crackles, so I use headphones for music.",
        "Build quality is good; it survived a drop onto kitchen tiles with only a scuff on one corner.",
        "Setting it up took ten minutes, most of which was waiting for the first update to download.",
        "The camera is better than my old one in low light, though it is slow to focus on moving kids.",
    ]
    text, i = "", 0
    while len(text) + len(sentences[i % len(sentences)]) + 1 <= chars:
        text += ("" if not text else " ") + sentences[i % len(sentences)]
        i += 1
    return text


TEXTS = {
    # 20 characters, each its own token in BERT's vocabulary: 140 characters are 140 tokens, cut at 128.
    "cjk": "这个手机很好用，我非常喜欢它的屏幕和电池。" * 6 + "最高の買い物でした！電池も長持ち。",
    "emoji": "😀👍🏽🔥 великолепно! 最高 ✨ ok 👎 ужасно 😡 " * 8,
    "english": "The battery lasts two days and the screen is bright, but the speaker crackles at volume. " * 6,
    "review": _whole_review(4990),
}


def spin(stop) -> None:
    while not stop.is_set():
        pass


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", choices=sorted(TEXTS), default="cjk")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--per-request", type=int, default=64)
    parser.add_argument("--hog", type=int, default=0, help="processes spinning on the CPU during the run")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()
    if args.clients < 1 or args.per_request < 1 or args.seconds <= 0:
        parser.error("--clients, --per-request and --seconds must be positive")

    server, url, headers = running_server(args.model)
    before = {worker["pid"] for worker in server.workers(args.model)}
    body = json.dumps({"texts": [f"{TEXTS[args.texts]} ({i})" for i in range(args.per_request)]}).encode()
    statuses: Counter = Counter()
    latencies: list[float] = []
    retry_after_missing = 0
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds

    def client() -> None:
        nonlocal retry_after_missing
        connection = Client(url, headers, timeout=300)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            status, answer = connection.send(body, "application/json")
            with lock:
                statuses[status] += 1
                latencies.append(time.perf_counter() - started)
                if status == 503 and b"retry" not in answer.lower():
                    retry_after_missing += 1

    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=spin, args=(stop,), daemon=True) for _ in range(args.hog)]
    for hog in hogs:
        hog.start()
    log.info(
        "%d clients x %d %s texts per request for %.0f s%s",
        args.clients,
        args.per_request,
        args.texts,
        args.seconds,
        f", {args.hog} spinning processes" if args.hog else "",
    )
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    for hog in hogs:
        hog.join()
    after = {worker["pid"] for worker in server.workers(args.model)}
    restarted = len(before - after)
    server_errors = sum(n for status, n in statuses.items() if status >= 500 and status != 503) + statuses[0]
    report = {
        "texts": args.texts,
        "clients": args.clients,
        "per_request": args.per_request,
        "seconds": args.seconds,
        "hog": args.hog,
        "statuses": {str(status): n for status, n in sorted(statuses.items())},
        "p50_s": round(percentile(latencies, 50), 3),
        "p99_s": round(percentile(latencies, 99), 3),
        "server_errors": server_errors,
        "workers_restarted": restarted,
    }
    REPORTS_DIR.mkdir(exist_ok=True)
    (REPORTS_DIR / f"stress-{args.texts}.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info(
        "statuses %s; latency p50 %.2f s, p99 %.2f s; 5xx other than 503: %d; workers restarted: %d",
        dict(sorted(statuses.items())),
        report["p50_s"],
        report["p99_s"],
        server_errors,
        restarted,
    )
    if retry_after_missing:
        log.warning("%d answers 503 did not say to retry", retry_after_missing)
    if server_errors or restarted:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
