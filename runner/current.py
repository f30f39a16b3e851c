"""Which client ``runner.get_client()`` returns in this process, and in a task.

The cluster-wide Lock, Semaphore, Event and Queue at module level (``runner.Lock(...)``)
need a client without being handed one: in a program, the last one it opened; in a
task, a connection to the worker's broker, opened once per process.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.client import Client

_current: "Client | None" = None  # the client get_client() returns in this process
_current_lock = threading.Lock()  # guards _current: clients open and close on any thread
_creating = threading.Lock()  # one task thread creates the process's client; the others wait for it


def make_current(client: "Client") -> None:
    """``client`` is now the one get_client() returns (the newest opened)."""
    global _current
    with _current_lock:
        _current = client


def forget(client: "Client") -> None:
    """``client`` closed: get_client() no longer returns it."""
    global _current
    with _current_lock:
        if _current is client:
            _current = None


def get_client() -> "Client":
    """The client of this process: the last one opened, or, inside a task, one to the worker's broker.

    A task runs in a worker's thread or in a pool process that has no client of
    its own; the worker puts its broker's address in RUNNER_BROKER, and the first
    call here connects to it (once per process).
    """
    with _creating:
        client = _current
        if client is not None and not client._closed and client._pid == os.getpid():
            return client
        address = os.environ.get("RUNNER_BROKER")
        if not address:
            raise RuntimeError("there is no runner client in this process: create runner.Client(address) first, "
                               "or set RUNNER_BROKER to the broker's address")
        from runner.client import Client

        return Client(address)
