"""Start, stop, scale and inspect the local TorchServe.

    sentiment-server start [--models sentiment [mine ...]] [--no-auth] [--model-api] [--timeout 180]
    sentiment-server stop
    sentiment-server scale WORKERS [--model NAME] [--allow-zero]
    sentiment-server status [--model NAME]
    sentiment-server versions [--model NAME]
    sentiment-server register ARCHIVE.mar [--model NAME] [--workers 1]    # needs start --model-api
    sentiment-server set-default VERSION [--model NAME]
    sentiment-server unregister VERSION [--model NAME]                    # needs start --model-api

`start` serves model_store/NAME.mar for each NAME (the default model, `sentiment`, unless told).
`register` adds an archive of the model store as another version of a model (the default stays);
`/predictions/NAME/VERSION` reaches any version, `set-default` moves `/predictions/NAME`, and
`set-default` back to the old version is the rollback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import requests

from sentiment.console import command
from sentiment.ops.archive import describe
from sentiment.ops.local_server import LocalServer, ServerError
from sentiment.ops.management import ManagementError
from sentiment.project import DEFAULT_MODEL

log = logging.getLogger(__name__)


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


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def resident_mib(pid) -> str:
    """A worker's resident memory, read from the process itself: TorchServe 0.12 reports `memoryUsage` 0."""
    import psutil

    try:
        return f"{psutil.Process(int(pid)).memory_info().rss / 2**20:6.0f} MiB"
    except (psutil.Error, TypeError, ValueError):
        return f"{'-':>6} MiB"


def status_table(model: str, workers: list[dict]) -> str:
    """One line per worker: what an operator looks at (the full JSON is at the management API)."""
    lines = [f"{model}: {plural(len(workers), 'worker')}"]
    for worker in workers:
        gpu = "gpu" if worker.get("gpu") else "cpu"
        lines.append(
            f"  pid {worker.get('pid', '-'):>7}  {worker.get('status', '?'):9s}  {resident_mib(worker.get('pid'))}  "
            f"{gpu}  since {worker.get('startTime', '?')}"
        )
    return "\n".join(lines)


def start(server: LocalServer, timeout: float) -> None:
    started = time.monotonic()
    server.start(timeout)
    for model in server.models:
        log.info("serving %s", describe(server.model_store / f"{model}.mar"))
        log.info("  %s READY after %.1f s", plural(len(server.workers(model)), "worker"), time.monotonic() - started)
        log.info("  inference:  %s/predictions/%s", server.url("inference"), model)
        log.info("  management: %s/models/%s", server.url("management"), model)
    others = sorted({p.stem for p in server.model_store.glob("*.mar")} - set(server.models))
    if others:
        log.info('also built, not served: %s (`make run MODELS="%s"` serves them too)', others, " ".join(others))
    log.info("metrics:    %s/metrics", server.url("metrics"))
    log.info("logs:       %s", server.log_dir)
    log.info("try it:\n  %s", curl_example(server))


@command
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    start_parser = commands.add_parser("start", help="start TorchServe and wait until its workers are READY")
    start_parser.add_argument("--models", nargs="+", default=[DEFAULT_MODEL], help="archives in model_store to serve")
    start_parser.add_argument("--no-auth", action="store_true", help="turn token authorization off (local only)")
    start_parser.add_argument(
        "--model-api", action="store_true", help="allow registering and unregistering models over HTTP"
    )
    start_parser.add_argument("--timeout", type=float, default=180.0)
    commands.add_parser("stop", help="stop TorchServe and its workers")
    scale_parser = commands.add_parser("scale", help="set the number of workers of a model")
    scale_parser.add_argument("workers", type=int)
    scale_parser.add_argument("--model", default=DEFAULT_MODEL)
    scale_parser.add_argument(
        "--allow-zero", action="store_true", help="accept 0 workers: the model stays registered but answers nothing"
    )
    status_parser = commands.add_parser("status", help="print a model's workers")
    status_parser.add_argument("--model", default=DEFAULT_MODEL)
    versions_parser = commands.add_parser("versions", help="list a model's versions and which is the default")
    versions_parser.add_argument("--model", default=DEFAULT_MODEL)
    register_parser = commands.add_parser("register", help="add an archive of the model store as a version")
    register_parser.add_argument("archive", help="file name in the model store, e.g. sentiment-v2.mar")
    register_parser.add_argument("--model", default=DEFAULT_MODEL)
    register_parser.add_argument("--workers", type=int, default=1)
    default_parser = commands.add_parser("set-default", help="send /predictions/MODEL to this version")
    default_parser.add_argument("version")
    default_parser.add_argument("--model", default=DEFAULT_MODEL)
    unregister_parser = commands.add_parser("unregister", help="remove a version that is not the default")
    unregister_parser.add_argument("version")
    unregister_parser.add_argument("--model", default=DEFAULT_MODEL)
    args = parser.parse_args()

    overrides = {"disable_token_authorization": "true"} if getattr(args, "no_auth", False) else {}
    if getattr(args, "model_api", False):
        overrides["enable_model_api"] = "true"
    server = LocalServer(models=tuple(getattr(args, "models", [DEFAULT_MODEL])), overrides=overrides)
    if args.command not in ("start", "stop") and server.pid() is None:
        log.error("TorchServe is not running from %s: is it running? (`make run`)", server.run_dir)
        sys.exit(1)
    try:
        if args.command == "start":
            if args.no_auth:
                log.warning("token authorization is OFF: anyone who reaches these ports can use every API")
            if args.model_api:
                log.warning("the model API is ON: management clients can register and remove models")
            start(server, args.timeout)
        elif args.command == "stop":
            server.stop()
        elif args.command == "scale":
            workers = server.scale(args.workers, args.model, allow_zero=args.allow_zero)
            log.info("%s: %s", plural(len(workers), "worker"), ", ".join(f"{w['pid']} {w['status']}" for w in workers))
        elif args.command == "status":
            print(status_table(args.model, server.workers(args.model)))  # noqa: T201 - this command's output
        elif args.command == "versions":
            default = server.management.default_version(args.model)
            for entry in server.management.versions(args.model):
                mark = "default" if entry["modelVersion"] == default else ""
                workers = ", ".join(w["status"] for w in entry["workers"])
                print(f"{args.model} {entry['modelVersion']:8s} {entry['modelUrl']:24s} {mark:8s} workers: {workers}")  # noqa: T201
        elif args.command == "register":
            version = server.management.register(args.archive, args.model, args.workers)
            log.info(
                "%s version %s registered from %s; /predictions/%s/%s",
                args.model,
                version,
                args.archive,
                args.model,
                version,
            )
        elif args.command == "set-default":
            server.management.set_default(args.model, args.version)
            log.info("/predictions/%s now goes to version %s", args.model, args.version)
        elif args.command == "unregister":
            server.management.unregister(args.model, args.version)
            log.info("%s version %s removed", args.model, args.version)
    except (ServerError, ManagementError, requests.HTTPError) as error:
        log.error("%s", error)
        sys.exit(1)
    except requests.ConnectionError:
        log.error("TorchServe does not answer at %s: is it running? (`make run`)", server.url("management"))
        sys.exit(1)


if __name__ == "__main__":
    main()
