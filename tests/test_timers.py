"""The JobBook's timer structure (runner/broker/timers.py) and its delayed-job decisions, without sockets.

DueTimes alone: order, equal due times, lazy removal, counts, compaction. Then the JobBook
on a real journal file, driven as the server drives it: a delayed job waits as ``scheduled``,
is released at its time to the front of its queue, can be cancelled for O(1), keeps its due
time across a restart (held again, or queued at once when it fell due during the downtime),
and shares the one timer structure with retries.
"""

from __future__ import annotations

import pytest
from test_jobbook_edges import Broker, row

from runner import protocol
from runner.broker import journal as states
from runner.broker.scheduler import DEFERRED, PENDING, SCHEDULED, Job
from runner.broker.timers import COMPACT_MIN, DueTimes, due_time

A = b"client-a"
ERROR = protocol.pack({"type": "ValueError", "module": "builtins", "message": "boom"})


def held(jobs: dict[str, Job], job_id: str, state: str = SCHEDULED) -> Job:
    """A job the broker holds (in ``jobs``, as the scheduler's) in ``state``."""
    job = jobs[job_id] = Job(job_id, "tasks:add", "thread", "default", 0, b"", A)
    job.state = state
    return job


# --- DueTimes -------------------------------------------------------------------------------------------


def test_jobs_leave_in_due_order_and_equal_times_in_id_order():
    jobs: dict[str, Job] = {}
    timers = DueTimes(jobs)
    for name in "dcba":
        held(jobs, name)
    for name, due in (("c", 5.0), ("b", 2.0), ("a", 5.0), ("d", 9.0)):  # c before a, both due at 5
        timers.add(jobs[name], due)
    assert timers.next_due() == 2.0 and len(timers) == 4
    assert [job.id for job in timers.pop_due(4.9)] == ["b"]
    assert [job.id for job in timers.pop_due(5.0)] == ["a", "c"]
    assert timers.next_due() == 9.0 and timers.pop_due(8.99) == []
    assert [job.id for job in timers.pop_due(100.0)] == ["d"] and timers.next_due() is None and len(timers) == 0
    assert all(job.due is None for job in jobs.values()), "a released job is held no more"


def test_a_removed_job_never_leaves_and_its_entry_is_skipped():
    jobs: dict[str, Job] = {}
    timers = DueTimes(jobs)
    first, second = held(jobs, "first"), held(jobs, "second", DEFERRED)
    timers.add(first, 1.0)
    timers.add(second, 2.0)
    assert timers.counts == {SCHEDULED: 1, DEFERRED: 1}
    timers.remove(first)
    timers.remove(first)  # twice: still one removal
    assert timers.counts == {SCHEDULED: 0, DEFERRED: 1} and len(timers) == 1
    assert timers.next_due() == 2.0, "the stale top entry is dropped on the way"
    assert timers.pop_due(10.0) == [second]


def test_a_job_removed_and_held_again_at_the_same_time_leaves_once():
    jobs: dict[str, Job] = {}
    timers = DueTimes(jobs)
    job = held(jobs, "x")
    timers.add(job, 3.0)
    timers.remove(job)
    timers.add(job, 3.0)
    assert timers.pop_due(3.0) == [job] and timers.next_due() is None and len(timers) == 0


def test_many_removals_rebuild_the_heap_now_and_then_not_once_each():
    by_id: dict[str, Job] = {}
    timers = DueTimes(by_id)
    jobs = [held(by_id, f"j{number:05d}") for number in range(4 * COMPACT_MIN)]
    for number, job in enumerate(jobs):
        timers.add(job, float(number))
    for job in jobs[: 3 * COMPACT_MIN]:
        timers.remove(job)
    assert len(timers) == COMPACT_MIN
    assert len(timers._heap) < 3 * COMPACT_MIN, "stale entries beyond half the heap were dropped"
    assert [job.id for job in timers.pop_due(float("inf"))] == [job.id for job in jobs[3 * COMPACT_MIN:]]


def test_cancelling_among_many_held_jobs_touches_only_the_job():
    by_id: dict[str, Job] = {}
    timers = DueTimes(by_id)
    jobs = [held(by_id, f"j{number}") for number in range(100_000)]
    for number, job in enumerate(jobs):
        timers.add(job, 1000.0 + number % 60)
    heap, entries = timers._heap, list(timers._heap)
    for job in jobs[::1000]:  # 100 cancels spread over the heap
        timers.remove(job)
    assert len(timers) == 100_000 - 100
    assert timers._heap is heap and timers._heap == entries, "no entry moved: the heap was not rebuilt"


