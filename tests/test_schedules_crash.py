"""A broker that dies between journaling a tick and committing it makes the same job again at
restart, never a second one; the scheduler's jobs pass no quota; only client and admin keys
may schedule. The broker object is driven in this process, its journal a real SQLite file, and
a crash is the journal's connection closed without a commit (what SQLite sees of a kill -9)."""

from __future__ import annotations

import sqlite3
import time

import pytest
from cluster import wait_until

from runner.broker.access import Access, Keyring
from runner.broker.jobs import JobBook
from runner.broker.journal import Journal
from runner.broker.limits import Limits
from runner.broker.schedules import SCHEDULER_CLIENT, Fire, tick_job_id
from runner.broker.server import Broker
from runner.client_schedules import define
from runner.keys import peer_identity


def start(path) -> Broker:
    return Broker("tcp://127.0.0.1:*", journal=str(path))


def crash(broker: Broker, commit: bool) -> None:
    """The process dies: what was committed stays, the rest of the turn is lost."""
    if commit:
        broker.journal.commit()
    broker.journal._db.close()  # an open transaction is rolled back, as after a kill -9
    broker.link.close()
    broker.context.term()
    broker.loop.close()


def job_rows(path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [row[0] for row in db.execute("SELECT id FROM jobs ORDER BY id")]


def test_a_tick_lost_before_its_commit_is_made_again_with_the_same_id_and_never_twice(tmp_path):
    path = tmp_path / "journal.db"
    first = start(path)
    now = time.time()
    first._carry_out(first.schedules.add(define("crash", 1.0, "tasks:add", (1, 2), catch_up="all",
                                                overlap="allow"), now))
    first.journal.commit()
    actions = first.schedules.due(first.schedules.next_due())
    [fire] = [action for action in actions if isinstance(action, Fire)]
    first._carry_out(actions)
    assert fire.job_id in first.jobs.scheduler.jobs
    crash(first, commit=False)
    assert job_rows(path) == [], "nothing of the lost turn reached the journal"

    wait_until(lambda: time.time() > fire.tick, timeout=5, message="the tick passed")
    second = start(path)  # catch_up="all": the lost tick is missed, so it is made again
    assert fire.job_id in second.jobs.scheduler.jobs
    assert fire.job_id == tick_job_id("crash", fire.tick)
    fired = second.schedules.entries["crash"].fired
    crash(second, commit=True)
    assert fire.job_id in job_rows(path) and len(job_rows(path)) == fired

    third = start(path)  # committed: that tick is decided, and is not made again
    entry = third.schedules.entries["crash"]
    assert entry.done_until >= fire.tick and fire.job_id in entry.unfinished
    assert len(job_rows(path)) == len(set(job_rows(path)))
    third.journal.commit()
    assert len(job_rows(path)) == entry.fired, "one job row per tick fired, none twice"
    crash(third, commit=True)


def test_the_scheduler_s_jobs_pass_no_quota_and_an_existing_id_is_not_made_again():
    book = JobBook(Journal(":memory:"), limits=Limits(max_pending=1))
    rows = [[tick_job_id("q", tick), "tasks:add", "process", "default", 0, b"\x92\x90\x80", {}] for tick in (1.0, 2.0)]
    assert book.create(SCHEDULER_CLIENT, rows[0], 0.0) and book.create(SCHEDULER_CLIENT, rows[1], 0.0)
    assert not book.create(SCHEDULER_CLIENT, rows[0], 0.0)
    assert len(book.scheduler.jobs) == 2 and book.quota.held[SCHEDULER_CLIENT] == 2


def test_client_and_admin_keys_may_schedule_worker_keys_may_not():
    client, worker, admin = "C" * 40, "W" * 40, "A" * 40
    access = Access(Keyring(frozenset({client}), frozenset({worker}), frozenset({admin})))
    assert access.may_schedule(peer_identity(b"c-", client, "1"))
    assert access.may_schedule(peer_identity(b"c-", admin, "2"))
    assert not access.may_schedule(peer_identity(b"w-", worker, "3"))
    assert Access(None).may_schedule(b"anyone")


def test_the_broker_refuses_a_schedule_beyond_its_limits(monkeypatch):
    from runner.broker import schedule_shell

    broker = Broker("tcp://127.0.0.1:*", journal=":memory:", limits=Limits(max_payload_bytes=64))
    try:
        with pytest.raises(ValueError, match="more than the broker's limit of 64 .*--max-payload-bytes"):
            broker._acceptable(define("big", 1.0, "tasks:add", ("x" * 100,)))
        monkeypatch.setattr(schedule_shell, "MAX_SCHEDULES", 1)
        broker._carry_out(broker.schedules.add(define("one", 1.0, "tasks:add"), time.time()))
        assert broker._acceptable(define("one", 2.0, "tasks:add")).spec == 2.0, "replacing is no new schedule"
        with pytest.raises(ValueError, match="limit of 1 schedules"):
            broker._acceptable(define("two", 1.0, "tasks:add"))
    finally:
        crash(broker, commit=True)
