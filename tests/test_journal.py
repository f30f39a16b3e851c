"""The journal on real SQLite files: what survives a reopen, what a crash takes back, expiry, queues."""

from __future__ import annotations

import contextlib
import os
import sqlite3

import pytest

from runner import protocol
from runner.broker import journal as states
from runner.broker.checkpoint import BACKSTOP_PAGES
from runner.broker.journal import UNCLAIMED_KEEP, Journal
from cluster import wait_until

CLIENT = b"client-1"


def row(job_id: str, *, options: dict | None = None, priority: int = 0) -> tuple:
    """A row as JobBook journals it: (id, client, task, pool, queue, priority, payload, options)."""
    return (job_id, CLIENT, "tasks:add", "thread", "default", priority, b"\x92\x01\x02", options or {})


@pytest.fixture
def path(tmp_path) -> str:
    return str(tmp_path / "journal.db")


@pytest.fixture
def journal(path):
    opened = Journal(path)
    yield opened
    with contextlib.suppress(sqlite3.ProgrammingError):  # a simulated crash already closed it
        opened.close()


def reopen(journal: Journal) -> Journal:
    """What a restarted broker sees: commit, close, a new Journal on the same file."""
    journal.close()
    return Journal(journal.path)


def crash(journal: Journal) -> Journal:
    """A broker killed mid-turn: the connection goes away without COMMIT."""
    journal._db.close()
    return Journal(journal.path)


def unfinished_ids(journal: Journal) -> list[str]:
    return [stored[0] for stored in journal.unfinished()]


def finish(journal: Journal, job_id: str, state: str, now: float, *, status: str = "ok") -> None:
    journal.finish(job_id, state, status, b"outcome", 1, now)


# --- durability --------------------------------------------------------------------------------


def test_committed_jobs_are_seen_after_reopen_in_acceptance_order(journal):
    ids = ["zeta", "alpha", "mid", "beta"]
    journal.add_jobs([row(job_id) for job_id in ids[:2]])
    journal.commit()
    journal.add_jobs([row(job_id) for job_id in ids[2:]])
    journal.commit()
    reopened = reopen(journal)
    try:
        assert unfinished_ids(reopened) == ids
        job_id, client, task, pool, queue, priority, payload, options, attempts, due = next(reopened.unfinished())
        assert (client, task, pool, queue, priority, payload) == (CLIENT, "tasks:add", "thread", "default", 0,
                                                                   b"\x92\x01\x02")
        assert (attempts, protocol.unpack(options)) == (0, {})
    finally:
        reopened.close()


def test_options_round_trip(journal):
    options = {"retries": 2, "backoff": 0.5, "timeout": None, "max_attempts": 4}
    journal.add_jobs([row("a", options=options)])
    journal.commit()
    assert journal.get("a").options == options


def test_uncommitted_writes_are_lost_in_a_crash(journal):
    journal.add_jobs([row("kept")])
    journal.commit()
    journal.add_jobs([row("lost")])
    finish(journal, "kept", states.DONE, 10.0)
    assert journal.get("lost") is not None, "the broker's own connection sees its turn's writes"
    recovered = crash(journal)
    try:
        assert recovered.get("lost") is None
        assert unfinished_ids(recovered) == ["kept"]
        assert recovered.get("kept").state == states.PENDING
    finally:
        recovered.close()


def test_close_commits_the_last_turn(journal):
    journal.add_jobs([row("a")])
    reopened = reopen(journal)
    try:
        assert unfinished_ids(reopened) == ["a"]
    finally:
        reopened.close()


def test_adding_a_known_id_again_changes_nothing(journal):
    journal.add_jobs([row("a", priority=1)])
    journal.commit()
    finish(journal, "a", states.DONE, 5.0)
    journal.add_jobs([row("a", priority=7)])
    journal.commit()
    stored = journal.get("a")
    assert (stored.priority, stored.state) == (1, states.DONE)


def test_memory_journal_works_without_a_file():
    journal = Journal(":memory:")
    try:
        assert not journal.durable
        journal.add_jobs([row("a"), row("b")])
        journal.commit()
        finish(journal, "a", states.DONE, 1.0)
        journal.commit()
        assert unfinished_ids(journal) == ["b"]
        assert nonzero(journal.counts) == {states.DONE: 1, states.PENDING: 1}
    finally:
        journal.close()


