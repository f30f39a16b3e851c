"""Where a pool thread waits with a job leased ahead of its due time (runner/broker/jobs_held.py).

The broker leases a delayed job a little before it is due and says how long to hold it.
A thread-pool job waits in its pool thread, at a ``StartGate``, rather than on the worker's
loop: a thread sleeping on its own timeout wakes within a fraction of a millisecond, while
the loop fires a timer only between its turns, which the jobs of a busy worker make long.

The gate settles a race the loop and the thread would otherwise have: the job either starts
(the thread passes the gate at its time) or is withdrawn first (stopped, given back, the
worker drains), never both, so a job given back to the broker has not run here.
"""

from __future__ import annotations

import threading
import time

from workers import execute

_WAITING, _STARTED, _WITHDRAWN = "waiting", "started", "withdrawn"


class StartGate:
    """A held job's start: at ``start_at`` (``time.monotonic()``) unless withdrawn before."""

    __slots__ = ("start_at", "_state", "_lock", "_withdrawn")

    def __init__(self, start_at: float) -> None:
        self.start_at = start_at
        self._state = _WAITING
        self._lock = threading.Lock()
        self._withdrawn = threading.Event()

    def pass_at_time(self) -> bool:
        """In the pool thread: wait until ``start_at``; True if the job is to start, False if it was withdrawn."""
        while (wait := self.start_at - time.monotonic()) > 0.0:  # again if a wait ends a hair early
            if self._withdrawn.wait(wait):
                return False
        with self._lock:
            if self._state == _WAITING:
                self._state = _STARTED
            return self._state == _STARTED

    def withdraw(self) -> bool:
        """On the worker's loop: keep the job from starting; False if it has started already."""
        with self._lock:
            if self._state == _WAITING:
                self._state = _WITHDRAWN
            withdrawn = self._state == _WITHDRAWN
        self._withdrawn.set()
        return withdrawn


def run_batch_at(gate: StartGate, jobs: list[tuple[str, int, str, bytes]]) -> list[tuple[str, int, str, bytes]]:
    """Run ``jobs`` (as ``execute.run_batch``) once ``gate`` opens; no rows if it was withdrawn."""
    return execute.run_batch(jobs) if gate.pass_at_time() else []
