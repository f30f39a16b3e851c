"""Cases 1-5 and 7 of issue 5, each run on runner and on ProcessPoolExecutor(max_workers=2); case 12a.

One cluster (a broker with its journal on, two workers of 1 process, 32 threads
and 5,000 coroutine slots) and one PPE serve every run. Each runner run gets a fresh, warmed-up
client and a watchdog that closes it when the run's budget is spent; each PPE run
waits for its results with the same budget. A run that fails is recorded with
its error and the benchmark goes on.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import runner
from benchmarks import floor, tasks
from benchmarks.cluster import Cluster, cpu_seconds, rss_bytes
from benchmarks.measure import Watchdog, count_results, round_trips, throughput
from benchmarks.settings import (ASYNC_TASKS_PER_WORKER, BROKER_SETTLE, PPE_WORKERS, REQUEST_TIMEOUT, START_TIMEOUT,
                                 THREADS_PER_WORKER, WORKERS, Sizes, budget)

Sample = dict[str, Any]  # one run of a case: {"runner": {...}, "ppe": {...}, ...}; a side may hold {"error": ...}
CPU_RATE = 20.0  # jobs/s below which the CPU-bound case is cut off (ideal: 100/s)
THREAD_WAVES = 10  # case 12a on the thread pools: ten 100 ms sleeps per thread


@dataclass
class Bench:
    """What every run needs: the cluster, the PPE, the sizes and the calibrated CPU work."""

    cluster: Cluster
    ppe: ProcessPoolExecutor
    sizes: Sizes
    cpu_iterations: int


def run_cases(bench: Bench, cases: list[str], record: Callable[[str, Sample], None]) -> None:
    """Each case ``runs`` times in a row (runner, then PPE, in every run); ``record`` gets each run."""
    for case in cases:
        for run in range(1, bench.sizes.runs + 1):
            sample = CASES[case](bench)
            record(case, sample)
            print(f"  {case} run {run}/{bench.sizes.runs}: {brief(sample)}", file=sys.stderr, flush=True)


def start_bench(cluster: Cluster, sizes: Sizes) -> Bench:
    """Start the broker and workers, wait for them, start and warm the PPE, calibrate the CPU work."""
    start_cluster(cluster)
    iterations = tasks.calibrate()
    ppe = ProcessPoolExecutor(max_workers=PPE_WORKERS)
    list(ppe.map(tasks.noop, range(sizes.warmup_jobs)))  # its processes exist and have imported the tasks
    return Bench(cluster, ppe, sizes, iterations)


def start_cluster(cluster: Cluster) -> None:
    """Start the broker and its workers and wait until they are all registered."""
    cluster.start_broker()
    cluster.start_workers(WORKERS)
    with runner.Client(cluster.address, timeout=REQUEST_TIMEOUT, curve_keys=cluster.curve_keys or "") as client:
        client.wait_for_workers(WORKERS, timeout=START_TIMEOUT)


# --- the cases ----------------------------------------------------------------------------


def case_submit(bench: Bench) -> Sample:
    """Case 1: ``submit`` one by one, then gather every result."""
    jobs = bench.sizes.submit_jobs
    return {
        "runner": runner_submit(bench),
        "ppe": attempt(lambda: throughput(lambda: bench.ppe.submit(tasks.noop), jobs, budget(jobs))),
    }


def runner_submit(bench: Bench) -> dict:
    """Case 1's runner side."""
    jobs = bench.sizes.submit_jobs
    return on_runner(bench, budget(jobs), lambda client: throughput(lambda: client.submit(tasks.noop), jobs, budget(jobs)))


def case_map(bench: Bench) -> Sample:
    """Case 2 (and 7): ``client.map`` against PPE's submit+result; PPE.map with a chunksize for information."""
    jobs, chunksize = bench.sizes.map_jobs, bench.sizes.ppe_map_chunksize
    return {
        "runner": on_runner(bench, budget(jobs), lambda client: runner_map(client, bench.cluster.broker_pid, jobs)),
        "ppe": attempt(lambda: throughput(lambda: bench.ppe.submit(tasks.noop), jobs, budget(jobs))),
        "ppe_map": attempt(lambda: ppe_map(bench.ppe, jobs, chunksize)),
    }


