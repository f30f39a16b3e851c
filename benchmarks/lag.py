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

``Beside`` runs the same ticker on an idle loop in a process of its own
(``python -m benchmarks.lag``), alongside the measured work: how late a loop that does
nothing wakes on this machine under the same load is the floor of the lag, what the OS
alone costs; no client code can go below it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from benchmarks.measure import percentile

TICK = 0.001  # seconds each tick sleeps
SCHEDSTAT = "/proc/thread-self/schedstat"  # cpu ns, run-queue wait ns, time slices
READY = "ready"  # what the ticker process prints once it ticks
STOP_TIMEOUT = 10.0  # seconds the ticker process gets to report and exit once told to stop


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


def summary(lag: LagMeter) -> dict[str, float]:
    """Ticks and the p50, p99 and max of the lag, and the p99 of its two parts, in ms."""
    return {"ticks": len(lag.lags), "lag_p50_ms": lag.percentile(50) * 1e3, "lag_p99_ms": lag.percentile(99) * 1e3,
            "lag_max_ms": max(lag.lags, default=0.0) * 1e3, "lag_own_p99_ms": lag.percentile(99, "own") * 1e3,
            "lag_wait_p99_ms": lag.percentile(99, "waits") * 1e3}


class Beside:
    """An idle loop's ticker in a process of its own while the block runs; ``result`` is its ``summary``.

    Entering starts ``python -m benchmarks.lag`` and waits until it ticks; leaving closes
    its stdin, which ends it, and reads its figures (a stop, unlike a fixed duration,
    spans exactly the measured work). It blocks the caller's thread for both: keep the
    measured ticker out of those moments.
    """

    def __init__(self, environment: dict[str, str] | None = None, cwd: str | None = None) -> None:
        self.environment = environment
        self.cwd = cwd
        self.result: dict[str, float] = {}
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "Beside":
        self._process = subprocess.Popen([sys.executable, "-m", "benchmarks.lag"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, text=True, env=self.environment, cwd=self.cwd)
        line = self._process.stdout.readline().strip()
        if line != READY:
            self._process.kill()
            self._process.wait(STOP_TIMEOUT)
            raise RuntimeError(f"the ticker process (pid {self._process.pid}) said {line!r}, not {READY!r}")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        assert self._process is not None
        try:
            output, _ = self._process.communicate(timeout=STOP_TIMEOUT)  # closes stdin: the ticker stops
            if not exc_info[0]:
                self.result = json.loads(output)
        finally:
            if self._process.poll() is None:
                self._process.kill()
                self._process.wait(STOP_TIMEOUT)


async def tick_until_stdin_closes() -> dict[str, float]:
    """The ticker process: tick on an otherwise idle loop until stdin closes; its ``summary``."""
    loop = asyncio.get_running_loop()
    closed = loop.create_future()
    threading.Thread(target=lambda: (sys.stdin.read(), loop.call_soon_threadsafe(closed.set_result, None)),
                     daemon=True).start()
    async with LagMeter() as lag:
        print(READY, flush=True)
        await closed
    return summary(lag)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(tick_until_stdin_closes())), flush=True)
