"""The image's scripts (deploy/container): the health check against a stand-in management API,
and the entrypoint's token gate."""

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


ENTRYPOINT = SCRIPT.with_name("entrypoint.py")


@pytest.mark.parametrize(
    ("env", "allowed"),
    [
        ({"TS_DISABLE_TOKEN_AUTHORIZATION": "true"}, False),
        ({"TS_DISABLE_TOKEN_AUTHORIZATION": "true", "SENTIMENT_AUTH_PROXY": "true"}, False),
        (
            {
                "TS_DISABLE_TOKEN_AUTHORIZATION": "true",
                "SENTIMENT_AUTH_PROXY": "true",
                "TS_INFERENCE_ADDRESS": "http://0.0.0.0:8079",
                "TS_MANAGEMENT_ADDRESS": "http://127.0.0.1:8081",
            },
            False,
        ),
        (
            {
                "TS_DISABLE_TOKEN_AUTHORIZATION": "true",
                "SENTIMENT_AUTH_PROXY": "true",
                "TS_INFERENCE_ADDRESS": "http://127.0.0.1:8079",
                "TS_MANAGEMENT_ADDRESS": "http://127.0.0.1:8081",
            },
            True,
        ),
    ],
)
def test_the_image_turns_token_auth_off_only_behind_the_proxy_on_loopback(tmp_path, env, allowed):
    """The entrypoint's gate; where it lets the server through, the missing image config stops it next."""
    import subprocess
    import sys

    run_env = {"PATH": "/usr/bin:/bin", "SENTIMENT_RUN_DIR": str(tmp_path / "run"), **env}
    run_env["SENTIMENT_CONFIG_DIR"] = str(tmp_path / "no-image-config")
    result = subprocess.run([sys.executable, str(ENTRYPOINT)], env=run_env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert ("behind the auth proxy" in result.stderr) is allowed
    assert ("serves with token authorization on" in result.stderr) is not allowed
