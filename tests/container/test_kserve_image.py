"""The KServe image for real (`make image-test`): run it the way KServe's kserve-torchserve runtime runs
it, on a bundle from sentiment.ops.kserve_bundle, and ask kserve_wrapper in KServe's v1 and v2 protocols.

The image is built with deploy/container/build-image.sh (VARIANT=kserve), as `make image-kserve`
builds it: unchanged sources are a layer-cache hit. The container gets what the runtime and the
InferenceService (deploy/k8s/overlays/kserve, kserve-v2) give it: the bundle read-only at
/mnt/models, the arguments `torchserve --start --model-store=/mnt/models/model-store
--ts-config=/mnt/models/config/config.properties`, TS_SERVICE_ENVELOPE and PROTOCOL_VERSION (kserve/v1,
then kservev2/v2, one container each), TS_CONFIG_FILE, and uid 1000 (the image's USER).

It runs on the host's network, where kserve_wrapper's ports are fixed: HTTP 8080 and gRPC 8081
(kserve_wrapper/__main__.py passes them to ModelServer). The test skips, saying so, when either is
taken. TorchServe's own ports come from the bundle's config.properties: the test's copy of the bundle
moves them (8085, 8082, 7070, 7071 in the bundle) to free loopback ports; nothing else differs.
MODEL_LOAD_DELAY is 1 s instead of the InferenceService's 5 s (the wrapper's readiness poll), so the
test waits less.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from sentiment.ops.kserve_bundle import MOUNT_PATH, write_bundle
from sentiment.ops.properties import free_port_overrides, parse_properties, render_properties
from tests.container.engine import KSERVE_IMAGE, SERVING_IMAGE, Box, build_image

pytestmark = pytest.mark.container

NEGATIVE = "This app is a total waste of time!"
POSITIVE = "OMG. I love how easy it is to stick to my schedule. Would recommend to everyone!"
MODEL = "sentiment"
WRAPPER_HTTP_PORT, WRAPPER_GRPC_PORT = 8080, 8081  # fixed in kserve_wrapper/__main__.py
WRAPPER = f"http://127.0.0.1:{WRAPPER_HTTP_PORT}"
RUNTIME_ARGS = [
    "torchserve",
    "--start",
    f"--model-store={MOUNT_PATH}/model-store",
    f"--ts-config={MOUNT_PATH}/config/config.properties",
]
READY_TIMEOUT = 300.0


@dataclass
class Served(Box):
    protocol: str


def port_taken(port: int) -> bool:
    """Whether something listens on the port (what the wrapper binds: every IPv4 address)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT left by others is no obstacle
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


