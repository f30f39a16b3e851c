"""Gated tasks: a job that stays running until the test opens its gate (creates a file).

A test that needs a job running at a given moment waits for the job's record line
(proof it started), does what it must, then creates the gate file; no fixed sleep
stands in for "still running". Every wait has its own deadline, so a forgotten
gate ends the run with an error instead of a hung worker.
"""

from __future__ import annotations

import os
import time

from jobs import _append_line

GATE_DEADLINE = 60.0  # seconds a gated run waits for its gate before it gives up
POLL = 0.01  # seconds between looks at the gate


def wait_for_gate(gate: str, deadline: float = GATE_DEADLINE) -> None:
    """Return once the file ``gate`` exists; raise TimeoutError after ``deadline`` seconds."""
    give_up = time.monotonic() + deadline
    while not os.path.exists(gate):
        if time.monotonic() > give_up:
            raise TimeoutError(f"the gate {gate} was not opened within {deadline}s")
        time.sleep(POLL)


def gated(record: str, gate: str, gated_runs: int = 1_000_000, value=None) -> dict:
    """Record this run's process id in ``record``; the first ``gated_runs`` runs wait for ``gate``.

    A run that got past its gate also appends its process id to ``record + ".done"``,
    so a test sees that a run it no longer waits for (abandoned, timed out) went on to the end.
    """
    run = _append_line(record, str(os.getpid()))
    if run <= gated_runs:
        wait_for_gate(gate)
    _append_line(record + ".done", str(os.getpid()))
    return {"run": run, "pid": os.getpid(), "value": value}
