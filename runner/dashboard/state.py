"""What the dashboard page shows, kept apart from I/O: the latest status and a bounded rate history.

The poller feeds it one ``client.status()`` snapshot a second (``observe``); rates of completed
and failed jobs per second come from differencing successive totals, so the broker keeps no
history for the dashboard. ``view`` is the JSON document the page polls.
"""

from __future__ import annotations

import collections
from typing import Any

HISTORY_SECONDS = 300  # the chart's span: five minutes of one-second samples
FAILURES_SHOWN = 20  # the latest failures listed on the page
TRACEBACK_CHARS = 8000  # a longer traceback keeps its end, where the error is


class DashboardState:
    """The last snapshot, a bounded history of per-second rates, and the latest failures."""

    def __init__(self, history_seconds: int = HISTORY_SECONDS) -> None:
        self.history: collections.deque[dict[str, float]] = collections.deque(maxlen=history_seconds)
        self.status: dict[str, Any] | None = None
        self.failures: list[dict[str, Any]] = []
        self.error: str | None = None  # why the last poll got no status (the broker is away)
        self._last: tuple[float, int, int] | None = None  # (time, completed, failed) of the last snapshot
        self._failures_seen: int | None = None  # the failed total when failures were last fetched

    def observe(self, now: float, status: dict[str, Any]) -> None:
        """Take a ``client.status()`` snapshot taken at ``now`` (monotonic seconds)."""
        completed, failed = _totals(status)
        if self._last is not None:
            then, completed_before, failed_before = self._last
            elapsed = now - then
            # A lower total means another broker (or a restarted one): start counting again.
            if elapsed > 0 and completed >= completed_before and failed >= failed_before:
                self.history.append({"t": now, "completed": (completed - completed_before) / elapsed,
                                     "failed": (failed - failed_before) / elapsed})
        self._last = (now, completed, failed)
        self.status = status
        self.error = None

    def unreachable(self, reason: str) -> None:
        """The last poll failed: the page says why and keeps showing the last snapshot."""
        self.error = reason

    def failures_changed(self, status: dict[str, Any]) -> bool:
        """Whether ``status`` counts failures not yet fetched (so the list is asked for only then)."""
        return _totals(status)[1] != self._failures_seen

    def set_failures(self, status: dict[str, Any], failures: list[dict[str, Any]]) -> None:
        """Keep the latest failures (newest first), fetched when ``status`` was current."""
        self._failures_seen = _totals(status)[1]
        self.failures = failures[:FAILURES_SHOWN]

    def view(self, now: float) -> dict[str, Any]:
        """The page's JSON: the status, the rate history (seconds before ``now``), failures, error."""
        history = [{"age": round(now - sample["t"], 3), "completed": sample["completed"], "failed": sample["failed"]}
                   for sample in self.history]
        return {"status": self.status, "history": history, "history_seconds": self.history.maxlen,
                "failures": self.failures, "error": self.error}


def failure_row(job: dict[str, Any]) -> dict[str, Any]:
    """One failure as the page shows it, from a job dict whose ``error`` is the rebuilt exception."""
    error = job.get("error")
    traceback_text = getattr(error, "remote_traceback", "") or getattr(error.__cause__, "text", "") if error else ""
    return {"id": job.get("id"), "task": job.get("task"), "queue": job.get("queue"), "attempts": job.get("attempts"),
            "type": getattr(error, "type_name", type(error).__name__) if error is not None else None,
            "message": str(getattr(error, "message", error or "")),
            "traceback": traceback_text[-TRACEBACK_CHARS:]}


def _totals(status: dict[str, Any]) -> tuple[int, int]:
    """Jobs completed, and jobs failed for good (failed or dead), since the broker's journal began."""
    jobs = status.get("jobs", {})
    return int(jobs.get("done", 0)), int(jobs.get("failed", 0)) + int(jobs.get("dead", 0))
