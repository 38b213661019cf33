"""What both container tests need: a working engine, the image builds, and a container handle."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from sentiment.project import PROJECT_DIR

BUILD_SCRIPT = PROJECT_DIR / "deploy" / "container" / "build-image.sh"
CONTAINERS_CONF = PROJECT_DIR / "deploy" / "container" / "containers.conf"
SERVING_IMAGE = os.environ.get("IMAGE", "localhost/sentiment-torchserve:test")
KSERVE_IMAGE = os.environ.get("KSERVE_IMAGE", "localhost/sentiment-torchserve-kserve:test")


def engine_env(engine: str) -> dict[str, str]:
    """podman on machines where only runc works reads the project's containers.conf, as `make` does."""
    env = dict(os.environ)
    if Path(engine).name == "podman" and "CONTAINERS_CONF" not in env and shutil.which("runc"):
        env["CONTAINERS_CONF"] = str(CONTAINERS_CONF)
    return env


def find_engine() -> tuple[str, str]:
    """(engine, '') when one works, else ('', why not)."""
    names = [os.environ["CONTAINER_ENGINE"]] if os.environ.get("CONTAINER_ENGINE") else ["podman", "docker"]
    reasons = []
    for name in names:
        path = shutil.which(name)
        if not path:
            reasons.append(f"no {name} on the PATH")
            continue
        try:
            probe = subprocess.run(
                [path, "info"], env=engine_env(path), capture_output=True, text=True, timeout=60, check=False
            )
        except subprocess.TimeoutExpired:
            reasons.append(f"`{name} info` did not answer in 60 s")
            continue
        if probe.returncode == 0:
            return path, ""
        reasons.append(f"`{name} info` failed: {(probe.stderr or probe.stdout).strip().splitlines()[-1:]}")
    return "", "; ".join(reasons)


def build_image(engine: str, tag: str, **env: str) -> str:
    """deploy/container/build-image.sh, as `make image` (or VARIANT=kserve, `make image-kserve`) runs it:
    unchanged sources are a layer-cache hit, so a current image is reused."""
    started = time.monotonic()
    build = subprocess.run(
        [str(BUILD_SCRIPT)],
        env={**engine_env(engine), "ENGINE": Path(engine).name, "IMAGE": tag, **env},
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert build.returncode == 0, f"image build failed:\n{(build.stdout + build.stderr)[-8000:]}"
    print(f"\nimage {tag} built (or found current) in {time.monotonic() - started:.0f} s")  # noqa: T201
    return tag


@dataclass
class Box:
    """A running container, by name, and the engine that runs it."""

    engine: str
    name: str

    def cmd(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [self.engine, *args],
            env=engine_env(self.engine),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def exec(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return self.cmd("exec", self.name, *args, timeout=timeout, check=False)

    def running(self) -> bool:
        state = self.cmd("inspect", "--format", "{{.State.Running}}", self.name, check=False)
        return state.stdout.strip() == "true"

    def process_uids(self) -> set[str]:
        """The real uid of every process in the container."""
        statuses = self.exec("sh", "-c", "cat /proc/[0-9]*/status 2>/dev/null").stdout
        return {line.split()[1] for line in statuses.splitlines() if line.startswith("Uid:")}

    def logs(self) -> str:
        out = self.cmd("logs", "--tail", "80", self.name, check=False)
        return (out.stdout + out.stderr)[-8000:]
