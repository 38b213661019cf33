"""Fuzz the running server: malformed requests mixed 1:1 with good ones over concurrent connections.

    sentiment-fuzz [--requests 20000] [--connections 24] [--seed 7]      # `make fuzz`, server running

Every malformed request belongs to a category (empty body, deep JSON nesting, lone surrogate, ...)
with the statuses the API contract allows for it; every good request is one of a few clear
sentences with a known answer. Prints the status histogram by category and fails (exit 1) on any
5xx, any good request that is not 200 with the right sentiment, or any worker that restarted.
The integration tests run the same code on fewer requests.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from tqdm import tqdm

from sentiment.console import command
from sentiment.perf.loadtest import Client, running_server
from sentiment.project import DEFAULT_MODEL

log = logging.getLogger(__name__)
JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"
# Sentences whose answer does not depend on what they are batched with.
GOOD = {
    "This app is a total waste of time!": "negative",
    "OMG. I love how easy it is to stick to my schedule. Would recommend to everyone!": "positive",
    "Terrible, the battery died after two days and support never answered.": "negative",
    "Absolutely wonderful, I love it, best purchase this year!": "positive",
}


@dataclass(frozen=True)
class Case:
    category: str
    body: bytes
    content_type: str | None
    allowed: tuple[int, ...]  # the statuses the contract allows
    sentiment: str | tuple[str, ...] | None = None  # good requests: the expected answer(s)
    method: str = "POST"
    query: str = ""


def good_case(rng: random.Random) -> Case:
    text, draw = rng.choice(list(GOOD)), rng.random()
    if draw < 0.4:
        return Case("good JSON", json.dumps({"text": text}).encode(), JSON_TYPE, (200,), GOOD[text])
    if draw < 0.8:
        return Case("good text/plain", text.encode(), TEXT_TYPE, (200,), GOOD[text])
    texts = rng.sample(list(GOOD), 3)
    body = json.dumps({"texts": texts}).encode()
    return Case("good batch", body, JSON_TYPE, (200,), tuple(GOOD[t] for t in texts))


def malformed_case(rng: random.Random, marker: str, max_chars: int = 5000) -> Case:
    """One malformed request of a random category; `marker` goes into every text a log must not hold."""
    words = f"{marker} " + " ".join(rng.choice(["good", "bad", "awful", "phone", "é", "日本", "🙂"]) for _ in range(6))
    depth = rng.randint(1_100, 50_000)
    makers = {
        "empty body": lambda: (b"", rng.choice([JSON_TYPE, TEXT_TYPE]), (400,)),
        "whitespace only": lambda: (rng.choice([b" ", b"\n\t ", b"\xc2\xa0"]), TEXT_TYPE, (400,)),
        "invalid JSON": lambda: (json.dumps({"text": words}).encode()[: rng.randint(1, 20)], JSON_TYPE, (400,)),
        "JSON not an object": lambda: (
            rng.choice([b"[1, 2]", b"5", b"null", b"true", b'"text"', b"1e999"]),
            JSON_TYPE,
            (400,),
        ),
        "no text field": lambda: (json.dumps({"review": words}).encode(), JSON_TYPE, (400,)),
        "text not a string": lambda: (
            json.dumps({"text": rng.choice([42, 1.5, None, [words], {"t": words}, True])}).encode(),
            JSON_TYPE,
            (400,),
        ),
        "text over the limit": lambda: (json.dumps({"text": words * (max_chars // 10)}).encode(), JSON_TYPE, (400,)),
        # 0xFF never occurs in UTF-8, so the body is invalid whatever the random bytes around it.
        "not UTF-8": lambda: (marker.encode() + b"\xff" + rng.randbytes(8), TEXT_TYPE, (400,)),
        "lone surrogate": lambda: (f'{{"text": "{marker} \\ud800 {rng.randint(0, 9)}"}}'.encode(), JSON_TYPE, (400,)),
        "deep nesting": lambda: (b"[" * depth + b"]" * depth, JSON_TYPE, (400,)),
        "deep nesting in text": lambda: (b'{"text": ' + b"[" * depth + b"]" * depth + b"}", JSON_TYPE, (400,)),
        "huge integer": lambda: (b'{"text": ' + b"9" * rng.randint(4_400, 100_000) + b"}", JSON_TYPE, (400,)),
        "form-encoded": lambda: (f"text={marker}".encode(), "application/x-www-form-urlencoded", (415,)),
        "foreign content type": lambda: (
            words.encode(),
            rng.choice(["image/png", "application/octet-stream", "multipart/form-data; boundary=x", "text/html"]),
            (415,),
        ),
        "foreign charset": lambda: (words.encode("utf-8"), "text/plain; charset=latin-1", (415,)),
        "random bytes": lambda: (rng.randbytes(rng.randint(1, 300)), JSON_TYPE, (400,)),
        "text in the query string": lambda: (b"", TEXT_TYPE, (400,)),
        "batch with a bad item": lambda: (
            json.dumps({"texts": [words, rng.choice([5, None, "", [words]])]}).encode(),
            JSON_TYPE,
            (400,),
        ),
        "batch over the limit": lambda: (
            json.dumps({"texts": [words] * rng.randint(65, 500)}).encode(),
            JSON_TYPE,
            (400,),
        ),
        "KServe v2 malformed": lambda: (
            json.dumps(
                rng.choice(
                    [
                        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [words]}]},
                        {"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "data": [words]}]},
                        {"id": 7, "inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [words]}]},
                        {"inputs": []},
                    ]
                )
            ).encode(),
            JSON_TYPE,
            (400,),
        ),
    }
    category = rng.choice(list(makers))
    body, content_type, allowed = makers[category]()
    query = f"?text={marker}+secret" if category == "text in the query string" else ""
    return Case(category, body, content_type, allowed, query=query)


@dataclass
class FuzzReport:
    statuses: dict[str, Counter] = field(default_factory=dict)  # category -> status -> count
    violations: list[str] = field(default_factory=list)  # what broke the contract, first ones

    def record(self, case: Case, status: int, body: bytes) -> None:
        self.statuses.setdefault(case.category, Counter())[status] += 1
        problem = None
        if status not in case.allowed:
            problem = f"{case.category}: HTTP {status}, allowed {case.allowed}"
        elif case.sentiment is not None and _sentiments(json.loads(body)) != case.sentiment:
            problem = f"{case.category}: answered {body[:80]!r}, expected {case.sentiment}"
        if problem and len(self.violations) < 20:
            self.violations.append(problem)

    @property
    def server_errors(self) -> int:
        return sum(n for counts in self.statuses.values() for status, n in counts.items() if status >= 500)

    def table(self) -> str:
        statuses = sorted({s for counts in self.statuses.values() for s in counts})
        lines = ["| category | " + " | ".join(str(s) for s in statuses) + " |", "|---|" + "---:|" * len(statuses)]
        for category in sorted(self.statuses):
            counts = self.statuses[category]
            lines.append(f"| {category} | " + " | ".join(str(counts.get(s, 0)) for s in statuses) + " |")
        return "\n".join(lines)


def _sentiments(answer: dict) -> str | tuple[str, ...]:
    return tuple(p["sentiment"] for p in answer["predictions"]) if "predictions" in answer else answer["sentiment"]


def fuzz(url: str, headers: dict[str, str], requests: int, connections: int, seed: int, marker: str) -> FuzzReport:
    """`requests` in all, malformed and good alternating; each connection draws its own seeded cases."""
    report = FuzzReport()
    progress = tqdm(total=requests, desc="fuzz", unit="req", leave=False)

    def connection(index: int) -> list[tuple[Case, int, bytes]]:
        rng = random.Random(seed * 1_000 + index)
        client = Client(url, headers)
        results = []
        for i in range(index, requests, connections):
            case = malformed_case(rng, marker) if i % 2 else good_case(rng)
            status, body = client.send(case.body, case.content_type, case.method, case.query)
            results.append((case, status, body))
            progress.update()
        return results

    with ThreadPoolExecutor(connections) as pool:
        for results in pool.map(connection, range(connections)):
            for case, status, body in results:
                report.record(case, status, body)
    progress.close()
    return report


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20_000, help="in all; half of them malformed")
    parser.add_argument("--connections", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()

    server, url, headers = running_server(args.model)
    workers_before = {w["pid"] for w in server.workers(args.model)}
    report = fuzz(url, headers, args.requests, args.connections, args.seed, "FUZZ-CANARY")
    restarted = workers_before - {w["pid"] for w in server.workers(args.model)}
    log.info("\n%s\n", report.table())
    log.info("5xx: %d; workers restarted: %d", report.server_errors, len(restarted))
    log.info("contract violations: %s", report.violations or "none")
    sys.exit(1 if report.violations or restarted else 0)


if __name__ == "__main__":
    main()
