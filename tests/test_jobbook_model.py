"""JobBook driven by a model of clients, workers, time and broker restarts, on a real journal file.

The machine plays the server's part (events, then at the end of a turn
``take_outbox()`` and ``journal.commit()``) and the workers' part (runs they really
have, results they report, claims when they register again). After every step it
checks what the broker guarantees: each job is in exactly one place, no lease is
doubled or over credit, a result counts only for the lease it answers, attempts
only grow, nothing acknowledged is lost by a restart or a crash, and each job gets
one final outcome. The teardown drains everything and checks that every job ends.
"""

from __future__ import annotations

import collections
import functools
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runner import protocol
from runner.broker import journal as states
from runner.broker import jobs
from runner.broker.jobs import JobBook
from runner.broker.journal import Journal
from runner.broker.retry import (
    MAX_BACKOFF,
    RetryRules,
    may_run_again_after_worker_loss,
    should_retry,
)
from runner.broker.scheduler import DEFERRED, PENDING, RUNNING, SCHEDULED, UnknownWorker

QUEUES = ("default", "batch")
POOLS = ("thread", "process")
CLIENTS = (b"client-a", b"client-b")
ERROR = protocol.pack({"type": "ValueError", "message": "boom"})
PAST_EVERY_BACKOFF = 2 * MAX_BACKOFF  # jitter is at most +50%
MAX_LIVE_WORKERS = 5

OPTIONS = st.one_of(
    st.just({}),
    st.fixed_dictionaries({"retries": st.integers(1, 2), "backoff": st.sampled_from([0.5, 2.0])}),
    st.fixed_dictionaries({"max_attempts": st.integers(1, 2)}),
    st.fixed_dictionaries({"retries": st.integers(1, 2), "backoff": st.just(1.0), "max_attempts": st.just(1)}),
    st.fixed_dictionaries({"delay": st.sampled_from([0.0, 0.5, 5.0])}),  # delayed jobs (issue 13)
    st.fixed_dictionaries({"retries": st.just(1), "backoff": st.just(0.5), "delay": st.just(2.0)}),
)
JOB_SPECS = st.lists(
    st.tuples(st.sampled_from(QUEUES), st.sampled_from(POOLS), st.integers(-1, 1), OPTIONS), min_size=1, max_size=4
)
WORKER_QUEUES = st.lists(st.sampled_from(QUEUES), min_size=1, max_size=2, unique=True)
WORKER_SLOTS = st.fixed_dictionaries({pool: st.integers(0, 2) for pool in POOLS})
PICK = st.integers(0, 255)  # an index into whatever the rule chooses from
STATUSES = st.sampled_from([protocol.OK, protocol.OK, protocol.FAILED, protocol.REQUEUE])

BOOK_SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None)


@dataclass
class SimWorker:
    """A worker as the model sees it: what it serves and the runs it really has."""

    id: bytes
    queues: list[str]
    slots: dict[str, int]
    registered: bool = False  # the broker knows it (joined, not lost since)
    draining: bool = False
    runs: dict[str, int] = field(default_factory=dict)  # job id -> the attempt it runs
    orphans: list[tuple[str, int]] = field(default_factory=list)  # runs it was told to stop; may still report
    lost: dict[str, int] = field(default_factory=dict)  # runs taken back when it was declared dead, until it rejoins


@dataclass
class ModelJob:
    """What the model knows of one accepted job."""

    client: bytes  # who gets its outcome now
    durable_client: bytes  # who the journal names (a resend updates only the live one)
    rules: RetryRules
    acked: bool = False
    outcomes: int = 0  # final outcomes the JobBook emitted since it was (re)submitted
    status: str | None = None


def pick(items, index: int):
    items = list(items)
    return items[index % len(items)]


def step(method):
    """Mark the machine unsettled while a rule runs; the teardown drains only a settled machine."""

    @functools.wraps(method)
    def run(self, **kwargs):
        self._settled = False
        return method(self, **kwargs)

    return run


def book_places(book: JobBook) -> dict[str, list[str]]:
    """Where the JobBook holds each job: waiting, leased to a worker, or deferred for a retry."""
    found: dict[str, list[str]] = collections.defaultdict(list)
    for fifo in book.scheduler._waiting.values():
        for lane in fifo._by_priority.values():
            for job in lane:
                assert job.state == PENDING and book.scheduler.jobs.get(job.id) is job, job
                found[job.id].append("waiting")
    for slot in book.scheduler.workers.values():
        for job_id, job in slot.leased.items():
            assert job.state == RUNNING and job.worker == slot.id and book.scheduler.jobs.get(job_id) is job, job
            found[job_id].append(f"leased to {slot.id!r}")
    for entry in book.timers._heap:
        job = book.timers._live(entry)
        if job is not None:  # else a cancelled job's entry stayed behind, stale
            assert job.state in (DEFERRED, SCHEDULED), job
            found[job.id].append(job.state)
    return found


