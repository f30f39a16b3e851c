"""The retry rules of docs/guarantees.md against expectations written out by hand.

Every expected number below is a literal, worked out from the documented rules, not
computed with runner/broker/retry.py (the model tests use it as their oracle, so an
off-by-one there would go unseen). The rules, as documented:

- ``retries=N``: a run that raised runs again while fewer than N retries were used;
  retry k waits ``retry_backoff x 2^(k-1)`` seconds, capped at one hour, +-50% jitter.
  The last failure of a job with retries is dead; without retries, failed.
- ``max_attempts=M`` (3 by default): a job runs at most ``max(M, N + 1)`` times in
  all; a run lost with its worker runs again only while that limit is not reached,
  else the job is dead (``WorkerLostError``). A run given back unrun costs nothing.

The first tables check retry.py's functions; the last drives the broker's JobBook
through real events on a real journal file and checks each attempt's outcome.
"""

from __future__ import annotations

import random

import pytest

from runner import protocol
from runner.broker import journal as states
from runner.broker.jobs import JobBook
from runner.broker.journal import Journal
from runner.broker.retry import RetryRules, may_run_again_after_worker_loss, retry_delay, should_retry
from runner.errors import WorkerLostError, error_blob, exception_from_blob


class EdgeOfJitter(random.Random):
    """A random source whose ``uniform(a, b)`` gives an end of its range: the jitter's bounds, exactly."""

    def __init__(self, high: bool) -> None:
        super().__init__(0)
        self.high = high

    def uniform(self, a: float, b: float) -> float:
        return b if self.high else a


# --- retry.py's rules, one attempt at a time ----------------------------------------------------

# (retries, attempt that raised) -> runs again?
SHOULD_RETRY = [
    (0, 1, False),
    (1, 1, True), (1, 2, False),
    (2, 1, True), (2, 2, True), (2, 3, False), (2, 4, False),
    (5, 5, True), (5, 6, False),
]


@pytest.mark.parametrize(("retries", "attempt", "expected"), SHOULD_RETRY)
def test_a_raised_run_is_retried_only_while_retries_remain(retries, attempt, expected):
    assert should_retry(RetryRules(retries=retries), attempt) is expected


# (retry_backoff, attempt that raised) -> (shortest, longest) wait before the retry that follows
RETRY_DELAY = [
    (1.0, 1, 0.5, 1.5),
    (1.0, 2, 1.0, 3.0),
    (1.0, 3, 2.0, 6.0),
    (0.25, 1, 0.125, 0.375),
    (0.25, 4, 1.0, 3.0),
    (0.0, 3, 0.0, 0.0),
    (1.0, 12, 1024.0, 3072.0),  # 2^11 s: still under the hour
    (1.0, 13, 1800.0, 5400.0),  # 2^12 s is past the hour's cap
    (3600.0, 1, 1800.0, 5400.0),
    (1000.0, 5, 1800.0, 5400.0),
]


@pytest.mark.parametrize(("backoff", "attempt", "shortest", "longest"), RETRY_DELAY)
def test_the_wait_before_a_retry_doubles_is_capped_at_an_hour_and_jitters_by_half(backoff, attempt, shortest, longest):
    rules = RetryRules(retries=attempt, backoff=backoff)
    assert retry_delay(rules, attempt, EdgeOfJitter(high=False)) == pytest.approx(shortest)
    assert retry_delay(rules, attempt, EdgeOfJitter(high=True)) == pytest.approx(longest)
    rng = random.Random(attempt)
    assert all(shortest <= retry_delay(rules, attempt, rng) <= longest for _ in range(200))


# (max_attempts, retries, attempt during which the worker died) -> runs again?
AFTER_WORKER_LOSS = [
    (3, 0, 1, True), (3, 0, 2, True), (3, 0, 3, False),  # the defaults
    (1, 0, 1, False),
    (2, 0, 1, True), (2, 0, 2, False),
    (5, 0, 4, True), (5, 0, 5, False),
    (3, 1, 2, True), (3, 1, 3, False),  # retries + 1 = 2 runs: max_attempts still rules
    (1, 4, 1, True), (1, 4, 4, True), (1, 4, 5, False),  # retries + 1 = 5 runs are never cut short
    (3, 3, 3, True), (3, 3, 4, False),
]


@pytest.mark.parametrize(("max_attempts", "retries", "attempt", "expected"), AFTER_WORKER_LOSS)
def test_a_run_lost_with_its_worker_runs_again_only_below_the_attempt_limit(max_attempts, retries, attempt, expected):
    rules = RetryRules(retries=retries, max_attempts=max_attempts)
    assert may_run_again_after_worker_loss(rules, attempt) is expected


def test_max_attempts_defaults_to_three():
    assert RetryRules().max_attempts == 3
    assert RetryRules.from_wire({}).max_attempts == 3
    assert RetryRules.from_wire({"retries": 1}).max_attempts == 3


# --- the JobBook: every attempt's outcome, event by event ---------------------------------------

RAISES, LOST, GIVEN_BACK = "raises", "worker lost", "given back"
RUNS_AGAIN = "runs again at once"
FAILED, DEAD = "failed", "dead"
ERROR = error_blob(RuntimeError("boom"))  # as a worker packs a task's exception
CLIENT, JOB = b"client", "job-1"
NOW = 1_000_000.0


def retry_after(shortest: float, longest: float) -> tuple:
    return ("retried after", shortest, longest)


