"""An embedded cluster: a broker and workers as child processes of this one.

What ``Client()`` with no address starts, and what ``runner local`` runs. The
broker listens privately, on an ipc:// socket in a scratch folder only this user
can enter (0700), and prints its address; the workers run their user's own code
(``--allow-any-module``: any module except the standard library, dangerous packages
and private modules, see workers/admission.py) and see this program's import path,
so a script's own functions can be jobs.

Lifetime: the children live as long as this process (whichever thread started
them), and the workers as long as their broker too (lifetime.py). Ctrl-C is this
process's to handle: the children ignore SIGINT, and ``close()`` stops them.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from loguru import logger

from runner import lifetime
from runner.scratch import Scratch

log = logger.bind(component="local")

START_TIMEOUT = 30.0  # seconds for the broker to bind and the workers to join
STOP_TIMEOUT = 10.0  # seconds for a child to exit after SIGTERM before SIGKILL
CLOSE_GRACE = 2.0  # seconds running jobs get to finish when the cluster closes


class LocalCluster:
    """A broker plus ``workers`` workers, started now and stopped by ``close()``.

    ``grace``: seconds running jobs get to finish at ``close()`` before they are stopped.
    """

    def __init__(self, workers: int = 1, *, processes: int | None = None, threads: int | None = None,
                 async_tasks: int | None = None, bind: str | None = None, queues: tuple[str, ...] = (), journal: str | None = None,
                 log_level: str = "WARNING", heartbeat: float = 1.0, grace: float = CLOSE_GRACE,
                 curve_keys: str | None = None) -> None:
        """``bind`` None: the private ipc:// socket; ``curve_keys``: a key folder every process uses."""
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.processes: list[subprocess.Popen] = []
        self._log_level = log_level
        self._closing = False
        # Mode 0700, so the ipc:// socket in it is private. The broker removes it when it ends,
        # even when this process was killed.
        self._scratch = Scratch()
        self.journal = journal or os.path.join(self._scratch.path, "journal.db")
        self.curve_keys = curve_keys
        keys = ["--curve-keys", curve_keys] if curve_keys else []
        try:
            broker_args = ["broker", "--bind", bind or f"ipc://{self._scratch.path}/broker", "--journal", self.journal,
                           "--heartbeat", str(heartbeat), "--scratch", self._scratch.path, *keys]
            self._broker = self._spawn(broker_args, stdout=subprocess.PIPE, keep_fds=(self._scratch.lock_fd,))
            self.address = read_address(self._broker, START_TIMEOUT)
            worker_args = ["worker", "--connect", self.address, "--allow-any-module", "--heartbeat", str(heartbeat),
                           "--grace", str(grace), "--exit-with", str(self._broker.pid), *keys]
            if processes is not None:
                worker_args += ["--processes", str(processes)]
            if threads is not None:
                worker_args += ["--threads", str(threads)]
            if async_tasks is not None:
                worker_args += ["--async-tasks", str(async_tasks)]
            for queue in queues:
                worker_args += ["--queue", queue]
            for _ in range(workers):
                self._spawn(worker_args)
            if workers:
                with self.client() as client:
                    client.wait_for_workers(workers, timeout=START_TIMEOUT)
        except BaseException:  # KeyboardInterrupt included: no child outlives a failed start
            self.close()
            raise

    def client(self, **options: Any):
        """A new Client connected to this cluster (the caller closes it)."""
        from runner.client import Client

        return Client(self.address, **{"curve_keys": self.curve_keys or "", **options})  # "": none, whatever the env says

    def on_broker_exit(self, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(pid, exit_status)`` from a daemon thread if the broker ends before ``close()``."""
        broker = self._broker

        def watch() -> None:
            status = broker.wait()
            if not self._closing:
                callback(broker.pid, status)

        threading.Thread(target=watch, name="runner-local-broker", daemon=True).start()

    def close(self) -> None:
        """Stop the workers (running jobs get the grace), then the broker; SIGKILL after STOP_TIMEOUT.

        The workers go first, while their broker can still take back what they give up.
        """
        self._closing = True
        _stop_together(self.processes[1:])
        _stop_together(self.processes[:1])
        self.processes.clear()
        self._scratch.remove()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def _spawn(self, arguments: list[str], stdout: Any = None, keep_fds: tuple[int, ...] = ()) -> subprocess.Popen:
        command = [sys.executable, "-m", "runner", *arguments, "--log-level", self._log_level,
                   "--exit-with", str(os.getpid())]
        process = subprocess.Popen(command, stdout=stdout, env=_child_environment(), pass_fds=keep_fds,
                                   preexec_fn=lifetime.ignore_interrupts)
        self.processes.append(process)
        return process


def _stop_together(processes: list[subprocess.Popen]) -> None:
    """SIGTERM every one, then wait for each; SIGKILL those still running after STOP_TIMEOUT."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid {} did not stop within {}s; killing it", process.pid, STOP_TIMEOUT)
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


def read_line(process: subprocess.Popen, timeout: float) -> str:
    """The next line a child prints on stdout, waiting at most ``timeout`` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"pid {process.pid} printed nothing within {timeout:g}s")
    return process.stdout.readline().decode().strip()


def read_address(broker: subprocess.Popen, timeout: float) -> str:
    """The address line a broker prints on stdout once it is bound and has restored its journal."""
    line = read_line(broker, timeout)
    if not line.startswith(("tcp://", "ipc://")):
        raise RuntimeError(f"the broker (pid {broker.pid}) exited ({broker.poll()}) without an address: {line!r}; "
                           "see its log above")
    return line


def _child_environment() -> dict[str, str]:
    """This process's environment, with its import path so workers find its modules."""
    environment = dict(os.environ)
    environment.pop("RUNNER_CURVE_KEYS", None)  # the cluster passes --curve-keys itself, or none
    paths = [path or os.getcwd() for path in sys.path if not path or os.path.isdir(path)]
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None):
        paths.insert(0, os.path.dirname(os.path.abspath(main.__file__)))
    environment["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return environment


def stop_process(process: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM one child, SIGKILL it after ``timeout``; close its pipes and return its exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("pid {} did not stop within {}s; killing it", process.pid, timeout)
            process.kill()
            process.wait()
    for stream in (process.stdout, process.stderr):
        if stream:
            stream.close()
    return process.returncode
