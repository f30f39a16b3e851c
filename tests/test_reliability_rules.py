"""The reliability rules, each proved with real brokers and workers on 127.0.0.1.

Retries with exponential backoff, attempts lost to dying workers and dead letters,
timeouts in both pools, cancellation, pool children that kill themselves, graceful
shutdown of workers and the broker, and the result TTL. Tasks report what they did
through files under ``tmp_path`` (one line per run: a start time or a process id),
so the tests see every attempt, where it ran, and which processes must be gone.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

import runner
import tasks
from cluster import wait_until
from runner.errors import TaskTimeoutError, WorkerLostError, WorkerPoolError

HEARTBEAT = ("--heartbeat", "0.2")
IMPORTS = ("tasks", "jobs")


# --- helpers -------------------------------------------------------------------------------------


def start_worker(processes, address: str, *arguments: str) -> subprocess.Popen:
    return processes.worker(address, *HEARTBEAT, *arguments, imports=IMPORTS)


def lines(path: Path) -> list[str]:
    """The complete lines a task has written so far (none if the file does not exist yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]


def wait_for_lines(path: Path, count: int, timeout: float = 20) -> list[str]:
    wait_until(lambda: len(lines(path)) >= count, timeout=timeout, message=f"{count} runs recorded in {path.name}")
    return lines(path)


def process_gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (gone, or a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def journal_rows(journal: Path, query: str = "SELECT COUNT(*) FROM jobs", *parameters) -> list[tuple]:
    """Read the broker's journal read-only, as an operator would, while the broker runs."""
    with sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5) as database:
        return database.execute(query, parameters).fetchall()


def wait_for_journal(journal: Path, job_id: str, expected: tuple) -> None:
    """Wait until the journal records ``expected`` (attempts, state) for a job.

    A result may reach the client before the broker's commit of that turn, so the
    journal is read until it shows it (within a deadline), not once.
    """
    query = "SELECT attempts, state FROM jobs WHERE id=?"
    wait_until(lambda: journal_rows(journal, query, job_id) == [expected], timeout=10,
               message=f"journal shows {expected} for {job_id}")


def worker_entry(client: runner.Client, pid: int) -> dict | None:
    return next((worker for worker in client.status()["workers"] if worker["pid"] == pid), None)


def assert_keeps_serving(client: runner.Client, worker: subprocess.Popen, pool: str) -> None:
    futures = [client.submit(tasks.add, i, 100, pool=pool) for i in range(4)]
    assert [future.result(timeout=30) for future in futures] == [100, 101, 102, 103]
    assert worker.poll() is None, "the worker itself must keep running"
    assert worker_entry(client, worker.pid) is not None, "the worker must stay registered"


def test_the_reliability_errors_are_exported_from_the_runner_package():
    assert runner.TaskTimeoutError is TaskTimeoutError
    assert runner.WorkerLostError is WorkerLostError
    assert runner.WorkerPoolError is WorkerPoolError


# --- 1. retries with exponential backoff -----------------------------------------------------


def test_a_task_that_fails_n_minus_1_times_succeeds_with_n_minus_1_retries_spaced_by_backoff(
        processes, broker_address, client_factory, tmp_path):
    start_worker(processes, broker_address, "--processes", "0", "--threads", "2")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    record, backoff, failures = tmp_path / "attempts", 0.25, 3
    future = client.submit("jobs:flaky", str(record), failures, pool="thread", retries=failures, retry_backoff=backoff)
    assert future.result(timeout=30)["attempt"] == failures + 1
    starts = [float(line) for line in lines(record)]
    assert len(starts) == failures + 1, "each failed attempt runs again exactly once, and the last succeeds"
    for k, gap in enumerate((b - a for a, b in zip(starts, starts[1:])), start=1):
        base = backoff * 2 ** (k - 1)  # the k-th retry waits base x [0.5, 1.5] (jitter)
        assert gap >= 0.5 * base, f"retry {k} started {gap:.3f}s after the attempt before it; backoff wants >= {0.5 * base:.3f}s"
        assert gap <= 1.5 * base + 2.0, f"retry {k} waited {gap:.3f}s, far beyond its backoff of {base:.3f}s x 1.5"
    assert client.fetch(future.job_id)["state"] == "done"


