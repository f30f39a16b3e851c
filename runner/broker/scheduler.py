"""Where a job waits and which worker gets it: queues, priorities and credit.

A plain object with no sockets and no clock (sans-IO): the broker's server feeds
it events (a job was submitted, a worker joined, finished a job or vanished) and
asks it for a dispatch plan at the end of each loop turn. Tests drive it directly.

Rules:
- Jobs wait in a named queue; within a queue and pool, higher priority first,
  FIFO within a priority. A job given back (its worker died) goes to the front of
  its priority, since it was accepted before anything still waiting there.
- Each worker announces credit per pool (how many jobs it can hold at once). The
  scheduler never leases more than that; each finished job returns one credit.
- Among workers with credit for a queue, jobs are dealt round-robin starting with
  the worker that has the most free credit (least loaded), so load spreads evenly.
- A job whose queue no connected worker serves simply waits.
"""

from __future__ import annotations

import bisect
import collections
import itertools
from dataclasses import dataclass, field

from runner.broker.retry import DEFAULT_RULES, RetryRules

PENDING = "pending"  # waiting in a queue
RUNNING = "running"  # leased to a worker
DEFERRED = "deferred"  # held back until a retry's backoff passes
SCHEDULED = "scheduled"  # a delayed job held back until it is due (runner/broker/timers.py)


class Job:
    """One accepted job. ``payload`` stays an opaque msgpack blob in the broker."""

    __slots__ = ("id", "task", "pool", "queue", "priority", "payload", "client", "rules", "attempt", "state", "worker",
                 "accepted", "leased", "due")

    def __init__(
        self, id: str, task: str, pool: str, queue: str, priority: int, payload: bytes, client: bytes,
        rules: RetryRules = DEFAULT_RULES,
    ) -> None:
        self.id = id
        self.task = task
        self.pool = pool
        self.queue = queue
        self.priority = priority
        self.payload = payload
        self.client = client
        self.rules = rules
        self.attempt = 0
        self.state = PENDING
        self.worker: bytes | None = None
        self.accepted: float | None = None  # when the broker accepted it (None: restored after a restart)
        self.leased: float | None = None  # when its latest lease was sent
        self.due: float | None = None  # while held back (SCHEDULED or DEFERRED): when it may run, epoch seconds

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.task!r}, {self.state}, attempt={self.attempt})"


class PriorityFifo:
    """Jobs by priority (highest first), FIFO within a priority; O(1) for one priority."""

    __slots__ = ("_by_priority", "_priorities", "_size")

    def __init__(self) -> None:
        self._by_priority: dict[int, collections.deque[Job]] = {}
        self._priorities: list[int] = []  # ascending; the highest is last
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def push(self, job: Job, front: bool = False) -> None:
        lane = self._by_priority.get(job.priority)
        if lane is None:
            lane = self._by_priority[job.priority] = collections.deque()
            bisect.insort(self._priorities, job.priority)
        if front:
            lane.appendleft(job)
        else:
            lane.append(job)
        self._size += 1

    def pop(self) -> Job:
        priority = self._priorities[-1]
        lane = self._by_priority[priority]
        job = lane.popleft()
        if not lane:
            del self._by_priority[priority]
            self._priorities.pop()
        self._size -= 1
        return job

    def lanes(self) -> list[tuple[int, collections.deque[Job]]]:
        """(priority, jobs) for each priority with jobs waiting."""
        return list(self._by_priority.items())

    def remove(self, job: Job) -> None:
        lane = self._by_priority[job.priority]
        lane.remove(job)
        self._size -= 1
        if not lane:
            del self._by_priority[job.priority]
            self._priorities.remove(job.priority)


@dataclass
class WorkerSlot:
    """What the scheduler knows of one connected worker."""

    id: bytes
    queues: tuple[str, ...]
    credit: dict[str, int]
    leased: dict[str, Job] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))
    order: int = 0

    def free(self, pool: str) -> int:
        return self.credit.get(pool, 0) - self.in_flight[pool]


