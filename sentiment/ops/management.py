"""A client for TorchServe's management API: the workers of a model, and scaling them."""

from __future__ import annotations

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
        if response.status_code >= 400:
            raise ManagementError(f"scaling {model} failed: HTTP {response.status_code} {response.text}")
        return self.workers(model)
