"""The claim window after a restart, decided by the JobBook on a real journal file (sans-IO).

Restored jobs wait for the claims of the workers still running them (jobs_held.py). The journal
lists the workers connected; the window ends when each listed worker has said hello again, or
when one liveness window has passed, whichever comes first; with none listed nothing waits.
"""

from __future__ import annotations

import random

import pytest
from test_jobbook_edges import OK, A, row

from runner import protocol
from runner.broker import journal as states
from runner.broker.jobs import JobBook
from runner.broker.journal import Journal
from runner.broker.scheduler import DEFERRED, RUNNING

W, V, NEW = b"w-1", b"w-2", b"w-new"
SLOTS = {"thread": 1}
GRACE = 10.0  # the liveness window of these brokers: long, so a window that ends early shows it


class Broker:
    """A JobBook driven as the server drives it, restarted as the server restarts it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.journal = Journal(path)
        self.book = JobBook(self.journal, rng=random.Random(3))

    def turn(self):
        outbox = self.book.take_outbox()
        self.journal.commit()
        return outbox

    def leases(self) -> dict[bytes, list[str]]:
        """A turn; the job ids leased to each worker in it."""
        return {worker: [job.id for job in jobs] for worker, jobs in self.turn().leases}

    def hello(self, worker: bytes, running: list[list] | None = None, now: float = 2.0, slots=SLOTS) -> None:
        self.book.worker_joined(worker, ["default"], slots, running or [], now, name=worker.decode())

    def restart(self, now: float = 2.0) -> None:
        """kill -9 (the turn uncommitted is lost), then a start on the same journal, as the server's."""
        self.journal._db.close()
        self.journal = Journal(self.path)
        self.book = JobBook(self.journal, rng=random.Random(3))
        self.book.restore(now)
        self.book.hold_for_claims(now + GRACE, self.journal.workers())


@pytest.fixture
def broker(tmp_path):
    made = Broker(str(tmp_path / "journal.db"))
    yield made
    made.journal.close()


def two_workers_each_running_one(broker: Broker) -> None:
    """Jobs x, y, z, u; w runs x, v runs y; z and u wait in the queue. Committed."""
    broker.book.submit(A, [row("x"), row("y"), row("z"), row("u")], False, 1.0)
    broker.hello(W, now=1.0)
    assert broker.leases() == {W: ["x"]}
    broker.hello(V, now=1.0)
    assert broker.leases() == {V: ["y"]}


def test_the_window_ends_once_every_listed_worker_has_said_hello_again(broker):
    two_workers_each_running_one(broker)
    broker.restart(now=2.0)
    assert broker.book.held_for_claims == 4
    broker.hello(NEW, now=2.1, slots={"thread": 4})  # a worker nobody listed: it runs nothing restored
    assert broker.leases() == {}, "a worker not listed does not end the window"
    broker.hello(W, [["x", 1]], now=2.2)
    assert broker.leases() == {} and broker.book.held_for_claims == 3, "v, listed, has not said hello yet"
    broker.hello(V, [["y", 1]], now=2.3)
    assert broker.book.held_for_claims == 0, "every listed worker is back: the window is over"
    assert broker.leases() == {NEW: ["z", "u"]}, "the unclaimed jobs are leased at once, in the order restored"
    for worker, job_id in [(W, "x"), (V, "y")]:
        job = broker.book.scheduler.jobs[job_id]
        assert (job.state, job.worker) == (RUNNING, worker), "each claimed run stays on its worker"
    broker.book.release_due(2.0 + GRACE)  # the window's own end finds nothing left to release
    assert broker.leases() == {}


def test_the_last_worker_back_gets_the_unclaimed_jobs_in_the_turn_of_its_hello(broker):
    broker.book.submit(A, [row("x"), row("z")], False, 1.0)
    broker.hello(W, now=1.0)
    assert broker.leases() == {W: ["x"]}
    broker.restart(now=2.0)
    broker.hello(W, [["x", 1]], now=2.1, slots={"thread": 2})
    assert broker.leases() == {W: ["z"]}
    broker.book.results(W, [["x", 1, protocol.OK, OK], ["z", 1, protocol.OK, OK]], 2.2)
    assert broker.turn().outcomes == {A: [["x", protocol.OK, OK], ["z", protocol.OK, OK]]}


