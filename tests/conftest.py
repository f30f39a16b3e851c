"""Fixtures: real brokers, workers and clients on 127.0.0.1, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import signal
import sys

import pytest

from cluster import EXAMPLES, SESSION_VARIABLE, Processes, wait_until

sys.path.insert(0, str(EXAMPLES))  # the task functions of examples/tasks.py
os.environ[SESSION_VARIABLE] = str(os.getpid())  # inherited by every process a test starts, by any means

import runner  # noqa: E402


@pytest.fixture
def processes():
    """Start runner processes; every one is stopped after the test, pass or fail."""
    started = Processes()
    yield started
    started.stop_all()


@pytest.fixture
def broker_address(processes) -> str:
    """A fresh broker on an ephemeral port."""
    _, address = processes.broker("--heartbeat", "0.2")
    return address


@pytest.fixture
def client_factory():
    """Make clients; each is closed after the test."""
    clients = []

    def make(address: str, **options) -> runner.Client:
        client = runner.Client(address, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def two_workers():
    """A broker with two workers (2 processes, 4 threads each), shared by a module's tests."""
    started = Processes()
    try:
        _, address = started.broker("--heartbeat", "0.2")
        for name in ("alpha", "beta"):
            started.worker(address, "--processes", "2", "--threads", "4", "--name", name, "--heartbeat", "0.2",
                           imports=("tasks", "decorated", "jobs"))
        with runner.Client(address) as client:
            client.wait_for_workers(2, timeout=30)
            yield client
    finally:
        started.stop_all()


def _session_processes() -> dict[int, tuple[int, str]]:
    """This session's live processes, wherever they were reparented: pid -> (parent pid, command line).

    A cheap scan of /proc: a process is ours when its environment carries this pytest
    process's id in SESSION_VARIABLE (other test runs on the machine carry their own).
    """
    marker = f"{SESSION_VARIABLE}={os.getpid()}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if marker not in environ.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
            continue
        if fields[0] != "Z":
            found[int(entry)] = (int(fields[1]), command)
    return found


def _leaked() -> dict[int, str]:
    """This session's processes that belong to no open Processes (nor descend from one)."""
    found = _session_processes()
    allowed = Processes.running_pids()

    def owned(pid: int) -> bool:
        seen = set()
        while pid in found and pid not in seen:
            if pid in allowed:
                return True
            seen.add(pid)
            pid = found[pid][0]
        return pid in allowed

    return {pid: command for pid, (_, command) in found.items() if not owned(pid)}


def _check_no_leaks(when: str) -> None:
    """Fail if processes of this session outlive their test; end them (by pid) either way."""
    # A killed worker's pool children notice within moments (pidfd), then their forkserver.
    try:
        wait_until(lambda: not _leaked(), timeout=15, interval=0.1, message="no processes left behind")
    except AssertionError:
        left = _leaked()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise AssertionError(f"{when} left processes running (now killed): {sorted(left.items())[:5]}") from None


@pytest.fixture(autouse=True)
def no_process_left_behind(request):
    """After every test, none of the processes it started still runs (shared clusters aside)."""
    yield
    _check_no_leaks(request.node.nodeid)


@pytest.fixture(autouse=True, scope="session")
def no_process_left_behind_at_the_end():
    """The session ends with none of its processes running, shared clusters included."""
    yield
    _check_no_leaks("the test session")