class JobBookMachine(RuleBasedStateMachine):
    """Clients, workers, time and restarts around one JobBook."""

    def __init__(self) -> None:
        super().__init__()
        self._settled = False
        self.directory = tempfile.mkdtemp(prefix="jobbook-model-")
        self.path = os.path.join(self.directory, "journal.db")
        self.now = 1000.0
        self.journal = Journal(self.path)
        self.book = JobBook(self.journal, rng=random.Random(7))
        self.jobs: dict[str, ModelJob] = {}
        self.workers: dict[bytes, SimWorker] = {}  # crashed workers are gone for good
        self.lease_of: dict[str, tuple[bytes, int]] = {}  # what the model expects the broker to lease
        self.seen_attempt: dict[str, int] = {}
        self.may_drop: set[str] = set()  # given back unrun this step: the attempt goes down by one
        self.committed_attempt: dict[str, int] = {}
        self.requeued_since_commit: dict[str, ModelJob] = {}
        self.resend_answers: dict[str, list[tuple[bytes, str]]] = collections.defaultdict(list)
        self.job_count = 0
        self.worker_count = 0

    # --- clients ------------------------------------------------------------------------------

    @rule(client=st.sampled_from(CLIENTS), specs=JOB_SPECS)
    @step
    def submit(self, client, specs):
        rows = []
        for queue, pool, priority, options in specs:
            job_id = f"j{self.job_count}"
            self.job_count += 1
            rows.append([job_id, "tasks:add", pool, queue, priority, b"\x90", options])
            self.jobs[job_id] = ModelJob(client, client, RetryRules.from_wire(options))
            self.seen_attempt[job_id] = 0
        self.book.submit(client, rows, False, self.now)

    @precondition(lambda self: self.jobs)
    @rule(index=PICK, force=st.booleans(), unknown=st.booleans())
    @step
    def cancel(self, index, force, unknown):
        job_id = "never-submitted" if unknown else pick(sorted(self.jobs), index)
        place = self._place(job_id)
        answer = self.book.cancel(job_id, force, self.now)
        expected = {"waiting": "cancelled", "deferred": "cancelled", "scheduled": "cancelled", "final": "finished",
                    None: "unknown",
                    "leased": "cancelled" if force else "running"}[place]
        assert answer == expected, (job_id, place, force)
        if answer == "cancelled":
            assert self.journal.get(job_id).state == states.CANCELLED
            if place == "leased":
                worker, _ = self.lease_of.pop(job_id)
                assert job_id in self.book.outbox.stop_jobs[worker]

    @precondition(lambda self: any(job.outcomes for job in self.jobs.values()))
    @rule(index=PICK, client=st.sampled_from(CLIENTS))
    @step
    def requeue_final(self, index, client):
        job_id = pick(sorted(j for j, job in self.jobs.items() if job.outcomes), index)
        state = self.journal.get(job_id).state
        requeued = self.book.requeue(job_id, client)
        assert requeued == (state in (states.FAILED, states.DEAD)), state
        if requeued:
            old = self.jobs[job_id]
            self.requeued_since_commit.setdefault(job_id, old)
            self.jobs[job_id] = ModelJob(client, client, old.rules, acked=True)
            self.seen_attempt[job_id] = 0
            assert self.book.scheduler.jobs[job_id].state == PENDING

    @precondition(lambda self: any(job.acked for job in self.jobs.values()))
    @rule(index=PICK, client=st.sampled_from(CLIENTS))
    @step
    def resend(self, index, client):
        """A client that reconnected sends an acknowledged job again."""
        job_id = pick(sorted(j for j, job in self.jobs.items() if job.acked), index)
        model = self.jobs[job_id]
        held = job_id in self.book.scheduler.jobs
        if not held and not model.outcomes:
            return  # decided this turn, outcome not yet sent: a resend would answer it twice, by design
        before = len(self.book.scheduler.jobs)
        self.book.submit(client, [[job_id, "tasks:add", "thread", "default", 0, b"\x90", {}]], True, self.now)
        assert len(self.book.scheduler.jobs) == before, "a resend never doubles a job"
        assert job_id in self.book.outbox.accepted[client]
        if held:
            model.client = client
            assert self.book.scheduler.jobs[job_id].client == client
        else:
            self.resend_answers[job_id].append((client, model.status))

    # --- workers ------------------------------------------------------------------------------

    @precondition(lambda self: len(self.workers) < MAX_LIVE_WORKERS)
    @rule(queues=WORKER_QUEUES, slots=WORKER_SLOTS)
    @step
    def join_new_worker(self, queues, slots):
        worker = SimWorker(f"w{self.worker_count}".encode(), queues, slots)
        self.worker_count += 1
        self.workers[worker.id] = worker
        self._join(worker)

    @precondition(lambda self: self._registered())
    @rule(index=PICK, crashed=st.booleans(), busy=st.booleans())
    @step
    def lose_worker(self, index, crashed, busy):
        """The broker declares a worker dead: it crashed, or it is cut off and may come back."""
        busy_workers = [worker for worker in self._registered() if worker.runs]
        worker = pick(busy_workers if busy and busy_workers else self._registered(), index)
        lost = {job_id: job.attempt for job_id, job in self.book.scheduler.workers[worker.id].leased.items()}
        self.book.worker_lost(worker.id, self.now)
        worker.registered = worker.draining = False
        worker.lost = dict(lost)
        for job_id, attempt in lost.items():
            assert self.lease_of.pop(job_id) == (worker.id, attempt)
            self._check_lost(job_id, attempt)
        if crashed:
            del self.workers[worker.id]

    @precondition(lambda self: self._cut_off())
    @rule(index=PICK)
    @step
    def rejoin(self, index):
        """A worker declared dead registers again, claiming the runs it still has."""
        worker = pick(self._cut_off(), index)
        if worker.id in self.book.outbox.stop_jobs:
            self._turn()  # its earlier hello was answered in a turn of its own
        self._join(worker)

    @precondition(lambda self: any(not worker.draining for worker in self._registered()))
    @rule(index=PICK)
    @step
    def drain_worker(self, index):
        worker = pick([worker for worker in self._registered() if not worker.draining], index)
        self.book.worker_draining(worker.id)
        worker.draining = True

    @precondition(lambda self: any(worker.runs or worker.orphans for worker in self.workers.values()))
    @rule(index=PICK, status=STATUSES, orphan=st.booleans())
    @step
    def report(self, index, status, orphan):
        """A worker reports one run: live, or one it was told to stop (racing the stop)."""
        worker = pick([worker for worker in self.workers.values() if worker.runs or worker.orphans], index)
        if orphan and worker.orphans:
            job_id, attempt = worker.orphans.pop(index % len(worker.orphans))
        else:
            job_id, attempt = pick(sorted(worker.runs.items()), index) if worker.runs else worker.orphans.pop()
            worker.runs.pop(job_id, None)
        self._report(worker, job_id, attempt, status)

    @precondition(lambda self: any(worker.runs for worker in self._cut_off()))
    @rule(index=PICK, status=STATUSES)
    @step
    def report_after_loss(self, index, status):
        """A worker declared dead reports a run before it registers again (it was frozen, not gone)."""
        worker = pick([worker for worker in self._cut_off() if worker.runs], index)
        job_id, attempt = pick(sorted(worker.runs.items()), index)
        del worker.runs[job_id]
        self._report(worker, job_id, attempt, status)

    @rule(statuses=st.lists(STATUSES, min_size=1, max_size=3))
    @step
    def work(self, statuses):
        """A turn, then every registered worker finishes up to len(statuses) of its runs."""
        self._turn()
        for worker in self._registered():
            for (job_id, attempt), status in zip(sorted(worker.runs.items()), statuses):
                del worker.runs[job_id]
                self._report(worker, job_id, attempt, status)

    # --- time and turns -------------------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.1, 1.0, 3.0, 10.0]))
    @step
    def advance_time(self, seconds):
        self.now += seconds
        self.book.release_due(self.now)
        due = self.book.next_due()
        assert due is None or due > self.now

    @rule()
    @step
    def turn(self):
        self._turn()

    # --- broker restarts --------------------------------------------------------------------------

    @rule(data=st.data(), crashed=st.booleans())
    @step
    def restart(self, data, crashed):
        """The broker starts again on the same journal file: after a turn, or killed in the middle of one."""
        if crashed:
            self._crash()
        else:
            self._turn()
            self.journal.close()
        self._start_again(data)

    def _crash(self) -> None:
        """What was not committed never happened."""
        self.journal._db.close()
        for job_id in [job_id for job_id, job in self.jobs.items() if not job.acked]:
            del self.jobs[job_id]  # never acknowledged: its client sends it again
        self.jobs.update(self.requeued_since_commit)
        self.requeued_since_commit.clear()
        self.resend_answers.clear()

    def _start_again(self, data) -> None:
        self.journal = Journal(self.path)
        self.book = JobBook(self.journal, rng=random.Random(len(self.jobs)))
        restored = self.book.restore(self.now)
        unfinished = {job_id for job_id, job in self.jobs.items() if not job.outcomes}
        assert set(self.book.scheduler.jobs) == unfinished, "nothing acknowledged is lost, nothing final returns"
        assert restored == len(unfinished)
        for job_id in self.jobs:
            if job_id not in unfinished:
                assert self.journal.get(job_id).state in states.FINAL_STATES
        for job_id, job in self.book.scheduler.jobs.items():
            assert job.attempt == self.committed_attempt[job_id], "attempts spent survive the restart"
            self.seen_attempt[job_id] = job.attempt
            self.jobs[job_id].client = self.jobs[job_id].durable_client
        self.lease_of.clear()
        self.may_drop.clear()
        for worker in self.workers.values():
            worker.registered = worker.draining = False
        for worker_id in data.draw(st.permutations(sorted(self.workers)), label="workers join in order"):
            self._join(self.workers[worker_id])

    # --- invariants ---------------------------------------------------------------------------------

    @invariant()
    def holds(self):
        places = book_places(self.book)
        assert set(self.book.scheduler.jobs) == set(places), "the scheduler holds exactly the placed jobs"
        for job_id in self.jobs:
            final = self.journal.get(job_id).state in states.FINAL_STATES
            where = places.get(job_id, []) + (["final"] if final else [])
            assert len(where) == 1, f"{job_id} is in {where}"
        assert set(places) <= set(self.jobs), "no job the model never submitted"
        held = collections.Counter(job.client for job in self.book.scheduler.jobs.values())
        assert self.book.quota.held == dict(held), "--max-pending counts exactly each client's unfinished jobs"
        self._check_leases()
        self._check_attempts()
        self._settled = True

    def _check_leases(self) -> None:
        registered = {worker.id for worker in self._registered()}
        assert set(self.book.scheduler.workers) == registered
        broker_leases = {}
        for slot in self.book.scheduler.workers.values():
            worker = self.workers[slot.id]
            for pool in POOLS:
                in_pool = sum(1 for job in slot.leased.values() if job.pool == pool)
                assert slot.in_flight[pool] == in_pool >= 0
                assert worker.draining or in_pool <= worker.slots[pool], (slot.id, pool, in_pool)
            for job_id, job in slot.leased.items():
                broker_leases[job_id] = (slot.id, job.attempt)
                assert worker.runs.get(job_id) == job.attempt, f"{slot.id!r} holds {job} but runs {worker.runs}"
        assert broker_leases == self.lease_of, "a result counts for exactly the lease the model expects"

    def _check_attempts(self) -> None:
        for job_id, job in self.book.scheduler.jobs.items():
            floor = self.seen_attempt[job_id] - (1 if job_id in self.may_drop else 0)
            assert job.attempt >= floor, f"{job} went down from {self.seen_attempt[job_id]}"
            assert 0 <= job.attempt <= job.rules.attempt_limit, job
            self.seen_attempt[job_id] = job.attempt
        self.may_drop.clear()

    # --- the drain --------------------------------------------------------------------------------

    def teardown(self):
        try:
            if self._settled:
                self._drain()
        finally:
            self.journal.close()
            shutil.rmtree(self.directory, ignore_errors=True)

    def _drain(self) -> None:
        """A worker for everything, every run completing ok, time past every backoff: all jobs end."""
        drainer = SimWorker(b"drainer", list(QUEUES), {pool: 2 for pool in POOLS})
        self.workers[drainer.id] = drainer
        self._join(drainer)
        for _ in range(500):
            self._turn()
            for worker in self._registered():
                for job_id, attempt in list(worker.runs.items()) + worker.orphans:
                    worker.runs.pop(job_id, None)
                    self._report(worker, job_id, attempt, protocol.OK)
                worker.orphans.clear()
            self.now += PAST_EVERY_BACKOFF
            self.book.release_due(self.now)
            if not self.book.scheduler.jobs and not self.book.outbox:
                break
        self.holds()
        assert not self.book.scheduler.jobs, f"never finished: {self.book.scheduler.jobs}"
        assert all(job.outcomes == 1 for job in self.jobs.values()), "every job gets exactly one outcome"
        assert self.journal.counts[states.PENDING] == 0

    # --- helpers ----------------------------------------------------------------------------------

    def _registered(self) -> list[SimWorker]:
        return [worker for worker in self.workers.values() if worker.registered]

    def _cut_off(self) -> list[SimWorker]:
        return [worker for worker in self.workers.values() if not worker.registered]

    def _place(self, job_id: str) -> str | None:
        job = self.book.scheduler.jobs.get(job_id)
        if job is not None:
            return {PENDING: "waiting", RUNNING: "leased", DEFERRED: "deferred", SCHEDULED: "scheduled"}[job.state]
        return None if self.journal.get(job_id) is None else "final"

    def _join(self, worker: SimWorker) -> None:
        """Register ``worker`` with the claims a real worker sends: every run it still has."""
        claims = sorted(worker.runs.items())
        adoptable = {job_id for job_id, attempt in claims if self._adoptable(job_id, attempt)}
        self.book.worker_joined(worker.id, worker.queues, worker.slots, [list(claim) for claim in claims], self.now)
        worker.registered, worker.draining = True, False
        worker.lost.clear()
        for job_id, attempt in claims:
            if job_id in adoptable:
                self.lease_of[job_id] = (worker.id, attempt)
            else:
                assert job_id in self.book.outbox.stop_jobs[worker.id], f"{worker.id!r} may not keep {job_id}"

    def _adoptable(self, job_id: str, attempt: int) -> bool:
        """A claim is kept when its job waits and the claimed run is the one the broker counts.

        The broker counts attempts spent; the claimed run is either the one its loss
        already charged (attempt == spent) or the next one (a restart forgot the lease).
        Anything else is a run the job's history has moved past: an attempt lost and
        run again elsewhere, or a run from before a client requeued the job.
        """
        job = self.book.scheduler.jobs.get(job_id)
        return job is not None and job.state == PENDING and job.attempt <= attempt <= job.attempt + 1

    def _report(self, worker: SimWorker, job_id: str, attempt: int, status: str) -> None:
        """Send one result row; check it counts exactly when it answers the lease."""
        payload = ERROR if status == protocol.FAILED else b"\xa2ok"
        row = [job_id, attempt, status, payload]
        if not worker.registered:
            with pytest.raises(UnknownWorker):
                self.book.results(worker.id, [row], self.now)
            # The server hands it on: a run lost with this worker counts if its job still waits for it.
            held = self.book.scheduler.jobs.get(job_id)
            counts = (worker.lost.pop(job_id, None) == attempt and status != protocol.REQUEUE
                      and held is not None and (held.state, held.attempt) == (PENDING, attempt))
            self._check_result(job_id, attempt, status, counts,
                               lambda: self.book.results_from_lost_worker(worker.id, [row], self.now))
            return
        counts = self.lease_of.get(job_id) == (worker.id, attempt)
        if counts:
            del self.lease_of[job_id]
        self._check_result(job_id, attempt, status, counts, lambda: self.book.results(worker.id, [row], self.now))

    def _check_result(self, job_id: str, attempt: int, status: str, counts: bool, report) -> None:
        """Deliver a result with ``report()``; it changes the job exactly when it ``counts``."""
        held = self.book.scheduler.jobs.get(job_id)
        before = None if held is None else (held.state, held.worker, held.attempt)
        outcomes_before = sum(len(rows) for rows in self.book.outbox.outcomes.values())
        report()
        outcomes_after = sum(len(rows) for rows in self.book.outbox.outcomes.values())
        if not counts:
            after = self.book.scheduler.jobs.get(job_id)
            assert after is held and (None if after is None else (after.state, after.worker, after.attempt)) == before
            assert outcomes_after == outcomes_before, f"a stale result for {job_id} was answered"
            return
        self._check_counted(job_id, attempt, status, outcomes_after - outcomes_before)

    def _check_counted(self, job_id: str, attempt: int, status: str, new_outcomes: int) -> None:
        rules = self.jobs[job_id].rules
        job = self.book.scheduler.jobs.get(job_id)
        stored = self.journal.get(job_id)
        if status == protocol.OK:
            assert (job, stored.state, new_outcomes) == (None, states.DONE, 1)
        elif status == protocol.REQUEUE:
            assert (job.state, job.attempt, new_outcomes) == (PENDING, attempt - 1, 0)
            self.may_drop.add(job_id)
        elif should_retry(rules, attempt):
            assert (job.state, stored.attempts, new_outcomes) == (DEFERRED, attempt, 0)
        else:
            expected = states.DEAD if rules.retries else states.FAILED
            assert (job, stored.state, stored.status, new_outcomes) == (None, expected, protocol.FAILED, 1)

    def _check_lost(self, job_id: str, attempt: int) -> None:
        job = self.book.scheduler.jobs.get(job_id)
        if may_run_again_after_worker_loss(self.jobs[job_id].rules, attempt):
            assert (job.state, job.attempt, self.journal.get(job_id).attempts) == (PENDING, attempt, attempt)
        else:
            assert job is None and self.journal.get(job_id).state == states.DEAD

    def _turn(self) -> None:
        """The end of a server turn: take the outbox, commit, deliver."""
        outbox = self.book.take_outbox()
        self.journal.commit()
        self.requeued_since_commit.clear()
        for client, ids in outbox.accepted.items():
            for job_id in ids:
                self.jobs[job_id].acked = True
        for worker_id, ids in outbox.stop_jobs.items():
            worker = self.workers.get(worker_id)
            for job_id in ids:
                if worker is not None and job_id in worker.runs:
                    worker.orphans.append((job_id, worker.runs.pop(job_id)))
        for worker_id, leased in outbox.leases:
            self._deliver_leases(self.workers[worker_id], leased)
        for client, rows in outbox.outcomes.items():
            for job_id, status, _ in rows:
                self._count_outcome(client, job_id, status)
        assert all(job.acked for job in self.jobs.values()), "every submitted job is acknowledged at the turn's end"
        assert not any(self.resend_answers.values()), f"resends not answered: {dict(self.resend_answers)}"
        self._check_journal()

    def _deliver_leases(self, worker: SimWorker, leased) -> None:
        assert worker.registered and not worker.draining, f"leased to {worker}"
        for job in leased:
            assert job.state == RUNNING and job.worker == worker.id
            assert job.id not in worker.runs, f"{worker.id!r} already runs {job.id}"
            before = self.seen_attempt[job.id]
            assert job.attempt == before + 1, f"{job} leased after attempt {before}"
            worker.runs[job.id] = job.attempt
            self.lease_of[job.id] = (worker.id, job.attempt)
            self.seen_attempt[job.id] = job.attempt

    def _count_outcome(self, client: bytes, job_id: str, status: str) -> None:
        model = self.jobs[job_id]
        if (client, status) in self.resend_answers[job_id]:
            self.resend_answers[job_id].remove((client, status))  # a resend answered from the journal
            return
        assert client == model.client, f"{job_id}'s outcome went to {client!r}, not {model.client!r}"
        model.outcomes += 1
        model.status = status
        assert model.outcomes == 1, f"{job_id} got {model.outcomes} final outcomes"
        stored = self.journal.get(job_id)
        expected = {protocol.OK: (states.DONE,), protocol.CANCELLED: (states.CANCELLED,),
                    protocol.FAILED: (states.FAILED, states.DEAD)}[status]
        assert stored.state in expected and stored.attempts <= model.rules.attempt_limit, stored

    def _check_journal(self) -> None:
        """After a commit the journal says, for every held job, what a restart must know."""
        self.committed_attempt = {}
        for job_id, job in self.book.scheduler.jobs.items():
            stored = self.journal.get(job_id)
            # A running job's own attempt is journaled only when it ends; one adopted after its
            # worker was lost runs the attempt that loss already journaled.
            spent = (job.attempt - 1, job.attempt) if job.state == RUNNING else (job.attempt,)
            assert stored.state == states.PENDING and stored.attempts in spent, (job, stored)
            self.committed_attempt[job_id] = stored.attempts


