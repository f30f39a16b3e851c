"""The defaults docs/guarantees.md, README.md and docs/usage.md promise, with real processes.

``max_attempts`` is 3 when not given; a job that used up its retries is dead (counted
and listed as such); SIGINT drains a worker as SIGTERM does; ``RUNNER_BIND`` and
``RUNNER_BROKER`` stand in for ``--bind`` and ``--connect``; a script's own function is
found by the script's file name.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

import tasks
from cluster import ROOT, START_TIMEOUT, environment, read_address, wait_until
from runner.errors import WorkerLostError
from test_chaos import free_address
from test_promises import HEARTBEAT, STARTING, THREADS_ONLY, gated_job, start_worker
from test_reliability_rules import lines, wait_for_lines, worker_entry


def test_max_attempts_defaults_to_three_lost_runs_then_the_job_is_dead(
        processes, broker_address, client_factory, tmp_path):
    client = client_factory(broker_address)
    future, record, _ = gated_job(client, tmp_path, "doomed", gated_runs=99, pool="thread")  # no max_attempts given
    for run in (1, 2, 3):
        worker = start_worker(processes, broker_address, *THREADS_ONLY, "--threads", "1")
        assert wait_for_lines(record, run, timeout=STARTING)[run - 1] == str(worker.pid)
        worker.kill()  # SIGKILL: the broker finds out by missed heartbeats
        worker.wait()
    with pytest.raises(WorkerLostError) as lost:
        future.result(timeout=30)
    assert lost.value.attempts == 3
    assert "max_attempts=3" in str(lost.value)

    # A live worker now, and the job still does not run a fourth time.
    start_worker(processes, broker_address, *THREADS_ONLY, "--threads", "1")
    assert client.submit(tasks.add, 1, 2, pool="thread").result(timeout=30) == 3
    assert len(lines(record)) == 3
    assert client.fetch(future.job_id)["state"] == "dead"
    assert client.status()["jobs"]["dead"] == 1


def test_a_job_that_used_up_its_retries_is_dead_counted_and_listed(
        processes, broker_address, client_factory, tmp_path):
    start_worker(processes, broker_address, *THREADS_ONLY, "--threads", "2")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    retried, unretried = tmp_path / "retried", tmp_path / "unretried"
    with pytest.raises(RuntimeError):
        client.submit("jobs:flaky", str(retried), 99, pool="thread", retries=2, retry_backoff=0.05).result(timeout=30)
    with pytest.raises(RuntimeError):  # no retries: failed, not dead
        client.submit("jobs:flaky", str(unretried), 99, pool="thread").result(timeout=30)
    assert (len(lines(retried)), len(lines(unretried))) == (3, 1)

    jobs = client.status()["jobs"]
    assert (jobs["dead"], jobs["failed"]) == (1, 1)
    dead = client.dead_letters()
    assert [(job["task"], job["attempts"]) for job in dead] == [("jobs:flaky", 3)]
    assert isinstance(dead[0]["error"], RuntimeError) and "attempt 3 failed on purpose" in str(dead[0]["error"])


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_drain_a_worker_alike(processes, broker_address, client_factory, tmp_path, signal_number):
    leaving = start_worker(processes, broker_address, *THREADS_ONLY, "--threads", "2", "--queue", "first",
                           "--queue", "default")
    staying = start_worker(processes, broker_address, *THREADS_ONLY, "--threads", "2")
    client = client_factory(broker_address)
    client.wait_for_workers(2, timeout=30)
    running, record, gate = gated_job(client, tmp_path, "running", pool="thread", queue="first")
    assert wait_for_lines(record, 1) == [str(leaving.pid)]

    leaving.send_signal(signal_number)
    wait_until(lambda: (worker_entry(client, leaving.pid) or {}).get("draining"), timeout=10,
               message="the broker shows the signalled worker draining")
    later = [client.submit(tasks.whoami, pool="thread") for _ in range(4)]
    assert {future.result(timeout=30)["pid"] for future in later} == {staying.pid}, "a draining worker got a job"
    assert leaving.poll() is None, "the worker left before its running job finished"
    gate.touch()
    assert running.result(timeout=30) == {"run": 1, "pid": leaving.pid, "value": "running"}
    assert leaving.wait(timeout=15) == 0


def test_runner_bind_and_runner_broker_stand_in_for_bind_and_connect(processes, tmp_path):
    address = free_address()
    broker = processes.runner("broker", "--journal", str(tmp_path / "journal.db"), "--log-level", "WARNING",
                              stdout=subprocess.PIPE, env=environment(RUNNER_BIND=address))
    assert read_address(broker, START_TIMEOUT) == address
    connect = environment(RUNNER_BROKER=address)
    processes.runner("worker", *THREADS_ONLY, "--threads", "1", "--import", "tasks", "--log-level", "WARNING",
                     env=connect)
    submitted = subprocess.run([sys.executable, "-m", "runner", "submit", "tasks:add", "20", "22", "--pool", "thread"],
                               env=connect, cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert (submitted.returncode, submitted.stdout.strip()) == (0, "42"), submitted.stderr


def test_a_script_run_as_main_submits_its_own_function_found_by_the_file_name(processes, broker_address):
    worker = processes.worker(broker_address, *HEARTBEAT, *THREADS_ONLY, "--threads", "1", imports=("script_task",))
    script = subprocess.run([sys.executable, str(ROOT / "tests" / "script_task.py"), broker_address],
                            env=environment(), cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert script.returncode == 0, script.stderr
    assert json.loads(script.stdout) == {"reference": "script_task:shout",
                                         "result": {"text": "FOUND BY FILE NAME", "pid": worker.pid}}
