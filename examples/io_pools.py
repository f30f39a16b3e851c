"""Runner's own I/O models: the same sleeping requests in its thread pool and in its async pool.

    python examples/io_pools.py            # 200 requests of 0.5 s each
    python examples/io_pools.py --quick    # 100 requests, for the tests

examples/io_models.py runs this after its echo servers (the same models one level up:
a thread per waiting request, or one event loop). One embedded worker has a thread
pool and an async pool of N slots each. N requests that each wait 0.5 s go to each
pool at once: ``tasks.blocking_request`` (``time.sleep``) to the thread pool,
``tasks.awaiting_request`` (``await asyncio.sleep``) to the async pool. Each returns
the name of the thread that served it.

The claim, checked: the async pool serves all N on ONE thread (its event loop), in
about the time the thread pool takes with a thread per request: at most MAX_SLOWDOWN
times the thread pool's wall time, and both far under the N x 0.5 s of serving them one
at a time (at most MAX_SHARE_OF_SERIAL of it). Each pool's best of up to ``attempts``
rounds counts: other programs only ever add time. If the thread pool itself did not
serve the requests together, the machine was too busy to show anything: NOT JUDGED
(exit status 3).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

import tasks  # examples/tasks.py

import runner

REQUEST_SECONDS = 0.5
MAX_SLOWDOWN = 1.5  # async pool's wall time against the thread pool's
MAX_SHARE_OF_SERIAL = 0.25  # either pool's wall time against serving the requests one at a time
NOT_JUDGED = 3
POOLS = {"thread": tasks.blocking_request, "async": tasks.awaiting_request}


@dataclass
class PoolRun:
    """The best round of one pool: its wall time and how many threads served the requests."""

    pool: str
    seconds: float = float("inf")
    threads: int = 0


def serve(client: runner.Client, pool: str, requests: int, timeout: float) -> tuple[float, int]:
    """Send ``requests`` requests to ``pool`` at once; wall time until the last answer, and threads used."""
    started = time.perf_counter()
    futures = [client.submit(POOLS[pool], REQUEST_SECONDS, pool=pool) for _ in range(requests)]
    names = {future.result(timeout=timeout) for future in futures}
    return time.perf_counter() - started, len(names)


def measure(requests: int, attempts: int, timeout: float) -> dict[str, PoolRun]:
    """Each pool's best of ``attempts`` rounds (fewer once the claim holds), on one embedded worker."""
    best = {pool: PoolRun(pool) for pool in POOLS}
    with runner.LocalCluster(workers=1, processes=0, threads=requests, async_tasks=requests) as cluster, \
            cluster.client() as client:
        for pool in POOLS:  # warm up: tasks imported, the thread pool's threads started
            serve(client, pool, requests, timeout)
        for _ in range(attempts):
            for pool in POOLS:
                seconds, threads = serve(client, pool, requests, timeout)
                if seconds < best[pool].seconds:
                    best[pool] = PoolRun(pool, seconds, threads)
            if not failures(best, requests):
                break
    return best


def failures(best: dict[str, PoolRun], requests: int) -> list[str]:
    """The claims that do not hold, each with its numbers."""
    serial = requests * REQUEST_SECONDS
    threads, loop = best["thread"], best["async"]
    checks = [
        (loop.threads == 1, f"the async pool used {loop.threads} threads (need 1)"),
        (loop.seconds <= MAX_SLOWDOWN * threads.seconds,
         f"the async pool took {loop.seconds / threads.seconds:.2f}x the thread pool's time (need <= {MAX_SLOWDOWN}x)"),
        (loop.seconds <= MAX_SHARE_OF_SERIAL * serial,
         f"the async pool took {loop.seconds / serial:.2f} of the time in series (need <= {MAX_SHARE_OF_SERIAL})"),
    ]
    return [text for holds, text in checks if not holds]


def print_table(best: dict[str, PoolRun], requests: int) -> None:
    print(f"runner's pools: {requests} requests at once, each waiting {REQUEST_SECONDS:g} s "
          f"({requests * REQUEST_SECONDS:g} s one at a time)")
    print(f"{'pool':<7} {'how a request waits':<44} {'wall s':>7} {'threads used':>13}")
    how = {"thread": f"time.sleep, a thread each (--threads {requests})",
           "async": f"await asyncio.sleep (--async-tasks {requests})"}
    for run in best.values():
        print(f"{run.pool:<7} {how[run.pool]:<44} {run.seconds:>7.2f} {run.threads:>13}")


def judge(requests: int, attempts: int, timeout: float = 60.0) -> int:
    """Measure, print the table and the claim; the exit status (0, 1, or NOT_JUDGED)."""
    best = measure(requests, attempts, timeout)
    print_table(best, requests)
    failed = failures(best, requests)
    for text in failed:
        print(f"  {text}")
    if not failed:
        print("CLAIM HOLDS: runner's async pool serves every waiting request on one thread, as fast as "
              "a thread per request.")
        return 0
    threads = best["thread"]
    load = f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    if best["async"].threads == 1 and threads.seconds > MAX_SHARE_OF_SERIAL * requests * REQUEST_SECONDS:
        print(f"CLAIM NOT JUDGED: the thread pool did not serve the requests together either ({load})",
              file=sys.stderr)
        return NOT_JUDGED
    print(f"CLAIM FAILED: {'; '.join(failed)} ({load})", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests sent to each pool at once (default 200)")
    parser.add_argument("--attempts", type=int, default=3, help="rounds at most (default 3)")
    parser.add_argument("--quick", action="store_true", help="100 requests, for the tests")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = 100
    if not 1 <= args.requests <= 1000 or args.attempts < 1:
        parser.error("need 1 <= --requests <= 1000 and --attempts >= 1")
    return judge(args.requests, args.attempts)


if __name__ == "__main__":
    sys.exit(main())