TestJobBook = JobBookMachine.TestCase
TestJobBook.settings = BOOK_SETTINGS


# --- claims and give-backs, one scenario each ---------------------------------------------------------


def _book_with_one_leased_job(path: str) -> tuple[Journal, JobBook]:
    journal = Journal(path)
    book = JobBook(journal, rng=random.Random(1))
    book.submit(CLIENTS[0], [["x", "tasks:add", "thread", "default", 0, b"\x90", {}]], False, 1.0)
    book.worker_joined(b"w", ["default"], {"thread": 1}, [], 1.0)
    book.take_outbox()
    journal.commit()
    assert book.scheduler.jobs["x"].attempt == 1
    return journal, book


def _claim_and_finish(book: JobBook) -> None:
    book.worker_joined(b"w", ["default"], {"thread": 1}, [["x", 1]], 3.0)
    job = book.scheduler.jobs["x"]
    assert (job.state, job.worker, job.attempt) == (RUNNING, b"w", 1), f"adopted as {job}"
    book.results(b"w", [["x", 1, protocol.OK, b"\xa2ok"]], 4.0)
    assert "x" not in book.scheduler.jobs and book.take_outbox().outcomes[CLIENTS[0]] == [["x", protocol.OK, b"\xa2ok"]]


def test_a_claim_after_a_plain_restart_keeps_the_attempt_it_runs(tmp_path):
    journal, _ = _book_with_one_leased_job(str(tmp_path / "journal.db"))
    journal.close()
    journal = Journal(journal.path)
    book = JobBook(journal)
    book.restore(2.0)
    _claim_and_finish(book)
    journal.close()


