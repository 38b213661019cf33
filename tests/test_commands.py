"""The console commands as a user types them: they answer --help at once and fail fast, clearly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
COMMANDS = [
    "sentiment-server",
    "sentiment-archive",
    "sentiment-train",
    "sentiment-eval",
    "sentiment-import",
    "sentiment-bench",
    "sentiment-loadtest",
    "sentiment-fuzz",
    "sentiment-soak",
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
