"""The life of every job in the broker, from acceptance to the outcome its client sees.

``JobBook`` takes events (jobs submitted, a worker joined, reported results, was
lost; a cancel; time passing) and decides: what to journal, what to lease to
whom (through the Scheduler), what to retry and when (through the retry rules),
and which outcomes go to which client. It touches no socket: what it decides
to send accumulates in an ``Outbox`` that the server takes after committing the
journal, so nothing is acknowledged or delivered before it is durable.

Guarantees (docs/guarantees.md): every accepted job reaches exactly one final
state (done, failed, dead or cancelled); a result counts only from the worker
holding the lease, for the attempt leased; the client gets each final outcome
until it acknowledges it.
"""

from __future__ import annotations

import collections
import random
import sys
from dataclasses import dataclass, field
from typing import Callable

from loguru import logger

from runner import protocol
from runner.broker import journal as states
from runner.errors import BackpressureError, PayloadTooLargeError, WorkerLostError, error_blob
from runner.broker.limits import ClientQuota, Limits
from runner.broker.counters import Counters
from runner.broker.events import EventHub
from runner.broker.dependencies import WAITING
from runner.broker.jobs_after import AfterJobs
from runner.broker.jobs_held import HeldJobs
from runner.broker.journal import EMPTY_OPTIONS, Journal
from runner.broker.retry import DEFAULT_RULES, RetryRules, may_run_again_after_worker_loss, retry_delay, should_retry
from runner.broker.scheduler import DEFERRED, PENDING, SCHEDULED, Job, Scheduler
from runner.broker.timers import due_time

log = logger.bind(component="jobs")

#: The event (runner/broker/events.py) of each final state.
EVENT_OF_STATE = {states.DONE: "finished", states.FAILED: "failed", states.DEAD: "dead", states.CANCELLED: "cancelled"}
LOST_WORKERS_REMEMBERED = 1000  # workers declared dead whose runs can still be kept if they report them