def case_roundtrip(bench: Bench) -> Sample:
    """Case 3: sequential ``submit(noop).result()`` after a warm-up; p50 and p99; and the floor (floor.py)."""
    count, warmup = bench.sizes.roundtrip_jobs, bench.sizes.roundtrip_warmup
    seconds = budget(count + warmup)
    return {
        "runner": runner_roundtrip(bench),
        "ppe": attempt(lambda: round_trips(
            lambda: bench.ppe.submit(tasks.noop).result(REQUEST_TIMEOUT), count, warmup, seconds)),
        "floor": attempt(lambda: floor.round_trips(count, warmup, seconds)),
    }


def runner_roundtrip(bench: Bench) -> dict:
    """Case 3's runner side."""
    count, warmup = bench.sizes.roundtrip_jobs, bench.sizes.roundtrip_warmup
    seconds = budget(count + warmup)
    return on_runner(bench, seconds, lambda client: round_trips(
        lambda: client.submit(tasks.noop).result(REQUEST_TIMEOUT), count, warmup, seconds))


def case_cpu(bench: Bench) -> Sample:
    """Case 4: ~20 ms of pure Python a job, on the process pools."""
    jobs, iterations = bench.sizes.cpu_jobs, bench.cpu_iterations
    seconds = budget(jobs, CPU_RATE)
    return {
        "runner": on_runner(bench, seconds, lambda client: throughput(
            lambda: client.submit(tasks.cpu_burn, iterations), jobs, seconds)),
        "ppe": attempt(lambda: throughput(lambda: bench.ppe.submit(tasks.cpu_burn, iterations), jobs, seconds)),
        "iterations": iterations,
    }


def case_io(bench: Bench) -> Sample:
    """Case 5: a 10 ms sleep a job on the thread pools, against the ideal of threads x 100/s."""
    jobs = bench.sizes.io_jobs
    return {
        "runner": on_runner(bench, budget(jobs), lambda client: throughput(
            lambda: client.submit(tasks.sleep_10ms, pool="thread"), jobs, budget(jobs))),
        "ideal": {"jobs_per_s": WORKERS * THREADS_PER_WORKER / tasks.SLEEP_SECONDS},
    }


def case_async_pool(bench: Bench) -> Sample:
    """Case 12a: a 100 ms asyncio.sleep a job on the async pools, against what the cluster could do.

    The ideal is the lower of two bounds: every coroutine slot asleep all the time (slots /
    sleep: 2 x 5,000 / 0.1 s = 100,000 jobs/s), and the same cluster moving the same number of
    coroutine no-ops, measured just before in the same run, with the last job's own 100 ms
    added (jobs / (jobs / no-op rate + sleep)). At 1.0x the pool hides the sleeps entirely: they
    cost nothing but the cluster's own work per job. For information, the same sleeps with
    time.sleep on the thread pools (64 threads: at most 640 jobs/s), fewer of them.
    """
    jobs, sleep = bench.sizes.async_pool_jobs, tasks.ASYNC_SLEEP_SECONDS
    thread_jobs = min(jobs, WORKERS * THREADS_PER_WORKER * THREAD_WAVES)
    noop = on_runner(bench, budget(jobs), lambda client: throughput(
        lambda: client.submit(tasks.async_noop), jobs, budget(jobs)))
    slept = on_runner(bench, budget(jobs), lambda client: throughput(
        lambda: client.submit(tasks.async_sleep_100ms), jobs, budget(jobs)))
    threads = on_runner(bench, budget(thread_jobs), lambda client: throughput(
        lambda: client.submit(tasks.sleep_100ms, pool="thread"), thread_jobs, budget(thread_jobs)))
    sleep_bound = WORKERS * ASYNC_TASKS_PER_WORKER / sleep
    sample: Sample = {"runner": slept, "noop": noop, "sleep_bound": {"jobs_per_s": sleep_bound}, "thread": threads,
                      "thread_bound": {"jobs_per_s": WORKERS * THREADS_PER_WORKER / sleep}}
    if "error" in noop:
        sample["ideal"] = {"error": f"no no-op rate to bound the ideal: {noop['error']}"}
    else:
        sample["ideal"] = {"jobs_per_s": min(sleep_bound, jobs / (jobs / noop["jobs_per_s"] + sleep))}
    return sample