def test_a_claim_after_being_declared_dead_keeps_the_attempt_it_runs(tmp_path):
    journal, book = _book_with_one_leased_job(str(tmp_path / "journal.db"))
    book.worker_lost(b"w", 2.0)  # missed heartbeats, or said hello again: the job waits at attempt 1
    try:
        _claim_and_finish(book)
    finally:
        journal.close()


def test_a_claim_after_being_declared_dead_and_a_restart_keeps_the_attempt_it_runs(tmp_path):
    journal, book = _book_with_one_leased_job(str(tmp_path / "journal.db"))
    book.worker_lost(b"w", 2.0)
    journal.close()
    journal = Journal(journal.path)
    book = JobBook(journal)
    book.restore(2.0)
    try:
        _claim_and_finish(book)
    finally:
        journal.close()


def test_a_give_back_after_adoption_journals_the_attempts_left(tmp_path):
    journal, book = _book_with_one_leased_job(str(tmp_path / "journal.db"))
    book.worker_lost(b"w", 2.0)
    book.worker_joined(b"w", ["default"], {"thread": 1}, [["x", 1]], 3.0)
    book.results(b"w", [["x", 1, protocol.REQUEUE, b""]], 4.0)  # e.g. its pool was rebuilt under it
    book.worker_draining(b"w")
    book.take_outbox()
    journal.commit()
    try:
        assert book.scheduler.jobs["x"].attempt == 0
        assert journal.get("x").attempts == 0, "a restart would restore the job with an attempt spent"
    finally:
        journal.close()


