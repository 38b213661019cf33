"""A real TorchServe (Java frontend, Python workers) on free loopback ports, one per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from build_archive import build
from server import LocalServer, server_on_free_ports

ROOT = Path(__file__).resolve().parents[2]


def local_server(tmp: Path, model_store: Path, **overrides) -> LocalServer:
    return server_on_free_ports(tmp / "run", model_store, **overrides)


@pytest.fixture(scope="session")
def default_archive(tmp_path_factory) -> Path:
    """The default model's archive, built the way `make archive` builds it."""
    store = tmp_path_factory.mktemp("model_store")
    build(ROOT / "config.json", store)
    return store


@pytest.fixture(scope="session")
def server(tmp_path_factory, default_archive):
    server = local_server(tmp_path_factory.mktemp("torchserve"), default_archive)
    server.start(timeout=180)
    yield server
    processes = server.processes()
    server.stop()
    assert not [p for p in processes if p.is_running() and p.status() != "zombie"], "processes left behind"
