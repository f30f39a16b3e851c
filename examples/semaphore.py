"""A cluster-wide semaphore: at most 3 tasks use a resource at once, across workers.

    python examples/semaphore.py

Twenty tasks run in the thread pools of two workers (8 threads each, so up to
16 run at the same time). Each uses a shared resource for a moment and notes
when it entered and when it left. From those intervals the script computes the
peak concurrency: how many tasks were inside at the same instant.

Without coordination the peak is well above 3. With ``runner.Semaphore("resource", 3)``
around the use, the peak is exactly 3: the limit is reached and never exceeded,
although the tasks run in two different processes. Exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

from coordination import hold_resource

import runner

TASKS = 20
LIMIT = 3
HOLD = 0.2  # seconds each task uses the resource
TIMEOUT = 60  # seconds any one run may take


def peak_concurrency(intervals: list[dict]) -> int:
    """The most intervals open at one instant (one that ends as another starts: not both)."""
    events = [(row["entered"], 1) for row in intervals] + [(row["left"], -1) for row in intervals]
    inside = peak = 0
    for _, change in sorted(events):  # at equal times -1 sorts first: leave, then enter
        inside += change
        peak = max(peak, inside)
    return peak


def run(client: runner.Client, name: str | None) -> tuple[int, float, int]:
    """TASKS uses of the resource on the thread pools: (peak, seconds, processes used)."""
    started = time.perf_counter()
    futures = [client.submit(hold_resource, name, LIMIT, HOLD, pool="thread") for _ in range(TASKS)]
    intervals = [future.result(timeout=TIMEOUT) for future in futures]
    processes = len({row["pid"] for row in intervals})
    return peak_concurrency(intervals), time.perf_counter() - started, processes


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    failures = []
    with runner.LocalCluster(workers=2, processes=1, threads=8) as cluster, cluster.client() as client:
        print(f"{TASKS} tasks each use a resource for {HOLD}s, on 2 workers x 8 threads")

        peak, seconds, processes = run(client, None)
        print(f"without a semaphore:        peak {peak:>2} at once ({seconds:.2f}s, {processes} worker processes)")
        if peak <= LIMIT:
            failures.append(f"without the semaphore only {peak} ran at once: the limit would not be tested")

        peak, seconds, processes = run(client, "resource")
        print(f"with Semaphore('resource', {LIMIT}): peak {peak:>2} at once ({seconds:.2f}s, "
              f"{processes} worker processes)")
        if peak != LIMIT:
            failures.append(f"with the semaphore the peak was {peak}, not exactly {LIMIT}")
        if processes < 2:
            failures.append("every task ran in one process: the semaphore was not shared across workers")

    if failures:
        for failure in failures:
            print(f"CLAIM FAILED: {failure}", file=sys.stderr)
        return 1
    print(f"CLAIM HOLDS: across both workers, at most {LIMIT} tasks were inside at once, and {LIMIT} were.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