# options -> what happens at each lease, in order: (what the run does, attempt number leased, expected outcome)
JOB_HISTORIES = {
    "no options, raises": ({}, [(RAISES, 1, FAILED)]),
    "retries=2 backoff=0.5, always raises": ({"retries": 2, "backoff": 0.5}, [
        (RAISES, 1, retry_after(0.25, 0.75)),
        (RAISES, 2, retry_after(0.5, 1.5)),
        (RAISES, 3, DEAD),
    ]),
    "no options, worker always dies": ({}, [(LOST, 1, RUNS_AGAIN), (LOST, 2, RUNS_AGAIN), (LOST, 3, DEAD)]),
    "max_attempts=1, worker dies": ({"max_attempts": 1}, [(LOST, 1, DEAD)]),
    "max_attempts=1, given back unrun first": ({"max_attempts": 1}, [
        (GIVEN_BACK, 1, RUNS_AGAIN),
        (LOST, 1, DEAD),
    ]),
    "retries=1 then worker dies": ({"retries": 1, "backoff": 1.0}, [
        (RAISES, 1, retry_after(0.5, 1.5)),
        (LOST, 2, RUNS_AGAIN),
        (LOST, 3, DEAD),
    ]),
    "retries=4 max_attempts=1, mixed": ({"retries": 4, "backoff": 1.0, "max_attempts": 1}, [
        (LOST, 1, RUNS_AGAIN),
        (RAISES, 2, retry_after(1.0, 3.0)),
        (LOST, 3, RUNS_AGAIN),
        (RAISES, 4, retry_after(4.0, 12.0)),
        (LOST, 5, DEAD),
    ]),
}


class OneJobBook:
    """A JobBook with one job, driven as the broker's server drives it: events, then the turn's outbox."""

    def __init__(self, path: str, options: dict, high: bool) -> None:
        self.journal = Journal(path)
        self.book = JobBook(self.journal, rng=EdgeOfJitter(high))
        self.now = NOW
        self.workers = 0
        self.book.submit(CLIENT, [[JOB, "tasks:add", "thread", "default", 0, protocol.pack([[1, 2], {}]), options]],
                         False, self.now)
        self.turn()

    def turn(self):
        outbox = self.book.take_outbox()
        self.journal.commit()
        return outbox

    def lease(self) -> tuple[bytes, int]:
        """A fresh worker joins and is leased the job; return it and the attempt number leased."""
        self.workers += 1
        worker = b"worker-%d" % self.workers
        self.book.worker_joined(worker, ["default"], {"thread": 1}, [], self.now)
        leases = self.turn().leases
        assert [(leased_to, [job.id for job in jobs]) for leased_to, jobs in leases] == [(worker, [JOB])]
        return worker, leases[0][1][0].attempt

    def run(self, worker: bytes, attempt: int, what: str) -> list:
        """The leased run raises, is lost with its worker, or is given back; return the outcomes sent."""
        if what == LOST:
            self.book.worker_lost(worker, self.now)
        else:
            status = protocol.FAILED if what == RAISES else protocol.REQUEUE
            self.book.results(worker, [[JOB, attempt, status, ERROR if what == RAISES else b""]], self.now)
            self.book.worker_lost(worker, self.now, charged=False)  # it leaves; it holds nothing now
        return self.turn().outcomes.get(CLIENT, [])


@pytest.mark.parametrize("high", [False, True], ids=["shortest jitter", "longest jitter"])
@pytest.mark.parametrize("history", JOB_HISTORIES, ids=list(JOB_HISTORIES))
def test_each_attempt_of_a_job_ends_as_the_rules_say(tmp_path, history, high):
    options, steps = JOB_HISTORIES[history]
    driven = OneJobBook(str(tmp_path / "journal.db"), options, high)
    for number, (what, expected_attempt, expected) in enumerate(steps, start=1):
        worker, attempt = driven.lease()
        assert attempt == expected_attempt, f"lease {number} was for attempt {attempt}"
        outcomes = driven.run(worker, attempt, what)
        held = driven.book.scheduler.jobs.get(JOB)
        if expected == RUNS_AGAIN:
            assert not outcomes and held is not None and driven.book.scheduler.pending_by_queue() == {"default": 1}
        elif isinstance(expected, tuple):
            _, shortest, longest = expected
            assert not outcomes and driven.book.next_due() == pytest.approx(driven.now + (longest if high else shortest))
            driven.book.release_due(driven.book.next_due() - 0.001)
            assert driven.book.scheduler.pending_by_queue() == {}, "a retry was queued before its backoff passed"
            driven.now = driven.book.next_due()
            driven.book.release_due(driven.now)
        else:
            assert_final(driven, outcomes, expected, attempt, what)
            assert number == len(steps)
            return
    raise AssertionError("every history ends with a final outcome")


def assert_final(driven: OneJobBook, outcomes: list, state: str, attempts: int, what: str) -> None:
    assert [(job_id, status) for job_id, status, _ in outcomes] == [(JOB, protocol.FAILED)]
    error = exception_from_blob(outcomes[0][2])
    assert isinstance(error, WorkerLostError if what == LOST else RuntimeError)
    assert error.attempts == attempts
    if what == LOST:
        assert f"during attempt {attempts}, its last" in str(error)
    stored = driven.journal.get(JOB)
    assert (stored.state, stored.attempts) == ({FAILED: states.FAILED, DEAD: states.DEAD}[state], attempts)
    assert JOB not in driven.book.scheduler.jobs