@pytest.fixture(scope="module")
def kserve_image(engine) -> str:
    # On the serving image test_image.py builds: one build for both.
    return build_image(engine, KSERVE_IMAGE, VARIANT="kserve", SERVING_IMAGE=SERVING_IMAGE)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The bundle `make kserve-bundle` writes, its TorchServe ports moved to free loopback ports."""
    out = write_bundle(tmp_path_factory.mktemp("kserve") / "bundle")
    config = out / "config" / "config.properties"
    ports = free_port_overrides()
    config.write_text(
        render_properties(
            config.read_text(),
            {
                # inference and management on one port, as in the bundle and the wrapper's defaults
                "inference_address": ports["inference_address"],
                "management_address": ports["inference_address"],
                "metrics_address": ports["metrics_address"],
                "grpc_inference_port": ports["grpc_inference_port"],
                "grpc_management_port": ports["grpc_management_port"],
            },
        )
    )
    for path in [out, *out.rglob("*")]:  # readable by uid 1000 in the container
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out


@pytest.fixture(scope="module", params=["v1", "v2"])
def served(request, engine, kserve_image, bundle):
    """The image run as the runtime runs it, for one protocol; yields once kserve_wrapper says ready."""
    protocol = request.param
    taken = [port for port in (WRAPPER_HTTP_PORT, WRAPPER_GRPC_PORT) if port_taken(port)]
    if taken:
        pytest.skip(
            f"port(s) {taken} taken on this host: kserve_wrapper listens on 8080 and 8081, fixed in its "
            "__main__.py, and the container runs on the host's network (stop `make run` or whatever holds them)"
        )
    box = Served(engine, f"sentiment-kserve-test-{protocol}-{uuid.uuid4().hex[:8]}", protocol)
    envelope = {"v1": "kserve", "v2": "kservev2"}[protocol]  # the label KServe's webhook sets
    try:
        started = box.cmd(
            "run",
            "--detach",
            "--name",
            box.name,
            "--network",
            "host",
            "--volume",
            f"{bundle}:{MOUNT_PATH}:ro",
            "--env",
            f"TS_SERVICE_ENVELOPE={envelope}",
            "--env",
            f"PROTOCOL_VERSION={protocol}",
            "--env",
            f"TS_CONFIG_FILE={MOUNT_PATH}/config/config.properties",
            "--env",
            "MODEL_LOAD_DELAY=1",
            "--env",
            "MODEL_LOAD_MAX_TRY=240",
            kserve_image,
            *RUNTIME_ARGS,
            timeout=120,
            check=False,
        )
        assert started.returncode == 0, f"podman run failed: {started.stderr}"
        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer yet"
        while True:
            try:
                answer = requests.get(f"{WRAPPER}/v1/models/{MODEL}", timeout=5)
                last = f"{answer.status_code} {answer.text[:300]}"
                if answer.ok and answer.json().get("ready") is True:
                    break
            except requests.RequestException as error:
                last = str(error)
            assert box.running(), f"the container exited during start-up:\n{box.logs()}"
            assert time.monotonic() < deadline, (
                f"kserve_wrapper not ready after {READY_TIMEOUT:.0f} s ({last}):\n{box.logs()}"
            )
            time.sleep(1)  # polling interval
        yield box
    finally:
        box.cmd("rm", "--force", "--time", "30", box.name, check=False, timeout=120)
        assert not box.cmd("ps", "--all", "--quiet", "--filter", f"name={box.name}", check=False).stdout.strip()


def test_the_bundle_moves_only_torchserves_ports(bundle):
    settings = parse_properties((bundle / "config" / "config.properties").read_text())
    for key in ("inference_address", "management_address", "metrics_address"):
        assert settings[key].startswith("http://127.0.0.1:")
        assert int(settings[key].rsplit(":", 1)[1]) not in (WRAPPER_HTTP_PORT, WRAPPER_GRPC_PORT)
    assert settings["model_store"] == f"{MOUNT_PATH}/model-store"
    assert settings["disable_token_authorization"] == "true"


def test_kserve_protocol(served):
    if served.protocol == "v1":
        answer = requests.post(
            f"{WRAPPER}/v1/models/{MODEL}:predict", json={"instances": [NEGATIVE, POSITIVE]}, timeout=60
        )
        assert answer.status_code == 200, f"{answer.text}\n{served.logs()}"
        assert [p["sentiment"] for p in answer.json()["predictions"]] == ["negative", "positive"]
    else:
        request = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": [NEGATIVE, POSITIVE]}]}
        answer = requests.post(f"{WRAPPER}/v2/models/{MODEL}/infer", json=request, timeout=60)
        assert answer.status_code == 200, f"{answer.text}\n{served.logs()}"
        body = answer.json()
        assert body["model_name"] == MODEL
        outputs = {output["name"]: output for output in body["outputs"]}
        assert outputs["sentiment"]["data"] == ["negative", "positive"]
        assert outputs["sentiment"]["shape"] == [2]


def test_runs_as_non_root(served):
    uid = served.exec("id", "-u")
    assert uid.returncode == 0 and uid.stdout.strip() not in ("", "0"), uid
    # Every process: the entrypoint, kserve_wrapper, the Java frontend and the Python workers.
    assert served.process_uids() == {"1000"}


def test_stops_cleanly(served):
    started = time.monotonic()
    served.cmd("stop", "--time", "40", served.name, timeout=120)
    took = time.monotonic() - started
    code = served.cmd("inspect", "--format", "{{.State.ExitCode}}", served.name).stdout.strip()
    assert took < 35, f"stop took {took:.0f} s: SIGTERM was not handled\n{served.logs()}"
    assert code == "0", f"exit code {code}\n{served.logs()}"
    assert "stopped" in served.logs()