def test_a_file_journal_runs_in_wal_mode_with_synchronous_normal(journal, path):
    journal.add_jobs([row("a")])
    journal.commit()
    # WAL is a property of the file: a separate connection, as after a restart, sees it.
    with contextlib.closing(sqlite3.connect(path)) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # synchronous is per connection: the journal's own connection must use NORMAL (1).
    assert journal._db.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert journal.durable


# --- states --------------------------------------------------------------------------------------


def test_finish_records_the_outcome_and_leaves_unfinished(journal):
    journal.add_jobs([row("a"), row("b")])
    journal.finish("a", states.FAILED, "failed", b"error", 3, 42.0)
    journal.commit()
    stored = journal.get("a")
    assert (stored.state, stored.status, stored.outcome, stored.attempts) == (states.FAILED, "failed", b"error", 3)
    assert unfinished_ids(journal) == ["b"]


def test_the_worker_that_gave_the_outcome_is_kept_and_a_requeue_forgets_it(journal):
    journal.add_jobs([row("a"), row("b")])
    journal.finish("a", states.DEAD, "failed", b"error", 3, 1.0, "alpha")
    journal.cancel("b", 1.0)
    journal.commit()
    assert (journal.get("a").worker, journal.get("b").worker) == ("alpha", None)
    assert [(job_id, worker) for job_id, *_, worker in journal.newest(states.FINAL_STATES, None, None, 10)] == [
        ("b", None), ("a", "alpha")]
    journal.requeue("a", CLIENT)
    journal.commit()
    assert journal.get("a").worker is None