@dataclass
class Outbox:
    """What a turn decided to send; taken by the server after the journal commits."""

    accepted: dict[bytes, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    outcomes: dict[bytes, list[list]] = field(default_factory=lambda: collections.defaultdict(list))
    stop_jobs: dict[bytes, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    leases: list[tuple[bytes, list[Job]]] = field(default_factory=list)
    hold: dict[str, float] = field(default_factory=dict)  # leased jobs' seconds to wait on their worker


class JobBook(HeldJobs, AfterJobs):
    """Every job the broker holds, and every decision about it."""

    def __init__(self, journal: Journal, *, rng: random.Random | None = None, limits: Limits | None = None,
                 same_owner: Callable[[bytes, bytes], bool] | None = None, events: EventHub | None = None) -> None:
        """``same_owner(peer, owner)``: may ``peer`` take over a job id ``owner`` submitted (CURVE on:
        only under the same key)? None: anybody may (no keys, every peer is an admin).
        ``events``: where each step of a job's life goes, when anyone wants it."""
        self.journal = journal
        self.events = events or EventHub()
        self.same_owner = same_owner
        self.limits = limits or Limits()
        self.quota = ClientQuota(self.limits.max_pending)
        self.scheduler = Scheduler()
        self.rng = rng or random.Random()
        self.outbox = Outbox()
        self.counters = Counters()
        self._draining: set[bytes] = set()
        # Runs of workers declared dead, until they register again: a run one of them reports
        # finished before that still counts if nobody else took its job (see results_from_lost_worker).
        self._lost_runs: dict[bytes, dict[str, int]] = {}
        # Each connected worker's name, journaled with every outcome it gives: asked of the server once,
        # not per job. Dropped when the worker joins again or is lost (its name may change with a hello).
        self._worker_names: dict[bytes, str] = {}
        self._init_held()
        self._init_after()

    # --- start-up ---------------------------------------------------------------------------

    def restore(self, now: float) -> int:
        """Queue again every journaled job without a final outcome (after a restart); a delayed job,
        or a retry, not yet due at ``now`` waits for its time again; one due during the downtime is
        queued now; a job waiting for others waits again, as its dependencies stand. (The server
        then holds the queued ones for their workers' claims: ``hold_for_claims``.)"""
        count = 0
        shared: dict = {}  # one object per distinct client, task, pool and queue, not one per job
        for job_id, client, task, pool, queue, priority, payload, options, attempts, due in self.journal.unfinished():
            wire = None if options == EMPTY_OPTIONS else protocol.unpack(options)
            rules = DEFAULT_RULES if wire is None else RetryRules.from_wire(wire)
            job = Job(job_id, shared.setdefault(task, task), shared.setdefault(pool, pool),
                      shared.setdefault(queue, queue), priority, payload, shared.setdefault(client, client), rules)
            job.attempt = attempts
            self._place(job, wire, due, now)
            self.quota.add(job.client)
            count += 1
        self._start_held(now)  # once every held job is back: their dependencies are among them
        return count

    # --- clients ------------------------------------------------------------------------------

    def submit(self, client: bytes, rows: list[list], resend: bool, now: float) -> None:
        """Accept jobs; a resent id is recognised: held jobs are not doubled, finished ones answered.

        A job beyond the client's ``max_pending``, or with too large a payload, is answered
        at once with a LimitError outcome and not accepted.
        """
        fresh, delayed = [], []
        room, max_payload = self.quota.room(client), self.limits.max_payload_bytes
        held_jobs = self.scheduler.jobs
        for job_id, task, pool, queue, priority, payload, options in rows:
            held = held_jobs.get(job_id)
            if held is not None:
                if not self.may_take(client, held.client):
                    self._refuse_taken(client, job_id)
                    continue
                self._move(held, client)
            elif resend and self._answer_from_journal(client, job_id):
                pass
            elif room <= 0 or len(payload) > max_payload:
                self._refuse(client, job_id, room, len(payload))
                continue
            else:
                if options and "after" in options and self._refuse_dependencies(client, job_id, options["after"],
                                                                                  payload):
                    continue
                room -= 1
                # Interned: a million waiting jobs share a few task, pool and queue names.
                job = Job(job_id, sys.intern(task), sys.intern(pool), sys.intern(queue), priority, payload, client,
                          RetryRules.from_wire(options) if options else DEFAULT_RULES)
                job.accepted = now
                if not options:
                    self.scheduler.submit(job)
                else:  # delayed, or waiting for other jobs (starts waiting once journaled, below)
                    due = due_time(options, now)
                    self._place(job, options, due, now)
                    if due is not None:
                        delayed.append((due, job_id))
                self.counters.submitted(job.queue, job.task)
                fresh.append((job_id, client, task, pool, queue, priority, payload, options))
                if self.events.wanted:
                    self.events.emit("accepted", job, now)
            self.outbox.accepted[client].append(job_id)
        if fresh:  # a batch of resends and refusals only must leave no empty entry behind
            self.quota.add(client, len(fresh))
            if self.journal.add_jobs(fresh) < len(fresh):
                self._answer_reused_ids(client, [row[0] for row in fresh])
            if delayed:
                self.journal.set_due(delayed)
        self._start_held(now)

    def _place(self, job: Job, options: dict | None, due: float | None, now: float) -> None:
        """Queue a new or restored job, or hold it: for the jobs it waits for (``after``; its due
        time, if any, counts once they are done), or until its due time (with attempts spent: a
        retry waiting out its backoff, as a restart finds it)."""
        if options and "after" in options:
            job.due = due  # not in the timers while it waits: _release puts it there
            self._queue_or_hold(job, options)
        elif due is None or due <= now:
            self.scheduler.submit(job)
        elif job.attempt:
            self.scheduler.defer(job)
            self.timers.add(job, due)
        else:
            self._hold_until(job, due)

    def create(self, client: bytes, row: list, now: float) -> bool:
        """A job the broker makes itself (a schedule's tick), owned by ``client``; False if its id exists.

        ``row`` is a submit row (see protocol.JOB_FIELDS). No quota refuses it (it is counted,
        so its finish balances), and its outcome is journaled for fetch and listings; the
        server sends it nowhere."""
        job_id, task, pool, queue, priority, payload, options = row
        if job_id in self.scheduler.jobs or self.journal.get(job_id) is not None:
            return False
        job = Job(job_id, task, pool, queue, priority, payload, client, RetryRules.from_wire(options))
        job.accepted = now
        self.scheduler.submit(job)
        self.counters.submitted(queue, task)
        self.quota.add(client)
        self.journal.add_jobs([(job_id, client, task, pool, queue, priority, payload, options)])
        if self.events.wanted:
            self.events.emit("accepted", job, now)
        return True

    def may_take(self, client: bytes, owner: bytes) -> bool:
        """May ``client`` act for the owner of a job: resend its id, or acknowledge its outcome."""
        return self.same_owner is None or client == owner or self.same_owner(client, owner)

    def _refuse_taken(self, client: bytes, job_id: str) -> None:
        """Another key's job id: neither its outcome nor the job goes to this client."""
        log.bind(job=job_id).warning("refused a submit of job id {} from {!r}: another key submitted it", job_id,
                                     client)
        error = ValueError(f"job id {job_id!r} is taken by another client; job ids must be unique "
                           "(runner.Client's carry 96 random bits)")
        self.outbox.outcomes[client].append([job_id, protocol.FAILED, error_blob(error)])

    def _move(self, job: Job, client: bytes) -> None:
        """A held job resubmitted under another identity: its outcome goes there now."""
        if job.client != client:
            self.quota.remove(job.client)
            self.quota.add(client)
            job.client = client

    def _refuse(self, client: bytes, job_id: str, room: int, size: int) -> None:
        refusal = self.limits.payload_refusal(size)
        error = PayloadTooLargeError.raised_here(refusal) if refusal else BackpressureError.raised_here(
            self.quota.refusal())
        log.bind(job=job_id).debug("refused: {}", error.message)
        self.outbox.outcomes[client].append([job_id, protocol.FAILED, error_blob(error)])

    def _answer_reused_ids(self, client: bytes, job_ids: list[str]) -> None:
        """Some ids were already journaled as finished (a client reused them without ``resend``):
        answer those with their stored outcome rather than run them again over it."""
        for job_id in job_ids:
            stored = self.journal.get(job_id)
            if stored is not None and stored.state in states.FINAL_STATES and (
                    self._withdraw(job_id) or self._unhold(job_id)):
                self.quota.remove(client)
                if not self.may_take(client, stored.client):
                    self._refuse_taken(client, job_id)
                    continue
                log.bind(job=job_id).warning("job id {} was submitted again after it finished: "
                                             "answered with its stored outcome, not run again", job_id)
                self.outbox.outcomes[client].append([job_id, stored.status, stored.outcome or b""])

    def _answer_from_journal(self, client: bytes, job_id: str) -> bool:
        stored = self.journal.get(job_id)
        if stored is None or stored.state not in states.FINAL_STATES:
            return False
        if not self.may_take(client, stored.client):
            self._refuse_taken(client, job_id)
            return True
        self.outbox.outcomes[client].append([job_id, stored.status, stored.outcome or b""])
        return True

    def owner(self, job_id: str) -> bytes | None:
        """The routing id of the client a job belongs to (its submitter, or who requeued it); None: unknown."""
        held = self.scheduler.jobs.get(job_id)
        if held is not None:
            return held.client
        stored = self.journal.get(job_id)
        return None if stored is None else stored.client

    def acknowledge(self, client: bytes, job_ids: list[str], now: float) -> None:
        """The client has these outcomes; the TTL starts for those it owns (see ``may_take``)."""
        self.journal.delivered(job_ids, now, client)

    def cancel(self, job_id: str, force: bool, now: float) -> str:
        """Cancel a job: 'cancelled', 'running' (refused without force), 'finished' or 'unknown'.

        A delayed job leased ahead of its due time, which its worker holds until then, has not
        started: it is cancelled without force."""
        job = self.scheduler.jobs.get(job_id)
        if job is None:
            return "finished" if self.journal.get(job_id) is not None else "unknown"
        if job.state == PENDING:
            self.scheduler.cancel(job_id)
        elif job.state in (DEFERRED, SCHEDULED):
            self._release_early(job)
        elif job.state == WAITING:
            self.dependencies.forget(job_id)
        elif not force and not (self._ahead and self.waiting_on_worker(job, now)):
            return "running"
        else:
            self.outbox.stop_jobs[job.worker].append(job_id)
            self.scheduler.drop_lease(job)
        self._finish(job, states.CANCELLED, protocol.CANCELLED, b"", now)
        return "cancelled"

    def requeue(self, job_id: str, client: bytes, now: float = 0.0) -> bool:
        """Run a failed or dead job again, with fresh attempts, for ``client``; False if not final."""
        stored = self.journal.get(job_id)
        if stored is None or stored.state not in (states.FAILED, states.DEAD):
            return False
        self.journal.requeue(job_id, client)
        job = Job(stored.id, stored.task, stored.pool, stored.queue, stored.priority, stored.payload,
                  client, RetryRules.from_wire(stored.options))
        self.quota.add(client)
        self._queue_or_hold(job, stored.options)  # waits again for what it still waited for, if anything
        self._start_held(now)
        self.counters.submitted(job.queue, job.task)
        if self.events.wanted:
            self.events.emit("requeued", job)
        return True

    # --- workers ------------------------------------------------------------------------------

    def worker_joined(self, worker: bytes, queues: list[str], slots: dict[str, int],
                      running: list[list], now: float, name: str = "") -> None:
        """A worker (re)registered; it keeps the runs it still has that nobody else holds. The journal
        lists it (by routing id, its ``name`` for logs) while it is connected, for a restart's claims."""
        self._draining.discard(worker)
        self._worker_names.pop(worker, None)
        self._lost_runs.pop(worker, None)  # the runs it still has are claimed below
        self.scheduler.worker_joined(worker, queues, slots)
        self.counters.worker_joined(worker)
        for job_id, attempt in running:
            job = self.scheduler.jobs.get(job_id)
            if job is not None and job.state in (DEFERRED, SCHEDULED):
                self._claim(job)
            if job is not None and job.state == PENDING and self.scheduler.adopt(worker, job, attempt):
                log.bind(job=job_id).info("kept on its worker after re-registration (attempt {})", job.attempt)
            else:
                self.outbox.stop_jobs[worker].append(job_id)
        self.journal.worker_joined(worker, name)
        self._worker_back(worker)

    def worker_credit(self, worker: bytes, credit: dict[str, int]) -> None:
        """The worker can hold this many jobs per pool now (a draining worker stays at none)."""
        if worker not in self._draining:
            self.scheduler.set_credit(worker, credit)

    def worker_draining(self, worker: bytes) -> None:
        """The worker is shutting down: no new leases, its results still count."""
        self._draining.add(worker)
        self.scheduler.set_credit(worker, {})

    def worker_lost(self, worker: bytes, now: float, charged: bool = True) -> None:
        """The worker died or left: its leased jobs run again, or are dead after too many losses.

        ``charged`` False (the worker only registered again) costs the jobs no attempt: each
        waits with the attempts the journal has spent, as a restart would find it. (Not one
        less than its lease's: a run kept after a charged loss was leased at the attempt spent.)
        """
        self._draining.discard(worker)
        self._worker_names.pop(worker, None)
        if charged:  # a worker only registering again keeps its counts, and its place in the journal
            self.counters.worker_left(worker)
            self.journal.worker_left(worker)
        for job in reversed(self.scheduler.worker_left(worker)):  # front pushes: last first keeps order
            if self._ahead and self.hold_again(job, now):  # it waited for its time there: not started
                job.attempt = self.journal.attempts(job.id)
            elif not charged:
                job.attempt = self.journal.attempts(job.id)
                self.scheduler.requeue(job, front=True)
            elif may_run_again_after_worker_loss(job.rules, job.attempt):
                log.bind(job=job.id).warning("requeued: its worker was lost during attempt {}", job.attempt)
                if self.events.wanted:
                    self.events.emit("requeued", job, now)
                self.scheduler.requeue(job, front=True)
                self.journal.set_attempts(job.id, job.attempt)
                self._remember_lost_run(worker, job)
            else:
                message = (f"job {job.id} lost its worker during attempt {job.attempt}, its last "
                           f"(max_attempts={job.rules.max_attempts}, retries={job.rules.retries})")
                log.bind(job=job.id).error("dead: {}", message)
                self._finish(job, states.DEAD, protocol.FAILED, error_blob(WorkerLostError.raised_here(message), attempts=job.attempt), now)

    def results(self, worker: bytes, rows: list[list], now: float) -> None:
        """Outcomes from a worker; each counts only for the lease it answers."""
        for job_id, attempt, status, payload in rows:
            job = self.scheduler.job_finished(worker, job_id, attempt)
            if job is None:
                log.bind(job=job_id).info("ignored a stale {} result for attempt {}", status, attempt)
            elif status == protocol.REQUEUE:
                job.attempt -= 1  # given back unrun: no attempt is charged
                if self.events.wanted:
                    self.events.emit("requeued", job, now)
                self.journal.set_attempts(job.id, job.attempt)
                if not (self._ahead and self.hold_again(job, now)):
                    self.scheduler.requeue(job, front=True)
            else:
                self._outcome(job, status, payload, now)

    def results_from_lost_worker(self, worker: bytes, rows: list[list], now: float) -> None:
        """Outcomes a worker declared dead sent before registering again (it was frozen or cut off).

        Each counts when its job still waits for the run that was lost with this worker,
        as a run it re-announced would be kept; anything else (a job taken by another
        worker since, or moved on) is ignored, as a stale result is.
        """
        runs = self._lost_runs.get(worker, {})
        for job_id, attempt, status, payload in rows:
            job = self.scheduler.jobs.get(job_id)
            lost_with_it = runs.pop(job_id, None) == attempt
            if not lost_with_it or job is None or status == protocol.REQUEUE or not self.scheduler.claim(job, attempt):
                log.bind(job=job_id).info("ignored a {} result for attempt {} from a worker declared dead", status, attempt)
                continue
            log.bind(job=job_id).info("kept the {} result of attempt {} its worker sent after it was declared dead",
                                      status, attempt)
            self._outcome(job, status, payload, now)

    def _remember_lost_run(self, worker: bytes, job: Job) -> None:
        runs = self._lost_runs.get(worker)
        if runs is None:
            if len(self._lost_runs) >= LOST_WORKERS_REMEMBERED:
                del self._lost_runs[next(iter(self._lost_runs))]  # the longest gone: it is not coming back
            runs = self._lost_runs[worker] = {}
        runs[job.id] = job.attempt

    def _outcome(self, job: Job, status: str, payload: bytes, now: float) -> None:
        """A run of ``job`` the broker counts ended: done, or failed (and maybe retried)."""
        self.counters.ran(job.worker, job.queue, job.task, status == protocol.OK, now, job.accepted, job.leased)
        if status == protocol.OK:
            self._finish(job, states.DONE, protocol.OK, payload, now)
        else:
            self._failed(job, payload, now)

    def _failed(self, job: Job, error: bytes, now: float) -> None:
        if should_retry(job.rules, job.attempt):
            delay = retry_delay(job.rules, job.attempt, self.rng)
            log.bind(job=job.id).info("attempt {} failed; retrying in {:.2f}s", job.attempt, delay)
            if self.events.wanted:
                self.events.emit("retried", job, now)
            self.journal.set_attempts(job.id, job.attempt, now + delay)
            self.counters.retried(job.queue, job.task)
            self.scheduler.defer(job)
            self.timers.add(job, now + delay)
            return
        state = states.DEAD if job.rules.retries else states.FAILED
        self._finish(job, state, protocol.FAILED, _with_attempts(error, job.attempt), now)

    def _finish(self, job: Job, state: str, status: str, outcome: bytes, now: float) -> None:
        self.scheduler.jobs.pop(job.id, None)
        if self._ahead:
            self._ahead.pop(job.id, None)
        self.quota.remove(job.client)  # every held job finishes exactly once
        # The name of the worker whose run ended it (None: cancelled, or lost with its worker).
        worker = job.worker and (self._worker_names.get(job.worker) or self._look_up_worker_name(job.worker))
        self.journal.finish(job.id, state, status, outcome, job.attempt, now, worker)
        self.outbox.outcomes[job.client].append([job.id, status, outcome])
        if self.events.wanted:
            self.events.emit(EVENT_OF_STATE[state], job, now)
        if job.id in self.dependencies.dependants:
            self._dependency_ended(job.id, state, outcome, now)

    def _look_up_worker_name(self, worker: bytes) -> str | None:
        """The worker's name as the server knows it (kept while it is connected); None if it is not."""
        name = self.events.worker_name(worker)
        if not name:
            return None
        self._worker_names[worker] = name
        return name

    # --- the turn's decisions -----------------------------------------------------------------

    def take_outbox(self, now: float | None = None) -> Outbox:
        """Leases for workers with credit, plus everything decided this turn; resets the outbox.

        ``now`` stamps each leased job's lease time (for the run-time and queue-wait metrics)."""
        self._flush_dependencies(now)
        self.outbox.leases = self.scheduler.dispatch()
        if now is not None:
            for _worker, jobs in self.outbox.leases:
                for job in jobs:
                    job.leased = now
            if self._ahead:
                self.outbox.hold = self.hold_times(self.outbox.leases, now)
        outbox, self.outbox = self.outbox, Outbox()
        return outbox


def _with_attempts(error: bytes, attempts: int) -> bytes:
    """The task's packed error, with the number of attempts it took."""
    try:
        details = protocol.unpack(error)
        details["attempts"] = attempts
        return protocol.pack(details)
    except Exception:
        return error
