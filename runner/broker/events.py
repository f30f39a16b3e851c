"""A job's life as events: log records and subscriptions (``runner events``), without I/O.

Each step the broker sees (accepted, leased, started, retried, requeued, finished, failed,
dead, cancelled) is one event: the step, job id, task, queue, worker, attempt and time. The broker
asks ``hub.wanted`` once per step, a plain attribute that is False unless someone subscribed
or job logging is on (``--log-level DEBUG``): with neither, no event is built.

Subscribers pull: a poll takes the events buffered for its peer at once, or waits (parked)
until some arrive or its deadline passes. Each subscriber has a bounded buffer; an event
that finds it full is dropped and counted, and the next batch says how many were lost.
So a slow reader loses events and never makes the broker hold more than the buffers.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

from loguru import logger

from runner.broker.scheduler import Job

EVENT_BUFFER = 10_000  # events kept per subscriber until it polls; beyond, they are lost (counted)
BATCH_MAX = 1000  # events one poll answer carries at most
STEPS = ("accepted", "leased", "started", "retried", "requeued", "finished", "failed", "dead", "cancelled")

log = logger.bind(component="events")
WorkerName = Callable[["bytes | None"], str]


class Batch(NamedTuple):
    """An answer to one poll: for ``request`` of ``peer``, these events and how many were lost before."""

    peer: bytes
    request: int
    events: list[dict]
    lost: int


@dataclass
class Subscriber:
    """One peer's buffered events, the count it lost, and its parked poll (request, deadline), if any."""

    buffer: deque = field(default_factory=deque)
    lost: int = 0
    parked: tuple[int, float] | None = None


class EventHub:
    """Builds events when wanted, logs them when asked, and buffers them for each subscriber."""

    def __init__(self, *, log_lines: bool = False, buffer: int = EVENT_BUFFER,
                 worker_name: WorkerName = lambda worker: "") -> None:
        self.log_lines = log_lines
        self.buffer = buffer
        self.worker_name = worker_name
        self.subscribers: dict[bytes, Subscriber] = {}
        self.wanted = log_lines  # the hot path's one check

    def emit(self, step: str, job: Job, now: float | None = None) -> None:
        """One step of ``job``'s life (call only when ``wanted``)."""
        event = {"event": step, "job": job.id, "task": job.task, "queue": job.queue,
                 "worker": self.worker_name(job.worker) if job.worker else "", "attempt": job.attempt,
                 "at": time.time() if now is None else now}
        if self.log_lines:
            log.debug("{event} {task} queue={queue} worker={worker} attempt={attempt}", **event)
        for subscriber in self.subscribers.values():
            if len(subscriber.buffer) < self.buffer:
                subscriber.buffer.append(event)
            else:
                subscriber.lost += 1

    def poll(self, peer: bytes, request: int, wait: float, now: float) -> Batch | None:
        """A poll from ``peer`` (subscribing it): events now, or None if parked until events or ``now + wait``."""
        subscriber = self.subscribers.get(peer)
        if subscriber is None:
            subscriber = self.subscribers[peer] = Subscriber()
            self.wanted = True
        subscriber.parked = (request, now + wait)
        return self._answer(peer, subscriber) if subscriber.buffer or subscriber.lost or wait <= 0 else None

    def ready(self) -> list[Batch]:
        """Answers for parked polls that now have events (once a turn)."""
        return [self._answer(peer, subscriber) for peer, subscriber in self.subscribers.items()
                if subscriber.parked and (subscriber.buffer or subscriber.lost)]

    def expired(self, now: float) -> list[Batch]:
        """Answers, empty, for parked polls whose wait is over."""
        return [self._answer(peer, subscriber) for peer, subscriber in self.subscribers.items()
                if subscriber.parked and subscriber.parked[1] <= now]

    def leave(self, peer: bytes) -> None:
        """The peer left: its subscription and buffer go."""
        if self.subscribers.pop(peer, None) is not None:
            self.wanted = self.log_lines or bool(self.subscribers)

    def _answer(self, peer: bytes, subscriber: Subscriber) -> Batch:
        request = subscriber.parked[0]
        count = min(len(subscriber.buffer), BATCH_MAX)
        events = [subscriber.buffer.popleft() for _ in range(count)]
        batch = Batch(peer, request, events, subscriber.lost)
        subscriber.lost = 0
        subscriber.parked = None
        return batch
