"""The serving image for real (`make image-test`): build it, run it, ask it, check who and where
it serves, stop it.

The image is built with deploy/container/build-image.sh, as `make image` builds it: unchanged
sources are a layer-cache hit (seconds), so an image from `make image` is reused exactly when it
is still current. The container runs with --network=host and TorchServe's ports moved to free
loopback ports by TS_* environment variables; its run folder is a volume, so the keys are read from
the host. Skips, saying why, where no container engine works.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from sentiment.ops.properties import free_port_overrides
from tests.container.engine import SERVING_IMAGE, Box, build_image

pytestmark = pytest.mark.container

RUN_DIR_IN_IMAGE = "/home/model-server/run"
READY_TIMEOUT = 240.0


@dataclass
class Container(Box):
    run_dir: Path
    ports: dict[str, str]  # config.properties key -> value

    def url(self, api: str) -> str:
        return self.ports[f"{api}_address"]

    def keys(self) -> dict:
        try:
            return json.loads((self.run_dir / "key_file.json").read_text())
        except PermissionError:  # a rootless engine maps uid 1000 elsewhere: ask inside
            return json.loads(self.exec("cat", f"{RUN_DIR_IN_IMAGE}/key_file.json").stdout)

    def auth(self, api: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys()[api]['key']}"}


@pytest.fixture(scope="module")
def image(engine) -> str:
    return build_image(engine, SERVING_IMAGE)


def writable_by_uid_1000(folder: Path, engine: str) -> None:
    if os.geteuid() == 0:
        os.chown(folder, 1000, 1000)
    elif Path(engine).name == "podman":  # rootless: uid 1000 of the container is a subordinate uid
        subprocess.run([engine, "unshare", "chown", "1000:1000", str(folder)], check=True, timeout=60)
    else:
        folder.chmod(0o777)


@pytest.fixture(scope="module")
def container(engine, image, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("container-run")
    writable_by_uid_1000(run_dir, engine)
    ports = free_port_overrides()  # loopback addresses nothing listens on now
    name = f"sentiment-test-{uuid.uuid4().hex[:8]}"
    box = Container(engine, name, run_dir, ports)
    env_args = []
    for key, value in ports.items():
        env_args += ["--env", f"TS_{key.upper()}={value}"]
    box.cmd(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--read-only",
        "--volume",
        f"{run_dir}:{RUN_DIR_IN_IMAGE}",
        *env_args,
        image,
        timeout=120,
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            health = box.exec("/usr/local/bin/sentiment-healthcheck", "--quiet")
            if health.returncode == 0:
                break
            assert box.running(), f"the container exited during start-up:\n{box.logs()}"
            assert time.monotonic() < deadline, f"no READY worker after {READY_TIMEOUT:.0f} s:\n{box.logs()}"
            time.sleep(1)  # polling interval
        yield box
    finally:
        box.cmd("rm", "--force", "--time", "5", name, check=False, timeout=120)


def predict(box: Container, headers: dict[str, str], **kwargs) -> requests.Response:
    return requests.post(f"{box.url('inference')}/predictions/sentiment", headers=headers, timeout=30, **kwargs)


def test_tutorial_sentences(container):
    headers = container.auth("inference")
    negative = predict(container, headers, json={"text": "This app is a total waste of time!"})
    positive = predict(
        container,
        {**headers, "Content-Type": "text/plain"},
        data=b"OMG. I love how easy it is to stick to my schedule. Would recommend to everyone!",
    )
    assert negative.status_code == 200, negative.text
    assert negative.json()["sentiment"] == "negative"
    assert positive.status_code == 200, positive.text
    assert positive.json()["sentiment"] == "positive"
    assert set(positive.json()["probabilities"]) == {"negative", "neutral", "positive"}


def test_bad_request_is_400_with_a_json_error(container):
    answer = predict(container, container.auth("inference"), json={"text": 3})
    assert answer.status_code == 400
    assert "text" in answer.json()["error"]


def test_token_authorization_is_on(container):
    key_file = container.run_dir / "key_file.json"
    assert key_file.is_file(), "key_file.json is not in the mounted run folder"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    for headers in ({}, {"Authorization": "Bearer not-the-key"}, container.auth("management")):
        refused = predict(container, headers, json={"text": "Works as described."})
        assert refused.status_code == 400, refused.text  # TorchServe 0.12 answers 400, not 401
    assert requests.get(f"{container.url('inference')}/ping", timeout=10).status_code == 400
    workers = requests.get(f"{container.url('management')}/models/sentiment", timeout=10)
    assert workers.status_code == 400


def test_runs_as_non_root(container):
    uid = container.exec("id", "-u")
    assert uid.returncode == 0 and uid.stdout.strip() not in ("", "0"), uid
    # Every process of the container, the Java frontend and the Python workers included.
    assert container.process_uids() == {"1000"}


def listening(table: str) -> set[tuple[str, int]]:
    """(hex address, port) of the LISTEN sockets in a /proc/net/tcp{,6} table."""
    sockets = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":
            address, port = fields[1].split(":")
            sockets.add((address, int(port, 16)))
    return sockets


# 127.0.0.1 as /proc/net/tcp writes it, and as tcp6 writes it for Java's dual-stack sockets (::ffff:127.0.0.1).
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F"}


def test_listens_only_where_configured(container):
    sockets = listening(container.exec("cat", "/proc/net/tcp").stdout) | listening(
        container.exec("cat", "/proc/net/tcp6").stdout
    )
    for api in ("inference", "management", "metrics"):
        port = int(container.url(api).rsplit(":", 1)[1])
        assert container.url(api).startswith("http://127.0.0.1:")
        addresses = {address for address, p in sockets if p == port}
        assert addresses & LOOPBACK, f"{api} does not listen on 127.0.0.1:{port}"
        assert not addresses - LOOPBACK, f"{api} port {port} also listens on {addresses - LOOPBACK}"
        # and a connection to another address of this machine on that port is refused
        with socket.socket() as probe:
            probe.settimeout(5)
            assert probe.connect_ex((other_address(), port)) != 0, f"{api} answers on {other_address()}:{port}"


def other_address() -> str:
    """An address of this machine that is not loopback (the route out), else 127.0.0.2."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
            address = probe.getsockname()[0]
        except OSError:
            address = ""
    return address if address and not address.startswith("127.") else "127.0.0.2"


def test_stops_cleanly(container):
    started = time.monotonic()
    container.cmd("stop", "--time", "30", container.name, timeout=90)
    took = time.monotonic() - started
    code = container.cmd("inspect", "--format", "{{.State.ExitCode}}", container.name).stdout.strip()
    assert took < 25, f"stop took {took:.0f} s: SIGTERM was not handled"
    assert code != "137", "killed, not stopped"
    assert not (container.run_dir / "key_file.json").exists(), "the keys outlived the server"
