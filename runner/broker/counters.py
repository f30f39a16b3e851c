"""Counts the broker keeps of its jobs, for ``runner status`` and the Prometheus metrics.

A plain object (sans-IO, no clock): the JobBook tells it that a job was accepted, that
a run ended or will be retried, each an O(1) bump of a few integers, so the views never
scan the journal. Names used as metric labels are capped (``MAX_LABELS`` distinct task
names and queue names, later ones count under ``OTHER``) so a client inventing task
names cannot grow the broker's memory or a Prometheus server's series without bound.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

MAX_LABELS = 100  # distinct task (and queue) names kept as labels; the rest count as OTHER
OTHER = "other"
RATE_WINDOW = 10  # seconds over which completed and failed jobs per second are averaged
#: Upper bounds (seconds) of the queue-wait and run-time histogram buckets.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
SUBMITTED, COMPLETED, FAILED, RETRIED = range(4)  # places in a (queue, task) row of counts


class Labels:
    """The first ``limit`` distinct names map to themselves, every later one to OTHER."""

    def __init__(self, limit: int = MAX_LABELS) -> None:
        self.limit = limit
        self._known: set[str] = set()

    def __call__(self, name: str) -> str:
        if name in self._known:
            return name
        if len(self._known) < self.limit:
            self._known.add(name)
            return name
        return OTHER


@dataclass
class Histogram:
    """Observations counted into BUCKETS (non-cumulative counts; the last counts above the top bound)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def copy(self) -> "Histogram":
        return Histogram(list(self.counts), self.total)


class Rate:
    """Events per second over the last ``window`` whole seconds, in a ring of per-second buckets."""

    def __init__(self, window: int = RATE_WINDOW) -> None:
        self.window = window
        self._buckets = [0] * window
        self._second = 0  # the second the newest bucket counts

    def add(self, now: float, count: int = 1) -> None:
        second = int(now)
        if second > self._second:  # a new second (a call per job: the common case skips the call)
            self._advance(second)
        self._buckets[self._second % self.window] += count

    def per_second(self, now: float) -> float:
        """The mean over the ``window`` seconds before ``now`` (the current second included)."""
        self._advance(int(now))
        return sum(self._buckets) / self.window

    def recent(self, now: float) -> list[int]:
        """The count of each of the ``window`` whole seconds up to ``now``'s, oldest first."""
        second = int(now)
        self._advance(second)
        return [self._buckets[past % self.window] for past in range(second - self.window + 1, second + 1)]

    def _advance(self, second: int) -> None:
        if second <= self._second:
            return
        for passed in range(self._second + 1, min(second, self._second + self.window) + 1):
            self._buckets[passed % self.window] = 0
        self._second = second


@dataclass
class WorkerCounts:
    """Runs one worker finished, by how they ended."""

    done: int = 0
    failed: int = 0


class Counters:
    """Everything counted about jobs since the broker started."""

    def __init__(self, max_labels: int = MAX_LABELS) -> None:
        self.tasks = Labels(max_labels)
        self.queues = Labels(max_labels)
        self.by_task: dict[tuple[str, str], list[int]] = {}  # (queue, task) -> [submitted, completed, failed, retried]
        self.workers: dict[bytes, WorkerCounts] = {}
        self.completed = Rate()
        self.failed = Rate()
        self.wait: dict[str, Histogram] = {}  # queue -> seconds from accepted to (last) leased
        self.run: dict[str, Histogram] = {}  # queue -> seconds from leased to finished
        # (queue, task) as the job names them -> its row and its queue's histograms: one dict
        # lookup a job. Names under their own label only (at most MAX_LABELS squared), so it is bounded.
        self._entries: dict[tuple[str, str], tuple[list[int], Histogram, Histogram]] = {}

    def _entry(self, queue: str, task: str) -> tuple[list[int], Histogram, Histogram]:
        entry = self._entries.get((queue, task))
        if entry is not None:
            return entry
        queue_label, task_label = self.queues(queue), self.tasks(task)
        row = self.by_task.get((queue_label, task_label))
        if row is None:
            row = self.by_task[(queue_label, task_label)] = [0, 0, 0, 0]
        entry = (row, _histogram(self.wait, queue_label), _histogram(self.run, queue_label))
        if queue_label == queue and task_label == task:
            self._entries[(queue, task)] = entry
        return entry

    def _row(self, queue: str, task: str) -> list[int]:
        return self._entry(queue, task)[0]

    def submitted(self, queue: str, task: str) -> None:
        """A job was accepted (once per job: looked up here, as in ``ran``)."""
        (self._entries.get((queue, task)) or self._entry(queue, task))[0][SUBMITTED] += 1

    def retried(self, queue: str, task: str) -> None:
        self._row(queue, task)[RETRIED] += 1

    def worker_joined(self, worker: bytes) -> None:
        self.workers.setdefault(worker, WorkerCounts())

    def worker_left(self, worker: bytes) -> None:
        self.workers.pop(worker, None)

    def ran(self, worker: bytes | None, queue: str, task: str, ok: bool, now: float,
            accepted: float | None, leased: float | None) -> None:
        """A run the broker counts ended (``ok``: done; else failed, retried or not). Once per job:
        the entry is looked up here, and only a new (queue, task) pair goes through ``_entry``."""
        row, wait, run = self._entries.get((queue, task)) or self._entry(queue, task)
        counts = self.workers.get(worker) if worker is not None else None
        if ok:
            row[COMPLETED] += 1
            self.completed.add(now)
            if counts is not None:
                counts.done += 1
        else:
            row[FAILED] += 1
            self.failed.add(now)
            if counts is not None:
                counts.failed += 1
        if leased is not None:
            if accepted is not None:
                wait.observe(leased - accepted if leased > accepted else 0.0)
            run.observe(now - leased if now > leased else 0.0)

    def snapshot(self) -> "Totals":
        """A copy another thread may read while the loop goes on counting (taken on the loop's thread)."""
        return Totals({key: list(row) for key, row in self.by_task.items()},
                      {queue: histogram.copy() for queue, histogram in self.wait.items()},
                      {queue: histogram.copy() for queue, histogram in self.run.items()})


@dataclass
class Totals:
    """The counts by queue and task and the histograms, as they were at one moment."""

    by_task: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    wait: dict[str, Histogram] = field(default_factory=dict)
    run: dict[str, Histogram] = field(default_factory=dict)


def _histogram(histograms: dict[str, Histogram], label: str) -> Histogram:
    histogram = histograms.get(label)
    if histogram is None:
        histogram = histograms[label] = Histogram()
    return histogram
