"""Delayed jobs leased ahead of their due time, with real brokers and workers on 127.0.0.1.

A broker started with a long ``--due-lead`` leases a delayed job to a worker seconds before
it is due, so what can happen while the worker holds it (a cancel, the worker draining or
being killed) happens on purpose, not by a lucky millisecond. Each job of
tests/delayed_tasks.py leaves a marker when it starts: "never ran" and "ran once" are counted.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime, timezone

import pytest

from cluster import wait_until
from delayed_tasks import runs
from test_delayed import IMPORTS, STAMP

HEARTBEAT = "0.2"
THREADS = ("--processes", "0", "--threads", "4", "--heartbeat", HEARTBEAT)
LEAD = "30"  # seconds: every job below is leased as soon as it is accepted


@pytest.fixture
def leading(processes, client_factory):
    """A broker leasing delayed jobs LEAD seconds early, one thread-pool worker, and a client."""
    _, address = processes.broker("--heartbeat", HEARTBEAT, "--due-lead", LEAD)
    first = processes.worker(address, *THREADS, imports=IMPORTS)
    client = client_factory(address)
    client.wait_for_workers(1, timeout=60)
    return address, first, client


def held_by_a_worker(client, job_id: str) -> dict:
    """Wait until the job is leased (its worker holds it until its due time); its view."""
    views: list[dict] = []
    wait_until(lambda: views.append(client.job(job_id)) or views[-1]["state"] == "running", timeout=30,
               message=f"job {job_id} leased ahead of its due time")
    return views[-1]


def at(seconds: float) -> tuple[float, datetime]:
    """A due time ``seconds`` from now: as epoch seconds, and as the ``at=`` the client takes."""
    due = time.time() + seconds
    return due, datetime.fromtimestamp(due, timezone.utc)


def test_a_job_leased_ahead_runs_at_its_due_time_not_when_leased(leading, tmp_path):
    _, _, client = leading
    due, when = at(2.0)
    future = client.submit(STAMP, str(tmp_path), "ahead", pool="thread", at=when)
    held_by_a_worker(client, future.job_id)
    started = future.result(timeout=30)
    assert started >= due, f"started {due - started:.3f}s before its due time"
    assert len(runs(str(tmp_path), "ahead")) == 1


def test_a_job_held_by_its_worker_is_cancelled_without_force_and_never_runs(leading, tmp_path):
    _, _, client = leading
    cancelled = client.submit(STAMP, str(tmp_path), "cancelled", pool="thread", at=at(2.0)[1])
    held_by_a_worker(client, cancelled.job_id)
    assert client.cancel(cancelled), "held until its time, it has not started: no force needed"
    assert cancelled.cancelled() and client.fetch(cancelled.job_id)["state"] == "cancelled"
    later = client.submit(STAMP, str(tmp_path), "later", pool="thread", at=at(2.5)[1])
    later.result(timeout=30)  # due after the cancelled one: had its worker kept it, it would have run by now
    assert runs(str(tmp_path), "cancelled") == [] and len(runs(str(tmp_path), "later")) == 1


def test_a_draining_worker_gives_a_held_job_back_and_it_runs_once_elsewhere_on_time(leading, processes, tmp_path):
    address, first, client = leading
    due, when = at(3.0)
    future = client.submit(STAMP, str(tmp_path), "moved", pool="thread", at=when)
    held_by_a_worker(client, future.job_id)
    processes.worker(address, *THREADS, "--name", "second", imports=IMPORTS)
    client.wait_for_workers(2, timeout=60)
    first.send_signal(signal.SIGTERM)  # drains: a job not started yet goes back at once
    assert first.wait(timeout=30) == 0, "nothing ran on it: it stops without waiting for the job's time"
    started = future.result(timeout=30)
    assert started >= due and len(runs(str(tmp_path), "moved")) == 1
    view = client.job(future.job_id)
    assert (view["worker"], view["attempts"]) == ("second", 1), "given back unrun: no attempt charged"


def test_a_worker_killed_while_holding_a_job_costs_it_no_attempt(leading, processes, tmp_path):
    address, first, client = leading
    due, when = at(3.0)
    future = client.submit(STAMP, str(tmp_path), "survivor", pool="thread", at=when, max_attempts=1)
    held_by_a_worker(client, future.job_id)
    first.kill()
    first.wait(timeout=10)
    wait_until(lambda: client.status()["workers"] == [], timeout=30, message="the broker noticed the loss")
    processes.worker(address, *THREADS, imports=IMPORTS)
    started = future.result(timeout=30)
    assert started >= due, "held again until its time"
    assert len(runs(str(tmp_path), "survivor")) == 1
    assert client.job(future.job_id)["attempts"] == 1, "its one attempt was not spent by the loss"


def test_a_process_pool_job_leased_ahead_waits_for_its_time_too(processes, client_factory, tmp_path):
    _, address = processes.broker("--heartbeat", HEARTBEAT, "--due-lead", "1")
    processes.worker(address, "--processes", "1", "--threads", "0", "--heartbeat", HEARTBEAT, imports=IMPORTS)
    client = client_factory(address)
    client.wait_for_workers(1, timeout=60)
    due, when = at(1.5)
    future = client.submit(STAMP, str(tmp_path), "child", pool="process", at=when)
    assert future.result(timeout=30) >= due
    assert len(runs(str(tmp_path), "child")) == 1
