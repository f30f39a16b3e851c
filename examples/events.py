"""A cluster-wide event as a start line: tasks on two workers wait, then start together.

    python examples/events.py

Eight tasks run in the thread pools of two workers. Each one reports "ready"
on a ``runner.Queue`` and then blocks in ``runner.Event("start").wait()``.
The client takes one "ready" per task from the queue (a blocking get: no sleeps,
no polling), so it knows every task has arrived, then sets the event.

Every task is released by the same ``set()``: none starts before it, and all
start within a short time of each other (the spread, max - min start time, is
printed and must be under 0.5 s). Exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time

from coordination import wait_at_start_line

import runner

TASKS = 8
MAX_SPREAD = 0.5  # seconds between the first and the last start
TIMEOUT = 30  # seconds a task waits at the line; the client waits as long for them to arrive


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    failures = []
    with runner.LocalCluster(workers=2, processes=1, threads=8) as cluster, cluster.client() as client:
        ready = client.Queue("ready")
        start = client.Event("start")
        futures = [client.submit(wait_at_start_line, "start", "ready", TIMEOUT, pool="thread")
                   for _ in range(TASKS)]
        for _ in range(TASKS):
            ready.get(timeout=TIMEOUT)
        print(f"{TASKS} tasks report ready; none has started: the event is set now")
        set_at = time.time()
        start.set()
        runs = [future.result(timeout=TIMEOUT) for future in futures]

    starts = [run["started"] for run in runs]
    spread = max(starts) - min(starts)
    processes = len({run["pid"] for run in runs})
    print(f"all {TASKS} started {min(starts) - set_at:.3f}s to {max(starts) - set_at:.3f}s after set(), "
          f"in {processes} worker processes")
    print(f"spread (last start - first start): {spread * 1000:.1f} ms (limit {MAX_SPREAD * 1000:.0f} ms)")
    if not all(run["released"] for run in runs):
        failures.append("some task timed out at the start line")
    if min(starts) < set_at:
        failures.append("a task started before the event was set")
    if spread >= MAX_SPREAD:
        failures.append(f"the starts are spread over {spread:.3f}s, not under {MAX_SPREAD}s")
    if processes < 2:
        failures.append("every task ran in one process: the event was not shown across workers")
    if failures:
        for failure in failures:
            print(f"CLAIM FAILED: {failure}", file=sys.stderr)
        return 1
    print("CLAIM HOLDS: one set() released every waiting task on both workers at once.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
