"""Delayed jobs (``delay=``, ``at=``) against real brokers and workers on 127.0.0.1.

Each job of tests/delayed_tasks.py records when it started in a marker created with O_EXCL,
so "no earlier than its due time" compares that with the due time the broker reports, and
"exactly once" counts markers. The broker is killed with SIGKILL and started again on the
same journal and address to show what survives.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timedelta, timezone

import pytest

import runner
from cluster import wait_until
from runner import protocol
from delayed_tasks import runs
from test_chaos import free_address
from test_cli import run

HEARTBEAT = "0.2"
WORKER = ("--processes", "0", "--threads", "4", "--heartbeat", HEARTBEAT)
IMPORTS = ("delayed_tasks", "tasks")
STAMP = "delayed_tasks:stamp"


@pytest.fixture
def cluster(processes, client_factory):
    """A broker with its journal, one thread-pool worker, a client that waited for it."""
    _, address = processes.broker("--heartbeat", HEARTBEAT)
    processes.worker(address, *WORKER, imports=IMPORTS)
    client = client_factory(address)
    client.wait_for_workers(1, timeout=60)
    return address, client


def test_a_delayed_job_is_scheduled_then_runs_no_earlier_than_its_due_time(cluster, tmp_path):
    _, client = cluster
    future = client.submit(STAMP, str(tmp_path), "delayed", pool="thread", delay=1.5)
    view = client.fetch(future.job_id)
    assert view["state"] == "scheduled", view
    due = view["due"]
    assert time.time() < due <= time.time() + 1.5
    jobs = client.status()["jobs"]
    assert (jobs["scheduled"], jobs["pending"], jobs["retrying"]) == (1, 0, 0)
    [listed] = client.jobs(state="scheduled")
    assert (listed["id"], listed["due"]) == (future.job_id, due)
    assert client.job(future.job_id)["due"] == due

    started = future.result(timeout=30)
    assert started >= due, f"ran {due - started:.3f}s before its due time"
    assert client.fetch(future.job_id)["state"] == "done"
    assert client.status()["jobs"]["scheduled"] == 0


def test_at_an_aware_time_runs_then_on_submit_map_and_executor(cluster, tmp_path):
    _, client = cluster
    at = datetime.now(timezone.utc) + timedelta(seconds=1)
    single = client.submit(STAMP, str(tmp_path), "at", pool="thread", at=at)
    mapped = client.map(STAMP, [str(tmp_path)] * 2, ["m1", "m2"], pool="thread", at=at)
    with client.executor(pool="thread", delay=1.0) as executor:
        submitted = time.time()
        through_executor = executor.submit(STAMP, str(tmp_path), "executor")
        [mapped_by_executor] = executor.map(STAMP, [str(tmp_path)], ["executor-map"], timeout=30)
        assert min(through_executor.result(timeout=30), mapped_by_executor) >= submitted + 1.0
    assert min([single.result(timeout=30), *mapped]) >= at.timestamp()


def test_the_asyncio_client_delays_its_jobs_and_its_maps(cluster, tmp_path):
    address, _ = cluster

    async def body():
        async with runner.AsyncClient(address) as client:
            submitted = time.time()
            delayed = client.submit(STAMP, str(tmp_path), "async", pool="thread", delay=1.0)
            assert (await client.fetch(delayed.job_id))["state"] == "scheduled"
            mapped = [started async for started in client.map(STAMP, [str(tmp_path)] * 2, ["a1", "a2"],
                                                             pool="thread", at=at)]
            return await asyncio.wait_for(delayed, 30), mapped, submitted

    at = datetime.now(timezone.utc) + timedelta(seconds=1)
    started, mapped, submitted = asyncio.run(asyncio.wait_for(body(), 60))
    assert started >= submitted + 1.0 and min(mapped) >= at.timestamp()


def test_a_naive_time_and_bad_delays_are_refused_and_send_nothing(cluster):
    _, client = cluster
    with pytest.raises(ValueError, match="naive datetime.*tzinfo"):
        client.submit(STAMP, "/nowhere", "x", at=datetime.now())
    with pytest.raises(ValueError, match="delay must be a number of seconds.*got -1"):
        client.submit(STAMP, "/nowhere", "x", delay=-1)
    with pytest.raises(ValueError, match="delay must be.*got 'soon'"):
        client.submit(STAMP, "/nowhere", "x", delay="soon")
    with pytest.raises(ValueError, match="not both"):
        client.submit(STAMP, "/nowhere", "x", delay=1, at=datetime.now(timezone.utc))
    with pytest.raises(TypeError, match="at="):
        runner.task(at=datetime.now(timezone.utc))
    jobs = client.status()["jobs"]
    assert jobs["scheduled"] == jobs["pending"] == jobs["done"] == 0, "nothing reached the broker"


def test_a_cancelled_scheduled_job_never_runs(cluster, tmp_path):
    _, client = cluster
    cancelled = client.submit(STAMP, str(tmp_path), "cancelled", pool="thread", delay=1.0)
    assert client.fetch(cancelled.job_id)["state"] == "scheduled"
    assert client.cancel(cancelled) and cancelled.cancelled()
    assert client.fetch(cancelled.job_id)["state"] == "cancelled"
    assert client.status()["jobs"]["scheduled"] == 0
    later = client.submit(STAMP, str(tmp_path), "later", pool="thread", delay=1.5)
    later.result(timeout=30)  # due after the cancelled one was: had it been released, it would have run by now
    assert runs(str(tmp_path), "cancelled") == [] and len(runs(str(tmp_path), "later")) == 1


def test_jobs_due_in_years_wait_without_stopping_the_broker(cluster, tmp_path):
    _, client = cluster
    far = client.submit(STAMP, str(tmp_path), "far", pool="thread", delay=protocol.MAX_DELAY)
    farthest = client.submit(STAMP, str(tmp_path), "farthest", pool="thread",
                             at=datetime.fromtimestamp(protocol.MAX_DUE - 1, timezone.utc))
    soon = client.submit(STAMP, str(tmp_path), "soon", pool="thread", delay=0.5)
    assert soon.result(timeout=30) > 0, "the broker still serves, and runs what falls due"
    assert [client.fetch(future.job_id)["state"] for future in (far, farthest)] == ["scheduled", "scheduled"]
    assert client.status()["jobs"]["scheduled"] == 2
    assert client.cancel(far) and client.cancel(farthest)


def test_delayed_jobs_survive_kill_9_and_those_due_in_the_downtime_run_once(processes, client_factory, tmp_path):
    address, journal = free_address(), tmp_path / "journal.db"
    broker, _ = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
    processes.worker(address, *WORKER, imports=IMPORTS)
    client = client_factory(address)  # stays connected across the crash, registers again and resends
    client.wait_for_workers(1, timeout=60)
    markers = tmp_path / "markers"
    markers.mkdir()
    short = [client.submit(STAMP, str(markers), f"short{n}", pool="thread", delay=2.0) for n in range(5)]
    long = client.submit(STAMP, str(markers), "long", pool="thread", delay=6.0)
    dues = {future.job_id: due_of(client, future.job_id) for future in [*short, long]}  # journaled by now
    broker.kill()
    broker.wait(timeout=10)
    wait_until(lambda: time.time() > max(dues[f.job_id] for f in short) + 0.3, timeout=10,
               message="the short delays passed while the broker was down")
    processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
    started = [future.result(timeout=60) for future in short]
    assert all(start >= dues[future.job_id] for start, future in zip(started, short))
    assert long.result(timeout=60) >= dues[long.job_id], "the journaled due time holds after the restart"
    for name in [*(f"short{n}" for n in range(5)), "long"]:
        assert len(runs(str(markers), name)) == 1, f"{name} ran {len(runs(str(markers), name))} times"


def due_of(client: runner.Client, job_id: str) -> float:
    """The due time of a scheduled job, once the broker has it (queued submits may follow a request)."""
    views: list[dict] = []
    wait_until(lambda: views.append(client.fetch(job_id)) or views[-1]["state"] != "unknown", timeout=30,
               message=f"the broker has job {job_id}")
    assert views[-1]["state"] == "scheduled", views[-1]
    return views[-1]["due"]


def test_runner_submit_delay_and_at_and_the_scheduled_views(cluster, tmp_path):
    address, client = cluster
    submitted = run("submit", STAMP, str(tmp_path), "cli", "--pool", "thread", "--delay", "30", "--no-wait",
                    "--connect", address)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    listed = run("jobs", "--state", "scheduled", "--connect", address)
    assert job_id in listed.stdout and "due" in listed.stdout.splitlines()[0] and "UTC (in " in listed.stdout
    shown = run("jobs", "show", job_id, "--connect", address)
    assert "state" in shown.stdout and "scheduled" in shown.stdout and "UTC (in " in shown.stdout
    status = run("status", "--connect", address)
    assert "scheduled 1" in status.stdout, status.stdout
    assert run("cancel", job_id, "--connect", address).stdout.strip() == f"cancelled {job_id}"
    assert client.fetch(job_id)["state"] == "cancelled"

    at = (datetime.now(timezone.utc) + timedelta(seconds=1)).isoformat()
    waited = run("submit", STAMP, str(tmp_path), "cli-at", "--pool", "thread", "--at", at, "--connect", address)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout) >= datetime.fromisoformat(at).timestamp()


@pytest.mark.parametrize("flags, named", [
    (("--delay", "-5"), "got -5"),
    (("--delay", "soon"), "soon"),
    (("--at", "2030-01-01T02:00:00"), "no UTC offset"),
    (("--at", "tomorrow"), "'tomorrow' is not an ISO 8601 time"),
    (("--delay", "1", "--at", "2030-01-01T02:00:00Z"), "not both"),
])
def test_runner_submit_refuses_a_bad_delay_or_time_naming_it(flags, named):
    answer = run("submit", STAMP, "/nowhere", "x", *flags, "--connect", "tcp://127.0.0.1:9")
    assert answer.returncode == 2, answer.stderr
    assert named in answer.stderr and answer.stdout == ""
