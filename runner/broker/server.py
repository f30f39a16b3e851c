"""The broker process: one ROUTER socket, one thread, one selectors loop.

A thin shell. Frames become calls on the JobBook (every decision about jobs),
on Liveness (who is dead) and on the cluster-wide sync state; what they decide
is sent at the end of the loop turn, after the journal has committed the turn's
writes, so nothing is acknowledged or delivered that a crash could take back.
The requests answered with a reply (status, job queries, cancel, requeue, events,
sync) are handled in runner/broker/requests.py.
"""

from __future__ import annotations

import gc
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import zmq
from loguru import logger

from runner.log import job_lines_on
from runner import protocol
from runner.broker.events import EVENT_BUFFER, EventHub
from runner.broker.jobs import JobBook
from runner.broker.journal import UNCLAIMED_KEEP, Journal
from runner.broker.limits import Limits, Offenders, SyncQuota
from runner.broker import schedule_file
from runner.broker.liveness import Liveness
from runner.broker.access import Access, Keyring, check_bind, key_of
from runner.broker.requests import Requests
from runner.broker.schedule_shell import ScheduleShell
from runner.broker.schedules import SCHEDULER_CLIENT
from runner.broker.scheduler import UnknownWorker
from runner.broker.sync import SyncState
from runner.loop import EventLoop, Timer
from runner.transport import RouterLink, bind_router

log = logger.bind(component="broker")

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_HEARTBEAT = 1.0  # seconds between heartbeats, both ways
DEFAULT_LIVENESS = 3  # heartbeats missed before a peer is declared dead
DEFAULT_JOURNAL = "runner-journal.db"
DEFAULT_RESULT_TTL = 3600.0  # seconds an outcome is kept after its client has it
UNCLAIMED_SWEEP = 3600.0  # seconds between scans for outcomes no client ever claimed
LEASE_ROW_BYTES = 2 * protocol.MAX_NAME + 64  # a lease row's id, task and small fields, beside its payload
OUTCOME_ROW_BYTES = protocol.MAX_NAME + 32  # an outcome row's id and status, beside its payload
DUE_SPACING = 0.001  # seconds between two wakes for due jobs at least: jobs due closer are released together
DUE_LEAD = 0.05  # seconds before its due time a delayed job is leased, its worker holding it until then:
#                  a broker turn that runs long delays the lease, not the job
DUE_WAIT_MAX = 3600.0  # seconds the due timer waits at most (a select cannot wait years); it then looks again


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
    recycled: int = 0  # a worker's pool children replaced so far (it says in hello and heartbeats)
    session: int = 0  # the count of hellos the peer has sent, with this one
    rss: int | None = None  # a worker's resident memory in bytes, and its pool children's (its heartbeats say)
    children_rss: int | None = None
    results: int = 0  # a worker's results messages taken this session (its heartbeats confirm them)