def test_a_journal_written_before_the_worker_column_opens_and_gains_it(path):
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE jobs (id TEXT PRIMARY KEY, client BLOB NOT NULL, task TEXT NOT NULL, pool TEXT NOT NULL,
            queue TEXT NOT NULL, priority INTEGER NOT NULL, payload BLOB NOT NULL, options BLOB NOT NULL,
            state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, status TEXT, outcome BLOB, finished_at REAL);
        INSERT INTO jobs VALUES ('old', X'00', 't:f', 'thread', 'default', 0, X'90', X'80', 'done', 1, 'ok', X'c0', 1.0);
        INSERT INTO jobs VALUES ('waiting', X'00', 't:f', 'thread', 'default', 0, X'90', X'80', 'pending', 0,
            NULL, NULL, NULL);
    """)
    old.close()
    journal = Journal(path)
    try:
        assert journal.get("old").worker is None and journal.counts[states.DONE] == 1
        journal.finish("waiting", states.DONE, "ok", b"", 1, 2.0, "beta")
        journal.commit()
        assert journal.get("waiting").worker == "beta"
    finally:
        journal.close()
    reopened = Journal(path)  # a second open finds the column and adds nothing
    assert reopened.get("waiting").worker == "beta"
    reopened.close()


def test_the_workers_connected_are_listed_across_a_restart_and_an_uncommitted_hello_is_not(journal):
    assert journal.workers() == {}, "a new journal lists nobody"
    journal.worker_joined(b"w-1", "alpha")
    journal.worker_joined(b"w-2", "beta")
    journal.worker_joined(b"w-1", "alpha-renamed")  # a hello again, maybe under another name
    assert journal.worker_joined_uncommitted
    journal.commit()
    assert not journal.worker_joined_uncommitted
    journal.worker_left(b"w-2")
    journal = reopen(journal)
    assert journal.workers() == {b"w-1": "alpha-renamed"}
    journal.worker_joined(b"w-3", "gamma")  # a crash before the commit: never listed
    journal = crash(journal)
    assert journal.workers() == {b"w-1": "alpha-renamed"}
    journal.close()


def test_a_journal_written_before_the_worker_list_opens_with_it_unknown_once(path):
    Journal(path).close()
    old = sqlite3.connect(path)
    old.execute("DROP TABLE workers")  # as an older broker left it
    old.close()
    journal = Journal(path)
    assert journal.workers() is None, "who was connected when it stopped is unknown"
    journal.worker_joined(b"w-1", "alpha")
    journal = reopen(journal)
    assert journal.workers() == {b"w-1": "alpha"}
    journal.close()


def test_cancel_is_final(journal):
    journal.add_jobs([row("a")])
    journal.cancel("a", 1.0)
    journal.commit()
    stored = journal.get("a")
    assert (stored.state, stored.status) == (states.CANCELLED, "cancelled")
    assert unfinished_ids(journal) == []


def test_set_attempts_survives_reopen(journal):
    journal.add_jobs([row("a")])
    journal.set_attempts("a", 2)
    reopened = reopen(journal)
    try:
        assert [(stored[0], stored[8]) for stored in reopened.unfinished()] == [("a", 2)]
    finally:
        reopened.close()


def test_requeue_makes_a_dead_job_pending_with_fresh_attempts_for_the_new_client(journal):
    journal.add_jobs([row("a"), row("b")])
    journal.finish("a", states.DEAD, "failed", b"error", 3, 1.0)
    journal.delivered(["a"], 2.0, CLIENT)
    journal.requeue("a", b"client-2")
    journal.commit()
    stored = journal.get("a")
    assert (stored.state, stored.attempts, stored.status, stored.outcome, stored.client) == (
        states.PENDING, 0, None, None, b"client-2")
    assert unfinished_ids(journal) == ["a", "b"], "a requeued job keeps its place in acceptance order"


def test_a_job_requeued_after_its_outcome_was_acknowledged_keeps_that_acknowledgements_time(journal):
    # docs/guarantees.md: its new outcome may leave sooner than a full TTL after it is delivered.
    journal.add_jobs([row("a")])
    journal.finish("a", states.DEAD, "failed", b"error", 3, 100.0)
    journal.delivered(["a"], 100.0, CLIENT)
    journal.requeue("a", CLIENT)
    journal.commit()
    finish(journal, "a", states.DONE, 150.0)
    journal.delivered(["a"], 150.0, CLIENT)
    journal.commit()
    assert journal.expire(now=161.0, result_ttl=60.0) == 1, "the first acknowledgement (t=100) is past the TTL"
    journal.commit()
    assert journal.get("a") is None


def test_a_requeued_job_is_not_expired_by_its_old_acknowledgement_while_it_is_pending(journal):
    journal.add_jobs([row("a")])
    journal.finish("a", states.DEAD, "failed", b"error", 3, 100.0)
    journal.delivered(["a"], 100.0, CLIENT)
    journal.requeue("a", CLIENT)
    journal.commit()
    assert journal.expire(now=10**9, result_ttl=60.0) == 0
    journal.commit()
    assert journal.get("a").state == states.PENDING
    # That acknowledgement is used up: the new outcome stays for its own TTL after its own delivery.
    finish(journal, "a", states.DONE, 200.0)
    journal.delivered(["a"], 200.0, CLIENT)
    journal.commit()
    assert journal.expire(now=259.0, result_ttl=60.0) == 0
    assert journal.get("a").state == states.DONE
    assert journal.expire(now=261.0, result_ttl=60.0) == 1


def test_get_of_an_unknown_id_is_none(journal):
    assert journal.get("nope") is None


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {state: count for state, count in counts.items() if count}


def test_counts_by_state_are_kept_in_memory_and_match_the_table(journal, tmp_path):
    journal.add_jobs([row(f"j{i}") for i in range(6)])
    finish(journal, "j0", states.DONE, 1.0)
    finish(journal, "j1", states.DONE, 1.0)
    finish(journal, "j2", states.DEAD, 1.0, status="failed")
    journal.cancel("j3", 1.0)
    journal.commit()
    expected = {states.PENDING: 2, states.DONE: 2, states.DEAD: 1, states.CANCELLED: 1}
    assert nonzero(journal.counts) == expected
    assert nonzero(Journal(journal.path).counts) == expected  # what a restart counts from the table


def test_dead_letters_are_only_dead_jobs_oldest_first_and_limited(journal):
    journal.add_jobs([row(f"j{i}") for i in range(5)])
    finish(journal, "j0", states.DEAD, 30.0, status="failed")
    finish(journal, "j1", states.FAILED, 5.0, status="failed")
    finish(journal, "j2", states.DEAD, 10.0, status="failed")
    finish(journal, "j3", states.DEAD, 20.0, status="failed")
    journal.commit()
    assert [job.id for job in journal.dead_letters()] == ["j2", "j3", "j0"]
    assert [job.id for job in journal.dead_letters(limit=2)] == ["j2", "j3"]
    letter = journal.dead_letters()[0]
    assert (letter.state, letter.status, letter.outcome) == (states.DEAD, "failed", b"outcome")


# --- expiry ----------------------------------------------------------------------------------------


def test_delivered_outcomes_expire_after_the_ttl(journal):
    journal.add_jobs([row("old"), row("recent")])
    finish(journal, "old", states.DONE, 100.0)
    finish(journal, "recent", states.DONE, 100.0)
    journal.delivered(["old"], 100.0, CLIENT)
    journal.delivered(["recent"], 150.0, CLIENT)
    journal.commit()
    assert journal.expire(now=161.0, result_ttl=60.0) == 1
    journal.commit()
    assert journal.get("old") is None
    assert journal.get("recent").state == states.DONE


def test_an_acknowledgement_counts_only_for_the_jobs_its_client_owns(journal):
    journal.add_jobs([row("mine"), row("theirs"), ("other", b"client-2", "tasks:add", "thread", "default", 0,
                                                      b"\x90", {})])
    for job_id in ("mine", "theirs", "other"):
        finish(journal, job_id, states.DONE, 100.0)
    journal.delivered(["mine", "other"], 100.0, CLIENT)  # "other" is client-2's: CLIENT cannot start its TTL
    journal.delivered(["theirs"], 100.0, b"client-3")  # nor can client-3 start CLIENT's
    journal.commit()
    assert journal.expire(now=161.0, result_ttl=60.0) == 1
    journal.commit()
    assert journal.get("mine") is None
    assert journal.get("theirs").state == journal.get("other").state == states.DONE, "kept for their owners"
    journal.delivered(["other"], 170.0, b"client-2")
    journal.commit()
    assert journal.expire(now=231.0, result_ttl=60.0) == 1 and journal.get("other") is None


def test_owns_decides_for_acknowledgements_from_another_routing_id(journal):
    journal.add_jobs([row("a"), row("b")])
    finish(journal, "a", states.DONE, 100.0)
    finish(journal, "b", states.DONE, 100.0)
    journal.delivered(["a", "b"], 100.0, b"client-1-again")  # the same key under a new routing id, say
    journal.commit()
    same_key = lambda client, owner: client[:8] == owner[:8]  # noqa: E731 - as Access.same_owner with CURVE on
    assert journal.expire(now=161.0, result_ttl=60.0, owns=same_key) == 2


def test_an_acknowledgement_journaled_before_acknowledgers_were_recorded_counts_for_any_owner(path):
    journal = Journal(path)
    journal.add_jobs([row("a")])
    finish(journal, "a", states.DONE, 100.0)
    journal.close()
    old = sqlite3.connect(path)  # as an older broker left it: no client column, and a row of its
    old.executescript("DROP TABLE deliveries; CREATE TABLE deliveries (at REAL NOT NULL, ids TEXT NOT NULL);"
                      "INSERT INTO deliveries VALUES (100.0, '[\"a\"]');")
    old.close()
    journal = Journal(path)
    assert journal.expire(now=161.0, result_ttl=60.0) == 1
    journal.commit()
    assert journal.get("a") is None
    journal.close()


def test_undelivered_outcomes_are_kept_for_unclaimed_keep(journal):
    journal.add_jobs([row("a")])
    journal.finish("a", states.FAILED, "failed", b"error", 1, 100.0)
    journal.commit()
    assert journal.expire(now=100.0 + 10 * 60.0, result_ttl=60.0) == 0, "no acknowledgement: the TTL never starts"
    assert journal.expire_unclaimed(now=100.0 + UNCLAIMED_KEEP - 1, result_ttl=60.0) == 0
    assert journal.get("a") is not None
    assert journal.expire_unclaimed(now=100.0 + UNCLAIMED_KEEP + 1, result_ttl=60.0) == 1
    assert journal.get("a") is None


def test_a_ttl_longer_than_unclaimed_keep_holds_undelivered_outcomes_too(journal):
    ttl = 2 * UNCLAIMED_KEEP
    journal.add_jobs([row("a")])
    journal.cancel("a", 0.0)
    journal.commit()
    assert journal.expire_unclaimed(now=UNCLAIMED_KEEP + 1, result_ttl=ttl) == 0
    assert journal.expire_unclaimed(now=ttl + 1, result_ttl=ttl) == 1


def test_expiry_deletes_in_bounded_batches_and_forgets_acknowledgements_it_used(journal):
    journal.add_jobs([row(f"j{n}") for n in range(6)])
    for n in range(6):
        finish(journal, f"j{n}", states.DONE, 1.0)
        journal.delivered([f"j{n}"], 2.0, CLIENT)
    journal.commit()
    assert journal.expire(now=100.0, result_ttl=1.0, limit=4) == 4
    assert journal.expire(now=100.0, result_ttl=1.0, limit=4) == 2
    assert journal.expire(now=100.0, result_ttl=1.0, limit=4) == 0
    journal.commit()
    assert journal._db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 0
    assert journal.counts[states.DONE] == 0


def test_pending_jobs_never_expire(journal):
    journal.add_jobs([row("waiting"), row("retrying")])
    journal.set_attempts("retrying", 2)
    journal.delivered(["waiting"], 0.0, CLIENT)  # a stray acknowledgement must not make it expire
    journal.commit()
    assert journal.expire(now=10**12, result_ttl=0.0) == 0
    journal.commit()
    assert unfinished_ids(journal) == ["waiting", "retrying"]


# --- cluster-wide queue items ------------------------------------------------------------------------


def test_queue_items_are_fifo_per_name_and_survive_reopen(journal):
    for name, item in [("q", b"1"), ("other", b"x"), ("q", b"2"), ("q", b"3"), ("other", b"y")]:
        journal.queue_put(name, item)
    journal.queue_take("q", b"1")
    reopened = reopen(journal)
    try:
        assert reopened.queue_contents() == {"q": [b"2", b"3"], "other": [b"x", b"y"]}
    finally:
        reopened.close()


def test_queue_take_removes_only_the_oldest_copy_in_that_queue(journal):
    for name, item in [("q", b"dup"), ("q", b"mid"), ("q", b"dup"), ("other", b"dup")]:
        journal.queue_put(name, item)
    journal.queue_take("q", b"dup")
    journal.commit()
    assert journal.queue_contents() == {"q": [b"mid", b"dup"], "other": [b"dup"]}
    journal.queue_take("q", b"absent")
    journal.queue_take("q", b"mid")
    journal.queue_take("q", b"dup")
    journal.commit()
    assert journal.queue_contents() == {"other": [b"dup"]}


def test_uncommitted_queue_writes_are_lost_in_a_crash(journal):
    journal.queue_put("q", b"kept")
    journal.commit()
    journal.queue_put("q", b"lost")
    journal.queue_take("q", b"kept")
    recovered = crash(journal)
    try:
        assert recovered.queue_contents() == {"q": [b"kept"]}
    finally:
        recovered.close()


# --- checkpoints ---------------------------------------------------------------------------------


def test_checkpoints_copy_the_wal_from_a_thread_of_their_own(path):
    """The committing connection checkpoints only as a backstop; the checkpoint thread copies the
    committed pages into the database file soon after a commit, and stops on close."""
    journal = Journal(path)
    try:
        autocheckpoint = journal._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert autocheckpoint == BACKSTOP_PAGES
        empty = os.path.getsize(path)
        journal.add_jobs([row(f"job-{number}", options={"pad": "x" * 200}) for number in range(2_000)])
        journal.commit()
        wait_until(lambda: journal._checkpointer.checkpoints >= 1, timeout=10, interval=0.01,
                   message="a checkpoint by the journal's checkpoint thread")
        assert os.path.getsize(path) > empty + 200_000  # the committed pages are in the database file
    finally:
        journal.close()
    assert not journal._checkpointer._thread.is_alive()
    assert not os.path.exists(path + "-wal")  # the last close checkpointed the rest and removed it
    assert len(unfinished_ids(Journal(path))) == 2_000


def test_an_in_memory_journal_has_no_checkpoint_thread():
    journal = Journal(":memory:")
    assert journal._checkpointer is None
    journal.close()
