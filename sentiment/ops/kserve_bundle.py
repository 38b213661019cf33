"""Write the storage layout KServe's `kserve-torchserve` runtime reads: dist/kserve by default.

    sentiment-kserve-bundle [--out dist/kserve] [--device cpu|gpu] [--workers N]

    <out>/config/config.properties   TorchServe's server settings, with model_snapshot
    <out>/config/metrics.yaml        the metrics TorchServe publishes (metrics_config)
    <out>/config/log4j2.xml          INFO logging, size-capped files (vmargs)
    <out>/model-store/sentiment.mar  the archive `make archive` builds, for --device

Copy <out> to the storage the InferenceService's storageUri names; KServe's storage initializer
puts it at /mnt/models, and the runtime starts
`torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties`
(kserve/kserve config/runtimes/kserve-torchserve.yaml). Why each setting is what it is: the comments
of the rendered config.properties below, and deploy/README.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from sentiment.console import command
from sentiment.ops.archive import MODEL_YAML, build, model_settings
from sentiment.ops.properties import parse_properties
from sentiment.project import DEFAULT_CONFIG, DEFAULT_MODEL, PROJECT_DIR
from sentiment.serving.config import ModelConfig

log = logging.getLogger(__name__)
# Where KServe's storage initializer puts the bundle inside the predictor container.
MOUNT_PATH = "/mnt/models"
# kserve_wrapper (pytorch/serve kubernetes/kserve/kserve_wrapper) serves KServe's protocols on 8080
# (HTTP) and 8081 (gRPC) and forwards to TorchServe at inference_address: TorchServe must keep off
# both ports. 8085 is the port of the wrapper's defaults and of pytorch/serve's sample bundle.
TORCHSERVE_PORT = 8085
# The runtime's annotation prometheus.kserve.io/port says 8082.
METRICS_PORT = 8082
# The predictor's CPU request in deploy/k8s/overlays/kserve: one single-threaded worker per core.
DEFAULT_CPU_WORKERS = 2
GPU_PROPERTIES = PROJECT_DIR / "config.gpu.properties"


def batch_settings(device: str) -> dict:
    """batchSize, maxBatchDelay and responseTimeout of model-config.yaml, its `gpu:` section applied
    for a GPU: model_snapshot must repeat them, because TorchServe takes a snapshot's values over
    the archive's (Model.setModelState)."""
    settings = model_settings(PROJECT_DIR / MODEL_YAML, device)
    return {key: settings[key] for key in ("batchSize", "maxBatchDelay", "responseTimeout")}


def default_workers(device: str) -> int:
    """Workers for one predictor pod: one per requested core on CPU, config.gpu.properties'
    workers_per_gpu on one GPU (the overlay requests nvidia.com/gpu: 1)."""
    if device == "gpu":
        return int(parse_properties(GPU_PROPERTIES.read_text())["workers_per_gpu"])
    return DEFAULT_CPU_WORKERS


def model_snapshot(name: str, version: str, workers: int, device: str) -> str:
    """The one model TorchServe registers at start; kserve_wrapper also takes its model names from here."""
    model = {"defaultVersion": True, "marName": f"{name}.mar", "minWorkers": workers, "maxWorkers": workers}
    model.update(batch_settings(device))
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {name: {version: model}}}
    return json.dumps(snapshot, separators=(",", ":"))


