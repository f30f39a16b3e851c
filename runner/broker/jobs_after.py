"""The JobBook's side of jobs that wait for other jobs (a mixin of ``JobBook``, no sockets).

What it decides lives in runner/broker/dependencies.py; this part checks a waiting job's
dependencies when it is submitted (each must be held by the broker or journaled, and,
with CURVE on, visible to the submitter's key), looks up how each stands, and carries out
the book's actions: journal rewrites, releases into the queues, failures.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

from runner import protocol
from runner.broker import journal as states
from runner.broker.dependencies import UNKNOWN, Action, Dependencies, Ended, Fail, Release, Rewrite
from runner.broker.scheduler import DEFERRED, Job
from runner.broker.substitution import SubstitutionError, placeholders
from runner.errors import error_blob

if TYPE_CHECKING:
    from runner.broker.jobs import JobBook


class AfterJobs:
    """Jobs waiting for others: held in the scheduler's ``jobs`` (state ``waiting``) and in ``dependencies``."""

    def _init_after(self: "JobBook") -> None:
        self.dependencies = Dependencies(self.limits.max_payload_bytes)
        self._ended: collections.deque[tuple[str, str, bytes]] = collections.deque()
        self._settling = False
        self._held: list[tuple[Job, dict]] = []  # held this turn, to start waiting once journaled

    def _refuse_dependencies(self: "JobBook", client: bytes, job_id: str, after: list[str], payload: bytes) -> bool:
        """Answer with a failed outcome, and return True, when the job's dependencies cannot be waited for."""
        reason = None
        for dependency in after:
            held = self.scheduler.jobs.get(dependency)
            stored = None if held is not None else self.journal.get(dependency)
            owner = held.client if held is not None else stored.client if stored is not None else None
            if owner is None or not self.may_take(client, owner):
                reason = (f"job {job_id} waits for job {dependency!r}, which the broker does not know (a job can "
                          "only wait for jobs accepted before it, whose outcome is still kept)")
                break
        if reason is None:
            try:
                unlisted = placeholders(payload) - set(after)
            except SubstitutionError as exc:
                unlisted, reason = set(), f"job {job_id} waits for other jobs, but {exc}"
            if unlisted:
                reason = (f"job {job_id} has result placeholders of jobs {sorted(unlisted)} that are not in its "
                          "'after' option")
        if reason is None:
            return False
        self.outbox.outcomes[client].append([job_id, protocol.FAILED, error_blob(ValueError(reason))])
        return True

    def _queue_or_hold(self: "JobBook", job: Job, options: dict | None) -> None:
        """Queue ``job``, or, when it waits for other jobs, hold it (as ``scheduler.jobs`` holds
        it, so later jobs may name it) until ``_start_held``: it must be journaled first."""
        if options and "after" in options:
            self.scheduler.defer(job)
            self._held.append((job, options))
        else:
            self.scheduler.submit(job)

    def _start_held(self: "JobBook", now: float) -> None:
        """The jobs held since the last call start waiting, each as its dependencies stand now."""
        if not self._held:  # most turns: every submit batch calls this
            return
        held, self._held = self._held, []
        for job, options in held:
            if self.scheduler.jobs.get(job.id) is job:  # not answered from the journal as a reused id
                self._start_waiting(job, options, now)

    def _unhold(self: "JobBook", job_id: str) -> bool:
        """Drop a job held by ``_queue_or_hold`` that has not started waiting (its id was reused); False if none."""
        job = self.scheduler.jobs.get(job_id)
        if job is None or job.state != DEFERRED or job_id in self.dependencies.waiting:
            return False
        del self.scheduler.jobs[job_id]
        return True

    def _start_waiting(self: "JobBook", job: Job, options: dict, now: float) -> None:
        """``job`` (held) waits for ``options["after"]``, as each of them stands now."""
        known = {dependency: self._dependency_now(dependency) for dependency in options["after"]}
        self._carry_out(self.dependencies.wait(job, options, known), now)

    def _dependency_now(self: "JobBook", job_id: str) -> Ended | None:
        if job_id in self.scheduler.jobs:
            return None
        stored = self.journal.get(job_id)
        if stored is None:
            return Ended(UNKNOWN)
        return Ended(stored.state, stored.outcome or b"") if stored.state in states.FINAL_STATES else None

    def _dependency_ended(self: "JobBook", job_id: str, state: str, outcome: bytes, now: float) -> None:
        """A job with dependants reached a final state; their failures, in turn, come back here."""
        self._ended.append((job_id, state, outcome))
        if self._settling:  # a loop, not a recursion: a failure may run down a long chain
            return
        self._settling = True
        try:
            while self._ended:
                self._carry_out(self.dependencies.ended(*self._ended.popleft()), now)
        finally:
            self._settling = False

    def _flush_dependencies(self: "JobBook", now: float | None) -> None:
        """At the end of a turn, before leases and the commit: this turn's results go into their dependants."""
        if self.dependencies.due:
            self._carry_out(self.dependencies.flush(), now or 0.0)

    def _carry_out(self: "JobBook", actions: list[Action], now: float) -> None:
        for action in actions:
            job = action.job
            if isinstance(action, Rewrite):
                self.journal.rewrite(job.id, job.payload, action.options)
            elif isinstance(action, Release):
                self._release(job, now)
            elif isinstance(action, Fail):
                self._finish(job, states.FAILED, protocol.FAILED, action.error, now)

    def _release(self: "JobBook", job: Job, now: float) -> None:
        """A job done waiting for others goes on to its queue, or, delayed and not yet due, to the timers."""
        due, job.due = job.due, None
        if due is None or due <= now:
            self.scheduler.requeue(job)
        else:
            self._hold_until(job, due)