def test_too_few_retries_fail_with_the_last_exception_and_the_attempt_count(
        processes, broker_address, client_factory, tmp_path):
    start_worker(processes, broker_address, "--processes", "0", "--threads", "2")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    kinds = ["RuntimeError", "KeyError", "ValueError"]
    twice, once = tmp_path / "twice", tmp_path / "once"
    with pytest.raises(KeyError) as retried:  # attempt 1 raised RuntimeError, attempt 2 KeyError: the last counts
        client.submit("jobs:flaky", str(twice), 3, kinds, pool="thread", retries=1, retry_backoff=0.05).result(timeout=30)
    assert retried.value.attempts == 2
    assert "attempt 2 failed on purpose" in str(retried.value)
    assert isinstance(retried.value.__cause__, runner.RemoteTraceback)
    assert len(lines(twice)) == 2, "no attempt beyond retries + 1"
    with pytest.raises(RuntimeError) as unretried:
        client.submit("jobs:flaky", str(once), 3, kinds, pool="thread").result(timeout=30)
    assert unretried.value.attempts == 1
    assert len(lines(once)) == 1


# --- 2. attempts lost with a dying worker, dead letters, requeue ---------------------------------


def test_a_job_whose_worker_dies_max_attempts_times_is_dead_and_can_be_requeued(
        processes, broker_address, client_factory, tmp_path):
    workers = {}
    for _ in range(2):
        worker = start_worker(processes, broker_address, "--processes", "0", "--threads", "1")
        workers[worker.pid] = worker
    client = client_factory(broker_address)
    client.wait_for_workers(2, timeout=30)
    record = tmp_path / "runs"
    # Runs 1 and 2 sleep long (their workers get killed); a third run returns at once.
    future = client.submit("jobs:lingering", str(record), 2, 60.0, "third time", pool="thread", max_attempts=2)
    for run in (1, 2):
        pid = int(wait_for_lines(record, run)[run - 1])
        assert pid in workers, f"run {run} happened in an unexpected process {pid}"
        workers.pop(pid).kill()  # SIGKILL: no goodbye; the broker finds out by missed heartbeats
    with pytest.raises(WorkerLostError) as lost:
        future.result(timeout=30)
    assert lost.value.attempts == 2
    assert "max_attempts=2" in str(lost.value)
    assert len(lines(record)) == 2, "no third attempt after max_attempts"

    dead = {job["id"]: job for job in client.dead_letters()}
    assert future.job_id in dead
    assert dead[future.job_id]["attempts"] == 2
    assert isinstance(dead[future.job_id]["error"], WorkerLostError)
    assert client.status()["jobs"]["dead"] == 1
    assert client.fetch(future.job_id)["state"] == "dead"

    replacement = start_worker(processes, broker_address, "--processes", "0", "--threads", "1")
    again = client.requeue(future.job_id)
    outcome = again.result(timeout=30)
    assert outcome == {"run": 3, "pid": replacement.pid, "value": "third time"}
    assert client.status()["jobs"]["dead"] == 0
    assert future.job_id not in {job["id"] for job in client.dead_letters()}


# --- 3. and 4. timeouts ----------------------------------------------------------------------------


def test_a_process_pool_timeout_kills_the_child_and_gives_its_neighbour_back_uncharged(
        processes, tmp_path, client_factory):
    journal = tmp_path / "journal.db"
    _, address = processes.broker(*HEARTBEAT, journal=journal)
    worker = start_worker(processes, address, "--processes", "2", "--threads", "0")
    client = client_factory(address)
    client.wait_for_workers(1, timeout=30)
    # Start both pool processes first, so the timed job's 0.5 s are spent running, not starting.
    warm = [client.submit("jobs:pid_after", 0.3) for _ in range(2)]
    assert len({future.result(timeout=30) for future in warm}) == 2

    neighbour_record, sleeper_record = tmp_path / "neighbour", tmp_path / "sleeper"
    neighbour = client.submit("jobs:lingering", str(neighbour_record), 99, 3.0, "neighbour")
    neighbour_pid = int(wait_for_lines(neighbour_record, 1)[0])
    submitted = time.monotonic()
    sleeper = client.submit("jobs:lingering", str(sleeper_record), 99, 30.0, "never", timeout=0.5)
    with pytest.raises(TaskTimeoutError) as timed_out:
        sleeper.result(timeout=20)
    elapsed = time.monotonic() - submitted
    assert elapsed < 5, f"the timeout of 0.5 s took {elapsed:.1f}s to fail the job"
    assert timed_out.value.attempts == 1
    assert "timeout" in str(timed_out.value)

    sleeper_runs = lines(sleeper_record)
    assert len(sleeper_runs) == 1, "the timed-out job must have started (and only once)"
    sleeper_pid = int(sleeper_runs[0])
    assert sleeper_pid != neighbour_pid
    wait_until(lambda: process_gone(sleeper_pid), timeout=10, message=f"timed-out pool process {sleeper_pid} ended")
    wait_until(lambda: process_gone(neighbour_pid), timeout=10, message=f"the neighbour's pool process {neighbour_pid} ended")

    # The neighbour lost its process with the pool: it ran again from the start and completed,
    # with no attempt charged (it has no retries, so a charged failure would have been final).
    result = neighbour.result(timeout=30)
    assert result["value"] == "neighbour" and result["run"] == 2
    assert result["pid"] not in (neighbour_pid, sleeper_pid)
    wait_for_journal(journal, neighbour.job_id, (1, "done"))
    assert_keeps_serving(client, worker, "process")


