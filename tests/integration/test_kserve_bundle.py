"""The `make kserve-bundle` layout, served the way KServe's kserve-torchserve runtime serves it.

The runtime runs `torchserve --start --model-store=/mnt/models/model-store
--ts-config=/mnt/models/config/config.properties` (kserve/kserve config/runtimes/kserve-torchserve.yaml)
with TS_SERVICE_ENVELOPE set from the protocol, then kserve_wrapper forwards each v1 or v2 request
to TorchServe's /v1/models/NAME:predict or /v2/models/NAME/infer, without a token. This test runs
the same command on a bundle written by sentiment.ops.kserve_bundle and sends those two requests.
The copy of config.properties it starts from differs from the bundle's only in what a test machine
needs: free loopback ports instead of 8085/8082/7070/7071, and the bundle's folder instead of
/mnt/models in metrics_config and vmargs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from sentiment.ops.kserve_bundle import MOUNT_PATH, write_bundle
from sentiment.ops.local_server import java_home
from sentiment.ops.properties import free_port_overrides, parse_properties, render_properties

NEGATIVE = "This app is a total waste of time!"
POSITIVE = "OMG. I love how easy it is to stick to my schedule. Would recommend to everyone!"
MODEL = "sentiment"
TORCHSERVE = Path(sys.executable).with_name("torchserve")

pytestmark = pytest.mark.integration


def test_config_for_kserve_has_the_runtime_ports_and_no_envelope(tmp_path, default_archive):
    bundle = write_bundle(tmp_path / "kserve", archive_store=default_archive)
    settings = parse_properties((bundle / "config" / "config.properties").read_text())
    assert settings["inference_address"] == settings["management_address"] == "http://127.0.0.1:8085"
    assert settings["metrics_address"] == "http://0.0.0.0:8082"
    assert settings["enable_envvars_config"] == "false", "KServe's TS_SERVICE_ENVELOPE must not reach TorchServe"
    assert "service_envelope" not in settings
    assert settings["model_store"] == f"{MOUNT_PATH}/model-store"
    assert (bundle / "model-store" / f"{MODEL}.mar").is_file()
    assert (bundle / "config" / "metrics.yaml").is_file() and (bundle / "config" / "log4j2.xml").is_file()


@pytest.fixture()
def kserve_torchserve(tmp_path, default_archive):
    """TorchServe started like the runtime starts it, on the bundle; yields (inference URL, management URL)."""
    bundle = write_bundle(tmp_path / "kserve", archive_store=default_archive)
    ports = free_port_overrides()
    bundled = (bundle / "config" / "config.properties").read_text()
    overrides = {
        # The bundle puts inference and management on one port, as kserve_wrapper expects.
        "inference_address": ports["inference_address"],
        "management_address": ports["inference_address"],
        "metrics_address": ports["metrics_address"],
        "grpc_inference_port": ports["grpc_inference_port"],
        "grpc_management_port": ports["grpc_management_port"],
        **{
            key: parse_properties(bundled)[key].replace(MOUNT_PATH, str(bundle)) for key in ("metrics_config", "vmargs")
        },
    }
    run_dir = tmp_path / "run"
    (run_dir / "tmp").mkdir(parents=True)
    config = run_dir / "config.properties"
    config.write_text(render_properties(bundled, overrides))
    env = {key: value for key, value in os.environ.items() if key != "TS_CONFIG_FILE"}
    env.update(
        JAVA_HOME=java_home(),
        TMPDIR=str(run_dir / "tmp"),  # pid file
        TEMP=str(run_dir / "tmp"),  # worker sockets
        LOG_LOCATION=str(run_dir / "logs"),
        METRICS_LOCATION=str(run_dir / "logs"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        # What KServe puts on the predictor container for protocolVersion v1 (the bundle must ignore it).
        TS_SERVICE_ENVELOPE="kserve",
        PROTOCOL_VERSION="v1",
    )
    command = [str(TORCHSERVE), "--start", f"--model-store={bundle}/model-store", f"--ts-config={config}"]
    # The frontend inherits the starter's stdout: a file, never a pipe, or reading it waits for TorchServe to exit.
    with (run_dir / "console.log").open("wb") as console:
        subprocess.run(command, cwd=run_dir, env=env, check=True, stdout=console, stderr=subprocess.STDOUT)
    pid_file = run_dir / "tmp" / ".model_server.pid"
    url = ports["inference_address"]
    processes: list[psutil.Process] = []
    try:
        processes = wait_for_a_ready_worker(url, pid_file, run_dir / "logs")
        yield url
    finally:
        processes += frontend_and_workers(pid_file)
        with (run_dir / "console.log").open("ab") as console:
            subprocess.run(
                [str(TORCHSERVE), "--stop"], cwd=run_dir, env=env, stdout=console, stderr=console, timeout=120
            )
        _, alive = psutil.wait_procs(processes, timeout=60)
        for process in alive:
            process.kill()
        assert not alive, f"processes left behind: {[p.pid for p in alive]}"


def frontend_and_workers(pid_file: Path) -> list[psutil.Process]:
    try:
        frontend = psutil.Process(int(pid_file.read_text()))
        return [frontend, *frontend.children(recursive=True)]
    except (OSError, ValueError, psutil.NoSuchProcess):
        return []


def wait_for_a_ready_worker(url: str, pid_file: Path, log_dir: Path, timeout: float = 180) -> list[psutil.Process]:
    """Poll the management API, without a token, as kserve_wrapper's readiness check does."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            answer = requests.get(f"{url}/models/{MODEL}", timeout=5)
            last = f"{answer.status_code} {answer.text[:300]}"
            if answer.ok and any(worker["status"] == "READY" for worker in answer.json()[0]["workers"]):
                return frontend_and_workers(pid_file)
        except requests.RequestException as error:
            last = str(error)
            if pid_file.exists() and not frontend_and_workers(pid_file):
                break  # the frontend died
        time.sleep(0.5)  # polling interval of the readiness check
    logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(log_dir.parent.rglob("*.log")))
    pytest.fail(f"no READY worker ({last})\n{logs}")


def test_the_runtime_serves_the_bundle_with_its_batch_settings(kserve_torchserve):
    (model,) = requests.get(f"{kserve_torchserve}/models/{MODEL}", timeout=10).json()
    assert (model["batchSize"], model["maxBatchDelay"]) == (8, 2)
    assert model["minWorkers"] == model["maxWorkers"] == 2
    assert model["modelUrl"] == f"{MODEL}.mar"

    v1 = requests.post(
        f"{kserve_torchserve}/v1/models/{MODEL}:predict", json={"instances": [NEGATIVE, POSITIVE]}, timeout=30
    )
    assert v1.status_code == 200, v1.text
    assert [p["sentiment"] for p in v1.json()["predictions"]] == ["negative", "positive"]

    v2_request = {
        "id": "kserve-1",
        "inputs": [{"name": "input-0", "shape": [2], "datatype": "BYTES", "data": [NEGATIVE, POSITIVE]}],
    }
    v2 = requests.post(f"{kserve_torchserve}/v2/models/{MODEL}/infer", json=v2_request, timeout=30)
    assert v2.status_code == 200, v2.text
    answer = v2.json()
    assert answer["model_name"] == MODEL and answer["id"] == "kserve-1"
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert outputs["sentiment"]["data"] == ["negative", "positive"]
    assert outputs["sentiment"]["shape"] == [2]