def test_a_claim_from_before_a_requeue_is_refused(tmp_path):
    journal = Journal(str(tmp_path / "journal.db"))
    book = JobBook(journal, rng=random.Random(1))
    book.submit(CLIENTS[0], [["x", "tasks:add", "thread", "default", 0, b"\x90", {"max_attempts": 2}]], False, 1.0)
    for worker, now in ((b"a", 1.0), (b"b", 2.0)):  # leased to a (attempt 1), then to b (attempt 2)
        book.worker_joined(worker, ["default"], {"thread": 1}, [], now)
        book.take_outbox()
        book.worker_lost(worker, now + 0.5)  # cut off, still running its attempt
    assert journal.get("x").state == states.DEAD
    assert book.requeue("x", CLIENTS[0])
    book.take_outbox()
    book.worker_joined(b"b", ["default"], {"thread": 1}, [["x", 2]], 3.0)
    try:
        assert "x" in book.outbox.stop_jobs[b"b"], "b's run belongs to the job's life before the requeue"
        assert (book.scheduler.jobs["x"].state, book.scheduler.jobs["x"].attempt) == (PENDING, 0)
    finally:
        journal.close()


def test_an_id_submitted_again_after_it_finished_is_answered_not_run_again(tmp_path):
    journal = Journal(str(tmp_path / "journal.db"))
    book = JobBook(journal)
    row = ["x", "tasks:add", "thread", "default", 0, b"\x90", {}]
    book.submit(CLIENTS[0], [row], False, 1.0)
    book.worker_joined(b"w", ["default"], {"thread": 1}, [], 1.0)
    book.take_outbox()
    book.results(b"w", [["x", 1, protocol.OK, b"\xa2ok"]], 2.0)
    book.take_outbox()
    journal.commit()
    counts = dict(journal.counts)
    try:
        book.submit(CLIENTS[1], [row], False, 3.0)  # the same id, without resend: a client reused it
        outbox = book.take_outbox()
        journal.commit()
        assert outbox.outcomes[CLIENTS[1]] == [["x", protocol.OK, b"\xa2ok"]], "answered with the stored outcome"
        assert outbox.leases == [] and "x" not in book.scheduler.jobs, "not run again"
        assert journal.counts == counts, "the state counts do not drift"
        assert (journal.get("x").state, journal.get("x").outcome) == (states.DONE, b"\xa2ok")
    finally:
        journal.close()


