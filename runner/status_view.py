"""``runner status`` on a terminal: the broker's status snapshot as rich tables.

Rendering only: the snapshot comes from ``Client.status()``. On a terminal the tables
are drawn with colour (and ``--watch`` redraws them in place); through a pipe rich
prints the same tables as plain text without escape codes.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from runner.client_schedules import later_runs_text


def render(snapshot: dict[str, Any]) -> Group:
    """The workers table, the queues table, the schedules table (if any) and a line of totals."""
    parts = [_header(snapshot), _workers(snapshot["workers"]), _queues(snapshot)]
    if snapshot.get("schedules"):
        parts.append(_schedules(snapshot["schedules"]))
    return Group(*parts, _totals(snapshot))


def _header(snapshot: dict[str, Any]) -> Text:
    broker = snapshot["broker"]
    return Text(f"broker {broker['address']}  pid {broker['pid']}  host {broker['host']}  "
                f"clients {snapshot['clients']}  workers {len(snapshot['workers'])}", style="bold")


def _workers(workers: list[dict[str, Any]]) -> Table:
    table = Table(title="workers", title_justify="left")
    for column in ("name", "host", "pid", "queues", "slots", "running", "done", "failed", "RSS", "children RSS",
                   "heartbeat age"):
        table.add_column(column, justify="right" if column in ("pid", "running", "done", "failed") else "left")
    for worker in sorted(workers, key=lambda worker: worker["id"]):
        slots = " ".join(f"{pool} {count}" for pool, count in worker["slots"].items())
        if worker.get("recycled"):
            slots += f" (recycled {worker['recycled']})"  # pool children replaced so far
        if worker.get("draining"):
            slots += " (draining)"
        table.add_row(worker["id"], worker["host"], str(worker["pid"]), ",".join(worker["queues"]), slots,
                      str(worker["running"]), str(worker.get("done", 0)), str(worker.get("failed", 0)),
                      _bytes(worker.get("rss")), _bytes(worker.get("children_rss")),
                      _age(worker.get("heartbeat_age")))
    return table


def _queues(snapshot: dict[str, Any]) -> Table:
    table = Table(title="queues", title_justify="left")
    for column in ("queue", "pending", "by priority", "running", "oldest waiting"):
        table.add_column(column, justify="left" if column in ("queue", "by priority") else "right")
    details = snapshot.get("queue_details") or {queue: {"pending": count} for queue, count in snapshot["queues"].items()}
    for queue, entry in sorted(details.items()):
        by_priority = entry.get("pending_by_priority", {})
        table.add_row(queue, str(entry["pending"]),
                      " ".join(f"p{priority}:{count}" for priority, count in by_priority.items()) or "-",
                      str(entry.get("running", "?")), _age(entry.get("oldest_age")))
    return table


def _schedules(schedules: list[dict[str, Any]]) -> Table:
    """Each schedule's next run and the runs after it (UTC), and its runs fired and ticks skipped so far."""
    table = Table(title="schedules", title_justify="left")
    for column in ("schedule", "spec", "next run (UTC)", "then", "fired", "skipped", "running"):
        table.add_column(column, justify="right" if column in ("fired", "skipped", "running") else "left")
    for entry in schedules:
        spec = entry["spec"] if isinstance(entry["spec"], str) else f"every {entry['spec']:g}s"
        if isinstance(entry["spec"], str) and entry["tz"] != "UTC":
            spec += f" ({entry['tz']})"
        upcoming = [datetime.fromtimestamp(moment, timezone.utc) for moment in entry.get("upcoming", ())]
        table.add_row(entry["name"], spec, time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry["next"])),
                      later_runs_text(upcoming), str(entry["fired"]), str(entry["skipped"]), str(entry["running"]))
    return table


def _totals(snapshot: dict[str, Any]) -> Text:
    jobs, rates = snapshot["jobs"], snapshot.get("rates", {})
    line = (f"jobs: pending {jobs['pending']}  running {jobs['running']}  retrying {jobs['retrying']}  "
            f"scheduled {jobs.get('scheduled', 0)}  "
            f"done {jobs['done']}  failed {jobs['failed']}  dead {jobs['dead']}  cancelled {jobs['cancelled']}")
    if "waiting" in jobs:  # waiting for other jobs (absent from older brokers)
        line += f"  waiting {jobs['waiting']}"
    if rates:
        line += (f"\nlast {rates['window']}s: {rates['completed']:.1f} completed/s  "
                 f"{rates['failed']:.1f} failed/s")
    return Text(line)


def _bytes(count: int | None) -> str:
    if count is None:
        return "-"
    return f"{count / 2**20:.1f} MiB"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.1f}m"
