"""How late a ticker coroutine wakes on a busy asyncio loop: the loop lag its other coroutines feel.

``async with LagMeter() as lag:`` runs a ticker beside the work inside the block; each
tick sleeps ``interval`` and records how much later than that it woke. Used by case (c)
and by tests/test_async_client.py.

A tick is late for one of two reasons: the loop's thread was busy with other callbacks,
or the OS gave the CPU to another process (on a machine where the broker and workers
share the cores, they do). ``busy`` keeps, for each tick, the part of its lateness this
thread spent on the CPU (its ``thread_time``), which tells the two apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from benchmarks.measure import percentile

TICK = 0.001  # seconds each tick sleeps


class LagMeter:
    """A ticker on the running loop; ``lags`` are seconds each tick woke late."""

    def __init__(self, interval: float = TICK) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self.busy: list[float] = []  # of each lag, seconds this thread ran (the rest: the OS ran others)
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

    def percentile(self, q: float, busy: bool = False) -> float:
        """The q-th percentile of the lags (``busy``: of their busy parts), in seconds; 0 without ticks."""
        values = self.busy if busy else self.lags
        return percentile(values, q) if values else 0.0

    async def _tick(self) -> None:
        while True:
            started, cpu_started = time.perf_counter(), time.thread_time()
            await asyncio.sleep(self.interval)
            lag = max(0.0, time.perf_counter() - started - self.interval)
            self.lags.append(lag)
            self.busy.append(min(lag, time.thread_time() - cpu_started))
