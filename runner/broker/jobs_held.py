"""The JobBook's held jobs: delayed jobs, retries waiting out their backoff, and jobs restored
after a restart that wait for their workers' claims (a mixin of ``JobBook``, no sockets).

Each held job is out of its queue, in the ``DueTimes`` heap (runner/broker/timers.py), with
state ``scheduled`` (delayed, or restored) or ``deferred`` (a retry); ``release_due`` puts
those whose time has come back in their queues.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from runner.broker.scheduler import DEFERRED, PENDING, SCHEDULED, Job
from runner.broker.timers import DueTimes

if TYPE_CHECKING:
    from runner.broker.jobs import JobBook


class HeldJobs:
    """Jobs held until a time: in ``timers``, and, after a restart, ``_claimable`` by their workers."""

    def _init_held(self: "JobBook") -> None:
        self.timers = DueTimes(self.scheduler.jobs)  # delayed jobs not yet due, retries waiting out their backoff
        # Restored jobs held back after a restart until their workers had time to claim them in
        # their hellos (``hold_for_claims``), and when that time ends.
        self._claimable: set[str] = set()
        self._claims_until = 0.0

    def hold_for_claims(self: "JobBook", until: float) -> None:
        """Hold every queued job (all restored, just after ``restore``) until ``until``, unless a
        worker claims it first. Leases are not journaled, so any of them may be running on a worker
        that outlived the broker; that worker claims it in its hello (``worker_joined``) once it
        notices the restart, and the job stays on it. Leased at once, it could go to another worker
        (or to the same one, had its result gone down with the broker) and run twice.

        Held as a retry is (``deferred``), so users see it ``pending``, as it is to them: queued,
        not delayed (``held_for_claims`` keeps status's counts so)."""
        queued = [job for job in self.scheduler.jobs.values() if job.state == PENDING]
        for job in queued:
            self.scheduler.cancel(job.id)
            self.scheduler.defer(job, DEFERRED)
            self.timers.add(job, until)
            self._claimable.add(job.id)
        self._claims_until = until

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

    def _release_early(self: "JobBook", job: Job) -> None:
        """Take a held job (``scheduled`` or ``deferred``) out of the timers before its time."""
        self.timers.remove(job)
        self._claimable.discard(job.id)

    def release_due(self: "JobBook", now: float) -> None:
        """Jobs whose time has come go to their queues: a retry whose backoff passed at the back,
        a delayed job now due at the front of its priority (it has waited since it was accepted,
        and was promised a time the jobs queued there were not)."""
        # Only a cancel, or a worker claiming a restored job, takes a held job out early (timers.remove).
        if self._claimable and now >= self._claims_until:
            self._claimable.clear()  # the restored jobs nobody claimed are released just below
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
