"""Coroutine task functions for tests/test_async_pool.py (a worker imports them: ``--import async_tasks``)."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import runner
from jobs import GATE_TIMEOUT, _append_line


async def where() -> dict:
    """Say where this coroutine ran: process id and thread name."""
    return {"pid": os.getpid(), "thread": threading.current_thread().name}


async def add(a: float, b: float) -> float:
    """a + b, after giving the loop a turn."""
    await asyncio.sleep(0)
    return a + b


@runner.task(pool="thread")
async def add_on_threads(a: float, b: float) -> float:
    """An async def whose @task names the thread pool: the explicit pool wins."""
    return a + b


def plain_add(a: float, b: float) -> float:
    """A plain function: the async pool refuses it."""
    return a + b


_napping = 0  # naps sleeping now, on this worker's loop


async def nap(seconds: float, value: int) -> list:
    """Sleep without blocking the loop; return the value and how many naps were asleep when it woke."""
    global _napping
    _napping += 1
    try:
        await asyncio.sleep(seconds)
        return [value, _napping]
    finally:
        _napping -= 1


async def gated(record: str, gate: str, marker: str) -> str:
    """Note the start in ``record``, wait for the file ``gate``; note a cancellation and the finally in ``marker``."""
    _append_line(record, str(os.getpid()))
    deadline = time.monotonic() + GATE_TIMEOUT
    try:
        while not os.path.exists(gate):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gate {gate} was not opened within {GATE_TIMEOUT:g}s")
            await asyncio.sleep(0.01)
        return "opened"
    except asyncio.CancelledError:
        _append_line(marker, "cancelled")
        raise
    finally:
        _append_line(marker, "finally")


async def block_loop(seconds: float) -> str:
    """Block the pool's event loop (a blocking call in a coroutine): the worker logs it."""
    time.sleep(seconds)
    return "blocked"


async def job_then_lock(lock_name: str, x: int) -> list:
    """Await another job and a cluster Lock through runner.get_client(), without blocking the loop."""
    client = runner.get_client()
    async with client.Lock(lock_name):
        inner = await client.submit(add, x, 1)
    return [inner, type(client).__name__]
