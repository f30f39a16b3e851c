"""What the dashboard page shows, kept apart from I/O: the latest status and a bounded rate history.

The poller feeds it one ``client.status()`` snapshot a second (``observe``). The chart's
completed and failed jobs per second are the broker's own per-second counts
(``status["rates"]["completed_by_second"]``, its last ten seconds), merged second by second:
the chart is right from the first poll, whatever the poll's timing, and the broker keeps
no history for the dashboard beyond those ten buckets. ``view`` is the JSON document the page polls.
"""

from __future__ import annotations

from typing import Any

HISTORY_SECONDS = 300  # the chart's span: five minutes of one-second samples
FAILURES_SHOWN = 20  # the latest failures listed on the page
TRACEBACK_CHARS = 8000  # a longer traceback keeps its end, where the error is


class DashboardState:
    """The last snapshot, the broker's per-second counts over ``history_seconds``, the latest failures."""

    def __init__(self, history_seconds: int = HISTORY_SECONDS) -> None:
        self.history_seconds = history_seconds
        self.history: dict[int, tuple[int, int]] = {}  # epoch second (broker's clock) -> (completed, failed)
        self.newest: int | None = None  # the broker's latest second seen
        self.status: dict[str, Any] | None = None
        self.failures: list[dict[str, Any]] = []
        self.error: str | None = None  # why the last poll got no status (the broker is away)
        self._failures_seen: int | None = None  # the failed total when failures were last fetched

    def observe(self, status: dict[str, Any]) -> None:
        """Take a ``client.status()`` snapshot: its per-second counts replace those of the same seconds."""
        rates = status.get("rates", {})
        if "second" in rates:
            last = rates["second"]
            first = last - len(rates["completed_by_second"]) + 1
            for second, completed, failed in zip(range(first, last + 1), rates["completed_by_second"],
                                                 rates["failed_by_second"]):
                self.history[second] = (completed, failed)
            self.newest = last if self.newest is None else max(self.newest, last)
            for second in [s for s in self.history if s <= self.newest - self.history_seconds]:
                del self.history[second]
        self.status = status
        self.error = None

    def unreachable(self, reason: str) -> None:
        """The last poll failed: the page says why and keeps showing the last snapshot."""
        self.error = reason

    def failures_changed(self, status: dict[str, Any]) -> bool:
        """Whether ``status`` counts failures not yet fetched (so the list is asked for only then)."""
        return _failed_total(status) != self._failures_seen

    def reusable_failures(self, status: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """The failures shown, by id, that a new fetch may keep rather than ask for again; none
        once the count went down (a requeued job may fail anew, with another error)."""
        if self._failures_seen is not None and _failed_total(status) < self._failures_seen:
            return {}
        return {row["id"]: row for row in self.failures}

    def set_failures(self, status: dict[str, Any], failures: list[dict[str, Any]]) -> None:
        """Keep the latest failures (newest first), fetched when ``status`` was current."""
        self._failures_seen = _failed_total(status)
        self.failures = failures[:FAILURES_SHOWN]

    def view(self) -> dict[str, Any]:
        """The page's JSON: the status, the per-second history (age in seconds before the broker's
        latest second, oldest first), the failures and the error."""
        history = [{"age": self.newest - second, "completed": completed, "failed": failed}
                   for second, (completed, failed) in sorted(self.history.items())]
        return {"status": self.status, "history": history, "history_seconds": self.history_seconds,
                "failures": self.failures, "error": self.error}


def failure_row(job: dict[str, Any]) -> dict[str, Any]:
    """One failure as the page shows it, from ``client.job(id)``: its ``error`` is the rebuilt exception."""
    error = job.get("error")
    traceback_text = getattr(error, "remote_traceback", "") or getattr(error.__cause__, "text", "") if error else ""
    return {"id": job.get("id"), "task": job.get("task"), "queue": job.get("queue"), "state": job.get("state"),
            "attempts": job.get("attempts"), "worker": job.get("worker") or "",
            "type": getattr(error, "type_name", type(error).__name__) if error is not None else None,
            "message": str(getattr(error, "message", error or "")),
            "traceback": traceback_text[-TRACEBACK_CHARS:]}


def _failed_total(status: dict[str, Any]) -> int:
    """Jobs failed for good (failed or dead) as the journal counts them."""
    jobs = status.get("jobs", {})
    return int(jobs.get("failed", 0)) + int(jobs.get("dead", 0))
