"""Issue 13's delayed-job cases: a million delayed jobs held by the broker, and how late due jobs start.

``delayed_scale``: one client submits ``scale_jobs`` no-ops, each delayed by a random 1 to
``delay_max`` s (60 in a full run), to a broker of its own with no worker; the broker's RSS is
read before and once status counts them all held (scheduled, or pending for those already due),
as the scale case does for jobs without a delay. Then, as in the scale case, ``kill -9`` of the
broker and a restart on the same journal and address: the time until a new client's status counts
them all held again (their due times come from the journal); then the time until all fell due.

``due_precision``: on the main cluster, while a second client runs the map case's load
(``client.map`` of no-ops, again and again), ``due_jobs`` jobs are submitted with ``at=`` times
spread over ``due_spread`` seconds. Each records ``time.time()`` when it starts; its lateness is
that minus its due time (one clock: everything runs on this machine). They run on the thread
pools, which the map's load (process pools) leaves free, so the lateness is not a wait for a busy
pool: the broker leases each job ``--due-lead`` early, and it is how late the pool thread holding
it starts it (or, when the broker's timer ran later than the lead, the broker's dispatch too).
"""

from __future__ import annotations

import random
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import runner
from benchmarks import tasks
from benchmarks.cases import Bench, Sample, on_runner
from benchmarks.cluster import Cluster, rss_bytes
from benchmarks.measure import percentile, wait_for
from benchmarks.settings import MIN_QUEUE_RATE, MIN_RESTORE_RATE, REQUEST_TIMEOUT, STATUS_POLL, Sizes, budget

DUE_LEAD = 0.5  # seconds from the submits to the first due time, so every job is held before it is due
LOAD_ROUNDS = 100  # map rounds of the load at most, whatever the budget
SEED = 13


def case_delayed_scale(scratch: Path, sizes: Sizes, clusters: list[Cluster], observed: bool = False) -> Sample:
    """One run of ``delayed_scale`` on a broker of its own; the phases that completed, or the error.
    ``observed``: its broker is watched (benchmarks/observers.py)."""
    jobs, longest = sizes.scale_jobs, sizes.delay_max
    metrics: dict[str, Any] = {"jobs": jobs, "delay_max_s": longest}
    cluster = Cluster(scratch, f"delayed{len(clusters)}", observed=observed)
    clusters.append(cluster)
    try:
        address = cluster.start_broker()
        with runner.Client(address, timeout=REQUEST_TIMEOUT, name="bench-delayed") as client:
            hold(client, cluster.broker_pid, jobs, longest, metrics)
        _progress(f"{jobs:,} held in {metrics['queue_s']:.1f}s, {metrics['rss_bytes_per_job']:,.0f} B of broker "
                  f"RSS each ({metrics['scheduled_when_measured']:,} still scheduled)")
        cluster.kill_broker()
        started = time.perf_counter()
        cluster.start_broker(bind=address, timeout=budget(jobs, MIN_RESTORE_RATE))
        with runner.Client(address, timeout=REQUEST_TIMEOUT, name="bench-delayed-watcher") as watcher:
            seconds = max(1.0, budget(jobs, MIN_RESTORE_RATE) - (time.perf_counter() - started))
            wait_for(lambda: held(watcher) >= jobs, seconds, STATUS_POLL, f"{jobs:,} delayed jobs held again")
            metrics["restart_s"] = time.perf_counter() - started
            _progress(f"all held again {metrics['restart_s']:.1f}s after a kill -9 and restart")
            metrics["all_due_s"] = wait_counted(watcher, "pending", jobs, longest + budget(0))
            _progress(f"all due {metrics['all_due_s']:.1f}s later")
    except Exception as exc:
        metrics["error"] = f"{type(exc).__name__}: {exc}"
        _progress(f"ERROR {metrics['error']}")
    finally:
        cluster.stop()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{cluster.journal}{suffix}").unlink(missing_ok=True)
    return {"runner": metrics}


