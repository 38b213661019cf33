"""A closed loop driven by wrk, for rates Python's threads cannot generate (thousands of requests/s).

wrk (Debian package `wrk`) keeps `connections` keep-alive connections busy from `threads` threads;
a generated Lua script cycles through the request bodies and reports, as one JSON line, the
requests, the non-200 answers and the latency percentiles of every answer. The generator's own CPU
time is measured from outside, as for the Python loops, so a result says when wrk was the limit.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from sentiment.perf.loadtest import LevelResult

DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK_RESULT {"requests": %d, "duration_us": %d, "non_200": %d, "socket_errors": %d, '
    .. '"p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
"""


def available() -> bool:
    return shutil.which("wrk") is not None


def _lua_string(text: str) -> str:
    """A Lua string literal for any bytes: printable ASCII as is, everything else as \\ddd escapes."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        printable = byte < 128 and (char.isalnum() or char in " ,.!?:;-_()[]{}'")
        out.append(char if printable else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def lua_script(bodies: list[str], headers: dict[str, str]) -> str:
    """Each request takes the next body, in order, all with `headers`."""
    lines = ["wrk.method = 'POST'"]
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in headers.items()]
    lines.append("local bodies = {" + ",\n".join(map(_lua_string, bodies)) + "}")
    lines.append("local i = 0")
    lines.append("request = function() i = i + 1; return wrk.format(nil, nil, nil, bodies[i % #bodies + 1]) end")
    return "\n".join(lines) + DONE


def closed_loop(
    url: str,
    headers: dict[str, str],
    bodies: list[str],
    content_type: str,
    connections: int,
    seconds: float,
    threads: int | None = None,
) -> LevelResult:
    """wrk's closed loop: `connections` clients sending back to back for `seconds`."""
    threads = min(threads or max(1, (os.cpu_count() or 2) // 2), connections)
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = Path(tmp) / "bodies.lua"
        script.write_text(lua_script(bodies, {**headers, "Content-Type": content_type}))
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script)]
        output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((line for line in output.splitlines() if line.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result: {output[-500:]}")
    result = json.loads(line.removeprefix("WRK_RESULT "))
    duration = result["duration_us"] / 1e6
    errors = result["non_200"] + result["socket_errors"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return LevelResult(
        mode="closed (wrk)",
        level=connections,
        requests=result["requests"],
        errors=errors,
        seconds=round(duration, 2),
        throughput=round((result["requests"] - errors) / duration, 1),
        p50_ms=round(result["p50_us"] / 1000, 1),
        p95_ms=round(result["p95_us"] / 1000, 1),
        p99_ms=round(result["p99_us"] / 1000, 1),
        generator_cpu_share=round(cpu / wall / (os.cpu_count() or 1), 3),
    )