def test_a_thread_pool_timeout_fails_the_future_and_the_worker_keeps_serving(
        processes, broker_address, client_factory, tmp_path):
    worker = start_worker(processes, broker_address, "--processes", "0", "--threads", "2")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    record = tmp_path / "runs"
    submitted = time.monotonic()
    future = client.submit("jobs:lingering", str(record), 99, 30.0, "never", pool="thread", timeout=0.5)
    with pytest.raises(TaskTimeoutError) as timed_out:
        future.result(timeout=20)
    elapsed = time.monotonic() - submitted
    assert elapsed < 5, f"the timeout of 0.5 s took {elapsed:.1f}s to fail the job"
    assert "timeout" in str(timed_out.value)
    assert lines(record) == [str(worker.pid)], "the job ran once, in the worker's own thread pool"
    assert_keeps_serving(client, worker, "thread")


# --- 5. cancel ---------------------------------------------------------------------------------------


def test_cancel_of_a_job_waiting_for_a_queue_nobody_serves_means_it_never_runs(
        processes, broker_address, client_factory, tmp_path):
    client = client_factory(broker_address)
    cancelled_marker, later_marker = tmp_path / "cancelled-ran", tmp_path / "later-ran"
    future = client.submit("jobs:touch", str(cancelled_marker), pool="thread", queue="later")
    wait_until(lambda: client.status()["queues"].get("later") == 1, timeout=10, message="job waiting in 'later'")
    assert future.cancel() is True
    assert future.cancelled()
    with pytest.raises(CancelledError):
        future.result(timeout=1)
    assert client.fetch(future.job_id)["state"] == "cancelled"
    assert not client.status()["queues"].get("later")

    # A single-slot worker for the queue; a job queued after the cancelled one runs, so the
    # cancelled one (first in FIFO order) would have run before it, had it still been there.
    start_worker(processes, broker_address, "--processes", "0", "--threads", "1", "--queue", "later")
    assert client.submit("jobs:touch", str(later_marker), pool="thread", queue="later").result(timeout=30)
    assert later_marker.exists()
    assert not cancelled_marker.exists(), "a cancelled job ran"


def test_cancel_of_a_job_behind_a_busy_single_slot_worker_means_it_never_runs(
        processes, broker_address, client_factory, tmp_path):
    start_worker(processes, broker_address, "--processes", "0", "--threads", "1")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    gate, blocker_record = tmp_path / "gate", tmp_path / "blocker"
    cancelled_marker, after_marker = tmp_path / "cancelled-ran", tmp_path / "after-ran"
    blocker = client.submit("jobs:gated", str(gate), str(blocker_record), "blocker", pool="thread")
    wait_for_lines(blocker_record, 1)
    queued = client.submit("jobs:touch", str(cancelled_marker), pool="thread")
    after = client.submit("jobs:touch", str(after_marker), pool="thread")
    wait_until(lambda: client.status()["queues"].get("default") == 2, timeout=10, message="two jobs waiting")
    assert queued.cancel() is True
    assert queued.cancelled()
    gate.touch()
    assert blocker.result(timeout=30)["value"] == "blocker"
    assert after.result(timeout=30) == str(after_marker)
    assert not cancelled_marker.exists(), "a cancelled job ran"
    assert client.fetch(queued.job_id)["state"] == "cancelled"


def test_cancel_of_a_running_job_is_refused_and_the_job_completes(
        processes, broker_address, client_factory, tmp_path):
    start_worker(processes, broker_address, "--processes", "0", "--threads", "1")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    gate, record = tmp_path / "gate", tmp_path / "runs"
    future = client.submit("jobs:gated", str(gate), str(record), "kept", pool="thread")
    wait_for_lines(record, 1)
    assert future.cancel() is False
    assert not future.cancelled()
    gate.touch()
    assert future.result(timeout=30)["value"] == "kept"
    assert len(lines(record)) == 1


