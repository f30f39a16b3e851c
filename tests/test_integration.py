"""A real broker and two real workers on 127.0.0.1, driven through the public client API."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import sqlite3
import threading

import pytest

import runner
from runner.outgoing import SEND_NOW_ROWS
import tasks
from cluster import wait_until


def test_two_thousand_jobs_all_return_correct_results_on_both_workers(two_workers):
    long_job = "jobs:slow_ancestry"  # a 0.05 s process-pool job that says which worker's pool ran it
    futures = [two_workers.submit(long_job, 0.05) if i % 100 == 0 else two_workers.submit(tasks.add, i, i)
               for i in range(2000)]
    results = [future.result(timeout=60) for future in futures]
    assert [result for i, result in enumerate(results) if i % 100] == [2 * i for i in range(2000) if i % 100]
    # Long jobs occupy slots, so the second worker must get some of them.
    worker_pids = {worker["pid"] for worker in two_workers.status()["workers"]}
    assert len(worker_pids) == 2
    ran_under = [worker_pids.intersection(results[i]) for i in range(0, 2000, 100)]
    assert all(len(owners) == 1 for owners in ran_under), "each long job ran under exactly one of the workers"
    assert set.union(*ran_under) == worker_pids, "every long job ran on the same worker"
    assert not worker_pids.intersection(results[i][0] for i in range(0, 2000, 100)), \
        "process-pool jobs must run in pool children, not in the worker"


def test_both_workers_run_jobs(two_workers):
    futures = [two_workers.submit(tasks.slow_whoami, 0.2, pool="thread") for _ in range(8)]
    ran_on = {future.result(timeout=30)["pid"] for future in futures}
    worker_pids = {worker["pid"] for worker in two_workers.status()["workers"]}
    assert ran_on == worker_pids, "8 slow thread jobs on 2 x 4 threads must use both workers"


def test_each_job_runs_in_the_pool_it_asks_for(two_workers):
    worker_pids = {worker["pid"] for worker in two_workers.status()["workers"]}
    in_thread = two_workers.submit(tasks.whoami, pool="thread").result(timeout=30)
    in_process = two_workers.submit(tasks.whoami, pool="process").result(timeout=30)
    assert in_thread["pid"] in worker_pids
    assert in_thread["thread"].startswith("runner-thread")
    assert in_process["pid"] not in worker_pids and in_process["pid"] != os.getpid()
    assert in_process["thread"] == "MainThread"


def test_builtin_exception_reraises_as_same_type_with_remote_traceback(two_workers):
    future = two_workers.submit(tasks.fail, "bad value 42")
    with pytest.raises(ValueError, match="bad value 42") as caught:
        future.result(timeout=30)
    cause = caught.value.__cause__
    assert isinstance(cause, runner.RemoteTraceback)
    assert "tasks.py" in cause.text and "raise ValueError(message)" in cause.text


def test_unknown_exception_type_raises_task_error(two_workers):
    with pytest.raises(runner.TaskError) as caught:
        two_workers.submit(tasks.fail_custom, "custom trouble", pool="thread").result(timeout=30)
    error = caught.value
    assert (error.type_name, error.module, error.message) == ("CustomError", "tasks", "custom trouble")
    assert "raise CustomError(message)" in error.remote_traceback


def test_map_keeps_input_order(two_workers):
    values = list(range(3000))
    assert list(two_workers.map(tasks.square, values)) == [value * value for value in values]
    assert list(two_workers.map(tasks.add, [1, 2, 3], [10, 20, 30], pool="thread")) == [11, 22, 33]


def _code_written_for_process_pool(executor: concurrent.futures.Executor) -> list:
    """Unchanged code that a user wrote against ProcessPoolExecutor."""
    futures = [executor.submit(tasks.add, i, 1) for i in range(50)]
    done, _ = concurrent.futures.wait(futures, timeout=60)
    first = concurrent.futures.as_completed(futures, timeout=60)
    assert len(list(first)) == 50
    return sorted(future.result() for future in done) + list(executor.map(tasks.square, range(5)))


def test_executor_runs_code_written_for_process_pool_executor(two_workers):
    with concurrent.futures.ProcessPoolExecutor(2) as local:
        expected = _code_written_for_process_pool(local)
    with two_workers.executor() as remote:
        assert _code_written_for_process_pool(remote) == expected
    with pytest.raises(RuntimeError, match="after shutdown"):
        remote.submit(tasks.noop)


def test_executor_with_thread_pool_defaults(two_workers):
    with two_workers.executor(pool="thread") as executor:
        assert executor.submit(tasks.whoami).result(timeout=30)["thread"].startswith("runner-thread")


def test_submit_from_many_threads(two_workers):
    # Enough jobs a thread that each sends full batches itself, at the same time as the others.
    per_thread = 3 * SEND_NOW_ROWS
    results: list = []

    def submit_some(offset: int) -> None:
        futures = [two_workers.submit(tasks.add, offset, i, pool="thread") for i in range(per_thread)]
        results.extend(future.result(timeout=60) for future in futures)

    threads = [threading.Thread(target=submit_some, args=(10_000 * n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == sorted(10_000 * n + i for n in range(4) for i in range(per_thread))


def test_task_decorator_defaults_and_local_call(two_workers):
    import decorated

    assert decorated.where() == {"pid": os.getpid(), "thread": threading.current_thread().name}
    assert (decorated.where.options.pool, decorated.where.options.priority) == ("thread", 3)
    assert two_workers.submit(decorated.where).result(timeout=30)["thread"].startswith("runner-thread")
    assert two_workers.submit(decorated.where, pool="process").result(timeout=30)["thread"] == "MainThread"


def test_status_lists_workers_and_queues(two_workers, tmp_path):
    status = two_workers.status()
    assert sorted(worker["id"] for worker in status["workers"]) == ["alpha", "beta"]
    for worker in status["workers"]:
        assert worker["slots"] == {"process": 2, "thread": 4, "async": 1000}  # --async-tasks default
        assert worker["host"] and worker["pid"] > 0 and worker["running"] == 0 and not worker["draining"]
    assert not any(status["queues"].values()), status["queues"]

    # A running job shows on the worker that runs it; one nobody serves shows in its queue.
    gate, record = tmp_path / "gate", tmp_path / "started"
    running = two_workers.submit("jobs:gated", str(gate), str(record), pool="thread")
    waiting = two_workers.submit(tasks.add, 1, 2, pool="thread", queue="nobody-serves-this")
    wait_until(lambda: record.exists() and two_workers.status()["queues"].get("nobody-serves-this") == 1, timeout=10,
               message="one job running, one waiting")
    status = two_workers.status()
    by_pid = {worker["pid"]: worker for worker in status["workers"]}
    runner_pid = int(record.read_text())
    assert (by_pid[runner_pid]["running"], by_pid[runner_pid]["running_by_pool"]) == (1, {"thread": 1})
    assert [worker["running"] for pid, worker in by_pid.items() if pid != runner_pid] == [0]
    assert (status["jobs"]["running"], status["jobs"]["pending"]) == (1, 1)
    gate.touch()
    assert running.result(timeout=30)["pid"] == runner_pid
    assert waiting.cancel()
    wait_until(lambda: not two_workers.status()["queues"].get("nobody-serves-this"), timeout=10,
               message="the cancelled job left its queue")


def test_the_brokers_journal_file_is_in_wal_mode(two_workers):
    journal = two_workers.status()["broker"]["journal"]
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as database:
        assert database.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
