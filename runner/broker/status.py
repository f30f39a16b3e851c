"""The broker's answer to a status request: workers, queues, job totals and rates.

Built from what the broker keeps anyway (its peers, the scheduler's queues and leases, the
counters, the journal's counts by state), never from a journal scan: it costs the number of
workers, of running jobs and of queue lanes (one per queue, pool and priority), not of waiting jobs.
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

from runner.broker.scheduler import DEFERRED, SCHEDULED

if TYPE_CHECKING:
    from runner.broker.server import Broker

#: What status keeps of each schedule's view (``client.schedules()`` has them all).
SCHEDULE_KEYS = ("name", "spec", "tz", "next", "upcoming", "fired", "skipped", "running")


def status_snapshot(broker: "Broker") -> dict[str, Any]:
    """The dictionary ``client.status()`` returns (docs/usage.md lists its keys)."""
    scheduler = broker.jobs.scheduler
    workers, running_by_queue = _workers(broker)
    waiting = scheduler.waiting_by_queue()
    pending = {queue: sum(entry["pending"].values()) for queue, entry in waiting.items()}
    waiting_total = sum(pending.values())
    running_total = sum(running_by_queue.values())
    waiting_for_jobs = len(broker.jobs.dependencies)
    final = broker.journal.counts
    rates = broker.jobs.counters
    now = time.time()
    return {
        "broker": {"id": broker.id, "address": broker.address, "pid": os.getpid(), "host": socket.gethostname(),
                   "journal": broker.journal.path},
        "workers": workers,
        "clients": sum(1 for peer in broker.peers.values() if peer.role == "client"),
        "queues": pending,
        "queue_details": _queues(waiting, running_by_queue, now),
        "jobs": {"pending": waiting_total + broker.jobs.held_for_claims, "running": running_total,
                 "retrying": broker.jobs.timers.counts[DEFERRED] - broker.jobs.held_for_claims,
                 "scheduled": broker.jobs.timers.counts[SCHEDULED],
                 "waiting": waiting_for_jobs,
                 "held_for_claims": broker.jobs.held_for_claims,  # of pending: restored, awaiting claims
                 "done": final.get("done", 0), "failed": final.get("failed", 0),
                 "dead": final.get("dead", 0), "cancelled": final.get("cancelled", 0)},
        "rates": {"window": rates.completed.window, "completed": rates.completed.per_second(now),
                  "failed": rates.failed.per_second(now),
                  # Per whole second up to ``second`` (epoch), oldest first: the dashboard's chart.
                  "second": int(now), "completed_by_second": rates.completed.recent(now),
                  "failed_by_second": rates.failed.recent(now)},
        "schedules": [{key: view[key] for key in SCHEDULE_KEYS} for view in broker.schedules.views()],
    }


def _workers(broker: "Broker") -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Each connected worker as status shows it, and the jobs running per queue."""
    scheduler, counters, monotonic = broker.jobs.scheduler, broker.jobs.counters, time.monotonic()
    workers, running_by_queue = [], {}
    for peer in broker.peers.values():
        slot = scheduler.workers.get(peer.id) if peer.role == "worker" else None
        if slot is None:
            continue
        for job in slot.leased.values():
            running_by_queue[job.queue] = running_by_queue.get(job.queue, 0) + 1
        running = {pool: count for pool, count in slot.in_flight.items() if count}
        counts = counters.workers.get(peer.id)
        silent = broker.liveness.silent_for(peer.id, monotonic)
        workers.append({
            "id": peer.name, "host": peer.host, "pid": peer.pid, "queues": peer.queues, "slots": peer.slots,
            "running": sum(running.values()), "running_by_pool": running, "draining": not slot.credit,
            "recycled": peer.recycled, "done": counts.done if counts else 0, "failed": counts.failed if counts else 0,
            "rss": peer.rss, "children_rss": peer.children_rss,
            "heartbeat_age": None if silent is None else round(silent, 3),
        })
    return workers, running_by_queue


def _queues(waiting: dict[str, dict], running_by_queue: dict[str, int], now: float) -> dict[str, dict[str, Any]]:
    """Per queue: pending (all, by priority), running, the oldest waiting job's age in seconds."""
    details = {}
    for queue in sorted(set(waiting) | set(running_by_queue)):
        entry = waiting.get(queue, {"pending": {}, "oldest": None})
        details[queue] = {
            "pending": sum(entry["pending"].values()),
            "pending_by_priority": {str(priority): count for priority, count in sorted(entry["pending"].items())},
            "running": running_by_queue.get(queue, 0),
            "oldest_age": None if entry["oldest"] is None else round(max(0.0, now - entry["oldest"]), 3),
        }
    return details
