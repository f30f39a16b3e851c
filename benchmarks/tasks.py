"""The benchmark's tasks: module-level functions that runner workers import and PPE pickles.

The CPU task takes its loop count as an argument, calibrated once in the harness
(``calibrate``), so runner and ProcessPoolExecutor run exactly the same work.
"""

from __future__ import annotations

import asyncio
import time

CPU_SECONDS = 0.020  # target duration of one CPU-bound job
SLEEP_SECONDS = 0.010  # duration of one I/O-bound job
ASYNC_SLEEP_SECONDS = 0.100  # duration of one coroutine job (case 12a)


def noop(*args: object) -> None:
    """Nothing: measures the runner's own cost per job. Takes any arguments (map passes one)."""


def cpu_burn(iterations: int) -> int:
    """Pure-Python arithmetic, ``iterations`` steps; holds the GIL the whole time."""
    total = 0
    for _ in range(iterations):
        total = (total * 31 + 7) % 65_521  # stays a small int: every step costs the same
    return total


def sleep_10ms(*args: object) -> None:
    """Sleeps SLEEP_SECONDS without the GIL, as an I/O-bound job does."""
    time.sleep(SLEEP_SECONDS)


def sleep_100ms(*args: object) -> None:
    """Sleeps ASYNC_SLEEP_SECONDS in a thread: case 12a's job for the thread pool."""
    time.sleep(ASYNC_SLEEP_SECONDS)


async def async_noop(*args: object) -> None:
    """Nothing, on the worker's event loop: what the async pool moves when its jobs do not wait (case 12a)."""


async def async_sleep_100ms(*args: object) -> None:
    """Awaits ASYNC_SLEEP_SECONDS on the worker's event loop, as an asyncio I/O-bound job does."""
    await asyncio.sleep(ASYNC_SLEEP_SECONDS)


def started_at(*args: object) -> float:
    """When this run started (time.time()): the due-precision case compares it with the due time."""
    return time.time()


def calibrate(seconds: float = CPU_SECONDS, rounds: int = 5) -> int:
    """The loop count for which ``cpu_burn`` takes about ``seconds`` here (best of ``rounds``)."""
    probe = 50_000
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        cpu_burn(probe)
        best = min(best, time.perf_counter() - started)
    return max(1, round(probe * seconds / best))
