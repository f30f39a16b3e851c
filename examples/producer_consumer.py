"""A bounded cluster-wide queue: producers and consumers on several workers, nothing lost.

    python examples/producer_consumer.py            # 10,000 items
    python examples/producer_consumer.py --quick    # 2,000 items, for the tests

Producers (two tasks, and this client itself) put distinct integers on
``runner.Queue("work", maxsize=100)``; consumer tasks on both workers take
them until each gets a sentinel (None). The client samples ``qsize()`` the
whole time. The consumers start only once the queue is full, so the producers
first run into the bound and wait there.

Checked, and exits 1 otherwise:

- every item put is taken exactly once (the multiset of items consumed equals
  the one produced: none lost, none twice);
- the bound throttles the producers: the sampled size reaches maxsize and never
  exceeds it.
"""

from __future__ import annotations

import argparse
import collections
import sys
import threading
import time

from coordination import consume, produce

import runner

MAXSIZE = 100
PRODUCER_TASKS = 2
CONSUMERS = 4
TIMEOUT = 60  # seconds any one blocking step may take


class SizeSampler(threading.Thread):
    """Samples the queue's size until stopped: the peak, and when it first reached full."""

    def __init__(self, work: runner.Queue) -> None:
        super().__init__(name="qsize-sampler", daemon=True)
        self.work = work
        self.peak = 0
        self.samples = 0
        self.full = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            size = self.work.qsize()
            self.samples += 1
            self.peak = max(self.peak, size)
            if size >= self.work.maxsize:
                self.full.set()
            self.done.wait(0.002)


def shares(total: int, parts: int) -> list[range]:
    """Split 0..total-1 into ``parts`` consecutive ranges."""
    bounds = [total * i // parts for i in range(parts + 1)]
    return [range(bounds[i], bounds[i + 1]) for i in range(parts)]


def exchange(client: runner.Client, items: int) -> tuple[list[int], SizeSampler, float]:
    """Run the producers and consumers; return the items consumed, the sampler and the time."""
    work = client.Queue("work", maxsize=MAXSIZE)
    sampler = SizeSampler(work)
    sampler.start()
    started = time.perf_counter()
    own, *theirs = shares(items, PRODUCER_TASKS + 1)
    producers = [client.submit(produce, "work", MAXSIZE, part.start, part.stop, pool="thread") for part in theirs]
    try:
        if not sampler.full.wait(TIMEOUT):
            raise TimeoutError("the producers never filled the queue")
        consumers = [client.submit(consume, "work", MAXSIZE, pool="thread") for _ in range(CONSUMERS)]
        for item in own:
            work.put(item, timeout=TIMEOUT)
        for producer in producers:
            producer.result(timeout=TIMEOUT)
        for _ in consumers:
            work.put(None, timeout=TIMEOUT)  # after every item: FIFO, so each consumer ends last
        consumed = [item for consumer in consumers for item in consumer.result(timeout=TIMEOUT)]
    finally:
        sampler.done.set()
        sampler.join()
    return consumed, sampler, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="items to produce (default 10,000)")
    parser.add_argument("--quick", action="store_true", help="2,000 items, for the tests")
    args = parser.parse_args(argv)
    items = 2_000 if args.quick else args.items
    with runner.LocalCluster(workers=2, processes=1, threads=8) as cluster, cluster.client() as client:
        print(f"{items:,} items through Queue('work', maxsize={MAXSIZE}): {PRODUCER_TASKS} producer tasks "
              f"+ this client, {CONSUMERS} consumer tasks, on 2 workers")
        consumed, sampler, seconds = exchange(client, items)

    produced = collections.Counter(range(items))
    taken = collections.Counter(consumed)
    lost, twice = produced - taken, taken - produced
    print(f"produced {items:,}, consumed {len(consumed):,} in {seconds:.2f}s "
          f"({2 * items / seconds:,.0f} queue ops/s): {len(lost)} lost, {sum(twice.values())} extra")
    print(f"peak qsize {sampler.peak} of maxsize {MAXSIZE} ({sampler.samples:,} samples by the client)")
    failures = []
    if lost or twice:
        failures.append(f"items lost {sorted(lost)[:10]} or taken more than once {sorted(twice)[:10]}")
    if sampler.peak > MAXSIZE:
        failures.append(f"the queue held {sampler.peak} items, more than maxsize {MAXSIZE}")
    if sampler.peak < MAXSIZE:
        failures.append(f"the queue never filled (peak {sampler.peak}): the bound was not shown to throttle")
    if failures:
        for failure in failures:
            print(f"CLAIM FAILED: {failure}", file=sys.stderr)
        return 1
    print("CLAIM HOLDS: every item was consumed exactly once, and the bound held the producers "
          f"at {MAXSIZE} items.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
