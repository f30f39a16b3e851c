"""Which client ``runner.get_client()`` returns in this process, and in a task.

The cluster-wide Lock, Semaphore, Event and Queue at module level (``runner.Lock(...)``)
need a client without being handed one: in a program, the last one it opened; in a
task, a connection to the worker's broker, opened once per process. A coroutine job,
on the event loop of the worker's async pool, gets a ``runner.AsyncClient`` on that
loop instead, opened once and closed with the pool: awaiting it never blocks the loop.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from runner.client import Client

_current: "Client | None" = None  # the client get_client() returns in this process
_current_lock = threading.Lock()  # guards _current: clients open and close on any thread
_creating = threading.Lock()  # one task thread creates the process's client; the others wait for it
_job_loop: "asyncio.AbstractEventLoop | None" = None  # the async pool's loop, in a worker
_loop_client: Any = None  # the AsyncClient of coroutine jobs on it (touched on that loop only)


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


def serve_coroutine_jobs(loop: asyncio.AbstractEventLoop) -> None:
    """``loop`` runs this worker's coroutine jobs: get_client() called on it returns an AsyncClient."""
    global _job_loop
    _job_loop = loop


async def close_coroutine_client() -> None:
    """The async pool is closing: close the coroutine jobs' AsyncClient, if one was opened."""
    global _loop_client
    client, _loop_client = _loop_client, None
    if client is not None:
        await client.close()


def get_client() -> "Client":
    """The client of this process: the last one opened, or, inside a task, one to the worker's broker.

    A task runs in a worker's thread or in a pool process that has no client of
    its own; the worker puts its broker's address in RUNNER_BROKER, and the first
    call here connects to it (once per process). A coroutine job on the worker's
    async pool gets a ``runner.AsyncClient`` on the pool's loop instead (one, shared).
    """
    if _job_loop is not None and _running_loop() is _job_loop:
        return _coroutine_client()
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


def _running_loop() -> "asyncio.AbstractEventLoop | None":
    import asyncio  # imported already where _job_loop is set: a worker with an async pool

    return asyncio._get_running_loop()


def _coroutine_client() -> Any:
    """The AsyncClient of the coroutine jobs, opened on their loop at the first call."""
    global _loop_client
    if _loop_client is None or _loop_client._closed:
        address = os.environ.get("RUNNER_BROKER")
        if not address:
            raise RuntimeError("RUNNER_BROKER is not set: a worker's coroutine jobs connect to the broker it names")
        from runner.aio import AsyncClient

        _loop_client = AsyncClient(address)
    return _loop_client
