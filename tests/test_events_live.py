"""Job events from a live broker: counts for known work, the CLI stream, a slow reader, JSON log records."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
from collections import Counter

import pytest

from cluster import wait_until

WORKER = ("--processes", "0", "--threads", "2")


def run_known_work(client) -> list:
    """30 jobs that finish and 5 that fail; returns their futures once all are over."""
    futures = [client.submit("tasks:add", n, 1, pool="thread") for n in range(30)]
    futures += [client.submit("tasks:fail", f"bad {n}", pool="thread") for n in range(5)]
    for future in futures:
        future.exception(timeout=60)
    return futures


def take(stream, until, limit: int = 10_000) -> list[dict]:
    """Events from ``stream`` until ``until(events)`` holds (the stream ends on its own when idle)."""
    events = []
    for event in stream:
        events.append(event)
        if until(events) or len(events) >= limit:
            break
    return events


def steps(events: list[dict]) -> Counter:
    return Counter(event["event"] for event in events)


def test_the_stream_counts_every_step_of_known_work(processes, broker_address, client_factory):
    for name in ("alpha", "beta"):
        processes.worker(broker_address, *WORKER, "--name", name)
    client = client_factory(broker_address)
    client.wait_for_workers(2, timeout=60)
    stream = client.events(idle=30)
    futures = run_known_work(client)
    events = take(stream, lambda got: steps(got)["finished"] + steps(got)["failed"] == 35)
    counted = steps(events)
    # A worker missing heartbeats on a loaded machine gives its jobs back: each such job is
    # requeued and leased again, so leases are 35 plus the requeues, exactly.
    # Each lease a worker started is reported once (a lease given back unstarted is not).
    assert counted == {"accepted": 35, "leased": 35 + counted["requeued"], "started": counted["started"],
                       "finished": 30, "failed": 5, **({"requeued": counted["requeued"]} if counted["requeued"] else {})}
    assert 35 <= counted["started"] <= counted["leased"]
    ids = {future.job_id for future in futures}
    assert {event["job"] for event in events} == ids
    for job_id in ids:  # the run that ended was reported started, by its worker, at its attempt, before it ended
        mine = [event for event in events if event["job"] == job_id]
        started = [event for event in mine if event["event"] == "started"]
        assert started and mine[-1]["event"] in ("finished", "failed")
        assert (started[-1]["worker"], started[-1]["attempt"]) == (mine[-1]["worker"], mine[-1]["attempt"])
    leased = [event for event in events if event["event"] == "leased"]
    assert {event["worker"] for event in leased} <= {"alpha", "beta"} and all(e["attempt"] == 1 for e in leased)
    failed = {event["job"] for event in events if event["event"] == "failed"}
    assert failed == {future.job_id for future in futures[30:]}
    assert all(event["task"] == "tasks:fail" for event in events if event["job"] in failed)


def test_runner_events_follow_json_streams_what_happens(processes, broker_address, client_factory):
    processes.worker(broker_address, *WORKER)
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=60)
    reader = processes.runner("events", "--follow", "--json", "--connect", broker_address, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in reader.stdout], daemon=True).start()

    def subscribed() -> bool:  # a marker job whose events show up once the reader listens
        client.submit("tasks:noop", pool="thread").result(timeout=30)
        return not lines.empty()

    wait_until(subscribed, timeout=60, interval=0.2, message="runner events prints a marker job's events")
    futures = run_known_work(client)
    ids = {future.job_id for future in futures}
    seen: list[dict] = []
    wait_until(lambda: _drain(lines, seen, ids) == 35, timeout=60, message="every job's final event")
    counted = steps(seen)
    assert (counted["accepted"], counted["finished"], counted["failed"]) == (35, 30, 5)
    assert counted["leased"] == 35 + counted["requeued"]
    reader.send_signal(signal.SIGINT)
    assert reader.wait(timeout=30) in (0, 130)
    assert b"Traceback" not in reader.stderr.read()


def _drain(lines: queue.Queue, seen: list[dict], ids: set) -> int:
    while not lines.empty():
        event = json.loads(lines.get())
        if event.get("job") in ids:
            seen.append(event)
    return sum(1 for event in seen if event["event"] in ("finished", "failed"))


def test_a_reader_that_does_not_keep_up_loses_counted_events_and_slows_nothing(processes, client_factory):
    # The default heartbeat (1 s, 3 missed), so a loaded worker is rarely declared lost.
    _, address = processes.broker("--events-buffer", "50")
    processes.worker(address, *WORKER)
    worker_client = client_factory(address)
    worker_client.wait_for_workers(1, timeout=60)
    slow = client_factory(address)
    stream = slow.events(idle=3)  # subscribed, and not reading while the work runs
    jobs = 200
    results = list(worker_client.map("tasks:add", range(jobs), range(jobs), timeout=120, pool="thread"))
    assert results == [2 * n for n in range(jobs)]  # the broker went on, reader or not
    assert worker_client.status()["jobs"]["done"] == jobs

    events = list(stream)
    assert events[0]["event"] == "lost"
    lost = events[0]["count"]
    kept = events[1:]
    assert len(kept) == 50 and steps(kept)["lost"] == 0
    # Accepted, leased, started and finished for each job; a job a worker gives back (its credit
    # fell, or it was declared lost under load) adds requeued, leased again (and started again).
    extra = lost + len(kept) - 4 * jobs
    assert extra >= 0, (lost, len(kept))


def test_retries_deaths_cancels_and_requeues_are_events_with_their_worker_and_attempt(processes, broker_address,
                                                                                     client_factory):
    from test_cli import run

    processes.worker(broker_address, *WORKER, "--name", "alpha")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=60)
    stream = client.events(idle=30)
    dying = client.submit("tasks:fail", "twice", pool="thread", retries=1, retry_backoff=0.01)
    assert isinstance(dying.exception(timeout=60), ValueError)
    parked = client.submit("tasks:noop", pool="thread", queue="nobody-serves-this")
    assert client.cancel_job(parked.job_id) == "cancelled"
    answer = run("requeue", dying.job_id, "--connect", broker_address)
    assert answer.returncode == 0, answer.stderr
    events = take(stream, lambda got: steps(e for e in got if e["job"] == dying.job_id)["dead"] == 2)
    mine = [event for event in events if event["job"] == dying.job_id]
    # Twice (once more after runner requeue): attempt 1 fails and is retried, attempt 2 fails for
    # good, both on alpha. (A run lost with a worker missing heartbeats under load spends its
    # attempt unfailed: then that round has no retried event.)
    ended = [(e["event"], e["attempt"], e["worker"]) for e in mine if e["event"] in ("retried", "dead")]
    assert [step for step in ended if step[0] == "dead"] == [("dead", 2, "alpha")] * 2
    assert set(ended) <= {("retried", 1, "alpha"), ("dead", 2, "alpha")} and len(ended) <= 4
    assert steps(mine)["requeued"] >= 1 and steps(mine)["accepted"] == 1  # runner requeue, and worker give-backs
    assert [(e["event"], e["worker"]) for e in events if e["job"] == parked.job_id] == [("accepted", ""),
                                                                                       ("cancelled", "")]
    assert all(e["task"] == "tasks:fail" and e["queue"] == "default" for e in mine)


def test_job_events_are_json_log_records_at_debug(processes, client_factory):
    broker, address = processes.broker("--heartbeat", "0.2", "--log-json", log_level="DEBUG")
    processes.worker(address, *WORKER, "--name", "alpha")
    client = client_factory(address)
    client.wait_for_workers(1, timeout=60)
    future = client.submit("tasks:add", 1, 2, pool="thread")
    assert future.result(timeout=30) == 3
    client.close()
    processes.stop(broker)
    records = [json.loads(line)["record"] for line in broker.stderr_lines]
    mine = [record["extra"] for record in records if record["extra"].get("job") == future.job_id]
    assert [extra["event"] for extra in mine if "event" in extra] == ["accepted", "leased", "started", "finished"]
    assert all(extra["task"] == "tasks:add" and extra["queue"] == "default" for extra in mine if "event" in extra)
    assert [(extra["worker"], extra["attempt"]) for extra in mine if "event" in extra] == [("", 0), ("alpha", 1),
                                                                                          ("alpha", 1), ("alpha", 1)]


@pytest.fixture(autouse=True)
def _keep_stderr(monkeypatch):
    """Brokers of the JSON-log test keep their stderr lines (read after they stop)."""
    from cluster import Processes

    started = Processes.runner

    def runner(self, *arguments, stdout=None, stderr=None, env=None):
        if "--log-json" not in arguments:
            return started(self, *arguments, stdout=stdout, stderr=stderr, env=env)
        process = started(self, *arguments, stdout=stdout, stderr=subprocess.PIPE, env=env)
        process.stderr_lines = []
        threading.Thread(target=lambda: process.stderr_lines.extend(process.stderr), daemon=True).start()
        return process

    monkeypatch.setattr(Processes, "runner", runner)
