"""The console commands as a user types them: they answer --help at once and fail fast, clearly."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
COMMANDS = [
    "sentiment-server",
    "sentiment-archive",
    "sentiment-kserve-bundle",
    "sentiment-train",
    "sentiment-crossval",
    "sentiment-eval",
    "sentiment-import",
    "sentiment-bench",
    "sentiment-loadtest",
    "sentiment-fuzz",
    "sentiment-soak",
    "sentiment-stress",
    "sentiment-gpu-check",
]


def run(*command: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env={"PATH": str(BIN), **env})


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_is_installed_and_answers_help(command):
    result = run(str(BIN / command), "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: ")


def test_the_backend_comparison_answers_help_without_its_optional_packages():
    result = run(sys.executable, "-m", "sentiment.perf.backends", "--help")
    assert result.returncode == 0, result.stderr
    assert "onnxruntime" in result.stdout


def test_the_load_test_refuses_at_once_when_no_server_runs(tmp_path):
    result = run(str(BIN / "sentiment-loadtest"), SENTIMENT_RUN_DIR=str(tmp_path))
    assert result.returncode == 1
    assert "is it running? (`make run`)" in result.stderr


def test_status_without_a_server_says_how_to_start_one(tmp_path):
    result = run(str(BIN / "sentiment-server"), "status", SENTIMENT_RUN_DIR=str(tmp_path))
    assert result.returncode == 1
    assert "is it running? (`make run`)" in result.stderr


def test_the_gpu_precision_table_runs_end_to_end_on_the_cpu(model_dir):
    """The GPU benchmark's fp16/fp32 sweep, tried here on the tiny model, so the lent GPU's minutes
    are not spent finding a typo."""
    from sentiment.perf.bench import precision_markdown, precision_sweep

    sentences = [f"text number {i} is {'good ' * (i % 7)}" for i in range(64)]
    rows = precision_sweep(sentences, repeats=1, batches=(1, 4), device="cpu", config_path=model_dir / "config.json")
    assert [(r["variant"], r["batch"]) for r in rows] == [
        (v, b) for v in ("fp32", "fp16", "fp16+cudnn") for b in (1, 4)
    ]
    assert all(r["first_texts_per_s"] > 0 and r["warm_texts_per_s"] > 0 for r in rows)
    table = precision_markdown(rows)
    assert table.count("\n") == 3 and "fp16 >= fp32" in table


def test_the_ceiling_measures_each_layout_sustained_and_keeps_the_best(model_dir):
    """Row (a) on the tiny model: a sweep picks the batch size, then one process on every core and one
    single-thread process per core each run it for the given time; the row reports the better."""
    from sentiment.perf.bench import ceiling

    sentences = [f"text number {i} is {'good ' * (i % 7)}" for i in range(64)]
    row = ceiling(sentences, seconds=0.5, batch_sizes=(4, 16), config_path=model_dir / "config.json")

    rates = dict(re.findall(r"(\d+ process(?:es)? x \d+ threads?): ([\d.]+)", row.settings))
    assert f"{os.cpu_count()} processes x 1 thread" in rates and any(k.startswith("1 process x ") for k in rates)
    assert len(rates) == 2 and all(float(rate) > 0 for rate in rates.values())
    assert row.throughput == max(float(rate) for rate in rates.values())
    assert re.match(r"batch (4|16), \w+, cpu, ", row.settings) and "sustained 0.5 s" in row.settings


def test_a_ceiling_process_that_fails_stops_the_bench_instead_of_hanging_it(tmp_path):
    from sentiment.perf.bench import sustained_rate

    with pytest.raises(RuntimeError, match="an in-process ceiling process failed"):
        sustained_rate(["good"], batch=1, seconds=0.1, processes=2, threads=1, config_path=tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("model", "advice"),
    [
        ("sentiment-large", "make large` (after `make teacher`)"),
        ("mine", "make archive` (`make archive CONFIG=models/mine/config.json`"),
    ],
)
def test_starting_a_model_without_its_archive_names_the_command_that_builds_it(tmp_path, model, advice):
    from sentiment.ops.local_server import LocalServer, ServerError

    server = LocalServer.on_free_ports(tmp_path / "run", tmp_path / "store", models=("sentiment", model))
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "sentiment.mar").touch()
    with pytest.raises(ServerError, match=re.escape(f"{model}.mar is missing: build it with `{advice}")):
        server.start(timeout=1)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (("sentiment-archive", "--config", "no/such/config.json"), "cannot read model config no/such/config.json"),
        (("sentiment-archive", "--config", "{bad_key}"), "unknown config keys: ['MAX_SEQ_LEN']"),
        (("sentiment-import", "--hf-dir", "/no/such/folder", "--output", "{out}"), "/no/such/folder"),
        (("sentiment-eval", "--config", "{bad_key}"), "unknown config keys: ['MAX_SEQ_LEN']"),
    ],
)
def test_a_user_s_mistake_is_one_line_and_exit_2_the_traceback_only_on_request(tmp_path, command, message):
    import json

    from sentiment.project import DEFAULT_CONFIG

    bad_key = tmp_path / "config.json"  # the shipped config with a misspelt key
    bad_key.write_text(json.dumps({**json.loads(DEFAULT_CONFIG.read_text()), "MAX_SEQ_LEN": 64}))
    argv = [part.format(bad_key=bad_key, out=tmp_path / "out") for part in command]
    result = run(str(BIN / argv[0]), *argv[1:])
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{argv[0]}: ")
    debug = run(str(BIN / argv[0]), *argv[1:], SENTIMENT_DEBUG="1")
    assert "Traceback" in debug.stderr and message in debug.stderr


def test_status_shows_each_worker_s_memory_as_the_process_itself_reports_it():
    """TorchServe 0.12 reports memoryUsage 0; the table reads the resident memory of the worker's process."""
    from sentiment.ops.cli import status_table

    workers = [{"pid": os.getpid(), "status": "READY", "memoryUsage": 0}, {"status": "STOPPED"}]
    table = status_table("sentiment", workers)
    lines = table.splitlines()
    assert lines[0] == "sentiment: 2 workers"
    assert int(lines[1].split("READY")[1].split("MiB")[0]) > 10
    assert "- MiB" in lines[2]
