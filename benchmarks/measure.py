"""Timing loops shared by runner and ProcessPoolExecutor: each bounded in count and in time.

Both sides are driven by the same code through a ``submit`` callable returning a
``concurrent.futures.Future``, so the only difference measured is the executor.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable


def throughput(submit: Callable[[], Future], jobs: int, budget: float) -> dict[str, float]:
    """Submit ``jobs`` one by one, then gather every result; jobs per second over the whole."""
    started, cpu_started = time.perf_counter(), time.process_time()
    futures = [submit() for _ in range(jobs)]
    submitted = time.perf_counter()
    wait_all(futures, started + budget)
    elapsed = time.perf_counter() - started
    return {"jobs": jobs, "seconds": elapsed, "jobs_per_s": jobs / elapsed, "submit_s": submitted - started,
            "client_cpu_us_per_job": (time.process_time() - cpu_started) / jobs * 1e6}


def wait_all(futures: list[Future], deadline: float) -> None:
    """Every result, in order; a failed job raises; TimeoutError once past ``deadline`` (perf_counter)."""
    for future in futures:
        future.result(timeout=max(0.0, deadline - time.perf_counter()))


def count_results(results: Any, expected: int, deadline: float) -> int:
    """Consume a lazy iterator of results, checking the deadline every thousand."""
    count = 0
    for count, _ in enumerate(results, 1):
        if count % 1000 == 0 and time.perf_counter() > deadline:
            raise TimeoutError(f"only {count} of {expected} results arrived in time")
    if count != expected:
        raise RuntimeError(f"map gave {count} results for {expected} inputs")
    return count


def round_trips(call: Callable[[], Any], count: int, warmup: int, budget: float) -> dict[str, float]:
    """``call()`` (one job, waited for) ``warmup`` times, then ``count`` timed times; percentiles in µs."""
    deadline = time.perf_counter() + budget
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
        if started > deadline:
            raise TimeoutError(f"only {len(samples)} of {count} round trips within {budget:g}s")
    micro = [sample * 1e6 for sample in samples]
    return {"count": count, "p50_us": percentile(micro, 50), "p99_us": percentile(micro, 99),
            "mean_us": statistics.fmean(micro), "max_us": max(micro)}


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    """Median, min and max of the runs' values."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def wait_for(condition: Callable[[], bool], timeout: float, interval: float, what: str) -> float:
    """Re-check ``condition`` every ``interval`` s; return the seconds it took, TimeoutError after ``timeout``."""
    started = time.perf_counter()
    while not condition():
        if time.perf_counter() - started > timeout:
            raise TimeoutError(f"{what} did not happen within {timeout:g}s")
        time.sleep(interval)
    return time.perf_counter() - started


class Watchdog:
    """Calls ``expire`` (closing a client) after ``seconds`` unless the block ended first.

    Closing a runner client fails every future it holds at once, so no wait on
    the cluster (a map's, a result's) outlives the run's budget.
    """

    def __init__(self, seconds: float, expire: Callable[[], None]) -> None:
        self.seconds = seconds
        self.fired = False
        self._expire = expire
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        self.fired = True
        self._expire()

    def __enter__(self) -> "Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._timer.cancel()