class UnknownWorker(KeyError):
    """An event named a worker the scheduler does not know (never joined, or gone)."""


class Scheduler:
    """Queues, credit and leases of every job the broker holds."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.workers: dict[bytes, WorkerSlot] = {}
        self._waiting: dict[tuple[str, str], PriorityFifo] = {}  # (queue, pool) -> jobs
        self._dirty = False
        self._join_order = itertools.count()

    # --- events ---------------------------------------------------------------------

    def submit(self, job: Job) -> bool:
        """Accept a job; False when a job with that id is already held (a resend)."""
        if job.id in self.jobs:
            return False
        self.jobs[job.id] = job
        self._enqueue(job)
        return True

    def worker_joined(self, worker_id: bytes, queues: list[str], credit: dict[str, int]) -> None:
        """A worker is ready to take jobs from ``queues`` up to ``credit`` per pool."""
        if worker_id in self.workers:  # joined again without leaving: its jobs wait again
            for job in reversed(self.worker_left(worker_id)):  # front pushes: last first keeps order
                self.requeue(job, front=True)
        self.workers[worker_id] = WorkerSlot(
            worker_id, tuple(queues), dict(credit), order=next(self._join_order)
        )
        self._dirty = True

    def worker_left(self, worker_id: bytes) -> list[Job]:
        """A worker is gone: return the jobs it held; the caller requeues or ends each."""
        worker = self.workers.pop(worker_id, None)
        if worker is None:
            return []
        returned = list(worker.leased.values())
        for job in returned:
            job.worker = None
            del self.jobs[job.id]
        return returned

    def requeue(self, job: Job, front: bool = False) -> None:
        """Put a held job back in its queue (front: it was accepted before those waiting)."""
        self.jobs[job.id] = job
        job.worker = None
        self._enqueue(job, front=front)

    def defer(self, job: Job, state: str = DEFERRED) -> None:
        """Hold a job out of its queue until ``requeue``: a retry waiting for its backoff (DEFERRED),
        or a delayed job not yet due (SCHEDULED)."""
        self.jobs[job.id] = job
        job.state = state
        job.worker = None

    def adopt(self, worker_id: bytes, job: Job, attempt: int) -> bool:
        """Lease a waiting job to the worker that says it still runs it; False if it cannot."""
        worker = self.workers.get(worker_id)
        # The claimed run is the one already counted, or the next (a restart forgot its lease);
        # anything else is a run from before the job was requeued afresh.
        if worker is None or job.state != PENDING or not job.attempt <= attempt <= job.attempt + 1:
            return False
        self._waiting[(job.queue, job.pool)].remove(job)
        self._lease(job, worker)
        job.attempt = attempt  # the lease is for the run the worker has, not a new one
        return True

    def claim(self, job: Job, attempt: int) -> bool:
        """Take a waiting job out of its queue for a finished run nobody leased (its worker was
        declared dead meanwhile); False if the job moved on (leased again, or a later attempt)."""
        if job.state != PENDING or job.attempt != attempt:
            return False
        self._waiting[(job.queue, job.pool)].remove(job)
        del self.jobs[job.id]
        return True

    def drop_lease(self, job: Job) -> None:
        """Forget a running job's lease (it was cancelled by force); its credit returns."""
        worker = self.workers.get(job.worker) if job.worker else None
        if worker is not None and worker.leased.pop(job.id, None) is not None:
            worker.in_flight[job.pool] -= 1
            self._dirty = True
        self.jobs.pop(job.id, None)
        job.worker = None

    def set_credit(self, worker_id: bytes, credit: dict[str, int]) -> None:
        """Change what a worker may hold (a draining worker gets none)."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.credit = dict(credit)
            self._dirty = True

    def job_finished(self, worker_id: bytes, job_id: str, attempt: int) -> Job | None:
        """A worker reports a final outcome; return the job, or None for a stale report.

        A report counts only from the worker holding the lease, for the attempt it
        was leased; anything else (a duplicate, a worker declared dead) is ignored.
        """
        worker = self.workers.get(worker_id)
        if worker is None:
            raise UnknownWorker(worker_id)
        job = worker.leased.get(job_id)
        if job is None or job.attempt != attempt:
            return None
        del worker.leased[job_id]
        worker.in_flight[job.pool] -= 1
        del self.jobs[job_id]
        self._dirty = True
        return job

    def leased_jobs(self, worker_id: bytes, rows: list[list]) -> list[Job]:
        """The jobs of ``rows`` ([job_id, attempt]) leased to this worker at that attempt; others are skipped."""
        worker = self.workers.get(worker_id)
        if worker is None:
            return []
        jobs = (worker.leased.get(job_id) for job_id, _ in rows)
        return [job for job, (_, attempt) in zip(jobs, rows) if job is not None and job.attempt == attempt]

    def cancel(self, job_id: str) -> bool:
        """Remove a job that has not been dispatched; False if it runs or is unknown."""
        job = self.jobs.get(job_id)
        if job is None or job.state != PENDING:
            return False
        self._waiting[(job.queue, job.pool)].remove(job)
        del self.jobs[job_id]
        return True

    # --- decisions ------------------------------------------------------------------

    def dispatch(self) -> list[tuple[bytes, list[Job]]]:
        """Lease waiting jobs to workers with credit; return (worker id, jobs) batches."""
        if not self._dirty:
            return []
        self._dirty = False
        plan: dict[bytes, list[Job]] = {}
        for (queue, pool), waiting in list(self._waiting.items()):
            if waiting:
                self._deal(queue, pool, waiting, plan)
            if not waiting:
                del self._waiting[(queue, pool)]
        return list(plan.items())

    def _deal(self, queue: str, pool: str, waiting: PriorityFifo, plan: dict[bytes, list[Job]]) -> None:
        takers = [w for w in self.workers.values() if queue in w.queues and w.free(pool) > 0]
        takers.sort(key=lambda w: (-w.free(pool), w.order))
        while waiting and takers:
            for worker in list(takers):
                job = waiting.pop()
                self._lease(job, worker)
                plan.setdefault(worker.id, []).append(job)
                if worker.free(pool) == 0:
                    takers.remove(worker)
                if not waiting:
                    return

    def _lease(self, job: Job, worker: WorkerSlot) -> None:
        job.state = RUNNING
        job.worker = worker.id
        job.attempt += 1
        worker.leased[job.id] = job
        worker.in_flight[job.pool] += 1

    def _enqueue(self, job: Job, front: bool = False) -> None:
        job.state = PENDING
        key = (job.queue, job.pool)
        waiting = self._waiting.get(key)
        if waiting is None:
            waiting = self._waiting[key] = PriorityFifo()
        waiting.push(job, front=front)
        self._dirty = True

    # --- views ----------------------------------------------------------------------

    def waiting_by_queue(self) -> dict[str, dict]:
        """Per queue: jobs waiting by priority and the oldest one's accepted time (None: unknown).

        Reads only the head of each priority lane (lanes are FIFO, and a job pushed to the
        front was accepted before the rest), so it costs the number of lanes, not of jobs.
        """
        queues: dict[str, dict] = {}
        for (queue, _pool), waiting in self._waiting.items():
            entry = queues.setdefault(queue, {"pending": {}, "oldest": None})
            for priority, lane in waiting.lanes():
                entry["pending"][priority] = entry["pending"].get(priority, 0) + len(lane)
                accepted = lane[0].accepted if lane else None
                if accepted is not None and (entry["oldest"] is None or accepted < entry["oldest"]):
                    entry["oldest"] = accepted
        return queues

    def pending_by_queue(self) -> dict[str, int]:
        """How many jobs wait in each queue (jobs leased to a worker not counted)."""
        counts: dict[str, int] = collections.defaultdict(int)
        for (queue, _pool), waiting in self._waiting.items():
            counts[queue] += len(waiting)
        return dict(counts)