class Broker(Requests, ScheduleShell):
    """Accepts jobs from clients, leases them to workers, routes outcomes back."""

    def __init__(
        self,
        bind: str = DEFAULT_ADDRESS,
        *,
        journal: str = DEFAULT_JOURNAL,
        heartbeat: float = DEFAULT_HEARTBEAT,
        liveness: int = DEFAULT_LIVENESS,
        result_ttl: float = DEFAULT_RESULT_TTL,
        limits: Limits | None = None,
        curve_keys: str | None = None,
        insecure: bool = False,
        events_buffer: int = EVENT_BUFFER,
        schedules: str | None = None,
        due_lead: float = DUE_LEAD,
    ) -> None:
        """``curve_keys``: a key folder (runner/keys.py); CURVE on, only its authorized keys get in.
        Without it, binding anything but a loopback or ipc address needs ``insecure``.
        ``events_buffer``: job events kept per ``runner events`` subscriber; beyond, they are lost.
        ``schedules``: a TOML file of periodic schedules (runner/broker/schedule_file.py), read again
        by ``reload_schedules``; a bad one raises ValueError here.
        ``due_lead``: seconds before its due time a delayed job is leased, its worker holding it until then."""
        if not 0.0 <= due_lead <= protocol.MAX_HOLD:
            raise ValueError(f"due_lead must be from 0 to {protocol.MAX_HOLD} seconds, got {due_lead!r}")
        warning = check_bind(bind, curve_keys is not None, insecure)
        from_file = schedule_file.load(schedules) if schedules is not None else []
        self.id = uuid.uuid4().hex
        self.limits = limits or Limits()
        self.journal = Journal(journal)
        same_owner = (lambda peer, owner: self.access.same_owner(peer, owner)) if curve_keys is not None else None
        self.events = EventHub(log_lines=job_lines_on(), buffer=events_buffer, worker_name=self._worker_name)
        self.jobs = JobBook(self.journal, limits=self.limits, same_owner=same_owner, events=self.events)
        self.liveness = Liveness(heartbeat, liveness)
        restored = self.jobs.restore(time.time())
        self.sync = SyncState(journal=self.journal.durable, epoch=self.journal.start_epoch())
        for name, items in self.journal.queue_contents().items():
            self.sync.restore_queue(name, items)
        self._sync_timer: Timer | None = None
        self._due_timer: Timer | None = None  # fires when the JobBook's earliest held job is due
        self._due_timer_at = 0.0  # the due time it was armed for (epoch seconds)
        self._due_wake_after = 0.0  # monotonic time before which it is not armed again (DUE_SPACING)
        self.due_lead = due_lead
        self.result_ttl = result_ttl
        self.loop = EventLoop()
        self.context = zmq.Context()
        self.guard = None
        if curve_keys is not None:
            from runner.broker.guard import Guard

            self.guard = Guard(self.loop, self.context, curve_keys, self._on_keys)
        self.access = self.guard.access if self.guard else Access(None)
        router, self.address = bind_router(self.context, bind, self.limits.max_message_bytes,
                                           self.guard.secure if self.guard else None)
        self.link = RouterLink(self.loop, router, self._on_frame, self._on_unreachable, self._on_invalid,
                               self._on_keyed_frame if self.guard else None)
        # One liveness window from now, when workers can reach us, to claim what they still run; it ends
        # once every worker the journal lists as connected has said hello again (none listed: no window).
        self.jobs.hold_for_claims(time.time() + self.liveness.grace, self.journal.workers())
        self._wire_limits = self.limits.wire()
        self.sync_quota = SyncQuota(self.limits.max_sync_objects)
        self.offenders = Offenders(self.limits.max_invalid_frames)
        if warning:
            log.warning(warning)
        self.peers: dict[bytes, Peer] = {}
        self._worker_waiters: list[tuple[bytes, int, int]] = []  # (client, request, count)
        self._replies: list[tuple[bytes, dict]] = []  # sent after the turn's journal commit
        self._flush_scheduled = False
        self._flushing = False
        self._beat_due = False  # heartbeats go at the end of the turn, after the commit (they confirm results)
        self.metrics = None  # a runner.broker.metrics.Metrics once serve_metrics is called
        self._handlers: dict[str, Callable[[bytes, protocol.Message], None]] = {
            protocol.HELLO: self._on_hello,
            protocol.SUBMIT: self._on_submit,
            protocol.RESULTS: self._on_results,
            protocol.HEARTBEAT: self._on_heartbeat,
            protocol.STATUS: self._on_status,
            protocol.WAIT_WORKERS: self._on_wait_workers,
            protocol.CANCEL: self._on_cancel,
            protocol.ACK: self._on_ack,
            protocol.FETCH: self._on_fetch,
            protocol.REQUEUE_JOB: self._on_requeue,
            protocol.DEAD_LETTERS: self._on_dead_letters,
            protocol.LIST_JOBS: self._on_list_jobs,
            protocol.SHOW_JOB: self._on_show_job,
            protocol.EVENTS: self._on_events,
            protocol.DRAIN: self._on_drain,
            protocol.SYNC: self._on_sync,
            protocol.CREDIT: self._on_credit,
            protocol.STARTED: self._on_started,
            protocol.SCHEDULE: self._on_schedule,
            protocol.BYE: self._on_bye,
        }
        self.loop.call_every(heartbeat, self._on_heartbeat_tick)
        self.loop.call_every(max(0.2, min(5.0, result_ttl / 4)), self._expire_results)
        self.loop.call_every(UNCLAIMED_SWEEP, self._expire_unclaimed)
        self._start_schedules(schedules, from_file)
        if restored:
            log.info("restored {} unfinished jobs from the journal {}", restored, journal)
            self._schedule_flush()

    def serve_forever(self) -> None:
        """Run the loop until ``stop()``, then commit the journal and close the socket."""
        durability = f"journal {self.journal.path}" if self.journal.durable else "journal in memory (not durable)"
        security = f"CURVE keys {self.guard.folder}" if self.guard else "no CURVE"
        log.info("broker {} listening on {}, {}, {}", self.id[:8], self.address, durability, security)
        # Start-up objects (modules, classes, restored jobs) are out of the collector's way: a full
        # collection then scans only what came since, not tens of thousands of objects (18 ms a time
        # under load, every few seconds, each a stall of every job's dispatch).
        gc.freeze()
        try:
            self.loop.run()
        finally:
            self.journal.close()
            self.link.close()
            if self.metrics is not None:
                self.metrics.close()
            if self.guard:
                self.guard.close()
            self.context.term()
            self.loop.close()
            log.info("broker stopped")

    def serve_metrics(self, port: int, bind: str = "127.0.0.1") -> int:
        """Serve Prometheus metrics on ``bind``:``port`` from a thread of prometheus_client's; return the port.

        The loop publishes a snapshot of its counters once a heartbeat; scrapes read only that."""
        from runner.broker.metrics import Metrics

        self.metrics = Metrics(bind, port)
        self.metrics.publish(self)
        return self.metrics.port

    def stop(self) -> None:
        """Stop serving; safe from a signal handler or another thread."""
        self.loop.stop()

    def reload_keys(self) -> None:
        """Read the authorized keys again (SIGHUP); safe from a signal handler or another thread."""
        if self.guard:
            self.loop.call_soon_threadsafe(self.guard.reload)

    # --- incoming ---------------------------------------------------------------------

    def _on_frame(self, peer_id: bytes, frame: bytes) -> None:
        if self.offenders.cut and self.offenders.ignored(peer_id, time.monotonic()):
            return
        known = peer_id in self.peers
        if known:
            self.liveness.seen(peer_id, time.monotonic())
        try:
            message = protocol.decode(frame)
        except protocol.ProtocolError as exc:
            self._on_invalid(peer_id, f"malformed message dropped: {exc}")
            return
        if not known and message.type not in (protocol.HELLO, protocol.BYE):
            # A peer we declared dead (or never met): it must introduce itself again.
            if message.type == protocol.RESULTS:  # a run nobody else took since still counts
                self.jobs.results_from_lost_worker(peer_id, message.body["results"], time.time())
                self._schedule_flush()
            self._send_error(peer_id, f"{message.type} before hello: say hello first", code="hello")
            return
        self._handlers[message.type](peer_id, message)

    def _on_invalid(self, peer_id: bytes, problem: str) -> None:
        """An invalid frame: answered with an error, until the peer passes max_invalid_frames."""
        if self.offenders.ignored(peer_id, time.monotonic()):
            return
        log.debug("{!r}: {}", peer_id, problem)
        if not self.offenders.invalid(peer_id, time.monotonic()):
            self._send_error(peer_id, problem)
            return
        log.warning("cut off {!r} for {:.0f}s: it sent {} invalid frames (runner broker --max-invalid-frames); "
                    "the last: {}", peer_id, self.offenders.cut_off, self.offenders.threshold, problem)
        self._send_error(peer_id, f"cut off for {self.offenders.cut_off:.0f}s after {self.offenders.threshold} "
                                  f"invalid frames; the last: {problem}", code="cut_off")
        if peer_id in self.peers:
            self._remove_peer(peer_id, "sent too many invalid frames")

    def _on_keyed_frame(self, peer_id: bytes, frame: bytes, key: str) -> None:
        """CURVE on: a frame counts only if its routing id carries the key it came with, still authorized."""
        if self.access.frame_ok(peer_id, key):
            self._on_frame(peer_id, frame)
        else:
            self._deny(peer_id, f"key {key} is not authorized (any more) or does not match this connection")

    def _on_keys(self, keyring: Keyring) -> None:
        """The authorized keys changed: peers whose key is gone (or lost its role) are shut out."""
        for peer_id in self.access.reload(keyring, {peer.id: peer.role for peer in self.peers.values()}):
            self._deny(peer_id, f"key {key_of(peer_id)} was revoked")

    def _deny(self, peer_id: bytes, reason: str) -> None:
        if peer_id in self.peers:
            self._remove_peer(peer_id, reason)
            log.warning("shut out peer {!r}: {}", peer_id, reason)
        elif self.guard and self.guard.once(f"deny {key_of(peer_id)}"):
            log.warning("refused peer {!r}: {} (logged once a minute a key)", peer_id, reason)
        self._send_error(peer_id, f"authentication failed: {reason}", code="denied")

    def _on_hello(self, peer_id: bytes, message: protocol.Message) -> None:
        body = message.body
        if body["role"] == "worker" and not self.access.may_work(peer_id):
            self._deny(peer_id, f"key {key_of(peer_id)} may not register as a worker (not under authorized/workers)")
            return
        if peer_id in self.peers:  # registering again is no loss: its runs are claimed in this hello
            self._remove_peer(peer_id, "said hello again", charged=False)
        elif len(self.peers) >= self.limits.max_peers:
            log.warning("refused {} {} from {}: the broker has its limit of {} peers (runner broker --max-peers)",
                        body["role"], body["name"], body["host"], self.limits.max_peers)
            self._send_error(peer_id, f"the broker has its limit of {self.limits.max_peers} connected clients and "
                                      "workers (runner broker --max-peers); try again later", code="full")
            return
        peer = Peer(peer_id, body["role"], body["name"], body["host"], body["pid"], session=body.get("session", 0))
        if peer.role == "worker":
            peer.queues, peer.slots = list(body["queues"]), dict(body["slots"])
            peer.recycled = body.get("recycled", 0)
            self.jobs.worker_joined(peer_id, peer.queues, peer.slots, body.get("running", []), time.time(),
                                    peer.name)
        self.peers[peer_id] = peer
        self.liveness.seen(peer_id, time.monotonic())
        log.log("INFO" if peer.role == "worker" else "DEBUG", "{} {} joined from {} pid {} {}", peer.role, peer.name,
                peer.host, peer.pid, f"queues={peer.queues} slots={peer.slots}" if peer.role == "worker" else "")
        self.link.send(peer_id, protocol.WELCOME, {
            "heartbeat": self.liveness.interval, "liveness": self.liveness.liveness, "broker": self.id,
            "session": peer.session,
            "limits": self._wire_limits,
        })
        self._answer_worker_waiters()
        self._schedule_flush()

    def _on_heartbeat(self, peer_id: bytes, message: protocol.Message) -> None:
        peer, body = self.peers[peer_id], message.body
        if "recycled" in body:
            peer.recycled = body["recycled"]
        if "rss" in body:
            peer.rss, peer.children_rss = body["rss"], body.get("children_rss")

    def _on_submit(self, client: bytes, message: protocol.Message) -> None:
        self.jobs.submit(client, message.body["jobs"], message.body.get("resend", False), time.time())
        self._schedule_flush()

    def _on_results(self, worker: bytes, message: protocol.Message) -> None:
        self.peers[worker].results += 1
        try:
            self.jobs.results(worker, message.body["results"], time.time())
        except UnknownWorker:
            self._send_error(worker, "results from a worker that is not registered", code="hello")
        self._schedule_flush()

    def _on_ack(self, client: bytes, message: protocol.Message) -> None:
        self.jobs.acknowledge(client, message.body["ids"], time.time())

    def _worker_name(self, worker: bytes | None) -> str:
        peer = self.peers.get(worker) if worker else None
        return peer.name if peer else ""

    def _on_credit(self, worker: bytes, message: protocol.Message) -> None:
        self.jobs.worker_credit(worker, message.body["slots"])
        self._schedule_flush()

    def _on_started(self, worker: bytes, message: protocol.Message) -> None:
        """Leases marked ``report_start`` began to run: the ``started`` events (stale reports are ignored)."""
        if self.events.wanted:
            now = time.time()
            for job in self.jobs.scheduler.leased_jobs(worker, message.body["started"]):
                self.events.emit("started", job, now)

    def _on_drain(self, worker: bytes, message: protocol.Message) -> None:
        log.info("worker {} is draining: no new jobs for it", self.peers[worker].name)
        self.jobs.worker_draining(worker)

    def _on_bye(self, peer_id: bytes, message: protocol.Message) -> None:
        if peer_id in self.peers:
            self._remove_peer(peer_id, "said goodbye")

    # --- liveness and time --------------------------------------------------------------

    def _on_heartbeat_tick(self) -> None:
        for peer_id in self.liveness.expired(time.monotonic()):
            self._remove_peer(peer_id, f"missed heartbeats for {self.liveness.grace:.1f}s")
        self._beat_due = True  # sent by _flush, after this turn's commit
        self.jobs.release_due(time.time(), self.due_lead)
        self._run_due_ticks()  # the schedules' own timer is the precise one; this catches a jumped clock
        if self.metrics is not None:
            self.metrics.publish(self)
        if self.events.subscribers:
            self._reply_events(self.events.expired(time.monotonic()))
        self._schedule_flush()

    def _arm_due_timer(self) -> None:
        """Wake the loop when the earliest held job (delayed, or a retry) is due, a delayed one ``due_lead``
        early; re-armed only when an earlier one arrives (or after it fired), so a flush costs a look
        at the top of a heap."""
        due = self.jobs.next_due(self.due_lead)
        if due is None or self._due_timer is not None and self._due_timer_at <= due:
            return
        if self._due_timer is not None:
            self._due_timer.cancel()
        self._due_timer_at = due
        delay = min(DUE_WAIT_MAX, max(0.0, due - time.time(), self._due_wake_after - time.monotonic()))
        self._due_timer = self.loop.call_later(delay, self._on_due)

    def _on_due(self) -> None:
        self._due_timer = None
        self._due_wake_after = time.monotonic() + DUE_SPACING
        self.jobs.release_due(time.time(), self.due_lead)
        self._schedule_flush()  # leases the released jobs this turn, and arms the timer for the next

    def _expire_results(self) -> None:
        removed = self.journal.expire(time.time(), self.result_ttl, self.jobs.may_take)
        if removed:
            log.debug("removed {} outcomes past their TTL", removed)
        self._schedule_flush()

    def _expire_unclaimed(self) -> None:
        removed = self.journal.expire_unclaimed(time.time(), self.result_ttl)
        if removed:
            log.info("removed {} outcomes no client claimed in {:.0f} hours", removed, UNCLAIMED_KEEP / 3600)
        self._schedule_flush()

    def _on_unreachable(self, peer_id: bytes) -> None:
        if peer_id in self.peers:
            self._remove_peer(peer_id, "is unreachable")

    def _remove_peer(self, peer_id: bytes, reason: str, charged: bool = True) -> None:
        peer = self.peers.pop(peer_id)
        self.liveness.forget(peer_id)
        self.link.forget(peer_id)
        self.sync_quota.forget(peer_id)
        self.events.leave(peer_id)
        self._worker_waiters = [w for w in self._worker_waiters if w[0] != peer_id]
        log.log("INFO" if peer.role == "worker" else "DEBUG", "{} {} left: {}", peer.role, peer.name, reason)
        if peer.role == "worker":
            self.jobs.worker_lost(peer_id, time.time(), charged)
        self._sync_replies(self.sync.peer_gone(peer_id))  # its locks and semaphore slots are free again

    # --- outgoing -----------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.at_end_of_turn(self._flush)

    def _flush(self) -> None:
        """Send what the turn decided: what a crash may repeat first, then commit, then the rest.

        Leases and results may leave before the commit: if the broker dies first, the
        job is still pending in the journal and runs again (at least once), and a
        client ignores an outcome it already has. Acknowledgements, replies and
        cancellations wait for the commit: they promise what the journal must keep.
        """
        self._flush_scheduled = False
        self._flushing = True
        outbox = self.jobs.take_outbox(time.time())
        if self.journal.worker_joined_uncommitted:  # a worker is listed before any lease reaches it (rare)
            self.journal.commit()
        if SCHEDULER_CLIENT in outbox.outcomes:  # journaled for fetch and listings, sent to nobody
            self._schedule_jobs_finished(outbox.outcomes.pop(SCHEDULER_CLIENT))
        self._send_leases(outbox.leases, outbox.hold)
        self._send_outcomes(outbox.outcomes, final=False)
        self.journal.commit()
        self._send_outcomes(outbox.outcomes, final=True)
        if self.events.subscribers:
            self._reply_events(self.events.ready())
        self._flushing = False
        replies, self._replies = self._replies, []
        for peer_id, body in replies:
            self.link.send(peer_id, protocol.REPLY, body)
        for client, ids in outbox.accepted.items():
            self.link.send(client, protocol.ACCEPTED, {"ids": ids})
        for worker, ids in outbox.stop_jobs.items():
            self.link.send(worker, protocol.STOP_JOBS, {"ids": ids})
        if self._beat_due:
            self._send_heartbeats()
        self._arm_due_timer()

    def _send_heartbeats(self) -> None:
        """A heartbeat to every peer, after the commit: a worker's says how many of its results
        messages this session are journaled, so it may forget them (workers/reports.py)."""
        self._beat_due = False
        peers = list(self.peers.items())
        for peer_id, peer in peers:
            if peer.role == "worker":
                self.link.send(peer_id, protocol.HEARTBEAT, {"results": peer.results, "session": peer.session})
            else:
                self.link.send(peer_id, protocol.HEARTBEAT)
        if len(self.peers) != len(peers):  # one was unreachable: its jobs go back, leased next turn
            self._schedule_flush()

    def _send_leases(self, leases: list, hold: dict[str, float]) -> None:
        """``hold``: seconds the worker waits before starting each job leased ahead of its due time."""
        for worker, jobs in leases:
            rows = [[job.id, job.attempt, job.task, job.pool, job.payload, job.rules.timeout, job.priority]
                    for job in jobs]
            body = {}
            if self.events.wanted:  # someone watches: ask the worker to say when each one starts
                body["report_start"] = True
                for job in jobs:
                    self.events.emit("leased", job)
            for batch in protocol.split_by_size(rows, 4, LEASE_ROW_BYTES, self.limits.max_message_bytes):
                message = {"jobs": batch, **body}
                if hold and (held := {row[0]: hold[row[0]] for row in batch if row[0] in hold}):
                    message["hold"] = held
                self.link.send(worker, protocol.JOBS, message)

    def _send_outcomes(self, outcomes: dict[bytes, list[list]], final: bool) -> None:
        """Results (``final`` False), or cancellations (``final`` True: after the commit)."""
        for client, rows in outcomes.items():
            rows = [row for row in rows if (row[1] == protocol.CANCELLED) == final]
            if not rows:
                continue
            if client in self.peers:
                for batch in protocol.split_by_size(rows, 2, OUTCOME_ROW_BYTES, self.limits.max_message_bytes):
                    self.link.send(client, protocol.OUTCOMES, {"outcomes": batch})
            else:
                log.info("kept {} outcomes for client {!r}, which is away, until it asks again", len(rows), client)

    def _reply(self, peer_id: bytes, message: protocol.Message, answer: dict) -> None:
        """Answer a request once this turn's journal writes are committed."""
        self._replies.append((peer_id, {"request": message.body["request"], **answer}))
        self._schedule_flush()

    def _send_error(self, peer_id: bytes, text: str, code: str = "invalid") -> None:
        self.link.send(peer_id, protocol.ERROR, {"message": text, "code": code})
