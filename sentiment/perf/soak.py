"""Soak the running server: minutes of steady load at a share of its measured capacity.

    sentiment-soak [--minutes 10] [--share 0.8] [--out reports/]      # `make soak`, not in CI

Measures capacity first (16 closed-loop clients), then offers `share` of it as an open loop in
windows of 10 s, recording per window the errors, p50 and p99 latency and the workers' resident
memory. Prints the worst figures and the workers' memory growth after the first minute, and
writes reports/soak.json and reports/soak.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from sentiment.console import command
from sentiment.perf.bench import worker_rss_mb
from sentiment.perf.loadtest import closed_loop, open_loop, running_server
from sentiment.project import DEFAULT_MODEL, REPORTS_DIR
from sentiment.training.corpora import review_sentences

log = logging.getLogger(__name__)
WINDOW_SECONDS = 10.0


def plot(windows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [w["end_s"] / 60 for w in windows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].plot(minutes, [w["p50_ms"] for w in windows], label="p50")
    axes[0].plot(minutes, [w["p99_ms"] for w in windows], label="p99")
    axes[0].set(ylabel="latency (ms)", yscale="log")
    axes[0].legend()
    axes[1].bar(minutes, [w["errors"] for w in windows], width=WINDOW_SECONDS / 60 * 0.8)
    axes[1].set(ylabel="errors per window", ylim=(0, max(1, *(w["errors"] for w in windows))))
    axes[2].plot(minutes, [w["worker_rss_mb"] for w in windows])
    axes[2].set(ylabel="workers' RSS (MB)", xlabel="minutes")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"soak at {windows[0]['offered']:.0f} req/s offered")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--share", type=float, default=0.8, help="of the measured capacity")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=REPORTS_DIR)
    args = parser.parse_args()

    server, url, headers = running_server(args.model)
    sentences = review_sentences()
    capacity = closed_loop(url, headers, sentences, 16, 15).throughput
    rate = round(capacity * args.share, 1)
    log.info("capacity %.1f req/s (16 clients, 15 s): offering %.1f req/s for %g minutes", capacity, rate, args.minutes)
    windows, started = [], time.monotonic()
    for _ in tqdm(range(round(args.minutes * 60 / WINDOW_SECONDS)), desc="soak", unit="window"):
        result = open_loop(url, headers, sentences, rate, WINDOW_SECONDS)
        windows.append(
            {
                **asdict(result),
                "offered": rate,
                "end_s": time.monotonic() - started,
                "worker_rss_mb": math.prod(worker_rss_mb(server)),  # workers x each: all together
            }
        )
    # The first minute warms the workers up; a shorter soak compares with its first window.
    after_first_minute = next((w for w in windows if w["end_s"] >= 60), windows[0])["worker_rss_mb"]
    growth = windows[-1]["worker_rss_mb"] / after_first_minute - 1
    summary = {
        "capacity": capacity,
        "offered": rate,
        "requests": sum(w["requests"] for w in windows),
        "errors": sum(w["errors"] for w in windows),
        "worst_p50_ms": max(w["p50_ms"] for w in windows),
        "worst_p99_ms": max(w["p99_ms"] for w in windows),
        "rss_after_first_minute_mb": round(after_first_minute),
        "rss_at_end_mb": round(windows[-1]["worker_rss_mb"]),
        "rss_growth_after_first_minute": round(growth, 4),
    }
    log.info("\n%s", "\n".join(f"{key:30s} {value}" for key, value in summary.items()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps({"summary": summary, "windows": windows}, indent=2) + "\n")
    plot(windows, args.out / "soak.png")
    log.info("wrote %s and %s", args.out / "soak.json", args.out / "soak.png")


if __name__ == "__main__":
    main()
