#!/usr/bin/env python3
"""Exit 0 when a worker of the model is READY, 1 otherwise (/usr/local/bin/sentiment-healthcheck).

The image's HEALTHCHECK and Kubernetes' probes run it inside the container. TorchServe's /ping
answers Healthy before any worker has loaded the model, so this asks the management API
(GET /models/NAME) with the management key from the run folder's key_file.json.

    sentiment-healthcheck [--model NAME] [--timeout SECONDS] [--quiet]

The management address is TS_MANAGEMENT_ADDRESS if set, else the run folder's config.properties;
a wildcard bind (0.0.0.0, [::]) is reached on loopback. TorchServe's management key expires
(token_expiration_min) while its API key does not: once the key file says the management key has
expired, this asks TorchServe for a new one (GET /token?type=management with the API key; TorchServe
writes it to key_file.json), so that a server running longer than the expiry stays healthy.
Standard library only.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

RUN_DIR = Path(os.environ.get("SENTIMENT_RUN_DIR", "/home/model-server/run"))
DEFAULT_MANAGEMENT = "http://127.0.0.1:8081"


def management_address() -> str:
    address = os.environ.get("TS_MANAGEMENT_ADDRESS")
    if not address:
        address = DEFAULT_MANAGEMENT
        config = RUN_DIR / "config.properties"
        if config.is_file():
            for line in config.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "management_address":
                    address = value.strip()  # the last one wins, as in TorchServe
    address = address.rstrip("/")
    for wildcard, loopback in (("//0.0.0.0", "//127.0.0.1"), ("//[::]", "//[::1]")):
        address = address.replace(wildcard, loopback)
    return address


def management_key() -> dict | None:
    """The management key entry of key_file.json ({"key", "expiration time"}), None with tokens off."""
    key_file = RUN_DIR / "key_file.json"
    return json.loads(key_file.read_text())["management"] if key_file.is_file() else None


def expired(entry: dict) -> bool:
    """TorchServe writes the expiry in UTC with nanoseconds: 2026-11-26T17:21:01.709432289Z."""
    stamp = entry.get("expiration time", "")[:19]
    if not stamp:
        return False
    until = datetime.datetime.fromisoformat(stamp).replace(tzinfo=datetime.timezone.utc)
    return datetime.datetime.now(datetime.timezone.utc) >= until


def renew_management_key(timeout: float) -> None:
    api_key = json.loads((RUN_DIR / "key_file.json").read_text())["API"]["key"]
    request = urllib.request.Request(
        f"{management_address()}/token?type=management", headers={"Authorization": f"Bearer {api_key}"}
    )
    with urllib.request.urlopen(request, timeout=timeout):
        pass


def describe(model: str, timeout: float) -> list:
    """GET /models/MODEL with the current management key (none with tokens off)."""
    entry = management_key()
    headers = {"Authorization": f"Bearer {entry['key']}"} if entry else {}
    request = urllib.request.Request(f"{management_address()}/models/{model}", headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return json.load(answer)


def check(model: str, timeout: float) -> str:
    """'' when a worker is READY, else why not."""
    url = f"{management_address()}/models/{model}"
    try:
        try:
            description = describe(model, timeout)
        except urllib.error.HTTPError as error:
            entry = management_key()
            if error.code != 400 or not entry or not expired(entry):
                raise
            renew_management_key(timeout)  # the key expired, not the server: ask for a new one
            description = describe(model, timeout)
    except urllib.error.HTTPError as error:
        return f"{url}: HTTP {error.code}"
    except (OSError, ValueError) as error:
        return f"{url}: {error}"
    workers = [w for version in description for w in version.get("workers", [])]
    ready = sum(w.get("status") == "READY" for w in workers)
    return "" if ready else f"{url}: 0 of {len(workers)} workers READY"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("SENTIMENT_MODELS", "sentiment").split()[0])
    parser.add_argument("--timeout", type=float, default=4.0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    try:
        problem = check(args.model, args.timeout)
    except (OSError, ValueError, KeyError) as error:  # key file half written, unreadable, ...
        problem = f"{RUN_DIR / 'key_file.json'}: {error!r}"
    if not args.quiet:
        print(problem or f"{args.model}: a worker is READY", file=sys.stderr if problem else sys.stdout)
    sys.exit(1 if problem else 0)


if __name__ == "__main__":
    main()
