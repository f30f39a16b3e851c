"""Cluster-wide Lock, Semaphore, Event and Queue with real brokers, workers and clients.

Everything runs as subprocesses on 127.0.0.1 (heartbeat 0.2 s, so a dead peer is
declared dead within 0.6 s). Nothing waits by sleeping: tests wait on futures,
on the broker's replies or on ``wait_until`` conditions, always with a deadline.
The task functions are in tests/sync_tasks.py.
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import sync_tasks
from cluster import Processes, die_with_parent, environment, read_line

import runner
from runner import protocol

HEARTBEAT = "0.2"
LIVENESS_WINDOW = 0.2 * 3  # heartbeat x liveness (the default 3)


@pytest.fixture(scope="module")
def cluster():
    """A broker and two workers (2 processes, 8 threads each) allowed to run sync_tasks."""
    started = Processes()
    try:
        _, address = started.broker("--heartbeat", HEARTBEAT)
        for name in ("sync-alpha", "sync-beta"):
            started.worker(address, "--processes", "2", "--threads", "8", "--name", name, "--heartbeat", HEARTBEAT,
                           "--grace", "1", imports=("sync_tasks",))
        with runner.Client(address) as client:
            client.wait_for_workers(2, timeout=30)
            yield address, client
    finally:
        started.stop_all()


@pytest.fixture
def cluster_client(cluster):
    return cluster[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def peak_concurrency(intervals: list[tuple[int, int]]) -> int:
    """The most intervals open at once (one that ends when another starts does not overlap it)."""
    edges = sorted([(enter, 1) for enter, _ in intervals] + [(leave, -1) for _, leave in intervals])
    open_now = peak = 0
    for _, step in edges:  # at equal times -1 sorts before +1
        open_now += step
        peak = max(peak, open_now)
    return peak


def record_acquire_sends(client: runner.Client) -> threading.Event:
    """An event set once ``client`` has handed an acquire request to its socket.

    Observation only: the real send still happens, on the client's I/O thread. A
    request this client sends afterwards reaches the broker after the acquire (one
    connection, in order), so its reply proves the broker has queued the acquire.
    """
    sent = threading.Event()
    send = client.connection.send

    def send_and_record(message_type: str, body: dict | None = None) -> None:
        send(message_type, body)
        if message_type == protocol.SYNC and body is not None and body.get("op") == "acquire":
            sent.set()

    client.connection.send = send_and_record
    return sent


# --- 1. mutual exclusion across processes on two workers -----------------------------------


def test_lock_excludes_every_other_process_of_two_workers(cluster_client, tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    rounds, tasks = 50, 6
    futures = [cluster_client.submit(sync_tasks.locked_increments, "m", str(counter), rounds, pool="process")
               for _ in range(tasks)]
    records = [record for future in futures for record in future.result(timeout=60)]
    assert len(records) == rounds * tasks
    assert len({pid for pid, *_ in records}) >= 2, "the sections should come from several pool processes"
    records.sort(key=lambda record: record[2])
    for before, after in itertools.pairwise(records):
        assert before[3] <= after[2], f"critical sections overlap: {before} and {after}"
        assert before[1] < after[1], f"tokens do not increase in the order the lock was entered: {before}, {after}"
    assert counter.read_text() == str(rounds * tasks), "a read-modify-write under the lock was lost"


# --- 2. semaphore bound -------------------------------------------------------------------


def test_semaphore_admits_at_most_its_value_and_reaches_it(cluster_client):
    futures = [cluster_client.submit(sync_tasks.semaphore_hold, "s", 3, 0.3, pool="thread") for _ in range(12)]
    held = [future.result(timeout=60) for future in futures]
    assert len({token for token, _, _ in held}) == 12, "each grant has its own fencing token"
    assert peak_concurrency([(enter, leave) for _, enter, leave in held]) == 3


# --- 3. first come, first served ------------------------------------------------------------


def test_waiters_get_the_lock_in_the_order_they_asked(cluster, client_factory):
    address, _ = cluster
    holder = client_factory(address).Lock("fifo")
    assert holder.acquire(timeout=5)
    first_token = holder.token
    order: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    threads = []

    def wait_turn(number: int, lock: runner.Lock) -> None:
        try:
            assert lock.acquire(timeout=30)
            order.append((number, lock.token))  # under the cluster lock: one waiter at a time
            lock.release()
        except Exception as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    for number in range(5):
        client = client_factory(address)
        sent = record_acquire_sends(client)
        thread = threading.Thread(target=wait_turn, args=(number, client.Lock("fifo")), daemon=True)
        thread.start()
        threads.append(thread)
        assert sent.wait(10), f"waiter {number} did not send its acquire"
        client.status()  # answered after the broker took the acquire: waiter `number` is in line
    assert order == [] and holder.locked()
    holder.release()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert [number for number, _ in order] == [0, 1, 2, 3, 4]
    assert [token for _, token in order] == [first_token + n for n in range(1, 6)]


# --- 4. timeouts ------------------------------------------------------------------------------


def timed(call):
    """(what ``call()`` returned or raised, seconds it took)."""
    start = time.monotonic()
    try:
        outcome = call()
    except Exception as exc:  # noqa: BLE001 - the caller checks the type
        outcome = exc
    return outcome, time.monotonic() - start


def test_timed_waits_give_up_after_their_timeout(cluster, client_factory):
    address, _ = cluster
    owner, other = client_factory(address), client_factory(address)
    assert owner.Lock("t-lock").acquire()
    contender = other.Lock("t-lock")
    full = owner.Queue("t-full", maxsize=1)
    full.put("only")

    for call, expected in [
        (lambda: contender.acquire(timeout=0.3), False),
        (lambda: other.Event("t-event").wait(timeout=0.3), False),
        (lambda: other.Queue("t-empty").get(timeout=0.3), queue.Empty),
        (lambda: other.Queue("t-full", maxsize=1).put("more", timeout=0.3), queue.Full),
    ]:
        outcome, took = timed(call)
        if isinstance(expected, type):
            assert type(outcome) is expected, outcome
        else:
            assert outcome is expected
        assert 0.25 <= took < 3, f"gave up after {took:.2f}s, not about 0.3s"

    for call, expected in [
        (lambda: contender.acquire(blocking=False), False),
        (lambda: contender.acquire(timeout=0), False),
        (lambda: other.Queue("t-empty").get_nowait(), queue.Empty),
        (lambda: other.Queue("t-empty").get(block=False), queue.Empty),
        (lambda: other.Queue("t-full", maxsize=1).put_nowait("more"), queue.Full),
        (lambda: other.Event("t-event").wait(timeout=0), False),
    ]:
        outcome, took = timed(call)
        if isinstance(expected, type):
            assert type(outcome) is expected, outcome
        else:
            assert outcome is expected
        assert took < 1, f"a non-blocking call took {took:.2f}s"
    assert contender.token is None
    assert full.get_nowait() == "only" and full.qsize() == 0, "the refused put left nothing behind"


# --- 5. a holder killed with SIGKILL -----------------------------------------------------------


def test_a_sigkilled_holder_loses_its_lock_within_the_liveness_window(processes, client_factory):
    _, address = processes.broker("--heartbeat", HEARTBEAT)
    worker = processes.worker(address, "--processes", "1", "--threads", "1", "--heartbeat", HEARTBEAT,
                              "--grace", "1", imports=("sync_tasks",))
    client = client_factory(address)
    client.wait_for_workers(1, timeout=30)
    job = client.submit(sync_tasks.hold_until_released, "h", "h-report", "h-release", pool="process", max_attempts=1)
    pid, dead_token = client.Queue("h-report").get(timeout=30)
    contender = client.Lock("h")
    assert contender.locked() and not contender.acquire(blocking=False), "the task should hold the lock"
    assert pid not in (worker.pid, os.getpid())

    os.kill(pid, signal.SIGKILL)
    start = time.monotonic()
    assert contender.acquire(timeout=5), "the dead holder's lock was never freed"
    took = time.monotonic() - start
    assert took < LIVENESS_WINDOW + 4, f"freed after {took:.2f}s"
    assert contender.token > dead_token
    with pytest.raises(runner.TaskError) as caught:
        job.result(timeout=30)
    assert caught.value.type_name == "WorkerPoolError"
    contender.release()
    assert worker.poll() is None, "the worker itself keeps serving"


# --- 6. producers and consumers ------------------------------------------------------------


def test_queue_hands_each_item_to_exactly_one_consumer(cluster_client):
    producers, per_producer = 4, 250
    consumers = [cluster_client.submit(sync_tasks.consume, "pc", pool="thread") for _ in range(4)]
    made = [cluster_client.submit(sync_tasks.produce, "pc", n, per_producer, pool="thread") for n in range(producers)]
    assert [future.result(timeout=60) for future in made] == [per_producer] * producers
    shared = cluster_client.Queue("pc")
    for _ in consumers:
        shared.put(None)
    got = [future.result(timeout=60) for future in consumers]
    everything = [tuple(item) for items in got for item in items]
    expected = [(producer, number) for producer in range(producers) for number in range(per_producer)]
    assert collections.Counter(everything) == collections.Counter(expected), "items were lost or duplicated"
    for items in got:  # one consumer's gets are in queue order, so each producer's items ascend
        for producer in range(producers):
            numbers = [number for source, number in items if source == producer]
            assert numbers == sorted(numbers)
    assert shared.qsize() == 0


# --- 7. the shapes of threading and queue -------------------------------------------------------


def test_errors_and_small_api_match_threading_and_queue(cluster, client_factory):
    address, _ = cluster
    first, second = client_factory(address), client_factory(address)

    bounded = first.Queue("api-q", maxsize=1)
    with pytest.raises(queue.Empty) as empty:
        bounded.get_nowait()
    assert type(empty.value) is queue.Empty
    bounded.put_nowait(1)
    assert bounded.full() and not bounded.empty()
    with pytest.raises(queue.Full) as full:
        second.Queue("api-q", maxsize=1).put_nowait(2)
    assert type(full.value) is queue.Full
    assert second.Queue("api-q", maxsize=1).get() == 1
    second.Queue("api-q", maxsize=1).put(3)
    with pytest.raises(ValueError, match="maxsize"):
        second.Queue("api-q", maxsize=2).put(4)  # every Queue of one name must agree while it is in use
    assert bounded.get_nowait() == 3
    with pytest.raises(TypeError, match="msgpack"):
        bounded.put({1, 2})

    lock = first.Lock("api-lock")
    with pytest.raises(RuntimeError):
        lock.release()  # never acquired
    assert not lock.locked()
    assert lock.acquire()
    assert lock.locked() and second.Lock("api-lock").locked()
    with pytest.raises(RuntimeError):
        first.Lock("api-lock").release()  # another Lock object of the same client is another holder
    with pytest.raises(RuntimeError):
        second.Lock("api-lock").release()
    lock.release()
    assert not second.Lock("api-lock").locked()
    with pytest.raises(RuntimeError):
        lock.release()  # released twice

    with first.Semaphore("api-sem", 2) as one:
        assert one.token is not None and not one.locked()
        with second.Semaphore("api-sem", 2) as two:
            assert two.token > one.token
            assert one.locked() and not second.Semaphore("api-sem", 2).acquire(blocking=False)
        assert not one.locked()
    assert not second.Semaphore("api-sem", 2).locked()
    in_use = first.Semaphore("api-sem", 2)
    assert in_use.acquire()
    with pytest.raises(ValueError, match="limit"):
        second.Semaphore("api-sem", 3).acquire()  # every Semaphore of one name must agree while it is in use
    in_use.release()

    event, seen = first.Event("api-event"), second.Event("api-event")
    assert not event.is_set() and not seen.is_set()
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(seen.wait(timeout=30)), daemon=True)
    waiter.start()
    event.set()
    waiter.join(timeout=30)
    assert woken == [True]
    assert seen.is_set() and seen.wait(timeout=0)
    seen.clear()
    assert not event.is_set() and event.wait(timeout=0) is False


# --- 8. queue items survive a broker restart ----------------------------------------------------


def test_acknowledged_queue_items_survive_a_broker_sigkill_and_restart(processes, client_factory):
    bind = f"tcp://127.0.0.1:{free_port()}"
    journal = processes.scratch / "sync-restart.db"
    broker, address = processes.broker("--heartbeat", HEARTBEAT, bind=bind, journal=journal)
    before = client_factory(address)
    stored = before.Queue("durable")
    for number in range(7):
        stored.put({"n": number, "blob": bytes([number]) * 3})  # each put returned: acknowledged
    assert [stored.get(timeout=5)["n"] for _ in range(2)] == [0, 1]
    before.close()

    broker.kill()
    broker.wait(timeout=10)
    _, again = processes.broker("--heartbeat", HEARTBEAT, bind=bind, journal=journal)
    assert again == address
    after = client_factory(address).Queue("durable")
    assert after.qsize() == 5
    assert [after.get(timeout=5) for _ in range(5)] == [{"n": n, "blob": bytes([n]) * 3} for n in range(2, 7)]
    with pytest.raises(queue.Empty):
        after.get_nowait()


# --- 9. a clean disconnect frees the lock at once -----------------------------------------------


def test_closing_a_client_frees_its_lock_at_once(processes, client_factory):
    # A slow heartbeat (liveness 3 x 5 s): only the goodbye can free the lock within a second.
    _, address = processes.broker("--heartbeat", "5")
    leaving, staying = client_factory(address), client_factory(address)
    held = leaving.Lock("bye")
    assert held.acquire(timeout=5)
    waiting = staying.Lock("bye")
    assert not waiting.acquire(blocking=False)
    leaving.close()
    start = time.monotonic()
    assert waiting.acquire(timeout=1), "the closed client's lock was not freed"
    assert time.monotonic() - start < 1
    assert waiting.token > held.token


HOLDER = """
import sys, time
import runner
client = runner.Client(sys.argv[1])
lock = client.Lock("frozen")
assert lock.acquire(timeout=10)
print(lock.token, flush=True)
time.sleep(120)  # frozen by the test (SIGSTOP) long before this ends
"""


def test_a_frozen_holder_loses_its_lock_when_its_heartbeats_stop(processes, client_factory):
    """SIGSTOP: the holder's connection stays open, so only the missing heartbeats can free it."""
    _, address = processes.broker("--heartbeat", "0.2", "--liveness", "3")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, address], stdout=subprocess.PIPE,
                              env=environment(), preexec_fn=die_with_parent)
    processes.started.append(holder)  # stopped (and reaped) with the others, pass or fail
    held_token = int(read_line(holder, 30))
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        other = client_factory(address).Lock("frozen")
        started = time.monotonic()
        assert other.acquire(timeout=10), "the frozen holder's lock was never freed"
        waited = time.monotonic() - started
        assert 0.3 < waited < 5, f"freed after {waited:.2f}s; liveness is 0.2 s x 3"
        assert other.token > held_token
        other.release()
    finally:
        os.kill(holder.pid, signal.SIGCONT)
