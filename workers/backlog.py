"""Jobs a worker holds but has not started: per pool, by priority, handed to the pool in groups.

The broker may lease a worker more jobs than its pools run at once (credit.py).
They wait here, highest priority first and FIFO within a priority, and go to the
pool whenever it has a free slot. Many small jobs waiting for the process pool go
in groups (one trip into a child process for several jobs); a job with a timeout
always goes alone, so that stopping it stops nothing else by surprise.
Decisions only: the worker calls ``take`` and submits what it returns.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Callable

#: Jobs at most in one process-pool submission.
MAX_GROUP = 64
#: Seconds of work at most in one process-pool submission: only short jobs are grouped.
GROUP_SECONDS = 0.002
#: Submissions the thread pool holds per slot: one running and one queued inside the
#: executor, so a thread that frees starts its next job at once, without a trip through the
#: worker's loop. The process pool holds one per slot: a job queued behind a long one in a
#: child would wait there while another worker's process sits idle. The async pool starts
#: a coroutine per slot at once: nothing to queue ahead.
SUBMISSIONS_PER_SLOT = {"thread": 2, "process": 1, "async": 1}

Row = tuple[str, int, str, bytes, "float | None"]  # (job id, attempt, task, payload, timeout)


class Backlog:
    """Waiting jobs and busy slots of each pool."""

    def __init__(self, slots: dict[str, int]) -> None:
        self.slots = dict(slots)
        self.busy = {pool: 0 for pool in slots}  # submissions running in each pool
        self._waiting: dict[str, list[tuple[int, int, Row]]] = {pool: [] for pool in slots}
        self._order = itertools.count()

    def add(self, pool: str, priority: int, row: Row) -> None:
        heapq.heappush(self._waiting[pool], (-priority, next(self._order), row))

    def waiting(self, pool: str) -> int:
        return len(self._waiting[pool])

    def take(self, pool: str, still_wanted: Callable[[str, int], bool],
             seconds_per_job: Callable[[str], float | None] = lambda task: None, most: int | None = None) -> list[Row]:
        """The next group to submit to ``pool`` (empty if no slot is free or nothing waits).

        Jobs no longer ``still_wanted(id, attempt)`` (stopped, given back or leased again while
        waiting) are dropped.
        A group holds jobs of one task whose measured ``seconds_per_job`` is short: long
        or unknown jobs go alone, so they never queue behind each other in one process.
        It holds at most ``most`` jobs if given (what the pool child may still run).
        """
        if self.busy[pool] >= self._capacity(pool) or (most is not None and most < 1):
            return []
        waiting = self._waiting[pool]
        if self.busy[pool] >= self.slots[pool] and waiting and waiting[0][2][4] is not None:
            return []  # a timed job waits for a free slot: its clock starts when it runs
        group: list[Row] = []
        limit = 1
        while waiting and len(group) < limit:
            row = waiting[0][2]
            if not still_wanted(row[0], row[1]):
                heapq.heappop(waiting)
                continue
            if not group:
                limit = self._group_limit(pool, seconds_per_job(row[2]))
                if most is not None:
                    limit = min(limit, most)
            elif row[4] is not None or row[2] != group[0][2]:  # a timed job, or another task: next group
                break
            heapq.heappop(waiting)
            group.append(row)
            if row[4] is not None:
                break
        if group:
            self.busy[pool] += 1
        return group

    def occupy(self, pool: str) -> None:
        """A submission made without ``take`` (a job waiting in its pool thread for its due time) holds a slot too."""
        self.busy[pool] += 1

    def finished(self, pool: str) -> None:
        """A submission to ``pool`` ended: its slot is free."""
        self.busy[pool] -= 1

    def give_back(self, pool: str, count: int, still_wanted: Callable[[str, int], bool]) -> list[Row]:
        """Remove up to ``count`` waiting jobs, lowest priority and newest first (for other workers)."""
        if count <= 0:
            return []
        live = sorted(entry for entry in self._waiting[pool] if still_wanted(entry[2][0], entry[2][1]))
        keep, returned = live[: max(0, len(live) - count)], live[max(0, len(live) - count):]
        heapq.heapify(keep)
        self._waiting[pool] = keep
        return [entry[2] for entry in returned]

    def drain(self, pool: str) -> list[Row]:
        """Every waiting job of ``pool``, removed (the worker is shutting down)."""
        rows = [entry[2] for entry in sorted(self._waiting[pool])]
        self._waiting[pool].clear()
        return rows

    def _capacity(self, pool: str) -> int:
        return SUBMISSIONS_PER_SLOT.get(pool, 1) * self.slots[pool]

    def _group_limit(self, pool: str, seconds_per_job: float | None) -> int:
        if pool != "process":
            return 1  # a sleeping thread-pool job must not hold back its neighbours
        free = max(1, self._capacity(pool) - self.busy[pool])
        limit = max(1, min(MAX_GROUP, len(self._waiting[pool]) // max(1, 2 * free)))
        if seconds_per_job is None:
            return 1  # nothing measured yet: the first jobs go alone
        return max(1, min(limit, int(GROUP_SECONDS / max(seconds_per_job, 1e-7))))
