"""A client for TorchServe's management API: the workers of a model, scaling them, and its versions.

Registering and unregistering versions needs `enable_model_api=true`, which config.properties leaves
off (`make run MODEL_API=on` turns it on for one run); listing, scaling and set-default work without.
"""

from __future__ import annotations

import time

import requests


class ManagementError(RuntimeError):
    """The management API refused a request."""


class ManagementClient:
    def __init__(self, url: str, headers: dict[str, str]):
        self.url = url.rstrip("/")
        self.headers = headers

    def _get(self, path: str, model: str):
        response = requests.get(f"{self.url}/models/{path}", headers=self.headers, timeout=5)
        if response.status_code == 404:
            raise ManagementError(f"no model {model!r} is registered on this server")
        if response.status_code >= 400:
            raise ManagementError(f"the management API answered HTTP {response.status_code}: {response.text.strip()}")
        return response.json()

    def workers(self, model: str) -> list[dict]:
        return self._get(model, model)[0]["workers"]

    def scale(self, model: str, workers: int, timeout: float = 180.0, allow_zero: bool = False) -> list[dict]:
        """Set the worker count and wait until TorchServe reports it done. No workers means no answers at all
        (requests queue, then time out), so 0 takes `allow_zero`."""
        if workers < 0 or (workers == 0 and not allow_zero):
            raise ManagementError(
                f"{workers} workers would leave {model} unable to answer: give at least 1"
                + ("" if workers < 0 else " (or --allow-zero to park the model on purpose)")
            )
        response = requests.put(
            f"{self.url}/models/{model}",
            params={"min_worker": workers, "max_worker": max(workers, 1), "synchronous": "true"},
            headers=self.headers,
            timeout=timeout,
        )
        if response.status_code == 500:
            # TorchServe 0.12 sometimes answers a scale-down with 500 "Failed to start workers" when
            # it interrupts the worker it stops ("WorkerThread interrupted during waitFor") although
            # the scaling goes through: trust the workers, not the status.
            return self.wait_for_workers(model, workers, timeout=30, failure=response.text)
        if response.status_code >= 400:
            raise ManagementError(f"scaling {model} failed: HTTP {response.status_code} {response.text}")
        return self.workers(model)

    def wait_for_workers(self, model: str, count: int, timeout: float, failure: str = "") -> list[dict]:
        """Until `model` has exactly `count` workers, all READY."""
        deadline = time.monotonic() + timeout
        while True:
            workers = self.workers(model)
            if len(workers) == count and all(w["status"] == "READY" for w in workers):
                return workers
            if time.monotonic() > deadline:
                states = [w["status"] for w in workers]
                raise ManagementError(
                    f"{model} has workers {states} after {timeout:.0f} s, not {count} READY {failure}"
                )
            time.sleep(0.5)  # polling interval of the readiness check

    def versions(self, model: str) -> list[dict]:
        """Every registered version of `model`: modelVersion, the archive it came from, its workers."""
        return self._get(f"{model}/all", model)

    def default_version(self, model: str) -> str:
        """The version that /predictions/MODEL (no version in the path) goes to."""
        return self._get(model, model)[0]["modelVersion"]

    def register(self, archive: str, model: str, workers: int = 1, timeout: float = 180.0) -> str:
        """Register an archive of the model store as a version of `model` beside the ones it has, with
        `workers` READY workers before this returns; the default version stays as it is. Returns the
        new version (the archive's MODEL_VERSION)."""
        response = requests.post(
            f"{self.url}/models",
            params={"url": archive, "model_name": model, "initial_workers": workers, "synchronous": "true"},
            headers=self.headers,
            timeout=timeout,
        )
        if response.status_code == 405:
            raise ManagementError("registering needs the model API: start with `make run MODEL_API=on`")
        if response.status_code >= 400:
            raise ManagementError(f"registering {archive} failed: HTTP {response.status_code} {response.text}")
        registered = [entry["modelVersion"] for entry in self.versions(model) if entry["modelUrl"] == archive]
        if not registered:
            raise ManagementError(f"{archive} does not appear among the versions of {model}")
        return registered[0]

    def set_default(self, model: str, version: str) -> None:
        """Send /predictions/MODEL to `version` from now on (requests already queued finish where they are)."""
        response = requests.put(f"{self.url}/models/{model}/{version}/set-default", headers=self.headers, timeout=10)
        if response.status_code >= 400:
            raise ManagementError(f"set-default {model} {version} failed: HTTP {response.status_code} {response.text}")

    def unregister(self, model: str, version: str, timeout: float = 60.0) -> None:
        """Remove one version and stop its workers. Never the default version: TorchServe refuses it while
        other versions exist, and removes the whole model when it is the only one."""
        versions = [entry["modelVersion"] for entry in self.versions(model)]
        if version not in versions:
            raise ManagementError(f"{model} has no version {version!r}: it has {', '.join(versions)}")
        if version == self.default_version(model):
            others = [v for v in versions if v != version]
            advice = (
                f"`set-default {others[0]}` first, if that is the version to keep"
                if others
                else "it is the only version, and removing it would stop serving the model (`make stop` stops it all)"
            )
            raise ManagementError(f"{model} {version} is the default version, which is never removed: {advice}")
        response = requests.delete(
            f"{self.url}/models/{model}/{version}",
            params={"synchronous": "true"},
            headers=self.headers,
            timeout=timeout,
        )
        if response.status_code == 405:
            raise ManagementError("unregistering needs the model API: start with `make run MODEL_API=on`")
        if response.status_code >= 400:
            raise ManagementError(
                f"unregistering {model} {version} failed: HTTP {response.status_code} {response.text}"
            )