def test_forced_cancel_of_a_running_process_job_kills_its_pool_process(
        processes, broker_address, client_factory, tmp_path):
    worker = start_worker(processes, broker_address, "--processes", "1", "--threads", "0")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    record = tmp_path / "runs"
    future = client.submit("jobs:lingering", str(record), 99, 30.0, "never")
    pid = int(wait_for_lines(record, 1)[0])
    assert client.cancel(future, force=True) is True
    assert future.cancelled()
    with pytest.raises(CancelledError):
        future.result(timeout=1)
    wait_until(lambda: process_gone(pid), timeout=10, message=f"the cancelled job's pool process {pid} ended")
    assert client.fetch(future.job_id)["state"] == "cancelled"
    assert_keeps_serving(client, worker, "process")
    assert len(lines(record)) == 1, "a cancelled job is not run again"


# --- 6. a task that kills its own process ------------------------------------------------------------


SELF_KILLING_TASKS = [
    pytest.param("jobs:crash", [13], "exited with code 13", id="os._exit(13)"),
    pytest.param("jobs:segfault", [], "killed by SIGSEGV", id="SIGSEGV"),
]


@pytest.mark.parametrize(("task", "arguments", "how"), SELF_KILLING_TASKS)
def test_a_task_that_kills_its_pool_process_fails_with_worker_pool_error_after_its_attempts(
        processes, broker_address, client_factory, task, arguments, how):
    worker = start_worker(processes, broker_address, "--processes", "1", "--threads", "0")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    with pytest.raises(WorkerPoolError) as died:
        client.submit(task, *arguments, retries=1, retry_backoff=0.05).result(timeout=30)
    assert died.value.attempts == 2
    assert how in died.value.message
    assert_keeps_serving(client, worker, "process")


@pytest.mark.parametrize(("task", "arguments", "how"), SELF_KILLING_TASKS)
def test_the_worker_pool_error_of_a_child_that_dies_at_once_names_its_peak_rss(
        processes, broker_address, client_factory, task, arguments, how):
    start_worker(processes, broker_address, "--processes", "1", "--threads", "0")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    messages = []
    for _ in range(3):  # every such failure must say it, not just one that a memory sample happened to catch
        with pytest.raises(WorkerPoolError) as died:
            client.submit(task, *arguments).result(timeout=30)
        messages.append(died.value.message)
    assert all(how in message and "peak RSS" in message for message in messages), messages


def test_the_worker_pool_error_of_a_child_that_lived_a_while_names_its_exit_code_and_peak_rss(
        processes, broker_address, client_factory):
    worker = start_worker(processes, broker_address, "--processes", "1", "--threads", "0")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    with pytest.raises(WorkerPoolError) as died:
        client.submit("jobs:crash_after", 2.0, 7).result(timeout=30)
    assert died.value.attempts == 1
    assert "exited with code 7" in died.value.message
    assert "peak RSS" in died.value.message
    assert_keeps_serving(client, worker, "process")


# --- 7. graceful shutdown ----------------------------------------------------------------------------


def test_sigterm_lets_running_jobs_finish_within_grace_and_leases_the_worker_nothing_more(
        processes, broker_address, client_factory, tmp_path):
    # Both serve 'default'; only the leaving worker serves 'first', so the first jobs run on it.
    leaving = start_worker(processes, broker_address, "--processes", "0", "--threads", "4", "--grace", "60",
                           "--queue", "first", "--queue", "default")
    staying = start_worker(processes, broker_address, "--processes", "0", "--threads", "4")
    client = client_factory(broker_address)
    client.wait_for_workers(2, timeout=30)
    gate, record = tmp_path / "gate", tmp_path / "running"
    running = [client.submit("jobs:gated", str(gate), str(record), f"running-{n}", pool="thread", queue="first")
               for n in range(2)]
    assert wait_for_lines(record, 2) == [str(leaving.pid)] * 2

    leaving.send_signal(signal.SIGTERM)
    # The broker stops leasing to it (no credit) while its jobs still run.
    wait_until(lambda: (worker_entry(client, leaving.pid) or {}).get("draining"), timeout=10,
               message="the broker shows the first worker draining")
    # Had the broker kept leasing to it, these would be dealt over both workers (it has 2 free slots).
    later = [client.submit(tasks.record_order, f"later-{n}", 0.05, pool="thread") for n in range(6)]
    assert {future.result(timeout=30)["pid"] for future in later} == {staying.pid}, \
        "a job was given to the worker after its SIGTERM"
    assert leaving.poll() is None, "the worker left before its running jobs finished"

    gate.touch()
    finished = [future.result(timeout=30) for future in running]
    assert [result["value"] for result in finished] == ["running-0", "running-1"]
    assert {result["pid"] for result in finished} == {leaving.pid}, "the running jobs finished where they ran"
    assert leaving.wait(timeout=15) == 0