def hold(client: runner.Client, broker_pid: int, jobs: int, longest: float, metrics: dict) -> None:
    """Submit ``jobs`` no-ops delayed by 1 to ``longest`` s; the broker's RSS per job once all are held."""
    rng = random.Random(SEED)
    rss_before = rss_bytes(broker_pid)
    started = time.perf_counter()
    deadline = started + budget(jobs, MIN_QUEUE_RATE)
    for number in range(jobs):
        client.submit(tasks.noop, delay=rng.uniform(1.0, longest))
        if number % 10_000 == 0 and time.perf_counter() > deadline:
            raise TimeoutError(f"submitting took too long: {number:,} of {jobs:,}")
    wait_for(lambda: held(client) >= jobs, max(1.0, deadline - time.perf_counter()), STATUS_POLL,
             f"{jobs:,} delayed jobs held by the broker")
    metrics["queue_s"] = time.perf_counter() - started
    counts = client.status(timeout=REQUEST_TIMEOUT)["jobs"]
    rss_after = rss_bytes(broker_pid)
    metrics.update(rss_before_bytes=rss_before, rss_after_bytes=rss_after, rss_bytes_per_job=(rss_after - rss_before) / jobs,
                   scheduled_when_measured=counts["scheduled"])


def held(client: runner.Client) -> int:
    """Jobs the broker holds without a worker: scheduled, or pending once due."""
    counts = client.status(timeout=REQUEST_TIMEOUT)["jobs"]
    return counts["scheduled"] + counts["pending"]


def wait_counted(client: runner.Client, state: str, count: int, timeout: float) -> float:
    return wait_for(lambda: client.status(timeout=REQUEST_TIMEOUT)["jobs"][state] >= count, timeout, STATUS_POLL,
                    f"{count:,} jobs {state}")


def case_due_precision(bench: Bench) -> Sample:
    """``due_precision``: lateness of due jobs while the map case's load runs (p50, p99, max in ms)."""
    jobs, spread = bench.sizes.due_jobs, bench.sizes.due_spread
    seconds = budget(jobs) + spread
    return {"runner": on_runner(bench, seconds, lambda client: lateness_under_load(bench, client, jobs, spread, seconds))}


def lateness_under_load(bench: Bench, client: runner.Client, jobs: int, spread: float, seconds: float) -> dict:
    """Start the load, submit the delayed jobs, take their start times, stop the load."""
    stop = threading.Event()
    load: dict[str, Any] = {"jobs": 0}
    loader = threading.Thread(target=run_load, args=(bench, stop, load, seconds), name="bench-map-load", daemon=True)
    loader.start()
    try:
        wait_for(lambda: load["jobs"] > 0 or "error" in load, seconds, 0.01, "the map load to get going")
        first = time.time() + DUE_LEAD
        dues = [first + spread * index / max(1, jobs - 1) for index in range(jobs)]
        futures = [client.submit(tasks.started_at, pool="thread", at=datetime.fromtimestamp(due, timezone.utc))
                   for due in dues]
        late_ms = [(future.result(timeout=seconds) - due) * 1000 for future, due in zip(futures, dues)]
        under_load = load["jobs"] > 0 and loader.is_alive()
    finally:
        stop.set()
        loader.join(timeout=seconds)
    if "error" in load:
        raise RuntimeError(f"the map load failed: {load['error']}")
    return {"jobs": jobs, "spread_s": spread, "late_p50_ms": percentile(late_ms, 50),
            "late_p99_ms": percentile(late_ms, 99), "late_max_ms": max(late_ms), "early": sum(x < 0 for x in late_ms),
            "load_jobs": load["jobs"], "load_ran_throughout": under_load}


def run_load(bench: Bench, stop: threading.Event, load: dict, seconds: float) -> None:
    """The map case's load, round after round on a client of its own, until ``stop`` (bounded)."""
    jobs = bench.sizes.map_jobs
    deadline = time.perf_counter() + seconds
    try:
        with runner.Client(bench.cluster.address, timeout=REQUEST_TIMEOUT, name="bench-load",
                           curve_keys=bench.cluster.curve_keys or "") as client:
            for _ in range(LOAD_ROUNDS):
                for count, _ in enumerate(client.map(tasks.noop, range(jobs)), 1):
                    load["jobs"] += 1
                    if count % 1000 == 0 and (stop.is_set() or time.perf_counter() > deadline):
                        return
                if stop.is_set():
                    return
    except Exception as exc:
        load["error"] = f"{type(exc).__name__}: {exc}"


def _progress(text: str) -> None:
    print(f"  delayed_scale: {text}", file=sys.stderr, flush=True)