def test_the_due_time_of_submitted_options():
    assert due_time({"delay": 5.0}, 100.0) == 105.0, "a delay counts from the broker's clock at acceptance"
    assert due_time({"due": 42.0}, 100.0) == 42.0
    assert due_time({"retries": 2}, 100.0) is None


# --- the JobBook ----------------------------------------------------------------------------------------


@pytest.fixture
def driven(tmp_path):
    made = Broker(str(tmp_path / "journal.db"))
    yield made
    made.journal.close()


def test_a_delayed_job_is_scheduled_until_due_then_queued_ahead_of_waiting_jobs(driven):
    driven.book.submit(A, [row("late", options={"delay": 10.0}), row("now-1"), row("now-2")], False, 100.0)
    assert driven.turn().accepted == {A: ["late", "now-1", "now-2"]}
    late = driven.book.scheduler.jobs["late"]
    assert (late.state, late.due, driven.book.next_due()) == (SCHEDULED, 110.0, 110.0)
    assert driven.book.timers.counts[SCHEDULED] == 1
    driven.book.release_due(109.99)
    assert late.state == SCHEDULED
    driven.book.release_due(110.0)
    assert late.state == PENDING and driven.book.next_due() is None
    driven.book.worker_joined(b"w", ["default"], {"thread": 1}, [], 110.0)
    assert driven.leases() == {b"w": [("late", 1)]}, "a due job goes before jobs queued without a time"


def test_jobs_due_together_keep_their_due_order(driven):
    rows = [row(name, options={"due": due}) for name, due in (("b", 52.0), ("a", 51.0), ("c", 53.0))]
    driven.book.submit(A, rows, False, 50.0)
    driven.book.release_due(60.0)
    driven.book.worker_joined(b"w", ["default"], {"thread": 3}, [], 60.0)
    assert driven.leases() == {b"w": [("a", 1), ("b", 1), ("c", 1)]}


def test_a_due_time_already_past_queues_the_job_at_once(driven):
    driven.book.submit(A, [row("past", options={"due": 10.0}), row("zero", options={"delay": 0.0})], False, 50.0)
    assert {job.state for job in driven.book.scheduler.jobs.values()} == {PENDING}
    assert driven.book.next_due() is None


def test_a_scheduled_job_cancelled_never_runs(driven):
    driven.book.submit(A, [row("x", options={"delay": 5.0}), row("y", options={"delay": 6.0})], False, 1.0)
    driven.turn()
    assert driven.book.cancel("x", False, 2.0) == "cancelled", "a scheduled job needs no force"
    assert driven.turn().outcomes == {A: [["x", protocol.CANCELLED, b""]]}
    assert driven.book.timers.counts[SCHEDULED] == 1 and driven.book.next_due() == 7.0
    driven.book.release_due(100.0)
    driven.book.worker_joined(b"w", ["default"], {"thread": 2}, [], 100.0)
    assert driven.leases() == {b"w": [("y", 1)]}
    assert driven.journal.get("x").state == states.CANCELLED and driven.book.quota.held == {A: 1}


def test_the_due_time_survives_a_restart(driven):
    driven.book.submit(A, [row("soon", options={"delay": 10.0}), row("later", options={"due": 500.0})], False, 100.0)
    driven.turn()
    driven.restart(crashed=True, now=200.0)  # "soon" fell due during the downtime, "later" did not
    soon, later = driven.book.scheduler.jobs["soon"], driven.book.scheduler.jobs["later"]
    assert (soon.state, later.state, later.due) == (PENDING, SCHEDULED, 500.0)
    assert driven.book.timers.counts == {SCHEDULED: 1, DEFERRED: 0} and driven.book.quota.held == {A: 2}
    driven.book.worker_joined(b"w", ["default"], {"thread": 2}, [], 200.0)
    assert driven.leases() == {b"w": [("soon", 1)]}
    driven.book.release_due(500.0)
    assert driven.leases() == {b"w": [("later", 1)]}


def test_an_uncommitted_delayed_job_is_not_restored(driven):
    driven.book.submit(A, [row("x", options={"delay": 10.0})], False, 100.0)
    driven.book.take_outbox()  # the turn ends without its commit: the broker died first
    driven.restart(crashed=True, now=101.0)
    assert driven.book.scheduler.jobs == {} and driven.book.next_due() is None


