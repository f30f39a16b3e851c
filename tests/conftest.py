"""Fixtures: real brokers, workers and clients on 127.0.0.1, always cleaned up."""

from __future__ import annotations

import os
import sys

import pytest

from cluster import EXAMPLES, ROOT, Processes, wait_until

sys.path.insert(0, str(EXAMPLES))  # the task functions of examples/tasks.py

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


def _live_children(pid: int) -> list[str]:
    """Command lines of this process's children that are still running (not zombies)."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    children.append(cmdline.read().replace(b"\0", b" ").decode(errors="replace"))
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return children


@pytest.fixture(autouse=True, scope="session")
def no_process_left_behind():
    """The session ends with no runner child process still running (fixtures stop theirs)."""
    yield
    left = [command for command in _live_children(os.getpid()) if "runner" in command]
    assert not left, f"the test left processes running: {left}"
    def orphans() -> list[str]:
        return [command for command in _live_children(1) if "multiprocessing.forkserver" in command and str(ROOT) in command]

    # A killed worker's pool children notice within moments (pidfd), then their forkserver.
    try:
        wait_until(lambda: not orphans(), timeout=15, message="no orphaned pool processes")
    except AssertionError:
        raise AssertionError(f"pool processes outlived their workers: {orphans()[:3]}") from None
