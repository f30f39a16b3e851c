"""Cases (b) and (c) of issue 12: ``AsyncClient`` against ``Client``, and its loop's lag under load.

(b) submit+await of no-ops and the sequential round trip, on AsyncClient and on Client
in the same run and on the same cluster, so the table compares like with like. (c)
a ticker coroutine measures how late it wakes (benchmarks/lag.py) while a thousand
no-op jobs are kept in flight from the same loop, and the same ticker on an idle
loop in a process of its own beside it gives the floor: what the OS alone costs a
loop on this machine under that load. (c) runs twice: with the client on a CPU of
its own, the cluster on the others (benchmarks/cores.py), as a service and the
cluster it awaits are deployed; and with every process sharing every CPU. Each
AsyncClient run is a fresh asyncio loop, bounded by the run's budget.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import runner
from benchmarks import tasks
from benchmarks.cases import Bench, Sample, attempt, on_runner, runner_roundtrip
from benchmarks.cluster import ROOT, child_environment
from benchmarks.cores import own_core
from benchmarks.lag import Beside, LagMeter, summary
from benchmarks.measure import percentile, throughput
from benchmarks.settings import REQUEST_TIMEOUT, budget

IN_FLIGHT = 1_000  # case (c): jobs kept in flight while the ticker runs


def case_async_client(bench: Bench) -> Sample:
    """Case (b): submit+await throughput and round trip p50, AsyncClient then Client."""
    jobs = bench.sizes.async_jobs
    return {
        "async": on_async_client(bench, budget(jobs), lambda client: async_throughput(client, jobs)),
        "client": on_runner(bench, budget(jobs), lambda client: throughput(lambda: client.submit(tasks.noop), jobs,
                                                                            budget(jobs))),
        "async_roundtrip": on_async_client(bench, budget(bench.sizes.roundtrip_jobs),
                                           lambda client: async_round_trips(bench, client)),
        "client_roundtrip": runner_roundtrip(bench),
    }


def case_loop_lag(bench: Bench) -> Sample:
    """Case (c): the loop's lag while IN_FLIGHT no-ops are in flight from it, ``lag_jobs`` in all; and the floor.

    Twice: with the client on a CPU of its own and the cluster on the others (``own_core``,
    as a service and its cluster are deployed; the target's row), and with every process
    sharing every CPU (``shared``, for information).
    """
    jobs = bench.sizes.lag_jobs

    def measure() -> dict[str, Any]:
        return on_async_client(bench, budget(jobs), lambda client: lag_under_load(client, jobs))

    def on_own_core() -> dict[str, Any]:
        with own_core(bench.cluster.pids):
            return measure()

    return {"shared": measure(), "own_core": attempt(on_own_core)}


async def async_throughput(client: runner.AsyncClient, jobs: int) -> dict[str, float]:
    """Submit ``jobs`` no-ops one by one, then await them all: the shape of case 1."""
    started, cpu_started = time.perf_counter(), time.process_time()
    futures = [client.submit(tasks.noop) for _ in range(jobs)]
    submitted = time.perf_counter()
    await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    return {"jobs": jobs, "seconds": elapsed, "jobs_per_s": jobs / elapsed, "submit_s": submitted - started,
            "client_cpu_us_per_job": (time.process_time() - cpu_started) / jobs * 1e6}


async def async_round_trips(bench: Bench, client: runner.AsyncClient) -> dict[str, float]:
    """``await client.submit(noop)`` in sequence, as case 3 does with ``.result()``."""
    count, warmup = bench.sizes.roundtrip_jobs, bench.sizes.roundtrip_warmup
    samples = []
    for index in range(warmup + count):
        started = time.perf_counter()
        await client.submit(tasks.noop)
        if index >= warmup:
            samples.append((time.perf_counter() - started) * 1e6)
    return {"count": count, "p50_us": percentile(samples, 50), "p99_us": percentile(samples, 99),
            "mean_us": sum(samples) / len(samples), "max_us": max(samples)}


async def lag_under_load(client: runner.AsyncClient, jobs: int) -> dict[str, float]:
    """IN_FLIGHT coroutines each await no-ops one after another until ``jobs`` ran; the ticker's lag.

    Meanwhile an idle loop's ticker runs in a process of its own (``idle_lag_p99_ms``): the
    lag the OS alone gives a loop here under this load.
    """
    per_coroutine = max(1, jobs // IN_FLIGHT)

    async def one_after_another() -> int:
        for _ in range(per_coroutine):
            await client.submit(tasks.noop)
        return per_coroutine

    with Beside(child_environment(), str(ROOT)) as beside:
        started, cpu_started = time.perf_counter(), time.process_time()
        async with LagMeter() as lag:
            done = sum(await asyncio.gather(*(one_after_another() for _ in range(IN_FLIGHT))))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"jobs": done, "in_flight": IN_FLIGHT, "seconds": elapsed, "jobs_per_s": done / elapsed,
            "client_cpu_us_per_job": cpu / done * 1e6, **summary(lag),
            "idle_lag_p99_ms": beside.result["lag_p99_ms"], "idle_ticks": beside.result["ticks"]}


def on_async_client(bench: Bench, seconds: float,
                    body: Callable[[runner.AsyncClient], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """``body(client)`` on a fresh loop with a fresh, warmed-up AsyncClient, cut off after ``seconds``."""
    async def run() -> dict[str, Any]:
        async with runner.AsyncClient(bench.cluster.address, timeout=REQUEST_TIMEOUT, name="bench-async",
                                      curve_keys=bench.cluster.curve_keys or "") as client:
            await asyncio.gather(*(client.submit(tasks.noop) for _ in range(bench.sizes.warmup_jobs)))
            return await asyncio.wait_for(body(client), seconds)

    def timed() -> dict[str, Any]:
        try:
            return asyncio.run(run())
        except asyncio.TimeoutError:
            return {"error": f"timed out: the run's budget of {seconds:g}s was spent"}

    return attempt(timed)