# --- results a worker sends after it was declared dead, before it registers again ---------------------


def test_a_result_sent_after_being_declared_dead_counts_when_nobody_took_the_job(tmp_path):
    journal, book = _book_with_one_leased_job(str(tmp_path / "journal.db"))
    book.worker_lost(b"w", 2.0)  # frozen past its heartbeats: the job waits again, attempt 1 spent
    try:
        book.results_from_lost_worker(b"w", [["x", 1, protocol.OK, b"\xa2ok"]], 3.0)
        outbox = book.take_outbox()
        journal.commit()
        assert outbox.outcomes[CLIENTS[0]] == [["x", protocol.OK, b"\xa2ok"]] and outbox.leases == []
        assert "x" not in book.scheduler.jobs and book.scheduler.pending_by_queue() == {}
        assert (journal.get("x").state, journal.get("x").attempts) == (states.DONE, 1)
        book.worker_joined(b"w", ["default"], {"thread": 1}, [], 4.0)  # it registers again, holding nothing
        assert book.take_outbox().leases == []
    finally:
        journal.close()


def test_a_failure_sent_after_being_declared_dead_is_retried_as_any_failure(tmp_path):
    journal = Journal(str(tmp_path / "journal.db"))
    book = JobBook(journal, rng=random.Random(1))
    book.submit(CLIENTS[0], [["x", "tasks:add", "thread", "default", 0, b"\x90", {"retries": 1, "backoff": 2.0}]],
                False, 1.0)
    book.worker_joined(b"w", ["default"], {"thread": 1}, [], 1.0)
    book.take_outbox()
    book.worker_lost(b"w", 2.0)
    try:
        book.results_from_lost_worker(b"w", [["x", 1, protocol.FAILED, ERROR]], 3.0)
        assert book.scheduler.jobs["x"].state == DEFERRED and 3.0 + 1.0 <= book.next_due() <= 3.0 + 3.0
        assert book.take_outbox().outcomes == {}
    finally:
        journal.close()