def test_retries_and_delays_share_one_timer_structure(driven):
    driven.book.submit(A, [row("flaky", options={"retries": 1, "backoff": 1.0}),
                           row("delayed", options={"delay": 30.0})], False, 1.0)
    driven.book.worker_joined(b"w", ["default"], {"thread": 1}, [], 1.0)
    assert driven.leases() == {b"w": [("flaky", 1)]}
    driven.book.results(b"w", [["flaky", 1, protocol.FAILED, ERROR]], 2.0)
    driven.turn()
    assert driven.book.timers.counts == {SCHEDULED: 1, DEFERRED: 1}
    retry_due = driven.book.next_due()
    assert 2.5 <= retry_due <= 3.5, "the retry's backoff comes before the delay"
    driven.book.release_due(retry_due)
    assert driven.leases() == {b"w": [("flaky", 2)]} and driven.book.next_due() == 31.0


def test_a_resent_delayed_job_keeps_its_first_due_time(driven):
    driven.book.submit(A, [row("x", options={"delay": 10.0})], False, 100.0)
    driven.turn()
    driven.book.submit(A, [row("x", options={"delay": 10.0})], True, 150.0)  # resent after re-registering
    assert driven.turn().accepted == {A: ["x"]}
    assert driven.book.scheduler.jobs["x"].due == 110.0 and driven.book.timers.counts[SCHEDULED] == 1


def test_a_finished_id_submitted_again_with_a_delay_is_answered_not_held(driven):
    driven.book.submit(A, [row("x")], False, 1.0)
    driven.book.worker_joined(b"w", ["default"], {"thread": 1}, [], 1.0)
    assert driven.leases() == {b"w": [("x", 1)]}
    driven.book.results(b"w", [["x", 1, protocol.OK, protocol.pack(5)]], 2.0)
    driven.turn()
    driven.book.submit(A, [row("x", options={"delay": 10.0})], False, 3.0)  # reused without resend
    assert driven.turn().outcomes == {A: [["x", protocol.OK, protocol.pack(5)]]}
    assert "x" not in driven.book.scheduler.jobs and len(driven.book.timers) == 0 and driven.book.next_due() is None
    driven.book.release_due(100.0)
    assert driven.leases() == {} and driven.journal.get("x").state == states.DONE


def test_a_journal_written_before_delayed_jobs_opens_and_restores(tmp_path):
    import sqlite3

    from runner.broker.journal import Journal, _SCHEMA

    path = str(tmp_path / "old.db")
    old = sqlite3.connect(path)
    old.executescript(_SCHEMA)  # the schema without the due column, as the previous version wrote it
    old.execute("INSERT INTO jobs (id, client, task, pool, queue, priority, payload, options, state) "
                "VALUES ('old', ?, 'tasks:add', 'thread', 'default', 0, ?, ?, 'pending')",
                (A, b"\x90", protocol.pack({})))
    old.commit()
    assert "due" not in {column[1] for column in old.execute("PRAGMA table_info(jobs)")}
    old.close()
    driven = Broker(path)
    try:
        driven.book.restore(5.0)
        assert driven.book.scheduler.jobs["old"].state == PENDING, "no due time: it may run at once"
        driven.book.submit(A, [row("new", options={"delay": 1.0})], False, 5.0)
        driven.turn()
        assert [(stored[0], stored[9]) for stored in driven.journal.unfinished()] == [("old", None), ("new", 6.0)]
    finally:
        driven.journal.close()


def test_a_retry_keeps_waiting_out_its_backoff_across_a_restart(driven):
    retried = {"retries": 1, "backoff": 10.0}
    driven.book.submit(A, [row("x", options=retried), row("y", options=retried)], False, 1.0)
    driven.book.worker_joined(b"w", ["default"], {"thread": 2}, [], 1.0)
    assert driven.leases() == {b"w": [("x", 1), ("y", 1)]}
    driven.book.results(b"w", [["x", 1, protocol.FAILED, ERROR]], 2.0)
    driven.turn()
    x_due = driven.book.scheduler.jobs["x"].due
    driven.restart(crashed=True, now=3.0)
    x = driven.book.scheduler.jobs["x"]
    assert (x.state, x.due, x.attempt) == (DEFERRED, x_due, 1), "the backoff goes on from where it was"
    assert driven.book.scheduler.jobs["y"].state == PENDING, "a job that was running is queued again"
    assert driven.book.timers.counts == {SCHEDULED: 0, DEFERRED: 1}
    driven.restart(crashed=True, now=x_due + 1.0)
    assert driven.book.scheduler.jobs["x"].state == PENDING, "its backoff ended during the downtime"
