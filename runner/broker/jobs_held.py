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
        # Delayed jobs released ``lead`` seconds before their due time, by id: that time. Their leases
        # say how long the worker holds them before starting, so the broker's own lateness (a long
        # turn, a busy machine) is not theirs; a job given back before its time is held here again.
        self._ahead: dict[str, float] = {}
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
        """A worker's hello names a held job: it goes back to its queue now, for the worker to adopt,
        if it was restored and held for that claim, or is a delayed job the worker holds until its
        due time (leased ahead, then held here again after a restart or the worker's silence). A
        retry waiting out its backoff stays held."""
        if job.id in self._claimable or job.state == SCHEDULED:
            if job.state == SCHEDULED and job.due is not None:
                self._ahead[job.id] = job.due  # the worker still waits for it: not started
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

    def release_due(self: "JobBook", now: float, lead: float = 0.0) -> None:
        """Jobs whose time has come go to their queues: a retry whose backoff passed at the back,
        a delayed job now due at the front of its priority (it has waited since it was accepted,
        and was promised a time the jobs queued there were not).

        ``lead``: delayed jobs due within that many seconds go too, each leased with the time left
        (``hold_times``) for its worker to wait out: it starts on time however late this call is."""
        # Only a cancel, a worker claiming a restored job, or the claim window ending early (every
        # worker back) takes a held job out early (timers.remove).
        if self._claims_until and now >= self._claims_until:
            self._end_claims()  # the restored jobs nobody claimed go to their queues
        released = self.timers.pop_due(now)
        early = self.timers.pop_ahead(now + lead) if lead > 0.0 else []
        for job in released:
            if job.state == DEFERRED:
                self.scheduler.requeue(job)
        for due, job in reversed(early):  # front pushes: the latest first keeps them in due order
            self._ahead[job.id] = due
            self.scheduler.requeue(job, front=True)
        for job in reversed(released):
            if job.state == SCHEDULED:
                self.scheduler.requeue(job, front=True)

    def hold_times(self: "JobBook", leases: list[tuple[bytes, list[Job]]], now: float) -> dict[str, float]:
        """Of the jobs just leased, those released ahead of their due time: seconds each is still to
        wait on its worker. (A duration, not a time: the worker's clock need not agree with ours.)"""
        hold, ahead = {}, self._ahead
        for _worker, jobs in leases:
            for job in jobs:
                due = ahead.get(job.id)
                if due is None:
                    continue
                if due > now:
                    hold[job.id] = due - now  # forgotten when it finishes (or held here again)
                else:
                    del ahead[job.id]  # due by now: it may start at once, wherever it goes
        return hold

    def waiting_on_worker(self: "JobBook", job: Job, now: float) -> bool:
        """Whether ``job`` is leased ahead of its due time and waits on its worker, not started."""
        due = self._ahead.get(job.id)
        return due is not None and due > now

    def hold_again(self: "JobBook", job: Job, now: float) -> bool:
        """A job given back (or lost with its worker) before its due time is held until then again;
        False if it was not released ahead, or is due by now."""
        due = self._ahead.pop(job.id, None)
        if due is None or due <= now:
            return False
        self._hold_until(job, due)
        return True

    def next_due(self: "JobBook", lead: float = 0.0) -> float | None:
        """When ``release_due(now, lead)`` next has a job to release (epoch seconds); None when none is held."""
        earliest = self.timers.earliest()
        if earliest is None:
            return None
        due, job = earliest
        return due - lead if job.state == SCHEDULED else due

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
