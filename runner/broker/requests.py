"""The broker's answers to requests: what a client asks and gets one reply for.

Status, waiting for workers, job queries (fetch, listings, one job, dead letters), job
admin (cancel, requeue), event polls and cluster-wide sync operations. A mixin of Broker
(runner/broker/server.py), which owns the socket, the dispatch table and the flush: these
handlers read its state and queue their reply with ``_reply``, sent after the turn's commit.
"""

from __future__ import annotations

import time

from runner import protocol
from runner.broker import listing, sync_ops
from runner.broker.events import Batch
from runner.broker.scheduler import SCHEDULED
from runner.broker.status import status_snapshot
from runner.broker.sync import EPOCH, PUT, Reply


class Requests:
    """The reply-bearing request handlers of Broker, and its ``status()``."""

    def status(self) -> dict:
        """A snapshot of workers, queues and jobs, for ``client.status()`` (runner/broker/status.py)."""
        return status_snapshot(self)

    def _on_status(self, peer_id: bytes, message: protocol.Message) -> None:
        self._reply(peer_id, message, {"status": self.status()})

    def _on_wait_workers(self, client: bytes, message: protocol.Message) -> None:
        self._worker_waiters.append((client, message.body["request"], message.body["count"]))
        self._answer_worker_waiters()

    def _answer_worker_waiters(self) -> None:
        workers = sum(1 for peer in self.peers.values() if peer.role == "worker")
        still_waiting = []
        for client, request, count in self._worker_waiters:
            if workers >= count:
                self.link.send(client, protocol.REPLY, {"request": request, "workers": workers})
            else:
                still_waiting.append((client, request, count))
        self._worker_waiters = still_waiting

    def _on_fetch(self, client: bytes, message: protocol.Message) -> None:
        job_id = message.body["id"]
        if self.access.enabled and not self.access.may_touch(client, self.jobs.owner(job_id)):  # as if unknown
            self._reply(client, message, {"state": "unknown"})
            return
        held = self.jobs.scheduler.jobs.get(job_id)
        stored = None if held else self.journal.get(job_id)
        if held is not None:
            answer = {"state": listing.held_state(held)}
            if held.state == SCHEDULED:
                answer["due"] = held.due
        elif stored is None:
            answer = {"state": "unknown"}
        else:
            answer = {"state": stored.state, "status": stored.status, "outcome": stored.outcome or b""}
        self._reply(client, message, answer)

    def _on_list_jobs(self, client: bytes, message: protocol.Message) -> None:
        jobs = listing.list_jobs(self.jobs.scheduler.jobs, self.journal, listing.JobFilter.from_body(message.body),
                                 lambda owner: self.access.may_touch(client, owner), self._worker_name)
        self._reply(client, message, {"jobs": jobs})

    def _on_show_job(self, client: bytes, message: protocol.Message) -> None:
        job_id = message.body["id"]
        held = self.jobs.scheduler.jobs.get(job_id)
        stored = None if held else self.journal.get(job_id)
        owner = held.client if held else stored.client if stored else None
        if owner is None or not self.access.may_touch(client, owner):
            self._reply(client, message, {"job": None})
            return
        if held:
            waiter = self.jobs.dependencies.waiting.get(job_id)
            job = listing.describe_held(held, self._worker_name, waiter.remaining if waiter else None)
        else:
            job = listing.describe_stored(stored)
        self._reply(client, message, {"job": job})

    def _on_dead_letters(self, client: bytes, message: protocol.Message) -> None:
        jobs = [{"id": job.id, "task": job.task, "queue": job.queue, "attempts": job.attempts, "error": job.outcome}
                for job in self.journal.dead_letters() if self.access.may_touch(client, job.client)]
        self._reply(client, message, {"jobs": jobs})

    def _on_cancel(self, client: bytes, message: protocol.Message) -> None:
        if self.access.enabled and not self.access.may_touch(client, self.jobs.owner(message.body["id"])):
            self._reply(client, message, {"result": "unknown"})
            return
        result = self.jobs.cancel(message.body["id"], message.body.get("force", False), time.time())
        self._reply(client, message, {"result": result})

    def _on_requeue(self, client: bytes, message: protocol.Message) -> None:
        job_id = message.body["id"]
        allowed = not self.access.enabled or self.access.may_touch(client, self.jobs.owner(job_id))
        self._reply(client, message, {"requeued": allowed and self.jobs.requeue(job_id, client, time.time())})

    def _on_events(self, client: bytes, message: protocol.Message) -> None:
        if not self.access.is_admin(client):  # events name every client's jobs
            self._reply(client, message, {"events": [], "lost": 0, "refused": "job events need an admin key"})
            return
        batch = self.events.poll(client, message.body["request"], message.body.get("wait", 0.0), time.monotonic())
        if batch is not None:
            self._reply_events([batch])

    def _reply_events(self, batches: list[Batch]) -> None:
        """Answer event polls with this turn's other replies (a flush is scheduled, unless flushing)."""
        for batch in batches:
            self._replies.append((batch.peer, {"request": batch.request, "events": batch.events, "lost": batch.lost}))
        if batches and not self._flushing:
            self._schedule_flush()

    def _on_sync(self, peer_id: bytes, message: protocol.Message) -> None:
        if message.body.get("session", self.peers[peer_id].session) != self.peers[peer_id].session:
            return  # sent before the peer's latest hello: it sends it again once welcomed, in its new session
        refusal = self.sync_quota.use(peer_id, message.body["name"])
        if refusal is not None:
            self._reply(peer_id, message, {"error": refusal, "kind": "LimitError"})
            return
        replies = sync_ops.handle(self.sync, peer_id, message.body["request"], message.body, time.monotonic())
        self._sync_replies(replies)

    def _sync_replies(self, replies: list[Reply]) -> None:
        """Journal the state's changes, queue the replies for after the commit, re-arm the deadline timer."""
        for change in self.sync.drain_changes():
            if change.op == PUT:
                self.journal.queue_put(change.name, change.item)
            elif change.op == EPOCH:
                self.journal.save_epoch(self.sync.epoch)
            else:
                self.journal.queue_take(change.name, change.item)
        self._replies.extend((reply.peer, {"request": reply.request, **reply.body}) for reply in replies)
        self._schedule_flush()
        deadline = self.sync.next_deadline()
        if self._sync_timer is not None:
            self._sync_timer.cancel()
        if deadline is not None:
            self._sync_timer = self.loop.call_later(max(0.0, deadline - time.monotonic()), self._expire_sync)

    def _expire_sync(self) -> None:
        self._sync_timer = None
        self._sync_replies(self.sync.expire(time.monotonic()))
