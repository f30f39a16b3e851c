"""The JobBook's held jobs: delayed jobs, retries waiting out their backoff, and jobs restored
after a restart that wait for their workers' claims (a mixin of ``JobBook``, no sockets).

Each held job is out of its queue, in the ``DueTimes`` heap (runner/broker/timers.py), with
state ``scheduled`` (delayed, or restored) or ``deferred`` (a retry); ``release_due`` puts
those whose time has come back in their queues.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loguru import logger

from runner.broker.scheduler import DEFERRED, PENDING, SCHEDULED, Job
from runner.broker.timers import DueTimes

if TYPE_CHECKING:
    from runner.broker.jobs import JobBook

log = logger.bind(component="jobs")


class HeldJobs:
    """Jobs held until a time: in ``timers``, and, after a restart, ``_claimable`` by their workers."""

    def _init_held(self: "JobBook") -> None:
        self.timers = DueTimes(self.scheduler.jobs)  # delayed jobs not yet due, retries waiting out their backoff
        # Restored jobs held back after a restart until their workers had time to claim them in
        # their hellos (``hold_for_claims``; ordered: released in the order restored), and when
        # that time ends (0: no window open).
        self._claimable: dict[str, None] = {}
        self._claims_until = 0.0
        # The workers journaled as connected when the broker stopped that have not said hello again
        # (routing id: name): the window ends when the last one has. None: not known, the window runs out.
        self._awaited: dict[bytes, str] | None = {}

    def hold_for_claims(self: "JobBook", until: float, workers: dict[bytes, str] | None = None) -> None:
        """Hold every queued job (all restored, just after ``restore``) until ``until``, unless a
        worker claims it first. Leases are not journaled, so any of them may be running on a worker
        that outlived the broker; that worker claims it in its hello (``worker_joined``) once it
        notices the restart, and the job stays on it. Leased at once, it could go to another worker
        (or to the same one, had its result gone down with the broker) and run twice.

        ``workers``: those the journal lists as connected when the broker stopped
        (``Journal.workers``). Only they can run a restored job, so the window ends as soon as each
        has said hello again (``_worker_back``), and with none listed nothing is held. None (a
        journal from before that list): the window runs its full length.

        Held as a retry is (``deferred``), so users see it ``pending``, as it is to them: queued,
        not delayed (``held_for_claims`` keeps status's counts so)."""
        self._awaited = None if workers is None else dict(workers)
        if workers is not None and not workers:
            return  # nobody was connected: nobody runs a restored job
        self._claims_until = until
        queued = [job for job in self.scheduler.jobs.values() if job.state == PENDING]
        for job in queued:
            self.scheduler.cancel(job.id)
            self.scheduler.defer(job, DEFERRED)
            self.timers.add(job, until)
            self._claimable[job.id] = None
        if queued:
            log.info("holding {} restored jobs for their workers' claims until {}", len(queued),
                     f"the {len(workers)} workers connected before have said hello again, or one liveness window"
                     if workers else "one liveness window passes")

    @property
    def held_for_claims(self: "JobBook") -> int:
        """How many restored jobs still wait for their workers' claims (status counts them pending)."""
        return len(self._claimable)

    def _claim(self: "JobBook", job: Job) -> None:
        """A worker's hello names a held job: if it was restored and held for that claim, it goes back
        to its queue now, for the worker to adopt (a delayed job or a retry stays held)."""
        if job.id in self._claimable:
            self._release_early(job)
            self.scheduler.requeue(job, front=True)

    def _worker_back(self: "JobBook", worker: bytes) -> None:
        """A worker said hello, its claims taken: if it was the last the claim window waited for,
        the window ends now (every run that outlived the broker has been claimed)."""
        awaited = self._awaited
        if awaited and awaited.pop(worker, None) is not None and not awaited:
            self._end_claims()

    def _end_claims(self: "JobBook") -> None:
        """The claim window is over: the restored jobs nobody claimed go to the back of their
        queues, in the order restored; listed workers that did not say hello again within it are
        forgotten, as lost ones are (else every later restart would wait for them)."""
        jobs = self.scheduler.jobs
        for job_id in self._claimable:
            job = jobs[job_id]
            self.timers.remove(job)
            self.scheduler.requeue(job)
        missing = self._awaited or {}
        for worker in missing:
            self.journal.worker_left(worker)
        names = sorted(missing.values())
        if self._claimable or names:
            log.info("claim window over: {} restored jobs released{}", len(self._claimable),
                     f"; {len(names)} workers did not say hello again: {', '.join(names[:10])}" if names else "")
        self._claimable.clear()
        self._awaited = {}
        self._claims_until = 0.0

    def _release_early(self: "JobBook", job: Job) -> None:
        """Take a held job (``scheduled`` or ``deferred``) out of the timers before its time."""
        self.timers.remove(job)
        self._claimable.pop(job.id, None)

    def release_due(self: "JobBook", now: float) -> None:
        """Jobs whose time has come go to their queues: a retry whose backoff passed at the back,
        a delayed job now due at the front of its priority (it has waited since it was accepted,
        and was promised a time the jobs queued there were not)."""
        # Only a cancel, a worker claiming a restored job, or the claim window ending early (every
        # worker back) takes a held job out early (timers.remove).
        if self._claims_until and now >= self._claims_until:
            self._end_claims()  # the restored jobs nobody claimed go to their queues
        released = self.timers.pop_due(now)
        for job in released:
            if job.state == DEFERRED:
                self.scheduler.requeue(job)
        for job in reversed(released):  # front pushes: the latest first keeps them in due order
            if job.state == SCHEDULED:
                self.scheduler.requeue(job, front=True)

    def next_due(self: "JobBook") -> float | None:
        """When the earliest held job is due (epoch seconds); None when none is held."""
        return self.timers.next_due()

    def _withdraw(self: "JobBook", job_id: str) -> bool:
        """Take a job that has not started out of its queue, or of the timers if it is scheduled;
        False if it runs or is unknown."""
        job = self.scheduler.jobs.get(job_id)
        if job is not None and job.state == SCHEDULED:
            self._release_early(job)
            del self.scheduler.jobs[job_id]
            return True
        return self.scheduler.cancel(job_id)

    def _hold_until(self: "JobBook", job: Job, due: float) -> None:
        """A delayed job not yet due: out of its queue, in the timers, state ``scheduled``."""
        self.scheduler.defer(job, SCHEDULED)
        self.timers.add(job, due)
