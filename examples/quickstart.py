"""runner in 30 seconds: an embedded cluster, CPU-bound jobs in processes, I/O-bound in threads.

    pip install -e . && python examples/quickstart.py

``runner.Client()`` with no address starts a broker and one worker on this
machine (stopped again when the client closes). Point it at a real broker with
``runner.Client("tcp://HOST:5555")`` and the rest of this file stays the same.
"""

from __future__ import annotations

import sys
import time

import runner
import tasks  # examples/tasks.py: plain module-level functions


def main() -> int:
    started = time.perf_counter()
    with runner.Client() as client:
        print(f"embedded cluster up in {time.perf_counter() - started:.2f}s at {client.address}")
        worker = client.status()["workers"][0]
        print(f"one worker, pid {worker['pid']}, slots {worker['slots']}")

        # One job: submit returns a concurrent.futures.Future.
        assert client.submit(tasks.add, 2, 3).result(timeout=30) == 5
        print("add(2, 3) = 5")

        # CPU-bound jobs hold the GIL: they go to the process pool (the default).
        iterations = 300_000
        began = time.perf_counter()
        futures = [client.submit(tasks.cpu_burn, iterations) for _ in range(8)]
        totals = [future.result(timeout=120) for future in futures]
        expected = tasks.cpu_burn(iterations)
        assert totals == [expected] * 8, totals
        print(f"8 x cpu_burn({iterations:,}) in processes: {time.perf_counter() - began:.2f}s")

        # I/O-bound jobs wait, not compute: threads are enough, and cheap.
        began = time.perf_counter()
        echoed = list(client.map(tasks.sleep_then, [0.1] * 16, range(16), pool="thread"))
        assert echoed == list(range(16)), echoed
        print(f"16 x sleep(0.1s) in threads, in input order: {time.perf_counter() - began:.2f}s")

        # Many small jobs: map batches them on the wire.
        began = time.perf_counter()
        squares = list(client.map(tasks.square, range(5000)))
        assert squares == [n * n for n in range(5000)]
        elapsed = time.perf_counter() - began
        print(f"5,000 x square via map: {elapsed:.2f}s ({5000 / elapsed:,.0f} jobs/s)")

        # A remote exception comes back as itself, with the worker's traceback as its cause.
        try:
            client.submit(tasks.fail, "as expected").result(timeout=30)
        except ValueError as error:
            print(f"remote ValueError re-raised here: {error}")
        else:
            raise AssertionError("tasks.fail did not raise")
    print(f"done in {time.perf_counter() - started:.2f}s; the embedded cluster is stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
