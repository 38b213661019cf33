"""A real TorchServe (Java frontend, Python workers) on free loopback ports, one per test session."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from build_archive import build
from server import LocalServer

ROOT = Path(__file__).resolve().parents[2]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_server(tmp: Path, model_store: Path, **overrides) -> LocalServer:
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    return LocalServer(
        run_dir=tmp / "run",
        model_store=model_store,
        overrides={
            "inference_address": f"http://127.0.0.1:{inference}",
            "management_address": f"http://127.0.0.1:{management}",
            "metrics_address": f"http://127.0.0.1:{metrics}",
            "grpc_inference_port": str(grpc_inference),
            "grpc_management_port": str(grpc_management),
            **overrides,
        },
    )


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
