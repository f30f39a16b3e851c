"""Promises of docs/guarantees.md about peers that come back and jobs given up on, with real processes.

A worker declared dead that comes back, a client whose connection drops while the
broker stays up, and the thread pool's rules (forced cancel, timeouts, retries after
a timeout), plus a forced cancel's neighbours in a process pool. Jobs that must be
running at a given moment are gated (tests/gates.py): they record their start, then
wait for a file the test creates; each run leaves one line, so the tests count runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import CancelledError

import pytest

import runner
import tasks
from cluster import ROOT, die_with_parent, environment, read_line, wait_until
from runner.errors import TaskTimeoutError
from test_chaos import free_address
from test_reliability_rules import (journal_rows, lines, process_gone, wait_for_journal, wait_for_lines,
                                   worker_entry)

HEARTBEAT = ("--heartbeat", "0.2")  # a peer silent for 0.6 s is declared dead
IMPORTS = ("tasks", "jobs", "gates")
THREADS_ONLY = ("--processes", "0")
STARTING = 60  # seconds for waits that include starting a process (a loaded machine is slow at it)


def start_worker(processes, address: str, *arguments: str) -> subprocess.Popen:
    return processes.worker(address, *HEARTBEAT, *arguments, imports=IMPORTS)


def gated_job(client: runner.Client, folder, name: str, gated_runs: int = 1, **options) -> tuple:
    """Submit a job whose first ``gated_runs`` runs wait at its gate; return its future, record and gate."""
    record, gate = folder / name, folder / f"{name}.gate"
    return client.submit("gates:gated", str(record), str(gate), gated_runs, name, **options), record, gate


def broker_with_journal(processes, tmp_path) -> tuple[str, object]:
    journal = tmp_path / "journal.db"
    _, address = processes.broker(*HEARTBEAT, journal=journal)
    return address, journal


# --- a worker declared dead comes back ---------------------------------------------------------


def test_a_worker_declared_dead_that_comes_back_keeps_the_run_nobody_else_took(processes, tmp_path, client_factory):
    address, journal = broker_with_journal(processes, tmp_path)
    worker = start_worker(processes, address, *THREADS_ONLY, "--threads", "1")
    client = client_factory(address)
    client.wait_for_workers(1, timeout=30)
    future, record, gate = gated_job(client, tmp_path, "kept", pool="thread")
    assert wait_for_lines(record, 1) == [str(worker.pid)]

    os.kill(worker.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: not client.status()["workers"], timeout=15, message="the stopped worker declared dead")
        # Its job went back to the queue (no other worker can take it there).
        assert client.status()["queues"] == {"default": 1}
        assert client.fetch(future.job_id)["state"] == "pending"
    finally:
        os.kill(worker.pid, signal.SIGCONT)

    # It comes back and re-announces its run; the broker gives it the lease again.
    wait_until(lambda: (worker_entry(client, worker.pid) or {}).get("running") == 1, timeout=15,
               message="the woken worker registered again holding its run")
    assert client.status()["queues"].get("default", 0) == 0
    assert client.fetch(future.job_id)["state"] == "running"
    gate.touch()
    assert future.result(timeout=30) == {"run": 1, "pid": worker.pid, "value": "kept"}
    assert lines(record) == [str(worker.pid)], "the job ran once: the kept run was not started again"
    wait_for_journal(journal, future.job_id, (1, "done"))
    assert client.status()["jobs"]["done"] == 1


# --- the broker is killed (kill -9) while a job runs -------------------------------------------


def test_a_run_that_ends_while_the_broker_is_down_counts_once_after_the_restart(processes, tmp_path, client_factory):
    address, journal = free_address(), tmp_path / "journal.db"
    broker, _ = processes.broker(*HEARTBEAT, bind=address, journal=journal)
    worker = start_worker(processes, address, *THREADS_ONLY, "--threads", "2")
    client = client_factory(address)
    client.wait_for_workers(1, timeout=30)
    future, record, gate = gated_job(client, tmp_path, "through", pool="thread")
    assert wait_for_lines(record, 1) == [str(worker.pid)]
    broker.kill()
    broker.wait(timeout=10)
    gate.touch()  # the run ends with no broker to take its result: the worker must keep it
    wait_for_lines(record.with_name("through.done"), 1)
    processes.broker(*HEARTBEAT, bind=address, journal=journal)
    assert future.result(timeout=STARTING) == {"run": 1, "pid": worker.pid, "value": "through"}
    assert lines(record) == [str(worker.pid)], "the restarted broker counted the kept result: no second run"
    wait_for_journal(journal, future.job_id, (1, "done"))


def test_after_a_restart_a_running_job_stays_with_its_worker_though_another_says_hello_first(
        processes, tmp_path, client_factory):
    # A long liveness window (10 s): the restarted broker holds restored jobs that long for their
    # workers' claims, and the running job's worker comes back only after the other one. Peers
    # find the restarted broker before they would declare it dead: ZeroMQ reconnects their
    # sockets, and their heartbeats are answered "say hello first".
    slow = ("--heartbeat", "1")
    address, journal = free_address(), tmp_path / "journal.db"
    broker, _ = processes.broker(*slow, "--liveness", "10", bind=address, journal=journal)
    running = processes.worker(address, *slow, *THREADS_ONLY, "--threads", "1", imports=IMPORTS)
    client = client_factory(address)
    client.wait_for_workers(1, timeout=30)
    future, record, gate = gated_job(client, tmp_path, "stays", pool="thread")
    assert wait_for_lines(record, 1) == [str(running.pid)]
    other = processes.worker(address, *slow, *THREADS_ONLY, "--threads", "2", imports=IMPORTS)
    client.wait_for_workers(2, timeout=30)
    os.kill(running.pid, signal.SIGSTOP)  # it says nothing until the other worker is back
    try:
        broker.kill()
        broker.wait(timeout=10)
        processes.broker(*slow, "--liveness", "10", bind=address, journal=journal)
        wait_until(lambda: worker_entry(client, other.pid) is not None, timeout=STARTING,
                   message="the other worker registered with the restarted broker")
        assert client.fetch(future.job_id)["state"] == "pending", "held for its worker's claim, not leased"
    finally:
        os.kill(running.pid, signal.SIGCONT)
    wait_until(lambda: (worker_entry(client, running.pid) or {}).get("running") == 1, timeout=STARTING,
               message="the running job's worker registered again holding its run")
    gate.touch()
    assert future.result(timeout=STARTING) == {"run": 1, "pid": running.pid, "value": "stays"}
    assert lines(record) == [str(running.pid)], "the other worker, there first, did not run it again"
    wait_for_journal(journal, future.job_id, (1, "done"))


def start_busy_workers(processes, address: str, client, folder, heartbeat: tuple, count: int) -> list[tuple]:
    """``count`` workers of one thread each, each running a gated job: [(worker, future, record, gate)]."""
    busy = []
    for index in range(count):
        worker = processes.worker(address, *heartbeat, *THREADS_ONLY, "--threads", "1", imports=IMPORTS)
        client.wait_for_workers(index + 1, timeout=STARTING)
        future, record, gate = gated_job(client, folder, f"busy{index}", pool="thread")
        assert wait_for_lines(record, 1, timeout=STARTING) == [str(worker.pid)]
        busy.append((worker, future, record, gate))
    return busy


def queue_behind_them(client, journal, count: int) -> list:
    """``count`` quick jobs, queued (every worker is busy), then journaled as pending with the gated ones."""
    queued = [client.submit(tasks.add, index, 100, pool="thread") for index in range(count)]
    wait_until(lambda: journal_rows(journal, "SELECT COUNT(*) FROM jobs WHERE state='pending'") == [(len(queued) + 2,)],
               timeout=10, message="every job journaled as pending")
    return queued


def test_after_a_restart_restored_jobs_are_leased_once_every_worker_connected_before_is_back(
        processes, tmp_path, client_factory):
    # A 60 s liveness window: a broker that held restored jobs for all of it would miss the
    # deadline below by far. Both workers were connected (journaled): once both have said hello
    # again, every run that outlived the broker is claimed, and the rest is leased at once.
    slow = ("--heartbeat", "1")
    address, journal = free_address(), tmp_path / "journal.db"
    broker, _ = processes.broker(*slow, "--liveness", "60", bind=address, journal=journal)
    client = client_factory(address)
    busy = start_busy_workers(processes, address, client, tmp_path, slow, 2)
    queued = queue_behind_them(client, journal, 4)
    broker.kill()
    broker.wait(timeout=10)
    processes.broker(*slow, "--liveness", "60", bind=address, journal=journal)
    for _, _, _, gate in busy:
        gate.touch()
    deadline = time.monotonic() + 20  # well inside the 60 s window
    assert [future.result(timeout=max(0.1, deadline - time.monotonic())) for future in queued] == [100, 101, 102, 103]
    for worker, future, record, _ in busy:
        assert future.result(timeout=STARTING)["pid"] == worker.pid
        assert lines(record) == [str(worker.pid)], "each claimed run stayed on its worker, and ran once"
    assert client.status()["jobs"]["held_for_claims"] == 0


def test_after_a_restart_a_worker_connected_before_that_never_comes_back_holds_restored_jobs_the_whole_window(
        processes, tmp_path, client_factory):
    heartbeat, liveness = 0.5, 20  # a 10 s window, counted from when the restarted broker listens
    beats = ("--heartbeat", str(heartbeat))
    address, journal = free_address(), tmp_path / "journal.db"
    broker, _ = processes.broker(*beats, "--liveness", str(liveness), bind=address, journal=journal)
    client = client_factory(address)
    (back, back_future, _, back_gate), (gone, gone_future, gone_record, _) = start_busy_workers(
        processes, address, client, tmp_path, beats, 2)
    queued = queue_behind_them(client, journal, 2)
    broker.kill()
    broker.wait(timeout=10)
    gone.kill()  # killed with the broker: it never says hello again
    gone.wait(timeout=10)
    restarted = time.monotonic()
    processes.broker(*beats, "--liveness", str(liveness), bind=address, journal=journal)
    back_gate.touch()
    assert back_future.result(timeout=STARTING)["pid"] == back.pid  # back, claimed its run, and is free
    jobs = client.status()["jobs"]
    assert (jobs["held_for_claims"], jobs["pending"]) == (3, 3), "still held: gone was connected and may run them"
    assert client.fetch(queued[0].job_id)["state"] == "pending"
    wait_until(lambda: client.status()["jobs"]["held_for_claims"] == 0, timeout=STARTING,
               message="the window ran out")
    assert time.monotonic() - restarted >= heartbeat * liveness, "released before the liveness window passed"
    assert [future.result(timeout=STARTING) for future in queued] == [100, 101]
    assert gone_future.result(timeout=STARTING) == {"run": 2, "pid": back.pid, "value": "busy1"}
    assert lines(gone_record) == [str(gone.pid), str(back.pid)]


# --- a client's connection drops while the broker stays up -------------------------------------


def start_away_client(processes, address: str, folder) -> subprocess.Popen:
    """The client of tests/away_client.py, recorded so that the fixture stops it."""
    script = ROOT / "tests" / "away_client.py"
    away = subprocess.Popen([sys.executable, str(script), address, str(folder)], stdout=subprocess.PIPE,
                            env=environment(), cwd=ROOT, preexec_fn=die_with_parent)
    processes.started.append(away)
    return away


def test_a_client_that_comes_back_gets_its_jobs_without_doubles_and_missed_outcomes_from_the_journal(
        processes, tmp_path, client_factory):
    address, journal = broker_with_journal(processes, tmp_path)
    start_worker(processes, address, *THREADS_ONLY, "--threads", "2")
    observer = client_factory(address)
    observer.wait_for_workers(1, timeout=30)
    away = start_away_client(processes, address, tmp_path)
    ids = json.loads(read_line(away, STARTING))
    wait_for_lines(tmp_path / "finishes", 1)
    wait_for_lines(tmp_path / "running", 1)
    wait_until(lambda: observer.status()["queues"].get("later") == 1, timeout=10, message="one job waits in 'later'")

    os.kill(away.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: observer.status()["clients"] == 1, timeout=15, message="the stopped client declared gone")
        (tmp_path / "finishes.gate").touch()  # finishes while its client is away
        wait_until(lambda: observer.fetch(ids["finishes"])["state"] == "done", timeout=15,
                   message="the job finished while its client was away")
    finally:
        os.kill(away.pid, signal.SIGCONT)

    # Back, it resends every job it has no outcome for: the finished one is answered from the journal.
    assert json.loads(read_line(away, 30)) == {"name": "finishes",
                                               "result": {"run": 1, "pid": int(lines(tmp_path / "finishes")[0]),
                                                          "value": "finishes"}}
    status = observer.status()
    assert status["clients"] == 2
    assert status["queues"] == {"later": 1}, "the resent waiting job was not doubled"
    assert status["jobs"]["running"] == 1, "the resent running job was not doubled"

    (tmp_path / "running.gate").touch()
    assert json.loads(read_line(away, 30))["name"] == "running"
    later_worker = start_worker(processes, address, *THREADS_ONLY, "--threads", "2", "--queue", "later")
    waiting = json.loads(read_line(away, STARTING))
    assert waiting == {"name": "waiting", "result": {"run": 1, "pid": later_worker.pid, "value": "waiting"}}
    assert away.wait(timeout=30) == 0
    for name in ("finishes", "running", "waiting"):
        assert len(lines(tmp_path / name)) == 1, f"the job {name!r} ran more than once"
        wait_for_journal(journal, ids[name], (1, "done"))
    assert observer.status()["jobs"]["done"] == 3


# --- the thread pool: jobs that cannot be stopped ---------------------------------------------


def test_a_forced_cancel_abandons_a_running_thread_job_and_drops_its_late_result(
        processes, broker_address, client_factory, tmp_path):
    # One thread: a job submitted after the cancel runs only once the abandoned one has returned.
    worker = start_worker(processes, broker_address, *THREADS_ONLY, "--threads", "1")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    future, record, gate = gated_job(client, tmp_path, "abandoned", pool="thread")
    wait_for_lines(record, 1)
    assert client.cancel(future, force=True) is True
    assert future.cancelled()
    with pytest.raises(CancelledError):
        future.result(timeout=1)

    after = client.submit(tasks.add, 2, 3, pool="thread")
    gate.touch()
    assert after.result(timeout=30) == 5
    assert lines(tmp_path / "abandoned.done") == [str(worker.pid)], "the abandoned thread ran on to its end"
    assert client.fetch(future.job_id)["state"] == "cancelled", "the abandoned job's late result was kept"
    jobs = client.status()["jobs"]
    assert (jobs["cancelled"], jobs["done"]) == (1, 1)
    assert lines(record) == [str(worker.pid)], "a cancelled job is not run again"


def test_a_thread_job_past_its_timeout_fails_and_its_late_result_is_discarded(
        processes, broker_address, client_factory, tmp_path):
    worker = start_worker(processes, broker_address, *THREADS_ONLY, "--threads", "1")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    future, record, gate = gated_job(client, tmp_path, "late", pool="thread", timeout=0.5)
    with pytest.raises(TaskTimeoutError) as timed_out:
        future.result(timeout=30)
    assert timed_out.value.attempts == 1

    after = client.submit(tasks.add, 2, 3, pool="thread")
    gate.touch()
    assert after.result(timeout=30) == 5
    assert lines(tmp_path / "late.done") == [str(worker.pid)], "the timed-out thread ran on to its end"
    fetched = client.fetch(future.job_id)
    assert fetched["state"] == "failed" and isinstance(fetched["error"], TaskTimeoutError), fetched
    jobs = client.status()["jobs"]
    assert (jobs["failed"], jobs["done"]) == (1, 1)
    assert lines(record) == [str(worker.pid)]


def test_a_thread_job_past_its_timeout_is_retried_when_retries_allow(
        processes, broker_address, client_factory, tmp_path):
    worker = start_worker(processes, broker_address, *THREADS_ONLY, "--threads", "2")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    # Only the first run waits at the gate (past its timeout); the retry returns at once.
    future, record, gate = gated_job(client, tmp_path, "retried", pool="thread", timeout=0.5, retries=1,
                                     retry_backoff=0.05)
    try:
        assert future.result(timeout=30) == {"run": 2, "pid": worker.pid, "value": "retried"}
        assert lines(record) == [str(worker.pid)] * 2
        assert client.fetch(future.job_id) == {"id": future.job_id, "state": "done",
                                               "result": {"run": 2, "pid": worker.pid, "value": "retried"}}
    finally:
        gate.touch()  # frees the abandoned first run's thread


# --- a forced cancel in a process pool --------------------------------------------------------


def test_a_forced_cancel_gives_the_jobs_that_shared_its_process_pool_back_uncharged(
        processes, tmp_path, client_factory):
    address, journal = broker_with_journal(processes, tmp_path)
    start_worker(processes, address, "--processes", "2", "--threads", "0")
    client = client_factory(address)
    client.wait_for_workers(1, timeout=30)
    # Both pool processes started first, so the gated runs below wait only for their turn.
    warm = [client.submit("jobs:pid_after", 0.3) for _ in range(2)]
    assert len({future.result(timeout=STARTING) for future in warm}) == 2
    # One at a time, so each runs in a pool process of its own (not batched into one). The neighbour's
    # first run waits at its gate, a second returns at once; it has a single attempt, so a charged loss fails it.
    neighbour, neighbour_record, _ = gated_job(client, tmp_path, "neighbour", max_attempts=1)
    neighbour_pid = int(wait_for_lines(neighbour_record, 1)[0])
    victim, victim_record, _ = gated_job(client, tmp_path, "victim")
    victim_pid = int(wait_for_lines(victim_record, 1)[0])
    assert victim_pid != neighbour_pid

    assert client.cancel(victim, force=True) is True
    assert victim.cancelled()
    for pid in (victim_pid, neighbour_pid):
        wait_until(lambda pid=pid: process_gone(pid), timeout=15, message=f"pool process {pid} ended")
    result = neighbour.result(timeout=30)
    assert result["run"] == 2 and result["pid"] not in (neighbour_pid, victim_pid)
    assert client.fetch(neighbour.job_id)["state"] == "done"
    wait_for_journal(journal, neighbour.job_id, (1, "done"))  # its lost run was not charged
    assert client.fetch(victim.job_id)["state"] == "cancelled"
    assert len(lines(victim_record)) == 1, "a cancelled job is not run again"


def test_a_run_that_finished_while_its_worker_was_declared_dead_is_kept(processes, tmp_path, client_factory):
    address, journal = broker_with_journal(processes, tmp_path)
    worker = start_worker(processes, address, *THREADS_ONLY, "--threads", "1")
    client = client_factory(address)
    client.wait_for_workers(1, timeout=30)
    future, record, gate = gated_job(client, tmp_path, "finished-away", pool="thread")
    assert wait_for_lines(record, 1) == [str(worker.pid)]

    os.kill(worker.pid, signal.SIGSTOP)
    try:
        wait_until(lambda: not client.status()["workers"], timeout=15, message="the stopped worker declared dead")
        # Open while it sleeps: on waking, its run ends and reports, mostly before the worker registers again.
        gate.touch()
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert future.result(timeout=30) == {"run": 1, "pid": worker.pid, "value": "finished-away"}
    assert lines(record) == [str(worker.pid)], "the job ran again although its only run had finished"
    wait_for_journal(journal, future.job_id, (1, "done"))
    wait_until(lambda: (worker_entry(client, worker.pid) or {}).get("running") == 0, timeout=15,
               message="the woken worker registered again, holding nothing")
