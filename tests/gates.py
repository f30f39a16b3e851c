"""A gated task whose later runs pass: for tests of retries and give-backs (tests/test_promises.py).

``jobs.gated`` holds every run at its gate; here only the first ``gated_runs`` runs
wait (for the file ``gate``, with jobs.py's deadline), so a retried or given-back job
finishes at once while the test still controls its first run. Each run leaves one
line in ``record`` (its process id), so a test counts runs.
"""

from __future__ import annotations

import os

from jobs import _append_line, wait_for_gate


def gated(record: str, gate: str, gated_runs: int = 1, value=None) -> dict:
    """Record this run's process id in ``record``; the first ``gated_runs`` runs wait for ``gate``.

    A run that got past its gate also appends its process id to ``record + ".done"``,
    so a test sees that a run it no longer waits for (abandoned, timed out) went on to the end.
    """
    run = _append_line(record, str(os.getpid()))
    if run <= gated_runs:
        wait_for_gate(gate)
    _append_line(record + ".done", str(os.getpid()))
    return {"run": run, "pid": os.getpid(), "value": value}
