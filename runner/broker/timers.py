"""Jobs held back until a due time: delayed jobs not yet due, and retries waiting out their backoff.

One heap of (due, order, job) for both, as ARCHITECTURE.md asks ("due times in one timer
structure of the JobBook"). No sockets and no clock: the caller says what time it is.

A held job carries its due time in ``job.due``; an entry counts only while the job's
``due`` still equals the entry's. Taking a job out (a cancel) just clears ``job.due``, so
it costs O(1) however many jobs are held; the stale entry is dropped when it reaches the
top of the heap, or when stale entries outnumber live ones and the heap is rebuilt
(amortised O(1) a removal, never a rebuild per cancel).
"""

from __future__ import annotations

import heapq
import itertools

from runner.broker.scheduler import DEFERRED, SCHEDULED, Job

COMPACT_MIN = 1024  # stale entries tolerated before a rebuild is considered


def due_time(options: dict, now: float) -> float | None:
    """A submitted job's due time (epoch seconds) from its options: ``delay`` counts from ``now``,
    the broker's clock at acceptance; ``due`` is absolute. None: it may run at once."""
    delay = options.get("delay")
    return now + delay if delay is not None else options.get("due")


class DueTimes:
    """Held jobs by due time; counts of each kind (``SCHEDULED``, ``DEFERRED``) kept as they change."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Job]] = []
        self._order = itertools.count()  # equal due times leave in the order they came
        self._stale = 0  # entries of jobs taken out, still in the heap
        self.counts = {SCHEDULED: 0, DEFERRED: 0}

    def __len__(self) -> int:
        """Jobs held (stale entries not counted)."""
        return self.counts[SCHEDULED] + self.counts[DEFERRED]

    def add(self, job: Job, due: float) -> None:
        """Hold ``job`` (its state already SCHEDULED or DEFERRED) until ``due``."""
        job.due = due
        heapq.heappush(self._heap, (due, next(self._order), job))
        self.counts[job.state] += 1

    def remove(self, job: Job) -> None:
        """Take a held job out (it was cancelled): O(1), its entry goes stale."""
        if job.due is None:
            return
        job.due = None
        self.counts[job.state] -= 1
        self._stale += 1
        if self._stale > COMPACT_MIN and self._stale * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if entry[2].due == entry[0]]
            heapq.heapify(self._heap)
            self._stale = 0

    def pop_due(self, now: float) -> list[Job]:
        """The held jobs due at ``now`` or before, earliest first; they are held no more."""
        heap, released = self._heap, []
        while heap and heap[0][0] <= now:
            due, _, job = heapq.heappop(heap)
            if job.due != due:
                self._stale -= 1
                continue
            job.due = None
            self.counts[job.state] -= 1
            released.append(job)
        return released

    def next_due(self) -> float | None:
        """The earliest due time of a held job; None when none is held."""
        heap = self._heap
        while heap and heap[0][2].due != heap[0][0]:
            heapq.heappop(heap)
            self._stale -= 1
        return heap[0][0] if heap else None
