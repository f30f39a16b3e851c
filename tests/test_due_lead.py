"""Delayed jobs leased ahead of their due time (the broker's ``--due-lead``), sans-IO.

The broker releases a delayed job ``lead`` seconds early and its lease says how long the
worker holds it; the job is not started before its time. These pin down the decisions: what
is released early (never a retry), what the lease says, and that a job given back, lost with
its worker, or claimed in a hello before its time is neither started early nor charged an
attempt. Then the worker's side: the gate a pool thread waits at, and the ``hold`` field's checks.
"""

from __future__ import annotations

import threading
import time

import pytest
from test_jobbook_edges import ERROR, A, broker, row  # noqa: F401 - broker is a fixture

from runner import protocol
from runner.broker.scheduler import DEFERRED, PENDING, RUNNING, SCHEDULED
from workers.start_gate import StartGate

LEAD = 0.05


def delayed(job_id: str, due: float) -> list:
    return row(job_id, options={"due": due})


def leased_ahead(driven, rows: list[list], now: float, slots: int = 1):
    """Submit ``rows`` at 1.0, a worker ``w`` joins, and at ``now`` they are released and leased ahead
    of their time: the turn's outbox."""
    driven.book.submit(A, rows, False, 1.0)
    driven.book.worker_joined(b"w", ["default"], {"thread": slots}, [], 1.0)
    driven.book.release_due(now, LEAD)
    return driven.book.take_outbox(now)


def test_a_delayed_job_is_leased_lead_seconds_early_with_the_time_left_to_hold_it(broker):
    driven = broker()
    driven.book.submit(A, [delayed("x", 10.0), delayed("y", 20.0)], False, 1.0)
    driven.book.worker_joined(b"w", ["default"], {"thread": 4}, [], 1.0)
    assert driven.book.next_due(LEAD) == pytest.approx(10.0 - LEAD), "the timer fires lead seconds early"

    driven.book.release_due(9.9, LEAD)
    assert driven.book.take_outbox(9.9).leases == [], "not yet within the lead"
    driven.book.release_due(9.96, LEAD)
    outbox = driven.book.take_outbox(9.96)
    assert [(worker, [job.id for job in jobs]) for worker, jobs in outbox.leases] == [(b"w", ["x"])]
    assert outbox.hold == {"x": pytest.approx(0.04)}, "the worker holds it for the time left"
    assert driven.book.scheduler.jobs["y"].state == SCHEDULED

    driven.book.release_due(20.5, LEAD)  # the broker woke late: released and leased once due
    outbox = driven.book.take_outbox(20.5)
    assert [job.id for _, jobs in outbox.leases for job in jobs] == ["y"] and outbox.hold == {}


def test_a_retry_is_never_released_early(broker):
    driven = broker()
    retried = {"retries": 1, "backoff": 5.0}
    driven.book.submit(A, [row("r", options=retried), delayed("d", 7.02)], False, 1.0)
    driven.book.worker_joined(b"w", ["default"], {"thread": 4}, [], 1.0)
    assert [job.id for _, jobs in driven.book.take_outbox(1.0).leases for job in jobs] == ["r"]
    driven.book.results(b"w", [["r", 1, protocol.FAILED, ERROR]], 2.0)
    retry_due = driven.book.next_due(LEAD)
    assert driven.book.scheduler.jobs["r"].state == DEFERRED and retry_due <= 7.02, "a retry's time is not moved"

    driven.book.release_due(retry_due - LEAD / 2, LEAD)
    assert driven.book.take_outbox(retry_due - LEAD / 2).leases == [], \
        "the retry waits out its whole backoff, and the delayed job behind it is not passed over early"
    driven.book.release_due(retry_due, LEAD)
    assert [job.id for _, jobs in driven.book.take_outbox(retry_due).leases for job in jobs] == ["r"]


def test_a_job_given_back_before_its_time_is_held_again_uncharged(broker):
    driven = broker()
    assert leased_ahead(driven, [delayed("x", 10.0)], 9.97).hold == {"x": pytest.approx(0.03)}
    driven.book.results(b"w", [["x", 1, protocol.REQUEUE, b""]], 9.98)  # the worker drains
    job = driven.book.scheduler.jobs["x"]
    assert (job.state, job.attempt, driven.book.next_due()) == (SCHEDULED, 0, 10.0), "held until its time again"

    driven.book.worker_joined(b"v", ["default"], {"thread": 1}, [], 9.99)
    driven.book.release_due(9.99, LEAD)
    assert driven.book.take_outbox(9.99).hold == {"x": pytest.approx(0.01)}
    assert driven.book.scheduler.jobs["x"].attempt == 1


