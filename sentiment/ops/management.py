"""A client for TorchServe's management API: the workers of a model, and scaling them."""

from __future__ import annotations

import time

import requests


class ManagementError(RuntimeError):
    """The management API refused a request."""


class ManagementClient:
    def __init__(self, url: str, headers: dict[str, str]):
        self.url = url.rstrip("/")
        self.headers = headers

    def workers(self, model: str) -> list[dict]:
        response = requests.get(f"{self.url}/models/{model}", headers=self.headers, timeout=5)
        response.raise_for_status()
        return response.json()[0]["workers"]

    def scale(self, model: str, workers: int, timeout: float = 180.0) -> list[dict]:
        """Set the worker count and wait until TorchServe reports it done."""
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
