"""The image's health check (deploy/container/healthcheck.py) against a stand-in management API."""

from __future__ import annotations

import importlib.util
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "deploy" / "container" / "healthcheck.py"
PAST, FUTURE = "2020-01-01T00:00:00.000000000Z", "2999-01-01T00:00:00.000000000Z"


def load_healthcheck(run_dir: Path):
    spec = importlib.util.spec_from_file_location("sentiment_healthcheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.RUN_DIR = run_dir
    return module


def write_keys(run_dir: Path, management: str, expiry: str) -> None:
    keys = {"management": {"key": management, "expiration time": expiry}, "API": {"key": "api"}}
    (run_dir / "key_file.json").write_text(json.dumps(keys))


@pytest.fixture()
def torchserve(tmp_path):
    """Accepts only the management key "valid"; the token API, called with the API key, writes
    "valid" into key_file.json as TorchServe does."""
    renewals = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            auth = self.headers.get("Authorization")
            if self.path == "/token?type=management" and auth == "Bearer api":
                renewals.append(self.path)
                write_keys(tmp_path, "valid", FUTURE)
                self.send_response(200)
                self.end_headers()
            elif self.path == "/models/sentiment" and auth == "Bearer valid":
                body = json.dumps([{"workers": [{"status": "READY"}]}]).encode()
                self.send_response(200)
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_response(400)
                self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", renewals
    server.shutdown()


def test_an_expired_management_key_is_renewed_with_the_api_key(tmp_path, torchserve, monkeypatch):
    url, renewals = torchserve
    monkeypatch.setenv("TS_MANAGEMENT_ADDRESS", url)
    write_keys(tmp_path, "expired", PAST)
    assert load_healthcheck(tmp_path).check("sentiment", timeout=5) == ""
    assert renewals == ["/token?type=management"]


def test_a_refused_key_that_has_not_expired_is_not_replaced(tmp_path, torchserve, monkeypatch):
    url, renewals = torchserve
    monkeypatch.setenv("TS_MANAGEMENT_ADDRESS", url)
    write_keys(tmp_path, "wrong", FUTURE)
    assert "HTTP 400" in load_healthcheck(tmp_path).check("sentiment", timeout=5)
    assert renewals == []
