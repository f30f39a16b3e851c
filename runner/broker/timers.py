"""Jobs held back until a due time: delayed jobs not yet due, and retries waiting out their backoff.

One heap of (due, job id) for both, as ARCHITECTURE.md asks ("due times in one timer
structure of the JobBook"). No sockets and no clock: the caller says what time it is.
Equal due times leave in id order (runner's ids start with the time they were made).

A held job carries its due time in ``job.due``; an entry counts only while the broker
holds a job of that id whose ``due`` still equals the entry's. Taking a job out (a cancel)
just clears ``job.due``, so it costs O(1) however many jobs are held; the stale entry is
dropped when it reaches the top of the heap, or when stale entries outnumber live ones and
the heap is rebuilt (amortised O(1) a removal, never a rebuild per cancel). Entries hold
the id, not the job, and no sequence number: a million held jobs cost a 2-tuple each.
"""

from __future__ import annotations

import heapq

from runner.broker.scheduler import DEFERRED, SCHEDULED, Job

COMPACT_MIN = 1024  # stale entries tolerated before a rebuild is considered


def due_time(options: dict, now: float) -> float | None:
    """A submitted job's due time (epoch seconds) from its options: ``delay`` counts from ``now``,
    the broker's clock at acceptance; ``due`` is absolute. None: it may run at once."""
    delay = options.get("delay")
    return now + delay if delay is not None else options.get("due")


class DueTimes:
    """Held jobs by due time; counts of each kind (``SCHEDULED``, ``DEFERRED``) kept as they change."""

    def __init__(self, jobs: dict[str, Job]) -> None:
        """``jobs``: every job the broker holds, by id (the scheduler's), where entries find theirs."""
        self._jobs = jobs
        self._heap: list[tuple[float, str]] = []
        self._stale = 0  # entries of jobs taken out, still in the heap
        self.counts = {SCHEDULED: 0, DEFERRED: 0}

    def __len__(self) -> int:
        """Jobs held (stale entries not counted)."""
        return self.counts[SCHEDULED] + self.counts[DEFERRED]

    def add(self, job: Job, due: float) -> None:
        """Hold ``job`` (held by the broker, its state already SCHEDULED or DEFERRED) until ``due``."""
        job.due = due
        heapq.heappush(self._heap, (due, job.id))
        self.counts[job.state] += 1

    def remove(self, job: Job) -> None:
        """Take a held job out (it was cancelled): O(1), its entry goes stale."""
        if job.due is None:
            return
        job.due = None
        self.counts[job.state] -= 1
        self._stale += 1
        if self._stale > COMPACT_MIN and self._stale * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if self._live(entry) is not None]
            heapq.heapify(self._heap)
            self._stale = 0

    def pop_due(self, now: float) -> list[Job]:
        """The held jobs due at ``now`` or before, earliest first; they are held no more."""
        heap, released = self._heap, []
        while heap and heap[0][0] <= now:
            job = self._live(heapq.heappop(heap))
            if job is None:
                self._stale -= 1
                continue
            job.due = None
            self.counts[job.state] -= 1
            released.append(job)
        return released

    def pop_ahead(self, until: float) -> list[tuple[float, Job]]:
        """Delayed jobs (``SCHEDULED``) due by ``until``, earliest first, with their due times; they are
        held no more. Stops at the first job of another kind: a retry's backoff is never cut short."""
        heap, released = self._heap, []
        while heap and heap[0][0] <= until:
            job = self._live(heap[0])
            if job is None:
                heapq.heappop(heap)
                self._stale -= 1
                continue
            if job.state != SCHEDULED:
                break
            due, _ = heapq.heappop(heap)
            job.due = None
            self.counts[SCHEDULED] -= 1
            released.append((due, job))
        return released

    def next_due(self) -> float | None:
        """The earliest due time of a held job; None when none is held."""
        earliest = self.earliest()
        return earliest[0] if earliest else None

    def earliest(self) -> tuple[float, Job] | None:
        """The held job due first, and when; None when none is held."""
        heap = self._heap
        while heap:
            job = self._live(heap[0])
            if job is not None:
                return heap[0][0], job
            heapq.heappop(heap)
            self._stale -= 1
        return None

    def _live(self, entry: tuple[float, str]) -> Job | None:
        """The job an entry stands for, or None if the entry is stale."""
        job = self._jobs.get(entry[1])
        return job if job is not None and job.due == entry[0] else None