CASES: dict[str, Callable[[Bench], Sample]] = {
    "submit": case_submit, "map": case_map, "roundtrip": case_roundtrip, "cpu": case_cpu, "io": case_io,
    "async_pool": case_async_pool,
}


# --- the pieces -----------------------------------------------------------------------------


def runner_map(client: runner.Client, broker_pid: int, jobs: int) -> dict[str, float]:
    """``client.map`` over ``jobs`` no-ops; also the broker's CPU time per job while it ran."""
    broker_cpu = cpu_seconds(broker_pid)
    started, client_cpu = time.perf_counter(), time.process_time()
    count_results(client.map(tasks.noop, range(jobs)), jobs, started + budget(jobs))
    elapsed = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    time.sleep(BROKER_SETTLE)  # the broker takes the last acknowledgements
    broker_cpu = cpu_seconds(broker_pid) - broker_cpu
    return {"jobs": jobs, "seconds": elapsed, "jobs_per_s": jobs / elapsed, "broker_cpu_s": broker_cpu,
            "broker_cpu_us_per_job": broker_cpu / jobs * 1e6, "client_cpu_us_per_job": client_cpu / jobs * 1e6,
            "broker_rss_bytes": rss_bytes(broker_pid)}


def ppe_map(ppe: ProcessPoolExecutor, jobs: int, chunksize: int) -> dict[str, float]:
    """``ProcessPoolExecutor.map`` with a chunksize: PPE at its best, for information."""
    started = time.perf_counter()
    count_results(ppe.map(tasks.noop, range(jobs), chunksize=chunksize, timeout=budget(jobs)), jobs,
                  started + budget(jobs))
    elapsed = time.perf_counter() - started
    return {"jobs": jobs, "seconds": elapsed, "jobs_per_s": jobs / elapsed, "chunksize": chunksize}


def on_runner(bench: Bench, seconds: float, body: Callable[[runner.Client], dict]) -> dict:
    """``body(client)`` with a fresh warmed-up client, closed by a watchdog after ``seconds``."""
    try:
        client = runner.Client(bench.cluster.address, timeout=REQUEST_TIMEOUT, name="bench",
                               curve_keys=bench.cluster.curve_keys or "")
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    watchdog = Watchdog(seconds, client.close)
    try:
        with watchdog:
            for future in [client.submit(tasks.noop) for _ in range(bench.sizes.warmup_jobs)]:
                future.result(REQUEST_TIMEOUT)
            return body(client)
    except Exception as exc:
        if watchdog.fired:
            return {"error": f"timed out: the run's budget of {seconds:g}s was spent ({type(exc).__name__})"}
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        client.close()


def attempt(body: Callable[[], dict]) -> dict:
    """``body()``, or its error recorded as ``{"error": ...}``."""
    try:
        return body()
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def brief(sample: Sample) -> str:
    """One progress line: the headline number of each side."""
    parts = []
    for side, values in sample.items():
        if not isinstance(values, dict):
            continue
        if "error" in values:
            parts.append(f"{side} ERROR {values['error']}")
        elif "late_p99_ms" in values:
            parts.append(f"{side} late p50 {values['late_p50_ms']:.2f} ms p99 {values['late_p99_ms']:.2f} ms "
                         f"({values['load_jobs']:,} load jobs meanwhile)")
        elif "lag_p99_ms" in values:
            parts.append(f"{side} loop lag p99 {values['lag_p99_ms']:.2f} ms, own {values['lag_own_p99_ms']:.2f} ms, "
                         f"idle loop beside {values.get('idle_lag_p99_ms', 0.0):.2f} ms ({values['jobs_per_s']:,.0f} jobs/s)")
        elif "jobs_per_s" in values:
            parts.append(f"{side} {values['jobs_per_s']:,.0f} jobs/s")
        elif "p50_us" in values:
            parts.append(f"{side} p50 {values['p50_us']:,.0f} µs p99 {values['p99_us']:,.0f} µs")
    return ", ".join(parts)


# Issue 12's AsyncClient cases build on the pieces above, so they join the table last.
from benchmarks.aio_client import case_async_client, case_loop_lag  # noqa: E402

CASES.update({"async_client": case_async_client, "loop_lag": case_loop_lag})
from benchmarks.delayed import case_due_precision  # noqa: E402 - issue 13's case on the shared cluster

CASES["due_precision"] = case_due_precision
