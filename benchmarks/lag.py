"""How late a ticker coroutine wakes on a busy asyncio loop: the loop lag its other coroutines feel.

``async with LagMeter() as lag:`` runs a ticker beside the work inside the block; each
tick sleeps ``interval`` and records how much later than that it woke. Used by case (c)
and by tests/test_async_client.py.

A tick is late for one of two reasons: the loop's thread was busy with other callbacks,
or it was ready to run and the OS ran another process (on a machine where the broker and
workers share the cores, they do). On Linux the kernel counts, per thread, the time spent
waiting for a CPU (``/proc/thread-self/schedstat``); ``waits`` keeps that time for each
tick, and ``own`` the rest of its lateness: the loop's own work, what the client code can
change. Elsewhere ``waits`` stays empty and ``own`` is the whole lateness.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any, Callable

from benchmarks.measure import percentile

TICK = 0.001  # seconds each tick sleeps
SCHEDSTAT = "/proc/thread-self/schedstat"  # cpu ns, run-queue wait ns, time slices


class LagMeter:
    """A ticker on the running loop; ``lags`` are seconds each tick woke late."""

    def __init__(self, interval: float = TICK) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self.waits: list[float] = []  # of each lag, seconds the thread waited for a CPU (Linux)
        self.own: list[float] = []  # of each lag, the rest: the loop was busy
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "LagMeter":
        self._task = asyncio.ensure_future(self._tick())
        await asyncio.sleep(0)  # the ticker runs before the work starts
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def percentile(self, q: float, of: str = "lags") -> float:
        """The q-th percentile, in seconds, of ``lags``, ``waits`` or ``own``; 0 without ticks."""
        values = getattr(self, of)
        return percentile(values, q) if values else 0.0

    async def _tick(self) -> None:
        with _run_queue_clock() as waited:
            while True:
                started, waited_before = time.perf_counter(), waited()
                await asyncio.sleep(self.interval)
                lag = max(0.0, time.perf_counter() - started - self.interval)
                self.lags.append(lag)
                if waited_before is None:
                    self.own.append(lag)
                    continue
                wait = min(lag, waited() - waited_before)  # the OS's share of the lateness
                self.waits.append(wait)
                self.own.append(lag - wait)


@contextlib.contextmanager
def _run_queue_clock() -> Any:
    """A function giving the seconds this thread has waited for a CPU so far (None where unknown)."""
    try:
        descriptor = os.open(SCHEDSTAT, os.O_RDONLY)
    except OSError:
        yield lambda: None
        return

    def waited() -> float:
        return int(os.pread(descriptor, 128, 0).split()[1]) / 1e9

    reader: Callable[[], float | None] = waited
    try:
        yield reader
    finally:
        os.close(descriptor)
