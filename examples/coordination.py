"""Task functions for the coordination examples: locks, semaphores, events and queues.

Each runs on a worker (thread or process pool). ``runner.Lock(name)`` and the other
proxies find the worker's broker by themselves (``runner.get_client()``), so a task
needs no address. Functions stay module-level so a worker can import them.
"""

from __future__ import annotations

import json
import os
import threading
import time

import runner


class StaleTokenError(RuntimeError):
    """A writer came with a fencing token older than the last one the store accepted."""


# --- a counter in a file: the shared resource of examples/locks.py --------------------------


def read_counter(path: str) -> tuple[int, int]:
    """The counter's value and the newest fencing token written with it (0: none yet)."""
    with open(path) as handle:
        record = json.load(handle)
    return record["count"], record["token"]


def write_counter(path: str, count: int, token: int) -> None:
    """Replace the file in one step (rename), so a reader sees the old record or the new one."""
    scratch = f"{path}.{os.getpid()}.{threading.get_ident()}"
    with open(scratch, "w") as handle:
        json.dump({"count": count, "token": token}, handle)
    os.replace(scratch, path)


def fenced_increment(path: str, token: int | None, pause: float) -> int:
    """Read, wait ``pause`` (the race window), write count + 1; return the new count.

    With a token, the store acts as a fenced resource: it refuses a writer whose
    token is lower than the last one it accepted (its lease has since passed to
    someone else), and appends each accepted token to ``path.log``.
    """
    count, last_token = read_counter(path)
    if token is not None and token < last_token:
        raise StaleTokenError(f"token {token} is older than {last_token}: this writer's lease expired")
    time.sleep(pause)
    write_counter(path, count + 1, last_token if token is None else token)
    if token is not None:
        with open(path + ".log", "a") as log:
            log.write(f"{token}\n")
    return count + 1


def count_unlocked(path: str, times: int, pause: float) -> int:
    """Increment the file counter ``times`` times with no lock: concurrent writers lose updates."""
    for _ in range(times):
        fenced_increment(path, None, pause)
    return times


def count_locked(path: str, times: int, pause: float, lock_name: str) -> list[int]:
    """Increment ``times`` times, each under the cluster-wide lock; return the tokens used."""
    lock = runner.Lock(lock_name)
    tokens = []
    for _ in range(times):
        with lock:
            fenced_increment(path, lock.token, pause)
            tokens.append(lock.token)
    return tokens


# --- a resource that allows a few at once: examples/semaphore.py ------------------------------


def hold_resource(name: str | None, limit: int, seconds: float) -> dict:
    """Use the resource for ``seconds`` (under ``Semaphore(name, limit)`` unless name is None).

    Returns when this task entered and left it (wall clock, seconds since the epoch):
    entered is taken after the slot was granted, left before it is given back.
    """
    if name is None:
        return _timed_hold(seconds)
    with runner.Semaphore(name, limit):
        return _timed_hold(seconds)


def _timed_hold(seconds: float) -> dict:
    entered = time.time()
    time.sleep(seconds)
    return {"entered": entered, "left": time.time(), "pid": os.getpid()}


# --- a start line: examples/events.py ----------------------------------------------------------


def wait_at_start_line(event_name: str, ready_queue: str, timeout: float) -> dict:
    """Say "ready" on a queue, wait for the event, then note when this task started."""
    runner.Queue(ready_queue).put(os.getpid())
    released = runner.Event(event_name).wait(timeout=timeout)
    return {"released": released, "started": time.time(), "pid": os.getpid()}


# --- a bounded work queue: examples/producer_consumer.py ---------------------------------------


def produce(queue_name: str, maxsize: int, start: int, stop: int) -> int:
    """Put the integers start..stop-1 on the queue (waiting while it is full); return how many."""
    work = runner.Queue(queue_name, maxsize)
    for item in range(start, stop):
        work.put(item, timeout=60)
    return stop - start


def consume(queue_name: str, maxsize: int) -> list[int]:
    """Take items until a sentinel (None) arrives; return the items taken, in order."""
    work = runner.Queue(queue_name, maxsize)
    taken = []
    while (item := work.get(timeout=60)) is not None:
        taken.append(item)
    return taken
