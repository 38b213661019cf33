"""The open-loop load generator against a small local HTTP server: what it sends, how it counts."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from sentiment.perf.loadtest import event_loop_runner, open_loop


class Recorder(BaseHTTPRequestHandler):
    """200 for "ok", 503 and a closed connection for "busy" (as TorchServe answers a full queue);
    waits `delay` seconds before each answer."""

    protocol_version = "HTTP/1.1"
    delay = 0.0
    seen: ClassVar[list[tuple[str, str, str, bytes]]] = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, self.headers["Authorization"], self.headers["Content-Type"], body))
        time.sleep(self.delay)  # the server's service time, not a readiness wait
        busy = body == b"busy"
        answer = b'{"code": 503}' if busy else b'{"sentiment": "positive"}'
        self.send_response(503 if busy else 200)
        self.send_header("Content-Length", str(len(answer)))
        if busy:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer)
        self.close_connection = busy

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    Recorder.seen, Recorder.delay = [], 0.0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/predictions/sentiment"
    httpd.shutdown()
    httpd.server_close()


def test_open_loop_sends_every_request_and_counts_rejections(server):
    result = open_loop(server, {"Authorization": "Bearer secret"}, ["ok", "busy", "ok"], rate=300, seconds=0.5)

    assert result.requests == 150 == len(Recorder.seen)
    assert result.rejected == 50 and result.errors == 50  # 503s, each on a connection the server closed
    assert {seen[:3] for seen in Recorder.seen} == {
        ("/predictions/sentiment", "Bearer secret", "text/plain; charset=utf-8")
    }
    assert sorted(body for *_, body in Recorder.seen) == sorted([b"ok", b"busy", b"ok"] * 50)
    assert result.throughput == pytest.approx(100 / result.seconds, rel=0.01)  # the 200s only


def test_open_loop_counts_latency_from_the_schedule(server):
    """One connection, 50 ms per answer, 100 requests/s offered: requests queue in the generator,
    and their latency must include that wait (no coordinated omission)."""
    Recorder.delay = 0.05
    result = open_loop(server, {}, ["ok"], rate=100, seconds=0.2, max_in_flight=1)

    assert result.requests == 20 and result.errors == 0
    # The last request leaves at 0.19 s and is answered after 20 x 50 ms: about 0.8 s late.
    assert result.p99_ms > 600
    assert result.p50_ms > 200


def test_without_uvloop_the_open_loop_runs_on_asyncios_own_loop(server, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert event_loop_runner() is asyncio.run
    assert open_loop(server, {}, ["ok"], rate=100, seconds=0.1).requests == 10
