"""Job listings and one job's every field, for ``runner jobs`` and ``runner jobs show`` (no I/O).

A listing is an on-demand request that runs in the broker's loop, so it is bounded twice:
it returns at most ``protocol.LIST_MAX`` jobs and looks through at most the newest ``SCAN_WINDOW``
held jobs and the newest ``SCAN_WINDOW`` journaled ones. Held jobs (pending, running,
scheduled, waiting out a retry's backoff) come from the scheduler's memory, finished ones from the
journal, newest first by rowid (no index is added: writes stay as cheap as they were).
A job's age comes from its id, which starts with the time it was made (runner/ids.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from runner.broker import journal as states
from runner.broker.journal import Journal, StoredJob
from runner.broker.dependencies import WAITING
from runner.broker.scheduler import RUNNING, SCHEDULED, Job

SCAN_WINDOW = 50_000  # newest held jobs, and newest journaled ones, a listing looks through at most
HELD_STATES = ("pending", "running", "scheduled", "waiting")

MaySee = Callable[[bytes], bool]  # may the asking peer see a job of this owner?
WorkerName = Callable[["bytes | None"], str]


@dataclass(frozen=True)
class JobFilter:
    """What a listing keeps: a state, a queue, a task (None: any) and how many jobs at most."""

    state: str | None = None
    queue: str | None = None
    task: str | None = None
    limit: int = 50

    @classmethod
    def from_body(cls, body: dict) -> "JobFilter":
        """The filter of a checked list_jobs request (protocol.py)."""
        return cls(body.get("state"), body.get("queue"), body.get("task"), body.get("limit", 50))

    def keeps(self, state: str, queue: str, task: str) -> bool:
        return ((self.state is None or state == self.state) and (self.queue is None or queue == self.queue)
                and (self.task is None or task == self.task))


def created_at(job_id: str) -> float | None:
    """When a job id was made (seconds since the epoch), read from its stamp; None for a foreign id."""
    try:
        return int(job_id[:12], 16) / 1000 if len(job_id) == 39 else None
    except ValueError:
        return None


def held_state(job: Job) -> str:
    """A held job's state as users see it: a job waiting out a retry's backoff is pending;
    a delayed one not yet due is scheduled; one waiting for other jobs is waiting."""
    if job.state == WAITING:
        return "waiting"
    return "running" if job.state == RUNNING else "scheduled" if job.state == SCHEDULED else "pending"


def list_jobs(held: dict[str, Job], journal: Journal, chosen: JobFilter, may_see: MaySee,
              worker_name: WorkerName) -> list[dict]:
    """The jobs ``chosen`` keeps that the asker may see, newest first, at most ``chosen.limit``."""
    rows: list[dict] = []
    if chosen.state in (None, *HELD_STATES):
        rows += _from_memory(held, chosen, may_see, worker_name)
    if chosen.state not in HELD_STATES:
        rows += _from_journal(journal, chosen, may_see)
    rows.sort(key=lambda row: row["created"] or 0.0, reverse=True)
    return rows[:chosen.limit]


def _from_memory(held: dict[str, Job], chosen: JobFilter, may_see: MaySee, worker_name: WorkerName) -> list[dict]:
    rows = []
    for scanned, job in enumerate(reversed(held.values())):
        if scanned >= SCAN_WINDOW or len(rows) >= chosen.limit:
            break
        state = held_state(job)
        if chosen.keeps(state, job.queue, job.task) and may_see(job.client):
            rows.append(_row(job.id, job.task, job.queue, state, job.attempt, worker_name(job.worker), _due(job)))
    return rows


def _from_journal(journal: Journal, chosen: JobFilter, may_see: MaySee) -> list[dict]:
    wanted = states.FINAL_STATES if chosen.state is None else (chosen.state,)
    rows = []
    for job_id, client, task, queue, state, attempts, worker in journal.newest(wanted, chosen.queue, chosen.task,
                                                                                SCAN_WINDOW):
        if may_see(client):
            rows.append(_row(job_id, task, queue, state, attempts, worker or ""))
            if len(rows) >= chosen.limit:
                break
    return rows


def _row(job_id: str, task: str, queue: str, state: str, attempts: int, worker: str,
         due: float | None = None) -> dict:
    return {"id": job_id, "task": task, "queue": queue, "state": state, "attempts": attempts, "worker": worker,
            "created": created_at(job_id), "due": due}


def _due(job: Job) -> float | None:
    """A scheduled job's due time (epoch seconds); None for any other."""
    return job.due if job.state == SCHEDULED else None


def describe_held(job: Job, worker_name: WorkerName, after: list[str] | None = None) -> dict:
    """Every field of a held job (its arguments as the packed payload the client decodes);
    ``after``: the ids a waiting job still waits for."""
    fields = {**_row(job.id, job.task, job.queue, held_state(job), job.attempt, worker_name(job.worker), _due(job)),
              "pool": job.pool, "priority": job.priority, "options": asdict(job.rules), "payload": job.payload,
              "status": None, "outcome": None}
    if after is not None:
        fields["after"] = list(after)
    return fields


def describe_stored(job: StoredJob) -> dict:
    """Every field of a journaled job, its outcome (result or error blob) included."""
    state = "pending" if job.state == states.PENDING else job.state
    return {**_row(job.id, job.task, job.queue, state, job.attempts, job.worker or ""), "pool": job.pool,
            "priority": job.priority, "options": job.options, "payload": job.payload, "status": job.status,
            "outcome": job.outcome}

