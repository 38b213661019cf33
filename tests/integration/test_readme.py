"""The README's commands work as printed: its code blocks that talk to a server run against a real one,
with the run folder and address set the way the README tells a user to (SENTIMENT_RUN_DIR, SENTIMENT_URL)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from sentiment.project import PROJECT_DIR

pytestmark = pytest.mark.integration

README = (PROJECT_DIR / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", README, re.S)
SERVER_SHELL = [code for language, code in BLOCKS if language == "bash" and "$URL/" in code]
SERVER_PYTHON = [code for language, code in BLOCKS if language == "python" and "SENTIMENT_URL" in code]


def run_as_a_user(server, *argv: str) -> subprocess.CompletedProcess:
    """Run README code from the project folder with the address and run folder set as the README says."""
    environment = {**os.environ, "SENTIMENT_URL": server.url("inference"), "SENTIMENT_RUN_DIR": str(server.run_dir)}
    return subprocess.run(argv, cwd=PROJECT_DIR, env=environment, capture_output=True, text=True, timeout=120)


def test_the_readme_has_the_examples_this_test_runs():
    assert len(SERVER_SHELL) >= 1 and len(SERVER_PYTHON) == 1
    assert sum(code.count("curl ") for code in SERVER_SHELL) >= 4


@pytest.mark.parametrize("code", SERVER_SHELL, ids=[f"shell-{i}" for i in range(len(SERVER_SHELL))])
def test_every_curl_block_of_the_readme_answers_as_printed(server, code):
    result = run_as_a_user(server, "bash", "-euo", "pipefail", "-c", code)
    assert result.returncode == 0, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert len(answers) == code.count("curl ")  # one answer per curl, each on its own line
    for answer in answers:
        assert "error" not in answer, answer
        predictions = answer.get("predictions", [answer])
        assert all(p["sentiment"] in ("negative", "neutral", "positive") for p in predictions)


def test_the_python_client_of_the_readme_answers_as_printed(server):
    result = run_as_a_user(server, sys.executable, "-c", SERVER_PYTHON[0])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["negative", "positive"]
    assert all(0.0 < float(line.split()[1]) <= 1.0 for line in lines)