def test_sigterm_with_a_short_grace_gives_unfinished_jobs_back_without_charging_an_attempt(
        processes, client_factory, tmp_path):
    journal = tmp_path / "journal.db"
    _, broker_address = processes.broker(*HEARTBEAT, journal=journal)
    leaving = start_worker(processes, broker_address, "--processes", "1", "--threads", "1", "--grace", "0.5")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    process_record, thread_record = tmp_path / "process-job", tmp_path / "thread-job"
    # Their first run sleeps 30 s (it is interrupted); a second run returns at once.
    process_job = client.submit("jobs:lingering", str(process_record), 1, 30.0, "process", max_attempts=1)
    thread_job = client.submit("jobs:lingering", str(thread_record), 1, 30.0, "thread", pool="thread", max_attempts=1)
    first_process_pid = int(wait_for_lines(process_record, 1)[0])
    assert wait_for_lines(thread_record, 1) == [str(leaving.pid)]
    staying = start_worker(processes, broker_address, "--processes", "1", "--threads", "1")
    client.wait_for_workers(2, timeout=30)

    signalled = time.monotonic()
    leaving.send_signal(signal.SIGTERM)
    assert leaving.wait(timeout=10) == 0
    took = time.monotonic() - signalled
    assert took < 5, f"the worker took {took:.1f}s to leave with a grace of 0.5 s"
    wait_until(lambda: process_gone(first_process_pid), timeout=10, message="the leaving worker's pool process ended")

    assert thread_job.result(timeout=30) == {"run": 2, "pid": staying.pid, "value": "thread"}
    moved = process_job.result(timeout=30)
    assert moved["run"] == 2 and moved["value"] == "process" and moved["pid"] != first_process_pid
    for job in (thread_job, process_job):
        wait_for_journal(journal, job.job_id, (1, "done"))


def test_sigterm_stops_the_broker_cleanly_and_its_journal_keeps_pending_jobs(processes, tmp_path, client_factory):
    journal = tmp_path / "journal.db"
    broker, address = processes.broker(*HEARTBEAT, journal=journal)
    client = client_factory(address)
    futures = [client.submit(tasks.add, n, 1000, pool="thread") for n in range(3)]
    wait_until(lambda: client.status()["jobs"]["pending"] == 3, timeout=10, message="three jobs pending")

    broker.send_signal(signal.SIGTERM)
    assert broker.wait(timeout=10) == 0
    assert journal_rows(journal, "SELECT id FROM jobs WHERE state='pending' ORDER BY id") == \
        sorted((future.job_id,) for future in futures)

    # The same journal and the same port: the client reconnects on its own, and the jobs run.
    _, again = processes.broker(*HEARTBEAT, journal=journal, bind=address)
    assert again == address
    start_worker(processes, address, "--processes", "0", "--threads", "2")
    assert [future.result(timeout=30) for future in futures] == [1000, 1001, 1002]


# --- 8. result TTL ---------------------------------------------------------------------------------


def test_outcomes_expire_from_the_journal_after_the_result_ttl(processes, tmp_path, client_factory):
    journal = tmp_path / "journal.db"
    _, address = processes.broker(*HEARTBEAT, "--result-ttl", "0.5", journal=journal)
    start_worker(processes, address, "--processes", "0", "--threads", "2")
    client = client_factory(address)
    client.wait_for_workers(1, timeout=30)

    first = client.submit(tasks.add, 20, 22, pool="thread")
    assert first.result(timeout=30) == 42
    assert client.fetch(first.job_id) == {"id": first.job_id, "state": "done", "result": 42}
    futures = [client.submit(tasks.add, n, 1, pool="thread") for n in range(5)]
    assert [future.result(timeout=30) for future in futures] == [1, 2, 3, 4, 5]
    assert journal_rows(journal)[0][0] >= 1, "finished jobs are in the journal until their TTL passes"

    wait_until(lambda: journal_rows(journal)[0][0] == 0, timeout=10, message="the journal's jobs table emptied")
    for future in [first, *futures]:
        assert client.fetch(future.job_id) == {"id": future.job_id, "state": "unknown"}