@pytest.mark.parametrize("since", ["leased to another", "registered again", "another attempt", "given back",
                                   "other worker", "broker restarted"])
def test_a_result_sent_after_being_declared_dead_is_ignored_once_the_job_moved_on(tmp_path, since):
    journal, book = _book_with_one_leased_job(str(tmp_path / "journal.db"))
    book.worker_lost(b"w", 2.0)
    reporter, row = b"w", ["x", 1, protocol.OK, b"\xa2ok"]
    if since == "leased to another":
        book.worker_joined(b"v", ["default"], {"thread": 1}, [], 2.5)
        book.take_outbox()
    elif since == "registered again":  # its hello claimed nothing: the run it reports now was not kept
        book.worker_joined(b"w", ["default"], {"thread": 0}, [], 2.5)
    elif since == "another attempt":
        row = ["x", 2, protocol.OK, b"\xa2ok"]
    elif since == "given back":
        row = ["x", 1, protocol.REQUEUE, b""]
    elif since == "other worker":
        reporter = b"v"
    else:
        journal.close()
        journal = Journal(journal.path)
        book = JobBook(journal)
        book.restore(2.0)
    held = book.scheduler.jobs["x"]
    before = (held.state, held.worker, held.attempt)
    try:
        book.results_from_lost_worker(reporter, [row], 3.0)
        assert book.scheduler.jobs["x"] is held and (held.state, held.worker, held.attempt) == before
        assert book.take_outbox().outcomes == {}
    finally:
        journal.close()


def test_only_the_latest_workers_declared_dead_are_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs, "LOST_WORKERS_REMEMBERED", 1)
    journal = Journal(str(tmp_path / "journal.db"))
    book = JobBook(journal)
    book.submit(CLIENTS[0], [[job_id, "tasks:add", "thread", "default", 0, b"\x90", {}] for job_id in "xy"], False, 1.0)
    for worker in (b"a", b"b"):  # a runs x, b runs y; both are declared dead
        book.worker_joined(worker, ["default"], {"thread": 1}, [], 1.0)
        book.take_outbox()
    for worker in (b"a", b"b"):
        book.worker_lost(worker, 2.0)
    try:
        book.results_from_lost_worker(b"a", [["x", 1, protocol.OK, b"\xa2ok"]], 3.0)
        book.results_from_lost_worker(b"b", [["y", 1, protocol.OK, b"\xa2ok"]], 3.0)
        assert book.take_outbox().outcomes[CLIENTS[0]] == [["y", protocol.OK, b"\xa2ok"]], "a was forgotten"
    finally:
        journal.close()
