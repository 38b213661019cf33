"""A real TorchServe (Java frontend, Python workers) on free loopback ports, one per test session."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import requests

from sentiment.ops.archive import build
from sentiment.ops.local_server import LocalServer
from sentiment.project import DEFAULT_CONFIG


@pytest.fixture(scope="session")
def default_archive(tmp_path_factory) -> Path:
    """A model store with the default model's archive, built the way `make archive` builds it."""
    store = tmp_path_factory.mktemp("model_store")
    build(DEFAULT_CONFIG, store)
    return store


def path_without_java() -> str:
    """PATH without any folder that holds a `java`: the machine has no Java but the pinned wheel's."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    return os.pathsep.join(f for f in folders if not shutil.which("java", path=f))


@pytest.fixture(scope="session")
def server(tmp_path_factory, default_archive):
    server = LocalServer.on_free_ports(tmp_path_factory.mktemp("torchserve") / "run", default_archive)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PATH", path_without_java())
        env.delenv("JAVA_HOME", raising=False)
        assert shutil.which("java") is None
        server.start(timeout=180)
    yield server
    processes = server.processes()
    server.stop()
    assert not [p for p in processes if p.is_running() and p.status() != "zombie"], "processes left behind"


def ask(server: LocalServer, text: str, model: str = "sentiment", endpoint: str = "predictions") -> requests.Response:
    """POST {"text": text} to /predictions/MODEL (or /explanations/MODEL) with the inference token."""
    return requests.post(
        f"{server.url('inference')}/{endpoint}/{model}",
        json={"text": text},
        headers=server.auth_header("inference"),
        timeout=30,
    )
