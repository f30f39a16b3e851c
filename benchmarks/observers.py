"""``--observed``: a broker with its metrics port on, a dashboard connected, and both read every second.

The issue's claim to check is that watching a cluster costs it nothing measurable: so each
broker the benchmark starts serves Prometheus metrics on a free loopback port, a
``runner dashboard`` process polls it (one status request a second), and a reader process
does what a user's tools would: fetch /metrics once a second, as a Prometheus server scrapes,
and the dashboard's /api/state once a second, as an open page does. The reader runs in a
process of its own (it must not share the benchmark client's GIL), stops by itself after
``READER_MAX_SECONDS`` or when the harness is gone, and on SIGTERM or SIGINT prints what it
read as one JSON line, which the harness records.

Run as ``python -m benchmarks.observers METRICS_URL DASHBOARD_URL`` (the harness does).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

from benchmarks.settings import HOST, STOP_TIMEOUT

READ_INTERVAL = 1.0  # seconds between two reads of each endpoint, as a scraper and an open page
READ_TIMEOUT = 5.0  # seconds one read may take before it counts as failed
READER_MAX_SECONDS = 4 * 3600.0  # a reader ends by itself after this, whatever happens to the harness
METRIC_EXPECTED = b"runner_jobs_completed_total"  # a scrape without it is counted as failed


def free_port() -> int:
    """A loopback TCP port free now (the broker binds it moments later)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def start_reader(metrics_url: str, dashboard_url: str, environment: dict[str, str], cwd: str,
                 log_file: Any) -> subprocess.Popen:
    """The reader process, its stdout piped (its summary comes there when it is stopped)."""
    return subprocess.Popen([sys.executable, "-m", "benchmarks.observers", metrics_url, dashboard_url, str(os.getpid())],
                            stdout=subprocess.PIPE, stderr=log_file, cwd=cwd, env=environment)


def stop_reader(reader: subprocess.Popen) -> dict[str, Any]:
    """SIGTERM the reader (SIGKILL after STOP_TIMEOUT) and return the summary it printed."""
    if reader.poll() is None:
        reader.send_signal(signal.SIGTERM)
    try:
        output, _ = reader.communicate(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        reader.kill()
        output, _ = reader.communicate()
    lines = output.decode(errors="replace").strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"error": f"the reader (pid {reader.pid}) exited {reader.returncode} without a summary"}


class Reads:
    """How many reads of one endpoint were made, how many failed, and the last failure."""

    def __init__(self) -> None:
        self.count = 0
        self.failed = 0
        self.last_error: str | None = None

    def read(self, url: str, expected: bytes) -> None:
        self.count += 1
        try:
            with urllib.request.urlopen(url, timeout=READ_TIMEOUT) as answer:
                body = answer.read()
            if expected not in body:
                raise ValueError(f"{expected.decode()!r} not in the answer")
        except Exception as exc:  # counted and shown in the results, never fatal to the run
            self.failed += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

    def summary(self) -> dict[str, Any]:
        return {"reads": self.count, "failed": self.failed, "last_error": self.last_error}


def read_until_stopped(metrics_url: str, dashboard_url: str, parent: int) -> dict[str, Any]:
    """Read both endpoints every READ_INTERVAL until a signal, the parent's end, or READER_MAX_SECONDS."""
    metrics, dashboard = Reads(), Reads()
    started = time.monotonic()
    next_read = started
    try:
        while time.monotonic() - started < READER_MAX_SECONDS and os.getppid() == parent:
            metrics.read(metrics_url, METRIC_EXPECTED)
            dashboard.read(dashboard_url + "api/state", b'"status"')
            next_read = max(next_read + READ_INTERVAL, time.monotonic())
            time.sleep(max(0.0, next_read - time.monotonic()))
    except KeyboardInterrupt:
        pass
    for stop in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the summary short
        signal.signal(stop, signal.SIG_IGN)
    return {"seconds": round(time.monotonic() - started, 1), "metrics": metrics.summary(),
            "dashboard": dashboard.summary()}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    metrics_url, dashboard_url, parent = argv[0], argv[1], int(argv[2])
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    print(json.dumps(read_until_stopped(metrics_url, dashboard_url, parent)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
