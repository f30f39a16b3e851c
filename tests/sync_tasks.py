"""Task functions for tests/test_sync_cluster.py: they use the cluster-wide Lock,
Semaphore, Event and Queue from inside tasks (``runner.Lock(name)`` and friends
connect to the worker's broker through ``runner.get_client()``).

Workers run them with ``--import sync_tasks``; times are ``time.monotonic_ns()``,
one clock for every process of the host, so intervals compare across workers.
"""

from __future__ import annotations

import os
import time

import runner


def locked_increments(lock_name: str, counter_path: str, rounds: int) -> list[list[int]]:
    """``rounds`` critical sections under ``runner.Lock(lock_name)``, each a read-modify-write
    of the counter file; returns one record [pid, token, enter_ns, leave_ns] per section."""
    lock = runner.Lock(lock_name)
    records = []
    for _ in range(rounds):
        with lock:
            enter = time.monotonic_ns()
            with open(counter_path) as counter:
                value = int(counter.read() or 0)
            time.sleep(0)  # let another process run between the read and the write, were it inside
            with open(counter_path, "w") as counter:
                counter.write(str(value + 1))
            token = lock.token
            leave = time.monotonic_ns()
        records.append([os.getpid(), token, enter, leave])
    return records


def semaphore_hold(name: str, value: int, hold: float) -> list[int]:
    """Hold one slot of ``runner.Semaphore(name, value)`` for ``hold`` seconds of work;
    returns [token, enter_ns, leave_ns], measured strictly inside the holding."""
    with runner.Semaphore(name, value) as slot:
        enter = time.monotonic_ns()
        time.sleep(hold)  # the work done while holding the slot
        leave = time.monotonic_ns()
        token = slot.token
    return [token, enter, leave]


def produce(queue_name: str, producer: int, count: int) -> int:
    """Put [producer, 0] .. [producer, count - 1] on the queue."""
    shared = runner.Queue(queue_name)
    for number in range(count):
        shared.put([producer, number])
    return count


def consume(queue_name: str) -> list:
    """Get items until a None sentinel; return them in the order got."""
    shared = runner.Queue(queue_name)
    got = []
    while True:
        item = shared.get(timeout=60)
        if item is None:
            return got
        got.append(item)


def hold_until_released(lock_name: str, report_queue: str, release_event: str) -> int:
    """Take ``runner.Lock(lock_name)``, report [pid, token] on ``report_queue``, then
    block until ``release_event`` is set (at most 60 s) while still holding the lock."""
    lock = runner.Lock(lock_name)
    lock.acquire()
    runner.Queue(report_queue).put([os.getpid(), lock.token])
    runner.Event(release_event).wait(timeout=60)
    lock.release()
    return os.getpid()
