"""Case 6: a million jobs queued with no worker, a kill -9 and restart of the broker, then a drain.

Each run has its own broker and journal. One client queues every job (the
broker's RSS is read before and once status counts them all pending, which it
answers after the journal commit); the broker is SIGKILLed and started again on
the same journal and address, and a second client times until status counts
them all again (the first client stays connected, re-registers and resends its
unfinished jobs, as a real one would); then two workers join and the first
client's futures are waited for.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

import runner
from benchmarks import tasks
from benchmarks.cluster import Cluster, cpu_seconds, rss_bytes
from benchmarks.measure import wait_for
from benchmarks.settings import (MIN_DRAIN_RATE, MIN_QUEUE_RATE, MIN_RESTORE_RATE, REQUEST_TIMEOUT, START_TIMEOUT,
                                 STATUS_POLL, WORKERS, Sizes, budget)

SUBMIT_CHECK = 10_000  # submits between deadline checks while queueing


def case_scale(scratch: Path, sizes: Sizes, run: int, clusters: list[Cluster], observed: bool = False) -> dict[str, Any]:
    """One run of case 6; metrics of the phases that completed, and the error that stopped it, if any.
    ``observed``: its broker is watched (benchmarks/observers.py)."""
    jobs = sizes.scale_jobs
    metrics: dict[str, Any] = {"jobs": jobs, "timeline": {}}  # timeline: wall-clock times, to read beside the logs
    cluster = Cluster(scratch, f"scale{run}", observed=observed)
    clusters.append(cluster)
    clients: list[runner.Client] = []
    try:
        futures = queue_jobs(cluster, jobs, metrics, clients)
        _progress(run, f"queued {jobs:,} in {metrics['queue_s']:.1f}s, "
                       f"{metrics['rss_bytes_per_job']:,.0f} B of broker RSS each")
        watcher = restart_broker(cluster, jobs, metrics, clients)
        _progress(run, f"all {jobs:,} back in the queue {metrics['restart_s']:.1f}s after the restart")
        drain(cluster, watcher, futures, metrics)
        _progress(run, f"drained at {metrics['drain_jobs_per_s']:,.0f} jobs/s")
    except Exception as exc:
        metrics["error"] = f"{type(exc).__name__}: {exc}"
        _progress(run, f"ERROR {metrics['error']}")
    finally:
        for client in clients:
            client.close()
        cluster.stop()
        for suffix in ("", "-wal", "-shm"):  # a million rows take room; the scratch folder goes at the end
            Path(f"{cluster.journal}{suffix}").unlink(missing_ok=True)
    return {"runner": metrics}


def queue_jobs(cluster: Cluster, jobs: int, metrics: dict, clients: list) -> list[Future]:
    """Submit ``jobs`` no-ops with no worker connected; time until all are pending; broker RSS per job."""
    address = cluster.start_broker()
    client = runner.Client(address, timeout=REQUEST_TIMEOUT, name="bench-scale")
    clients.append(client)
    rss_before = rss_bytes(cluster.broker_pid)
    _mark(metrics, "submitting")
    started = time.perf_counter()
    deadline = started + budget(jobs, MIN_QUEUE_RATE)
    futures = []
    for number in range(jobs):
        futures.append(client.submit(tasks.noop))
        if number % SUBMIT_CHECK == 0 and time.perf_counter() > deadline:
            raise TimeoutError(f"submitting took too long: {number:,} of {jobs:,} in {budget(jobs, MIN_QUEUE_RATE):g}s")
    metrics["submit_s"] = time.perf_counter() - started
    wait_pending(client, jobs, max(1.0, deadline - time.perf_counter()))
    metrics["queue_s"] = time.perf_counter() - started
    _mark(metrics, "all pending")
    rss_after = rss_bytes(cluster.broker_pid)
    metrics.update(rss_before_bytes=rss_before, rss_after_bytes=rss_after,
                   rss_bytes_per_job=(rss_after - rss_before) / jobs,
                   journal_bytes_per_job=_journal_bytes(cluster.journal) / jobs)
    return futures


def restart_broker(cluster: Cluster, jobs: int, metrics: dict, clients: list) -> runner.Client:
    """SIGKILL the broker, start it on the same journal and address; time until all jobs are pending again."""
    address = cluster.address
    cluster.kill_broker()
    _mark(metrics, "broker killed")
    seconds = budget(jobs, MIN_RESTORE_RATE)
    started = time.perf_counter()
    cluster.start_broker(bind=address, timeout=seconds)
    metrics["restart_address_s"] = time.perf_counter() - started  # bound, and (today) the journal restored
    _mark(metrics, "restarted broker printed its address")
    watcher = runner.Client(address, timeout=REQUEST_TIMEOUT, name="bench-scale-watcher")
    clients.append(watcher)
    wait_pending(watcher, jobs, max(1.0, seconds - metrics["restart_address_s"]))
    metrics["restart_s"] = time.perf_counter() - started
    _mark(metrics, "all pending again")
    metrics["rss_after_restart_bytes"] = rss_bytes(cluster.broker_pid)
    return watcher


def drain(cluster: Cluster, watcher: runner.Client, futures: list[Future], metrics: dict) -> None:
    """Start the workers; from the first one's arrival, time until every future has its outcome."""
    started = time.perf_counter()
    _mark(metrics, "starting workers")
    cluster.start_workers(WORKERS)
    watcher.wait_for_workers(1, timeout=START_TIMEOUT)
    ready = time.perf_counter()
    _mark(metrics, "first worker joined")
    broker_cpu = cpu_seconds(cluster.broker_pid)
    metrics["workers_join_s"] = ready - started
    deadline = ready + budget(len(futures), MIN_DRAIN_RATE)
    failed, first_error = 0, None
    for future in futures:
        error = future.exception(timeout=max(0.0, deadline - time.perf_counter()))
        if error is not None:
            failed, first_error = failed + 1, first_error or error
    elapsed = time.perf_counter() - ready
    _mark(metrics, "every future resolved")
    metrics["final_jobs"] = watcher.status(timeout=REQUEST_TIMEOUT)["jobs"]  # done should be every job, once
    metrics.update(drain_s=elapsed, drain_jobs_per_s=len(futures) / elapsed, failed_jobs=failed,
                   drain_broker_cpu_us_per_job=(cpu_seconds(cluster.broker_pid) - broker_cpu) / len(futures) * 1e6)
    if failed:
        raise RuntimeError(f"{failed:,} jobs failed; the first: {type(first_error).__name__}: {first_error}")


def wait_pending(client: runner.Client, jobs: int, timeout: float) -> float:
    """Poll status until it counts ``jobs`` pending; a status that times out counts as not yet."""
    def all_pending() -> bool:
        try:
            return client.status(timeout=REQUEST_TIMEOUT)["jobs"]["pending"] >= jobs
        except TimeoutError:
            return False

    return wait_for(all_pending, timeout, STATUS_POLL, f"{jobs:,} jobs pending in the broker")


def _mark(metrics: dict, event: str) -> None:
    metrics["timeline"][event] = datetime.now().strftime("%H:%M:%S.%f")[:-3]


def _journal_bytes(journal: Path) -> int:
    return sum(Path(f"{journal}{suffix}").stat().st_size for suffix in ("", "-wal")
               if Path(f"{journal}{suffix}").exists())


def _progress(run: int, text: str) -> None:
    print(f"  scale run {run}: {text}", file=sys.stderr, flush=True)
