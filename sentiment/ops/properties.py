"""TorchServe's server settings (`config.properties`): read them, and render the run folder's copy."""

from __future__ import annotations

import socket


def parse_properties(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def render_properties(template: str, overrides: dict[str, str]) -> str:
    """The template with `overrides` replacing its lines (comments kept), new keys appended."""
    remaining = dict(overrides)
    rendered = []
    for line in template.splitlines():
        key = line.split("=", 1)[0].strip()
        if key in remaining and not line.lstrip().startswith("#"):
            rendered.append(f"{key}={remaining.pop(key)}")
        else:
            rendered.append(line)
    rendered += [f"{key}={value}" for key, value in remaining.items()]
    return "\n".join(rendered) + "\n"


def free_port_overrides() -> dict[str, str]:
    """Every API on a loopback port nothing listens on now: for tests and benchmarks beside `make run`."""
    sockets = [socket.socket() for _ in range(5)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        inference, management, metrics, grpc_inference, grpc_management = (s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()
    return {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
    }