def test_with_no_worker_listed_restored_jobs_are_not_held(broker):
    broker.book.submit(A, [row("x"), row("z")], False, 1.0)
    broker.hello(W, now=1.0)
    assert broker.leases() == {W: ["x"]}
    broker.book.worker_lost(W, 1.5)  # it left (a bye, or missed heartbeats): x went back to its queue
    broker.turn()
    broker.restart(now=2.0)
    assert broker.journal.workers() == {} and broker.book.held_for_claims == 0
    broker.hello(V, now=2.1, slots={"thread": 2})
    assert broker.leases() == {V: ["x", "z"]}, "nobody could be running them: leased at once"


def test_a_listed_worker_that_never_comes_back_keeps_the_window_for_its_full_length(broker):
    two_workers_each_running_one(broker)
    broker.restart(now=2.0)
    broker.hello(W, [["x", 1]], now=2.1, slots={"thread": 3})
    broker.book.release_due(2.0 + GRACE - 0.01)
    assert broker.leases() == {} and broker.book.held_for_claims == 3, "y may still run on v"
    assert broker.book.scheduler.jobs["y"].state == DEFERRED
    broker.book.release_due(2.0 + GRACE)
    assert broker.leases() == {W: ["y", "z"]}, "the window ran out: what nobody claimed runs (at least once)"
    broker.turn()
    assert broker.journal.workers() == {W: "w-1"}, "v, not back within the window, is forgotten as lost"
    broker.restart(now=20.0)  # so the next restart waits for w alone
    broker.hello(W, [["x", 1], ["y", 1], ["z", 1]], now=20.1)
    assert broker.book.held_for_claims == 0


def test_a_hello_again_keeps_the_worker_listed_and_an_uncommitted_hello_is_not(broker):
    broker.hello(W, now=1.0)
    broker.turn()
    broker.book.worker_lost(W, 1.1, charged=False)  # the server's "said hello again": no loss
    broker.hello(W, now=1.1)
    broker.turn()
    assert broker.journal.workers() == {W: "w-1"}
    broker.hello(V, now=1.2)  # killed before its turn's commit: never listed (and never leased anything)
    broker.restart(now=2.0)
    assert broker.journal.workers() == {W: "w-1"}
    assert broker.journal.worker_joined_uncommitted is False


def test_a_window_with_nothing_restored_still_forgets_the_workers_that_never_came_back(broker):
    broker.hello(W, now=1.0)
    broker.hello(V, now=1.0)
    broker.turn()
    broker.restart(now=2.0)
    broker.hello(W, now=2.1)
    broker.book.release_due(2.0 + GRACE)
    broker.turn()
    assert broker.journal.workers() == {W: "w-1"}


def test_a_journal_from_before_the_worker_list_holds_for_the_full_window(broker):
    two_workers_each_running_one(broker)
    broker.journal._db.execute("DROP TABLE workers")  # as a journal written by an older broker
    broker.restart(now=2.0)
    assert broker.journal.workers() is None and broker.book.held_for_claims == 4
    broker.hello(W, [["x", 1]], now=2.1, slots={"thread": 3})
    broker.hello(V, [["y", 1]], now=2.1)
    assert broker.leases() == {} and broker.book.held_for_claims == 2, "who else was connected is unknown"
    broker.book.release_due(2.0 + GRACE)
    assert broker.leases() == {W: ["z", "u"]}
    broker.turn()
    broker.restart(now=20.0)
    assert broker.journal.workers() == {W: "w-1", V: "w-2"}, "from then on the list is kept"


def test_a_cancelled_restored_job_is_not_released_when_the_window_ends(broker):
    two_workers_each_running_one(broker)
    broker.restart(now=2.0)
    assert broker.book.cancel("z", False, 2.05) == "cancelled"
    broker.hello(W, [["x", 1]], now=2.1, slots={"thread": 3})
    broker.hello(V, [["y", 1]], now=2.2)
    assert broker.leases() == {W: ["u"]}
    assert broker.journal.get("z").state == states.CANCELLED