def render_config(name: str, version: str, workers: int, device: str, mount_path: str = MOUNT_PATH) -> str:
    project = parse_properties((PROJECT_DIR / "config.properties").read_text())
    job_queue_size = project["job_queue_size"]
    if device == "gpu":
        job_queue_size = parse_properties(GPU_PROPERTIES.read_text()).get("job_queue_size", job_queue_size)
    return f"""\
# TorchServe settings for KServe's kserve-torchserve runtime, written by sentiment-kserve-bundle
# ({device.upper()}, {workers} workers). KServe mounts this bundle at {mount_path}.

# kserve_wrapper, the runtime image's entry point, answers KServe's v1/v2 protocols on :8080 and
# gRPC on :8081, and forwards each request to TorchServe's own /v1/models/NAME:predict and
# /v2/models/NAME/infer at inference_address; it asks management_address for READY workers.
# TorchServe listens on loopback only: nothing outside the pod reaches it but through the wrapper.
inference_address=http://127.0.0.1:{TORCHSERVE_PORT}
management_address=http://127.0.0.1:{TORCHSERVE_PORT}
grpc_inference_address=127.0.0.1
grpc_management_address=127.0.0.1
grpc_inference_port=7070
grpc_management_port=7071
# Prometheus scrapes the pod on the runtime's prometheus.kserve.io/port.
metrics_address=http://0.0.0.0:{METRICS_PORT}
metrics_mode=prometheus
metrics_config={mount_path}/config/metrics.yaml
model_metrics_auto_detect=false

# Token authorization is off here, on purpose: kserve_wrapper sends no Authorization header (neither
# its readiness check nor its forwarded predictions), and TorchServe 0.12 cannot be given keys (it
# draws new random ones at every start). TorchServe is on loopback above; callers authenticate at
# KServe's ingress (Istio/Knative), and the InferenceService's pods are where a NetworkPolicy applies.
disable_token_authorization=true
enable_model_api=false
allowed_urls={project["allowed_urls"]}

# KServe sets TS_SERVICE_ENVELOPE=kserve or kservev2 on the container (the serviceEnvelope label its
# webhook adds). Those envelopes read only the first request of a TorchServe batch; the handler
# parses v1 and v2 bodies itself, per request. With environment overrides off, TorchServe ignores
# TS_SERVICE_ENVELOPE, and every TS_* variable an image sets: this file alone decides.
enable_envvars_config=false

model_store={mount_path}/model-store
model_snapshot={model_snapshot(name, version, workers, device)}
install_py_dep_per_model=false
max_request_size={project["max_request_size"]}
job_queue_size={job_queue_size}
decode_input_request=false
vmargs=-Dlog4j.configurationFile=file://{mount_path}/config/log4j2.xml
"""


def write_bundle(
    out: Path,
    device: str = "cpu",
    workers: int | None = None,
    config_path: Path = DEFAULT_CONFIG,
    name: str = DEFAULT_MODEL,
    archive_store: Path | None = None,
) -> Path:
    """Write the bundle into `out`; `archive_store` reuses a folder that already holds NAME.mar
    built for `device` instead of building it again."""
    workers = workers or default_workers(device)
    config_dir, model_store = out / "config", out / "model-store"
    config_dir.mkdir(parents=True, exist_ok=True)
    model_store.mkdir(parents=True, exist_ok=True)
    if archive_store is None:
        build(config_path, model_store, name=name, device=device)
    else:
        shutil.copy2(archive_store / f"{name}.mar", model_store / f"{name}.mar")
    version = ModelConfig.from_file(config_path).model_version
    (config_dir / "config.properties").write_text(render_config(name, version, workers, device))
    shutil.copy2(PROJECT_DIR / "metrics.yaml", config_dir / "metrics.yaml")
    shutil.copy2(PROJECT_DIR / "log4j2.xml", config_dir / "log4j2.xml")
    log.info("KServe bundle for %s (%d workers) in %s: upload it where storageUri points", device, workers, out)
    return out


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=PROJECT_DIR / "dist" / "kserve")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu", help="whose settings to pack")
    parser.add_argument(
        "--workers",
        type=int,
        help=f"workers per pod (default: {DEFAULT_CPU_WORKERS} on cpu, the predictor's CPU request; "
        "workers_per_gpu of config.gpu.properties on gpu)",
    )
    args = parser.parse_args()
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1. Given: {args.workers}")
    write_bundle(args.out, args.device, args.workers)


if __name__ == "__main__":
    main()