def test_a_worker_lost_while_holding_a_job_costs_it_no_attempt(broker):
    driven = broker()
    leased_ahead(driven, [row("x", options={"due": 10.0, "max_attempts": 1})], 9.96)
    driven.book.worker_lost(b"w", 9.97)  # charged, as a silent worker is: but the job never started
    job = driven.book.scheduler.jobs["x"]
    assert (job.state, job.attempt, driven.journal.attempts("x")) == (SCHEDULED, 0, 0)
    assert driven.journal.get("x").state not in ("dead", "failed"), "its only attempt is still to come"

    driven.book.worker_joined(b"v", ["default"], {"thread": 1}, [], 10.5)
    driven.book.release_due(10.5, LEAD)
    outbox = driven.book.take_outbox(10.5)
    assert [(job.id, job.attempt) for _, jobs in outbox.leases for job in jobs] == [("x", 1)] and outbox.hold == {}


def test_a_worker_lost_after_the_due_time_is_charged_as_usual(broker):
    driven = broker()
    leased_ahead(driven, [row("x", options={"due": 10.0, "max_attempts": 2})], 9.96)
    driven.book.worker_lost(b"w", 10.2)  # it had started by then
    job = driven.book.scheduler.jobs["x"]
    assert (job.state, job.attempt) == (PENDING, 1)


def test_a_held_job_is_cancelled_without_force_until_its_time(broker):
    driven = broker()
    leased_ahead(driven, [delayed("x", 10.0), delayed("y", 10.01)], 9.97, slots=2)
    assert driven.book.scheduler.jobs["x"].state == RUNNING

    assert driven.book.cancel("x", False, 9.98) == "cancelled", "held on its worker, not started"
    outbox = driven.book.take_outbox(9.98)
    assert outbox.stop_jobs == {b"w": ["x"]} and outbox.outcomes == {A: [["x", protocol.CANCELLED, b""]]}
    assert driven.book.cancel("y", False, 10.02) == "running", "past its due time it runs: force is needed"


def test_a_hello_claiming_a_held_job_keeps_it_on_its_worker(broker):
    """After a restart (or a worker declared lost), the job is held by the broker again; the
    worker, still holding it until its time, claims it in its hello and keeps it."""
    driven = broker()
    leased_ahead(driven, [delayed("x", 10.0)], 9.96)
    driven.journal.commit()
    driven.restart(crashed=True, now=9.97)
    assert driven.book.scheduler.jobs["x"].state == SCHEDULED

    driven.book.worker_joined(b"w", ["default"], {"thread": 1}, [["x", 1]], 9.98)
    outbox = driven.book.take_outbox(9.98)
    job = driven.book.scheduler.jobs["x"]
    assert (job.state, job.worker, job.attempt) == (RUNNING, b"w", 1) and outbox.stop_jobs == {}
    assert outbox.leases == [], "adopted, not leased again"
    assert driven.book.cancel("x", False, 9.99) == "cancelled", "still not started"


# --- the worker's side ---------------------------------------------------------------------------


def passes(gate: StartGate) -> tuple[threading.Thread, dict]:
    """A pool thread at ``gate``; ``seen`` gets whether it passed and when."""
    seen: dict = {}

    def wait() -> None:
        seen["passed"] = gate.pass_at_time()
        seen["at"] = time.monotonic()

    thread = threading.Thread(target=wait)
    thread.start()
    return thread, seen


def test_a_gate_opens_at_its_time_and_not_before():
    start_at = time.monotonic() + 0.05
    thread, seen = passes(StartGate(start_at))
    thread.join(timeout=10)
    assert seen["passed"] and seen["at"] >= start_at


def test_a_withdrawn_gate_never_opens_and_frees_its_thread_at_once():
    gate = StartGate(time.monotonic() + 3600)
    thread, seen = passes(gate)
    assert gate.withdraw(), "not started: withdrawn"
    thread.join(timeout=10)
    assert not thread.is_alive() and seen["passed"] is False


def test_a_gate_passed_cannot_be_withdrawn():
    gate = StartGate(time.monotonic())
    assert gate.pass_at_time()
    assert not gate.withdraw(), "it started: the worker must not give it back as unrun"
    assert not gate.withdraw()


@pytest.mark.parametrize("hold", ["soon", -0.1, protocol.MAX_HOLD + 1, True, [1]])
def test_a_bad_hold_in_a_jobs_message_is_refused(hold):
    frame = protocol.encode(protocol.JOBS, {"jobs": [["x", 1, "tasks:add", "thread", b"\x90", None, 0]],
                                            "hold": {"x": hold}})
    with pytest.raises(protocol.ProtocolError, match="hold"):
        protocol.decode(frame)


def test_a_hold_that_is_not_a_map_is_refused():
    frame = protocol.encode(protocol.JOBS, {"jobs": [], "hold": [["x", 1.0]]})
    with pytest.raises(protocol.ProtocolError, match="'hold' must be a map"):
        protocol.decode(frame)
