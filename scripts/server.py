"""Start, stop, scale and inspect the local TorchServe that serves the sentiment model.

    python scripts/server.py start [--no-auth] [--timeout 180]
    python scripts/server.py stop
    python scripts/server.py scale WORKERS
    python scripts/server.py status

Everything TorchServe writes (pid file, logs, key_file.json, worker sockets, its copy of
config.properties) lives in one run folder, `.run/` by default (env SENTIMENT_RUN_DIR).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import requests

log = logging.getLogger("server")
ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "sentiment"
LOG_TAIL_LINES = 40


class ServerError(RuntimeError):
    """TorchServe did not start, died, or did not become ready."""


@dataclass
class LocalServer:
    run_dir: Path = field(default_factory=lambda: Path(os.environ.get("SENTIMENT_RUN_DIR", ROOT / ".run")))
    model_store: Path = ROOT / "model_store"
    properties: Path = ROOT / "config.properties"
    log_config: Path = ROOT / "log4j2.xml"
    # Settings that replace or add lines of config.properties in the run folder's copy.
    overrides: dict[str, str] = field(default_factory=dict)
    model_name: str = MODEL_NAME

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

    def settings(self) -> dict[str, str]:
        """The settings in force: the run folder's copy once `start` wrote it, else the project's
        config.properties with the overrides applied."""
        text = (
            (self.run_dir / "config.properties").read_text()
            if (self.run_dir / "config.properties").exists()
            else self.render_properties()
        )
        return parse_properties(text)

    def render_properties(self) -> str:
        lines = self.properties.read_text().splitlines()
        overrides = {"model_store": str(self.model_store.resolve()), **self.overrides}
        models = overrides.get("models") or parse_properties("\n".join(lines)).get("models")
        if models:
            overrides["models"] = with_default_workers(models, default_worker_count())
        rendered = []
        for line in lines:
            key = line.split("=", 1)[0].strip()
            if key in overrides and not line.lstrip().startswith("#"):
                rendered.append(f"{key}={overrides.pop(key)}")
            else:
                rendered.append(line)
        rendered += [f"{key}={value}" for key, value in overrides.items()]
        return "\n".join(rendered) + "\n"

    # -- addresses and auth ------------------------------------------------------------------
    def url(self, api: str) -> str:
        """Base URL of the inference, management or metrics API."""
        return self.settings()[f"{api}_address"].rstrip("/")

    def auth_header(self, api: str) -> dict[str, str]:
        """The bearer token for `api` from key_file.json; empty when authorization is off."""
        if self.settings().get("disable_token_authorization", "false").lower() == "true":
            return {}
        keys = json.loads(self.key_file.read_text())
        return {"Authorization": f"Bearer {keys[api]['key']}"}

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
        archive = self.model_store / f"{self.model_name}.mar"
        if not archive.is_file():
            raise ServerError(f"{archive} is missing: run `make archive`")
        (self.run_dir / "tmp").mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.key_file.unlink(missing_ok=True)
        (self.run_dir / "config.properties").write_text(self.render_properties())
        self._check_ports_free()
        env = {
            **os.environ,
            "TMPDIR": str(self.run_dir / "tmp"),  # pid file
            "TEMP": str(self.run_dir / "tmp"),  # java.io.tmpdir: worker sockets
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            # The frontend reads the working directory's config too; pin it to ours.
            "TS_CONFIG_FILE": str(self.run_dir / "config.properties"),
        }
        torchserve = Path(sys.executable).with_name("torchserve")
        command = [
            str(torchserve),
            "--start",
            "--ncs",
            "--models",
            f"{self.model_name}={archive.name}",
            "--log-config",
            str(self.log_config),
        ]
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
            )
        self.wait_until_ready(timeout)

    def _check_ports_free(self) -> None:
        import socket

        settings = self.settings()
        for key in ("inference_address", "management_address", "metrics_address"):
            match = re.match(r"https?://([^:/]+):(\d+)", settings[key])
            host, port = match.group(1), int(match.group(2))
            with socket.socket() as probe:
                if probe.connect_ex((host, port)) == 0:
                    raise ServerError(
                        f"port {port} ({key}) is already taken: stop what listens there or "
                        f"change {key} in config.properties"
                    )

    def wait_until_ready(self, timeout: float) -> None:
        """Until every worker is READY: /ping answers Healthy long before the model has loaded."""
        deadline = time.monotonic() + timeout
        last_error = "no answer yet"
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise ServerError(f"TorchServe exited during start-up\n{self.log_tail()}")
            try:
                workers = self.workers()
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

    # -- management API ----------------------------------------------------------------------
    def workers(self) -> list[dict]:
        response = requests.get(
            f"{self.url('management')}/models/{self.model_name}",
            headers=self.auth_header("management"),
            timeout=5,
        )
        response.raise_for_status()
        return response.json()[0]["workers"]

    def scale(self, workers: int, timeout: float = 180.0) -> list[dict]:
        response = requests.put(
            f"{self.url('management')}/models/{self.model_name}",
            params={"min_worker": workers, "max_worker": max(workers, 1), "synchronous": "true"},
            headers=self.auth_header("management"),
            timeout=timeout,
        )
        if response.status_code >= 400:
            raise ServerError(f"scaling failed: HTTP {response.status_code} {response.text}")
        return self.workers()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        chunks = []
        for name in ("model_log.log", "ts_log.log", "console.log"):
            path = self.log_dir / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"--- last lines of {path} ---\n" + "\n".join(tail))
        return "\n".join(chunks) or f"(no logs in {self.log_dir})"


def default_worker_count() -> int:
    """One worker per GPU where there are GPUs, else one per CPU core."""
    gpus = (
        subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
        if shutil.which("nvidia-smi")
        else None
    )
    if gpus is not None and gpus.returncode == 0 and gpus.stdout.strip():
        return len(gpus.stdout.strip().splitlines())
    return len(os.sched_getaffinity(0))


def with_default_workers(models_json: str, workers: int) -> str:
    """Fill in minWorkers/maxWorkers where config.properties leaves them to the machine."""
    models = json.loads(models_json)
    for versions in models.values():
        for settings in versions.values():
            settings.setdefault("minWorkers", workers)
            settings.setdefault("maxWorkers", max(settings["minWorkers"], workers))
    return json.dumps(models)


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (the OS picks them); for tests and benchmarks beside `make run`."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def server_on_free_ports(run_dir: Path, model_store: Path, **overrides: str) -> LocalServer:
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    ports = {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
    }
    return LocalServer(run_dir=run_dir, model_store=model_store, overrides={**ports, **overrides})


def parse_properties(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def curl_example(server: LocalServer) -> str:
    token = ""
    if server.auth_header("inference"):
        read_key = f"import json; print(json.load(open('{server.key_file}'))['inference']['key'])"
        token = f'-H "Authorization: Bearer $(python3 -c "{read_key}")" '
    return (
        f"curl -s {token}-H 'Content-Type: application/json' "
        f'-d \'{{"text": "This app is a total waste of time!"}}\' '
        f"{server.url('inference')}/predictions/{server.model_name}"
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="start TorchServe and wait until its workers are READY")
    start.add_argument("--no-auth", action="store_true", help="turn token authorization off (local experiments)")
    start.add_argument("--timeout", type=float, default=180.0)
    commands.add_parser("stop", help="stop TorchServe and its workers")
    scale = commands.add_parser("scale", help="set the number of workers")
    scale.add_argument("workers", type=int)
    commands.add_parser("status", help="print the model's workers")
    args = parser.parse_args()

    server = LocalServer()
    try:
        if args.command == "start":
            if args.no_auth:
                server.overrides["disable_token_authorization"] = "true"
                log.warning("token authorization is OFF: anyone who reaches these ports can use every API")
            started = time.monotonic()
            server.start(args.timeout)
            log.info(
                "TorchServe is serving %r: %d workers READY after %.1f s",
                server.model_name,
                len(server.workers()),
                time.monotonic() - started,
            )
            log.info("inference:  %s/predictions/%s", server.url("inference"), server.model_name)
            log.info("management: %s/models/%s", server.url("management"), server.model_name)
            log.info("metrics:    %s/metrics", server.url("metrics"))
            log.info("logs:       %s", server.log_dir)
            log.info("try it:\n  %s", curl_example(server))
        elif args.command == "stop":
            server.stop()
        elif args.command == "scale":
            workers = server.scale(args.workers)
            log.info("%d workers: %s", len(workers), ", ".join(f"{w['pid']} {w['status']}" for w in workers))
        elif args.command == "status":
            print(json.dumps(server.workers(), indent=2))  # noqa: T201 - this command's output
    except ServerError as error:
        log.error("%s", error)
        sys.exit(1)
    except requests.ConnectionError:
        log.error("TorchServe does not answer at %s: is it running? (`make run`)", server.url("management"))
        sys.exit(1)


if __name__ == "__main__":
    main()
