"""No accepted job is lost: workers and the broker die under load, real signals, real journal."""

from __future__ import annotations

import concurrent.futures
import os
import random
import signal
import socket
import sqlite3
import time

import pytest

import runner
import tasks
from cluster import wait_until

HEARTBEAT = "0.2"


def free_address() -> str:
    """A loopback address whose port is free now, so a restarted broker can bind it again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def start_worker(processes, address: str, *extra: str):
    return processes.worker(address, "--processes", "2", "--threads", "6", "--heartbeat", HEARTBEAT, *extra)


def chaos_job(index: int) -> tuple:
    """(function, args, options) of job ``index``: process and thread jobs, some 10-50 ms long."""
    rng = random.Random(index)
    if index % 3 == 0:
        return tasks.add, (index, 1), {"pool": "process"}
    pool = "process" if index % 3 == 1 else "thread"
    return tasks.sleep_then, (rng.uniform(0.01, 0.05), index + 1), {"pool": pool}


@pytest.mark.slow
@pytest.mark.timeout(300)  # the run's own deadline is 180 s
def test_chaos_workers_and_the_broker_killed_under_load_lose_nothing(processes, tmp_path):
    address, journal = free_address(), tmp_path / "journal.db"
    broker, _ = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
    workers = [start_worker(processes, address) for _ in range(3)]
    rng = random.Random(2026)
    counts = {"worker kills": 0, "broker kills": 0}
    with runner.Client(address) as client:
        client.wait_for_workers(3, timeout=60)
        futures = []
        for index in range(3000):
            function, args, options = chaos_job(index)
            futures.append(client.submit(function, *args, max_attempts=50, **options))
        deadline = time.monotonic() + 180
        while True:
            done, pending = concurrent.futures.wait(futures, timeout=0.3)  # paces the kills
            if not pending or time.monotonic() > deadline:
                break
            victim = rng.randrange(len(workers))
            workers[victim].kill()
            workers[victim].wait()
            workers[victim] = start_worker(processes, address)
            counts["worker kills"] += 1
            if counts["broker kills"] == 0 and len(done) >= 1000:
                broker.kill()
                broker.wait()
                broker, _ = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
                counts["broker kills"] += 1
        results = [future.result(timeout=60) for future in futures]
        status = client.status()
    expected = [index + 1 for index in range(3000)]
    wrong = [index for index, (got, want) in enumerate(zip(results, expected)) if got != want]
    print(f"\nchaos: 3000 jobs, {counts['worker kills']} worker kills, {counts['broker kills']} broker kill, "
          f"{len(wrong)} wrong results, journal: {status['jobs']}")
    assert counts["broker kills"] == 1 and counts["worker kills"] >= 5
    assert not wrong
    # Each job reached exactly one final outcome in the journal: done, once.
    assert status["jobs"]["done"] == 3000 and status["jobs"]["failed"] == 0 and status["jobs"]["dead"] == 0


def test_a_stopped_worker_loses_its_job_to_another_and_gives_no_second_result(processes, broker_address, tmp_path):
    gate, record, finished = tmp_path / "gate", tmp_path / "started-by", tmp_path / "finished-by"
    stopped = processes.worker(broker_address, "--processes", "0", "--threads", "1", "--heartbeat", HEARTBEAT,
                               imports=("tasks", "jobs"))
    with runner.Client(broker_address) as client:
        client.wait_for_workers(1, timeout=30)
        future = client.submit("jobs:gated", str(gate), str(record), None, str(finished), pool="thread")
        wait_until(lambda: record.exists() and record.read_text() == f"{stopped.pid}\n", timeout=10,
                   message="the job running on the first worker")
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            gate.touch()  # the stopped worker's run cannot pass it until SIGCONT
            healthy = processes.worker(broker_address, "--processes", "0", "--threads", "1", "--heartbeat", HEARTBEAT,
                                       imports=("tasks", "jobs"))
            assert future.result(timeout=30)["pid"] == healthy.pid
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        # The stopped worker wakes up, finishes its old run, and is ignored.
        wait_until(lambda: finished.exists() and len(finished.read_text().split()) == 2, timeout=30,
                   message="the stopped worker's run finished")
        assert sorted(map(int, finished.read_text().split())) == sorted([stopped.pid, healthy.pid])
        assert sorted(map(int, record.read_text().split())) == sorted([stopped.pid, healthy.pid])
        wait_until(lambda: len(client.status()["workers"]) == 2, timeout=30, message="the woken worker re-registered")
        assert client.fetch(future.job_id)["result"]["pid"] == healthy.pid
        assert client.status()["jobs"]["done"] == 1
        assert client.submit(tasks.add, 1, 1, pool="thread").result(timeout=30) == 2


@pytest.mark.slow
@pytest.mark.timeout(300)  # up to 60 s to accept the jobs, then 120 s for their results
def test_ten_thousand_queued_jobs_survive_kill_9_of_the_broker(processes, tmp_path):
    address, journal = free_address(), tmp_path / "journal.db"
    broker, _ = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
    with runner.Client(address) as client:
        futures = [client.submit(tasks.add, i, i, pool="thread") for i in range(10_000)]
        wait_until(lambda: client.status()["jobs"]["pending"] == 10_000, timeout=60, message="10,000 jobs accepted")
        broker.send_signal(signal.SIGKILL)
        broker.wait()
        with sqlite3.connect(journal) as db:
            assert db.execute("SELECT COUNT(*) FROM jobs WHERE state='pending'").fetchone()[0] == 10_000
        broker, _ = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
        start_worker(processes, address)
        start_worker(processes, address)
        results = [future.result(timeout=120) for future in futures]
    assert results == [2 * i for i in range(10_000)]


def test_a_client_keeps_its_futures_across_a_broker_restart(processes, tmp_path):
    address, journal = free_address(), tmp_path / "journal.db"
    broker, _ = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
    with runner.Client(address) as client:
        done_before = client.submit(tasks.add, 1, 2, pool="thread")
        start_worker(processes, address, "--queue", "first")
        first = client.submit(tasks.add, 20, 22, pool="thread", queue="first")
        assert first.result(timeout=30) == 42
        waiting = [client.submit(tasks.square, n, pool="thread") for n in range(50)]
        wait_until(lambda: client.status()["queues"].get("default") == 51, timeout=30, message="jobs accepted")
        broker.kill()
        broker.wait()
        assert not any(future.done() for future in waiting)
        processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
        start_worker(processes, address)
        assert [future.result(timeout=60) for future in waiting] == [n * n for n in range(50)]
        assert done_before.result(timeout=30) == 3
        # A finished job's outcome is still served by id after the restart.
        assert client.fetch(first.job_id) == {"id": first.job_id, "state": "done", "result": 42}


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_the_broker_exits_0_on_sigterm_and_sigint(processes, tmp_path, signal_number):
    broker, _ = processes.broker(journal=tmp_path / "journal.db")
    broker.send_signal(signal_number)
    assert broker.wait(timeout=15) == 0


def test_a_cancelled_job_never_runs_even_after_a_broker_kill_9(processes, tmp_path):
    address, journal = free_address(), tmp_path / "journal.db"
    marker = tmp_path / "ran"
    broker, _ = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
    with runner.Client(address) as client:
        cancelled = client.submit("jobs:note_pid_after", 0, str(marker), pool="thread", queue="later")
        kept = client.submit(tasks.add, 1, 2, pool="thread", queue="later")
        wait_until(lambda: client.status()["queues"].get("later") == 2, timeout=30, message="both jobs accepted")
        assert cancelled.cancel() and cancelled.cancelled()
        broker.kill()
        broker.wait()
        processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
        processes.worker(address, "--processes", "0", "--threads", "2", "--queue", "later", "--heartbeat", HEARTBEAT,
                         imports=("tasks", "jobs"))
        assert kept.result(timeout=60) == 3
        assert client.fetch(cancelled.job_id)["state"] == "cancelled"
        assert client.status()["jobs"]["cancelled"] == 1
    assert not marker.exists(), "a job cancelled before the crash ran after the restart"
