"""The plain Kubernetes overlays' auth proxy, run for real: nginx on deploy/k8s/base/auth-proxy/'s
configuration, in front of a real TorchServe with token authorization off on loopback, as in the pod.

The template is rendered the way the nginx image's entrypoint renders it
(/docker-entrypoint.d/20-envsubst-on-templates.sh: `envsubst "$defined_envs"`, only the variables
that exist and pass NGINX_ENVSUBST_FILTER), and nginx.conf is the ConfigMap's, with its absolute
paths (/tmp, /etc/nginx/conf.d) moved into a temporary folder so that it runs here as any user.
Skipped where no nginx binary exists (`apt-get install nginx` provides one).
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from sentiment.ops.local_server import LocalServer
from sentiment.project import PROJECT_DIR

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).is_file()), None
)
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(NGINX is None, reason="no nginx binary here (apt-get install nginx); the proxy is not run"),
]

AUTH_PROXY = PROJECT_DIR / "deploy" / "k8s" / "base" / "auth-proxy"
HEALTHCHECK = PROJECT_DIR / "deploy" / "container" / "healthcheck.py"
NEGATIVE = "This app is a total waste of time!"
ENVSUBST_FILTER = "^SENTIMENT_"  # the Deployment's NGINX_ENVSUBST_FILTER
# Keys as an operator would make them: `openssl rand -hex 32`, and base64 with "+", "/" and "=".
CURRENT_KEY = secrets.token_hex(32)
NEXT_KEY = base64.b64encode(b"\xfb\xff" + secrets.token_bytes(29)).decode()
assert "+" in NEXT_KEY and "/" in NEXT_KEY and NEXT_KEY.endswith("=")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def envsubst(template: str, environment: dict[str, str]) -> str:
    """What `envsubst "$defined_envs"` writes: ${NAME} and $NAME replaced for the variables that
    exist and match the filter, everything else (nginx's own $variables) left as it is."""
    names = [name for name in environment if re.search(ENVSUBST_FILTER, name)]
    if not names:
        return template
    pattern = re.compile(r"\$(?:\{(%s)\}|(%s)\b)" % ("|".join(names), "|".join(names)))  # noqa: UP031
    rendered = pattern.sub(lambda m: environment[m.group(1) or m.group(2)], template)
    if shutil.which("envsubst"):  # the image's tool, where this machine has it: the same text
        shell_format = " ".join(f"${{{name}}}" for name in names)
        real = subprocess.run(
            ["envsubst", shell_format], input=template, env=environment, capture_output=True, text=True, check=True
        )
        assert real.stdout == rendered
    return rendered


class Nginx:
    """nginx in the foreground on the auth proxy's configuration; its stdout (the access log) and
    stderr (the error log) go to files."""

    def __init__(self, folder: Path, environment: dict[str, str]):
        self.folder = folder
        self.port = int(environment["SENTIMENT_PROXY_LISTEN"].rsplit(":", 1)[-1])
        self.url = f"http://127.0.0.1:{self.port}"
        conf_d, temp = folder / "conf.d", folder / "tmp"
        conf_d.mkdir(parents=True)
        temp.mkdir()
        (conf_d / "sentiment.conf").write_text(
            envsubst((AUTH_PROXY / "sentiment.conf.template").read_text(), environment)
        )
        main = (AUTH_PROXY / "nginx.conf").read_text()
        assert main.count("/etc/nginx/conf.d/") == 1 and "/tmp/" in main
        moved = {"/etc/nginx/conf.d/": f"{conf_d}/", "/tmp/": f"{temp}/"}
        main = re.sub("|".join(map(re.escape, moved)), lambda m: moved[m.group(0)], main)
        if os.geteuid() == 0:
            # As root, nginx's workers would run as nobody, who cannot enter pytest's folders (0700).
            main = "user root;\n" + main
        self.config = folder / "nginx.conf"
        self.config.write_text(main)
        self.access_log = folder / "stdout.log"
        self.error_log = folder / "stderr.log"
        self.process: subprocess.Popen | None = None

    def command(self, *extra: str) -> list[str]:
        return [NGINX, "-p", str(self.folder), "-c", str(self.config), "-e", str(self.error_log), *extra]

    def test_config(self) -> subprocess.CompletedProcess:
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30, check=False)

    def start(self, timeout: float = 30.0) -> None:
        with self.access_log.open("wb") as stdout, self.error_log.open("ab") as stderr:
            self.process = subprocess.Popen(
                self.command("-g", "daemon off;"), stdout=stdout, stderr=stderr, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"nginx exited with {self.process.returncode}:\n{self.error_log.read_text()}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)  # polling interval of the readiness check
        self.stop()
        pytest.fail(f"nginx did not answer /healthz within {timeout:.0f} s:\n{self.error_log.read_text()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        processes = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        self.process.send_signal(signal.SIGQUIT)  # graceful, the image's STOPSIGNAL
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        _, alive = psutil.wait_procs(processes, timeout=10)
        assert not alive, f"nginx processes left behind: {alive}"

    def logs(self) -> str:
        return self.access_log.read_text(errors="replace") + self.error_log.read_text(errors="replace")


@pytest.fixture(scope="module")
def torchserve(tmp_path_factory, default_archive):
    """TorchServe as in the pod: token authorization off, inference on loopback only."""
    server = LocalServer.on_free_ports(
        tmp_path_factory.mktemp("torchserve-behind-proxy") / "run", default_archive, disable_token_authorization="true"
    )
    assert server.url("inference").startswith("http://127.0.0.1:")
    server.start(timeout=180)
    yield server
    processes = server.processes()
    server.stop()
    assert not [p for p in processes if p.is_running() and p.status() != "zombie"], "processes left behind"


def proxy_environment(torchserve: LocalServer, **keys: str) -> dict[str, str]:
    """The auth-proxy container's environment (Deployment), with this machine's addresses."""
    return {
        "PATH": os.environ.get("PATH", ""),
        "NGINX_ENVSUBST_FILTER": ENVSUBST_FILTER,
        "SENTIMENT_PROXY_LISTEN": f"127.0.0.1:{free_port()}",
        "SENTIMENT_UPSTREAM": torchserve.url("inference").removeprefix("http://"),
        **keys,
    }


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, torchserve):
    nginx = Nginx(
        tmp_path_factory.mktemp("auth-proxy"),
        proxy_environment(torchserve, SENTIMENT_INFERENCE_KEY=CURRENT_KEY, SENTIMENT_INFERENCE_KEY_NEXT=NEXT_KEY),
    )
    nginx.start()
    yield nginx
    nginx.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def predict(proxy: Nginx, headers: dict[str, str], text: str = NEGATIVE) -> requests.Response:
    return requests.post(f"{proxy.url}/predictions/sentiment", json={"text": text}, headers=headers, timeout=30)


def assert_refused(answer: requests.Response) -> None:
    assert answer.status_code == 401, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert set(answer.json()) == {"error"}
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")


def test_without_a_valid_key_nothing_reaches_torchserve(proxy):
    assert_refused(predict(proxy, {}))
    assert_refused(predict(proxy, bearer(secrets.token_hex(32))))  # a wrong key of the right shape
    assert_refused(predict(proxy, bearer(CURRENT_KEY.upper())))  # keys compare with their case
    assert_refused(predict(proxy, bearer(CURRENT_KEY[:-1])))
    assert_refused(predict(proxy, bearer(CURRENT_KEY + "0")))
    assert_refused(predict(proxy, bearer(NEXT_KEY.replace("+", "-"))))  # "+" is no regex operator
    assert_refused(predict(proxy, {"Authorization": CURRENT_KEY}))
    assert_refused(predict(proxy, {"Authorization": f"Basic {CURRENT_KEY}"}))
    assert_refused(requests.get(f"{proxy.url}/ping", timeout=10))
    assert_refused(
        requests.post(f"{proxy.url}/v1/models/sentiment:predict", json={"instances": [NEGATIVE]}, timeout=30)
    )
    # The key in the query string counts for nothing.
    assert_refused(requests.get(f"{proxy.url}/ping?token={CURRENT_KEY}", timeout=10))


def test_the_current_and_the_next_key_get_predictions(proxy):
    for key in (CURRENT_KEY, NEXT_KEY):
        answer = predict(proxy, bearer(key))
        assert answer.status_code == 200, answer.text
        assert answer.json()["sentiment"] == "negative"
    ping = requests.get(f"{proxy.url}/ping", headers=bearer(CURRENT_KEY), timeout=10)
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"


def test_kserve_v1_and_v2_paths_pass(proxy):
    v1 = requests.post(
        f"{proxy.url}/v1/models/sentiment:predict",
        json={"instances": [NEGATIVE]},
        headers=bearer(CURRENT_KEY),
        timeout=30,
    )
    assert v1.status_code == 200, v1.text
    assert [p["sentiment"] for p in v1.json()["predictions"]] == ["negative"]
    v2 = requests.post(
        f"{proxy.url}/v2/models/sentiment/infer",
        json={"id": "1", "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [NEGATIVE]}]},
        headers=bearer(NEXT_KEY),
        timeout=30,
    )
    assert v2.status_code == 200, v2.text
    assert {o["name"]: o for o in v2.json()["outputs"]}["sentiment"]["data"] == ["negative"]


def test_healthz_answers_without_a_key_and_says_nothing_about_the_model(proxy):
    answer = requests.get(f"{proxy.url}/healthz", timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_only_the_inference_paths_pass(proxy):
    # The management API's paths (it listens on another port anyway), TorchServe's extras, the rest.
    for path in ("/models", "/models/sentiment", "/api-description", "/metrics", "/", "/token?type=inference"):
        answer = requests.get(f"{proxy.url}{path}", headers=bearer(CURRENT_KEY), timeout=10)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json() == {"error": "not found"}
    # Dot segments are resolved before the route is chosen.
    answer = requests.get(f"{proxy.url}/predictions/%2e%2e/models", headers=bearer(CURRENT_KEY), timeout=10)
    assert answer.status_code == 404


def test_bodies_are_limited_like_torchserve_and_large_ones_buffer(proxy):
    too_large = requests.post(
        f"{proxy.url}/predictions/sentiment",
        data=b"x" * 6_553_501,
        headers={**bearer(CURRENT_KEY), "Content-Type": "text/plain"},
        timeout=30,
    )
    assert too_large.status_code == 413
    assert set(too_large.json()) == {"error"}
    # Above client_body_buffer_size (64 KiB) nginx buffers the body in its temporary folder first.
    large = predict(proxy, bearer(CURRENT_KEY), text=NEGATIVE + " x" * 50_000)
    assert large.status_code in (200, 400), large.text  # TorchServe's answer (the handler caps text), not nginx's
    assert "error" in large.json() or large.json()["sentiment"]


def test_the_logs_carry_no_key_and_no_query_string(proxy):
    requests.get(f"{proxy.url}/ping?secret-query=1", headers=bearer(CURRENT_KEY), timeout=10)
    predict(proxy, bearer(NEXT_KEY))
    predict(proxy, bearer("wrong" + CURRENT_KEY[5:]))
    deadline = time.monotonic() + 10  # nginx writes each line as the request ends; wait for the last
    while '"path":"/predictions/sentiment","status":401' not in proxy.access_log.read_text():
        assert time.monotonic() < deadline, proxy.access_log.read_text()
        time.sleep(0.1)
    logs = proxy.logs()
    assert '"path":"/ping"' in logs
    for secret in (CURRENT_KEY, NEXT_KEY, CURRENT_KEY[5:], "secret-query", "Bearer"):
        assert secret not in logs, secret


def test_the_health_check_works_with_token_authorization_off(torchserve):
    """The pod's startup and readiness probe (deploy/container/healthcheck.py) against this server."""
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK)],
        env={
            **os.environ,
            "SENTIMENT_RUN_DIR": str(torchserve.run_dir),
            "TS_MANAGEMENT_ADDRESS": torchserve.url("management"),
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not torchserve.key_file.exists(), "with token authorization off TorchServe writes no key file"


def test_unset_or_placeholder_keys_let_nobody_in(tmp_path, torchserve):
    """No inference-key-next in the Secret (its variable unset: envsubst leaves "${...}" in the
    config), and the Secret's placeholder as the current key."""
    placeholder = "REPLACE-ME with a random key, see deploy/README.md"
    nginx = Nginx(tmp_path, proxy_environment(torchserve, SENTIMENT_INFERENCE_KEY=placeholder))
    assert "${SENTIMENT_INFERENCE_KEY_NEXT}" in (tmp_path / "conf.d" / "sentiment.conf").read_text()
    nginx.start()
    try:
        for header in (
            f"Bearer {placeholder}",
            "Bearer ${SENTIMENT_INFERENCE_KEY_NEXT}",
            "Bearer \\Q${SENTIMENT_INFERENCE_KEY_NEXT}\\E",
            "Bearer ",
            "Bearer",
        ):
            assert_refused(predict(nginx, {"Authorization": header}))
    finally:
        nginx.stop()


def test_equal_current_and_next_keys_are_a_valid_config(tmp_path, torchserve):
    """Mid-rotation both keys may be the same: nginx must still start (a map refuses duplicate keys)."""
    environment = proxy_environment(
        torchserve, SENTIMENT_INFERENCE_KEY=CURRENT_KEY, SENTIMENT_INFERENCE_KEY_NEXT=CURRENT_KEY
    )
    result = Nginx(tmp_path, environment).test_config()
    assert result.returncode == 0, result.stderr
