"""The broker process: one ROUTER socket, one thread, one selectors loop.

A thin shell. It turns frames into calls on the scheduler (which decides where
jobs go) and on liveness (which decides who is dead), and turns their answers
into frames. Replies that can be batched (accepted ids, jobs for a worker,
outcomes for a client) are collected during a loop turn and sent once at its end.
"""

from __future__ import annotations

import collections
import os
import socket as socket_module
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import zmq
from loguru import logger

from runner import protocol
from runner.broker.liveness import Liveness
from runner.broker.scheduler import Job, Scheduler, UnknownWorker
from runner.loop import EventLoop
from runner.transport import RouterLink, bind_router

log = logger.bind(component="broker")

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_HEARTBEAT = 1.0  # seconds between heartbeats, both ways
DEFAULT_LIVENESS = 3  # heartbeats missed before a peer is declared dead


@dataclass
class Peer:
    """A connected client or worker, as it introduced itself."""

    id: bytes
    role: str
    name: str
    host: str
    pid: int
    queues: list[str] = field(default_factory=list)
    slots: dict[str, int] = field(default_factory=dict)


class Broker:
    """Accepts jobs from clients, leases them to workers, routes outcomes back."""

    def __init__(
        self,
        bind: str = DEFAULT_ADDRESS,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT,
        liveness: int = DEFAULT_LIVENESS,
    ) -> None:
        self.id = uuid.uuid4().hex
        self.loop = EventLoop()
        self.context = zmq.Context()
        router, self.address = bind_router(self.context, bind)
        self.link = RouterLink(self.loop, router, self._on_frame, self._on_unreachable)
        self.scheduler = Scheduler()
        self.liveness = Liveness(heartbeat, liveness)
        self.peers: dict[bytes, Peer] = {}
        self._accepted: dict[bytes, list[str]] = collections.defaultdict(list)
        self._outcomes: dict[bytes, list[list]] = collections.defaultdict(list)
        self._worker_waiters: list[tuple[bytes, int, int]] = []  # (client, request, count)
        self._flush_scheduled = False
        self._handlers: dict[str, Callable[[bytes, protocol.Message], None]] = {
            protocol.HELLO: self._on_hello,
            protocol.SUBMIT: self._on_submit,
            protocol.RESULTS: self._on_results,
            protocol.HEARTBEAT: lambda peer, message: None,
            protocol.STATUS: self._on_status,
            protocol.WAIT_WORKERS: self._on_wait_workers,
            protocol.BYE: self._on_bye,
        }
        self.loop.call_every(heartbeat, self._on_heartbeat_tick)

    def serve_forever(self) -> None:
        """Run the loop until ``stop()``, then close the socket."""
        log.info("broker {} listening on {}", self.id[:8], self.address)
        try:
            self.loop.run()
        finally:
            self.link.close()
            self.context.term()
            self.loop.close()
            log.info("broker stopped")

    def stop(self) -> None:
        """Stop serving; safe from a signal handler or another thread."""
        self.loop.stop()

    # --- incoming ---------------------------------------------------------------------

    def _on_frame(self, peer_id: bytes, frame: bytes) -> None:
        known = peer_id in self.peers
        if known:
            self.liveness.seen(peer_id, time.monotonic())
        try:
            message = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            log.warning("dropped a malformed message from {!r}: {}", peer_id, exc)
            self._send_error(peer_id, f"malformed message dropped: {exc}")
            return
        if not known and message.type not in (protocol.HELLO, protocol.BYE):
            # A peer we declared dead (or never met): it must introduce itself again.
            self._send_error(peer_id, f"{message.type} before hello: say hello first", code="hello")
            return
        self._handlers[message.type](peer_id, message)

    def _on_hello(self, peer_id: bytes, message: protocol.Message) -> None:
        body = message.body
        if peer_id in self.peers:
            self._remove_peer(peer_id, "said hello again")
        peer = Peer(peer_id, body["role"], body["name"], body["host"], body["pid"])
        if peer.role == "worker":
            peer.queues = list(body["queues"])
            peer.slots = dict(body["slots"])
            self.scheduler.worker_joined(peer_id, peer.queues, peer.slots)
        self.peers[peer_id] = peer
        self.liveness.seen(peer_id, time.monotonic())
        log.log("INFO" if peer.role == "worker" else "DEBUG", "{} {} joined from {} pid {} {}", peer.role, peer.name, peer.host, peer.pid,
                 f"queues={peer.queues} slots={peer.slots}" if peer.role == "worker" else "")
        self.link.send(peer_id, protocol.WELCOME, {
            "heartbeat": self.liveness.interval, "liveness": self.liveness.liveness, "broker": self.id,
        })
        self._answer_worker_waiters()
        self._schedule_flush()

    def _on_submit(self, client: bytes, message: protocol.Message) -> None:
        accepted = self._accepted[client]
        for job_id, task, pool, queue, priority, payload in message.body["jobs"]:
            job = Job(job_id, task, pool, queue, priority, payload, client)
            if self.scheduler.submit(job):
                log.bind(job=job_id).debug("accepted {} for queue {} pool {} priority {}", task, queue, pool, priority)
            accepted.append(job_id)  # a resend is acknowledged again, never run twice
        self._schedule_flush()

    def _on_results(self, worker: bytes, message: protocol.Message) -> None:
        for job_id, attempt, status, payload in message.body["results"]:
            try:
                job = self.scheduler.job_finished(worker, job_id, attempt)
            except UnknownWorker:
                self._send_error(worker, "results from a worker that is not registered", code="hello")
                return
            if job is None:
                log.bind(job=job_id).info("ignored a stale result for attempt {}", attempt)
                continue
            log.bind(job=job_id).debug("finished {} on attempt {}", status, attempt)
            self._outcomes[job.client].append([job_id, status, payload])
        self._schedule_flush()

    def _on_status(self, peer_id: bytes, message: protocol.Message) -> None:
        self.link.send(peer_id, protocol.REPLY, {"request": message.body["request"], "status": self.status()})

    def _on_wait_workers(self, client: bytes, message: protocol.Message) -> None:
        self._worker_waiters.append((client, message.body["request"], message.body["count"]))
        self._answer_worker_waiters()

    def _on_bye(self, peer_id: bytes, message: protocol.Message) -> None:
        if peer_id in self.peers:
            self._remove_peer(peer_id, "said goodbye")

    # --- liveness -----------------------------------------------------------------------

    def _on_heartbeat_tick(self) -> None:
        for peer_id in self.liveness.expired(time.monotonic()):
            self._remove_peer(peer_id, f"missed heartbeats for {self.liveness.grace:.1f}s")
        for peer_id in list(self.peers):
            self.link.send(peer_id, protocol.HEARTBEAT)

    def _on_unreachable(self, peer_id: bytes) -> None:
        if peer_id in self.peers:
            self._remove_peer(peer_id, "is unreachable")

    def _remove_peer(self, peer_id: bytes, reason: str) -> None:
        peer = self.peers.pop(peer_id)
        self.liveness.forget(peer_id)
        self.link.forget(peer_id)
        self._worker_waiters = [w for w in self._worker_waiters if w[0] != peer_id]
        log.log("INFO" if peer.role == "worker" else "DEBUG", "{} {} left: {}", peer.role, peer.name, reason)
        if peer.role == "worker":
            for job in self.scheduler.worker_left(peer_id):
                log.bind(job=job.id).warning("requeued: worker {} left during attempt {}", peer.name, job.attempt)
            self._schedule_flush()

    # --- outgoing -----------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.at_end_of_turn(self._flush)

    def _flush(self) -> None:
        """Send what this turn produced: acknowledgements, leases, outcomes."""
        self._flush_scheduled = False
        accepted, self._accepted = self._accepted, collections.defaultdict(list)
        for client, ids in accepted.items():
            self.link.send(client, protocol.ACCEPTED, {"ids": ids})
        for worker, jobs in self.scheduler.dispatch():
            rows = [[job.id, job.attempt, job.task, job.pool, job.payload] for job in jobs]
            for job in jobs:
                log.bind(job=job.id).debug("leased to {} (attempt {})", self.peers[worker].name, job.attempt)
            self.link.send(worker, protocol.JOBS, {"jobs": rows})
        outcomes, self._outcomes = self._outcomes, collections.defaultdict(list)
        for client, rows in outcomes.items():
            if client in self.peers:
                self.link.send(client, protocol.OUTCOMES, {"outcomes": rows})
            else:
                log.warning("dropped {} outcomes for client {!r}, which is gone", len(rows), client)

    def _send_error(self, peer_id: bytes, text: str, code: str = "invalid") -> None:
        self.link.send(peer_id, protocol.ERROR, {"message": text, "code": code})

    def _answer_worker_waiters(self) -> None:
        workers = sum(1 for peer in self.peers.values() if peer.role == "worker")
        still_waiting = []
        for client, request, count in self._worker_waiters:
            if workers >= count:
                self.link.send(client, protocol.REPLY, {"request": request, "workers": workers})
            else:
                still_waiting.append((client, request, count))
        self._worker_waiters = still_waiting

    # --- views --------------------------------------------------------------------------

    def status(self) -> dict:
        """A snapshot of workers, queues and jobs, for ``client.status()``."""
        workers = []
        for peer in self.peers.values():
            if peer.role != "worker":
                continue
            slot = self.scheduler.workers.get(peer.id)
            running = dict(slot.in_flight) if slot else {}
            workers.append({
                "id": peer.name, "host": peer.host, "pid": peer.pid, "queues": peer.queues,
                "slots": peer.slots, "running": sum(running.values()), "running_by_pool": running,
            })
        pending = self.scheduler.pending_by_queue()
        held = len(self.scheduler.jobs)
        return {
            "broker": {"id": self.id, "address": self.address, "pid": os.getpid(), "host": socket_module.gethostname()},
            "workers": workers,
            "clients": sum(1 for peer in self.peers.values() if peer.role == "client"),
            "queues": pending,
            "jobs": {"pending": sum(pending.values()), "running": held - sum(pending.values())},
        }
