"""When a process-pool child is retired: after a number of jobs, or when a job left it too big.

Long-lived pool processes leak (caches that only grow, fragmented heaps, C
extensions that never give memory back). A worker started with
``--max-jobs-per-child`` or ``--max-memory-per-child`` replaces a child that has
run that many jobs, or whose resident memory is above the limit after a job.

Decisions only: the pool tells this class what each child ran and how big it
was afterwards, and carries out the retirements it returns (pools.py). A child
is any hashable key the pool picks; the class never sees a process.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Hashable


@dataclass(frozen=True)
class Retirement:
    """A child must run no more jobs and be replaced by a fresh one."""

    reason: str
    memory: bool  # retired for its size (worth a log line), not the routine job count


class Recycler:
    """Counts the jobs of each live child and decides when one is retired."""

    def __init__(self, max_jobs: int | None = None, max_memory_mib: float | None = None) -> None:
        if max_jobs is not None and (isinstance(max_jobs, bool) or not isinstance(max_jobs, int) or max_jobs < 1):
            raise ValueError(f"max_jobs_per_child must be a whole number of jobs of at least 1, got {max_jobs!r}; "
                             "leave it unset for no limit")
        if max_memory_mib is not None and (isinstance(max_memory_mib, bool)
                                           or not isinstance(max_memory_mib, (int, float)) or not max_memory_mib > 0):
            raise ValueError(f"max_memory_per_child must be a number of MiB above 0, got {max_memory_mib!r}; "
                             "leave it unset for no limit")
        self.max_jobs = max_jobs
        self.max_memory_mib = max_memory_mib
        #: The limit in KiB, as a child measures itself; None when memory is not watched.
        self.max_memory_kib = None if max_memory_mib is None else int(max_memory_mib * 1024)
        self.recycled = 0  # children retired so far
        self._jobs: dict[Hashable, int] = {}  # jobs run by each live child that has run any

    def room(self, child: Hashable) -> int | None:
        """How many jobs ``child`` may still be given (None: no job limit)."""
        if self.max_jobs is None:
            return None
        return self.max_jobs - self._jobs.get(child, 0)

    def finished(self, child: Hashable, jobs: int, rss_kib: int | None = None) -> Retirement | None:
        """``child`` ran ``jobs`` more jobs and then measured ``rss_kib``; retire it now?"""
        count = self._jobs.get(child, 0) + jobs
        self._jobs[child] = count
        retirement = None
        if self.max_memory_kib is not None and rss_kib is not None and rss_kib > self.max_memory_kib:
            retirement = Retirement(f"its RSS of {rss_kib / 1024:.1f} MiB is above the limit of "
                                    f"{self.max_memory_mib:g} MiB (--max-memory-per-child)", memory=True)
        elif self.max_jobs is not None and count >= self.max_jobs:
            retirement = Retirement(f"it ran {count} jobs (--max-jobs-per-child {self.max_jobs})", memory=False)
        if retirement is not None:
            del self._jobs[child]
            self.recycled += 1
        return retirement

    def forget(self, child: Hashable) -> None:
        """``child`` is gone for another reason (it died, or the pool was ended): not counted as recycled."""
        self._jobs.pop(child, None)
