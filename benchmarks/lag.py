"""How late a ticker coroutine wakes on a busy asyncio loop: the loop lag its other coroutines feel.

``async with LagMeter() as lag:`` runs a ticker beside the work inside the block; each
tick sleeps ``interval`` and records how much later than that it woke. Used by case (c)
and by tests/test_async_client.py.
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

    def percentile(self, q: float) -> float:
        """The q-th percentile of the lags, in seconds (0 when no tick completed)."""
        return percentile(self.lags, q) if self.lags else 0.0

    async def _tick(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append(max(0.0, time.perf_counter() - started - self.interval))
