"""The runner processes the benchmark starts: one broker and its workers on 127.0.0.1.

Every process is recorded and stopped by its PID (SIGTERM, then SIGKILL) from the
caller's ``finally``; each also gets SIGTERM from the kernel if the harness dies
first (PR_SET_PDEATHSIG), so no cluster outlives a killed benchmark. Broker and
workers log at WARNING to files beside the journal, which the report summarises.
An observed cluster (``--observed``) also serves metrics and has a dashboard and a
reader watching it (benchmarks/observers.py), stopped first.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from runner.local import read_address, read_line, stop_process

from benchmarks import observers
from benchmarks.settings import (ASYNC_TASKS_PER_WORKER, HOST, PROCESSES_PER_WORKER, START_TIMEOUT, STOP_TIMEOUT,
                                 THREADS_PER_WORKER)

ROOT = Path(os.path.abspath(__file__)).parent.parent  # abspath, not resolve: the runner beside this folder
TASKS_MODULE = "benchmarks.tasks"
LOG_LEVEL = "WARNING"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Cluster:
    """A broker on its own journal, and workers started later; ``stop()`` ends them all."""

    def __init__(self, scratch: Path, name: str, curve_keys: str | None = None, observed: bool = False) -> None:
        """``curve_keys``: a key folder; broker and workers then speak CURVE (clients must too).
        ``observed``: the broker serves metrics, read every second with a dashboard's page."""
        self.scratch = scratch
        self.name = name
        self.curve_keys = curve_keys
        self.metrics_port = observers.free_port() if observed else None  # the same port across restarts
        self.dashboard: subprocess.Popen | None = None
        self.reader: subprocess.Popen | None = None  # reads the metrics and the dashboard's page
        self.observed_reads: dict | None = None  # the reader's summary, once stopped
        self.journal = scratch / f"{name}-journal.db"
        self.address: str | None = None
        self.broker: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.log_files: list[Path] = []

    def start_broker(self, bind: str = f"tcp://{HOST}:*", timeout: float = START_TIMEOUT) -> str:
        """Start a broker on this cluster's journal; return the address it printed once ready."""
        command = ["broker", "--bind", bind, "--journal", str(self.journal), *self._keys()]
        if self.metrics_port is not None:
            command += ["--metrics-port", str(self.metrics_port)]
        self.broker = self._spawn("broker", command, stdout=subprocess.PIPE)
        self.address = read_address(self.broker, timeout)
        if self.metrics_port is not None and self.dashboard is None:  # kept across a broker restart
            self._start_watchers(timeout)
        return self.address

    def _start_watchers(self, timeout: float) -> None:
        """A dashboard connected to the broker, and the reader of its page and of the metrics."""
        self.dashboard = self._spawn("dashboard", ["dashboard", "--connect", self.address, "--port", "0",
                                                   *self._keys()], stdout=subprocess.PIPE)
        url = read_line(self.dashboard, timeout)
        if not url.startswith("http://"):
            raise RuntimeError(f"the dashboard (pid {self.dashboard.pid}) exited ({self.dashboard.poll()}) "
                               f"without a URL: {url!r}")
        log_path = self.scratch / f"{self.name}-reader.log"
        self.log_files.append(log_path)
        with open(log_path, "ab") as log_file:
            self.reader = observers.start_reader(f"http://{HOST}:{self.metrics_port}/metrics", url,
                                                 child_environment(), str(ROOT), log_file)

    def start_workers(self, count: int) -> None:
        """Start ``count`` workers of 1 process, 32 threads and 5,000 coroutines that may run benchmarks.tasks."""
        for _ in range(count):
            number = len(self.workers) + 1
            command = ["worker", "--connect", self.address, "--import", TASKS_MODULE,
                       "--processes", str(PROCESSES_PER_WORKER), "--threads", str(THREADS_PER_WORKER),
                       "--async-tasks", str(ASYNC_TASKS_PER_WORKER),
                       "--name", f"bench-{self.name}-{number}", *self._keys()]
            self.workers.append(self._spawn(f"worker-{number}", command))

    def _keys(self) -> list[str]:
        return ["--curve-keys", self.curve_keys] if self.curve_keys else []

    @property
    def broker_pid(self) -> int:
        assert self.broker is not None, "the broker is not started"
        return self.broker.pid

    @property
    def pids(self) -> list[int]:
        """The PIDs of every process this cluster started and runs: broker, workers (their pools'
        processes are their children), and an observed cluster's dashboard and reader."""
        processes = [self.broker, *self.workers, self.dashboard, self.reader]
        return [process.pid for process in processes if process is not None and process.poll() is None]

    def kill_broker(self) -> None:
        """SIGKILL the broker, as a crash would, and reap it."""
        if self.broker is not None and self.broker.poll() is None:
            self.broker.kill()
        if self.broker is not None:
            self.broker.wait(STOP_TIMEOUT)
            stop_process(self.broker, STOP_TIMEOUT)

    def stop(self) -> None:
        """Stop the reader and dashboard, the workers, then the broker, by PID: SIGTERM, then SIGKILL
        after STOP_TIMEOUT."""
        if self.reader is not None:
            self.observed_reads = observers.stop_reader(self.reader)
            self.reader = None
        if self.dashboard is not None:
            stop_process(self.dashboard, STOP_TIMEOUT)
        processes = [*reversed(self.workers), *([self.broker] if self.broker else [])]
        for process in processes:
            stop_process(process, STOP_TIMEOUT)
        self.workers.clear()

    def _spawn(self, role: str, arguments: list[str], stdout: int | None = None) -> subprocess.Popen:
        earlier = sum(1 for path in self.log_files if path.stem.startswith(f"{self.name}-{role}"))
        log_path = self.scratch / f"{self.name}-{role}{f'-{earlier + 1}' if earlier else ''}.log"
        self.log_files.append(log_path)
        with open(log_path, "ab") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "runner", *arguments, "--log-level", LOG_LEVEL, "--exit-with", str(os.getpid())],
                stdout=stdout, stderr=log_file, cwd=ROOT, env=child_environment(),
            )


def child_environment() -> dict[str, str]:
    """This environment, with the repository first on the import path (runner, workers, benchmarks)."""
    environment = dict(os.environ)
    paths = [str(ROOT), environment.get("PYTHONPATH", "")]
    environment["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    environment.pop("RUNNER_BROKER", None)
    return environment


def rss_bytes(pid: int) -> int:
    """Resident set size of a process now (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        match = re.search(r"^VmRSS:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return int(match.group(1)) * 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used (utime + stime of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
