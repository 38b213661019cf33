"""make run must fail loudly, with the log tail, when TorchServe cannot start or serve."""

from __future__ import annotations

import json
import socket

import pytest

from sentiment.ops.local_server import LocalServer, ServerError

pytestmark = pytest.mark.integration


def test_a_taken_port_is_named_before_starting(tmp_path, default_archive):
    server = LocalServer.on_free_ports(tmp_path / "run", default_archive)
    port = int(server.settings["inference_address"].rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        with pytest.raises(ServerError, match=f"port {port} \\(inference_address\\) is already taken"):
            server.start(timeout=60)
    assert server.pid() is None


def test_a_frontend_that_dies_fails_the_start_with_its_log_tail(tmp_path, default_archive):
    server = LocalServer.on_free_ports(tmp_path / "run", default_archive)
    grpc_port = int(server.settings["grpc_inference_port"])
    with socket.socket() as squatter:  # the JVM cannot bind its gRPC port and exits
        squatter.bind(("127.0.0.1", grpc_port))
        squatter.listen()
        with pytest.raises(ServerError, match="TorchServe exited during start-up") as failure:
            server.start(timeout=120)
    assert "last lines of" in str(failure.value)
    assert server.processes() == []


def test_a_model_that_cannot_load_times_out_with_the_worker_log(tmp_path, default_archive):
    import zipfile

    broken_store = tmp_path / "store"
    broken_store.mkdir()
    with (
        zipfile.ZipFile(default_archive / "sentiment.mar") as src,
        zipfile.ZipFile(broken_store / "sentiment.mar", "w") as dst,
    ):
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                data = json.dumps({**json.loads(data), "MAX_SEQUENCE_LEN": "long"}).encode()
            dst.writestr(item, data)
    server = LocalServer.on_free_ports(tmp_path / "run", broken_store)
    try:
        with pytest.raises(ServerError, match=r"no worker READY after 20 s") as failure:
            server.start(timeout=20)
        assert "MAX_SEQUENCE_LEN must be an integer, got 'long'" in str(failure.value)  # the worker's own error
    finally:
        server.stop()
