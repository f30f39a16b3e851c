"""The worker process: a DEALER to the broker, its own selectors loop, and three pools.

The loop thread owns the socket. Jobs go to the process, thread or async pool the
job asks for; when a pool future completes, its done-callback (on whatever thread
finished it) puts the result rows in a queue and wakes the loop, which sends
everything that finished in one message. Credit is announced in hello (the
pools' slots) and later in ``credit`` messages (slots plus a prefetch, credit.py):
the broker never leases a worker more jobs per pool than its credit.

The worker remembers each job it runs (``Running``) until it reports it, and each
result until the broker confirms it has journaled it (workers/reports.py), so it can
re-announce them after a reconnect or a broker restart (a run whose result was lost on
the way is kept, not run again), stop them on a timeout or a forced cancel, and give
them back on shutdown.
"""

from __future__ import annotations

import gc
import os
import queue
import signal
import socket as socket_module
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Sequence

import zmq
from loguru import logger

from runner.log import debug_job
from runner import protocol
from runner.connection import BrokerConnection
from runner.errors import PayloadTooLargeError, TaskTimeoutError
from runner.keys import WORKER, load_peer_keys, peer_identity
from runner.loop import EventLoop, Timer
from runner.transport import check_address
from workers import execute
from workers.admission import Admission
from workers.backlog import Backlog
from workers.credit import CreditGauge
from workers.pools import Pools, ResultRow
from workers.recycling import Recycler
from workers.reports import Reports
from workers.start_gate import StartGate

log = logger.bind(component="worker")

DEFAULT_GRACE = 30.0  # seconds running jobs get to finish after SIGTERM
RESULT_ROW_BYTES = protocol.MAX_NAME + 32  # a result row's id, attempt and status, beside its blob
STOPPED_HOW = {  # what became of a job stopped in each pool, for its TaskTimeoutError
    "process": "its pool process was ended",
    "thread": "its thread cannot be stopped and was left to finish",
    "async": "its coroutine was cancelled",
}


@dataclass
class Running:
    """A job this worker holds until its outcome is sent."""

    attempt: int
    pool: str
    future: Future | None = None
    timer: Timer | None = None
    requeue_if_broken: bool = False  # its pool was killed for another job's sake
    report_start: bool = False  # the broker asked to hear when it starts (someone watches job events)
    held: bool = False  # leased ahead of its due time, waiting on ``timer`` (not in the backlog yet)
    gate: StartGate | None = None  # leased ahead of its due time, waiting in its pool thread


class Worker:
    """Takes jobs from one broker and runs them until stopped."""

    def __init__(
        self,
        connect: str,
        *,
        processes: int,
        threads: int,
        async_tasks: int = 0,
        queues: list[str],
        imports: list[str],
        allow_modules: Sequence[str] = (),
        heartbeat: float = 1.0,
        liveness: int = 3,
        grace: float = DEFAULT_GRACE,
        name: str | None = None,
        max_jobs_per_child: int | None = None,
        max_memory_per_child: float | None = None,
        curve_keys: str | None = None,
    ) -> None:
        """``curve_keys``: a key folder with the broker's public key and this worker's pair."""
        self.address = check_address(connect)
        self.queues = list(queues) or ["default"]
        self.name = name or f"{socket_module.gethostname()}-{os.getpid()}"
        self.grace = grace
        curve = None if curve_keys is None else load_peer_keys(curve_keys, WORKER)
        self.identity = peer_identity(b"w-", curve and curve.public_text, uuid.uuid4().hex)
        os.environ["RUNNER_BROKER"] = connect  # tasks' runner.get_client() connects here (pool children inherit it)
        if curve_keys is not None:
            os.environ["RUNNER_CURVE_KEYS"] = os.path.abspath(curve_keys)  # and with these keys
        recycler = None
        if max_jobs_per_child is not None or max_memory_per_child is not None:
            recycler = Recycler(max_jobs_per_child, max_memory_per_child)
        self.admission = Admission(imports, allow_modules)
        self.pools = Pools(processes, threads, self.admission, recycler, async_tasks)
        self._recycled_told = 0  # pool children replaced, as last told to the broker
        self.loop = EventLoop()
        self.context = zmq.Context()
        self.connection = BrokerConnection(
            self.loop, self.context, connect, self.identity, hello=self._hello, on_message=self._on_message,
            on_welcome=self._on_welcome, heartbeat=heartbeat, liveness=liveness, say_waiting=True,
            curve=curve, on_failure=self._on_auth_failure, on_heartbeat=self._on_broker_heartbeat,
        )
        self.running: dict[str, Running] = {}  # touched by the loop thread only
        self.reports = Reports()  # results until the broker confirms them (workers/reports.py)
        self.backlog = Backlog(self.pools.slots())  # held jobs not yet started, by priority
        self.credit = CreditGauge(self.pools.slots())  # how many jobs to ask for, per pool
        # Jobs held per pool (waiting or running): the broker never leases more than the credit,
        # and this count checks that it does not.
        self._held = {pool: 0 for pool in self.pools.slots()}
        # Pool callbacks hand finished rows to the loop thread through this queue.
        self._finished: queue.Queue[list[ResultRow]] = queue.Queue()
        self._drain_requested = False
        self._epoch = 0
        self._draining = threading.Event()  # set once shutdown begins; read by any thread
        self.jobs_done = 0
        self.max_message_bytes = protocol.MAX_MESSAGE_BYTES  # the broker's limits, once it welcomes us
        self.max_payload_bytes = protocol.MAX_MESSAGE_BYTES // 2
        self.abandoned_threads = 0  # thread-pool jobs left running (past a timeout or the grace)

    def run(self) -> None:
        """Say hello, then serve jobs until stopped and drained."""
        log.info("worker {} connecting to {} (queues {}, slots {}, runs {})", self.name, self.address, self.queues,
                 self.pools.slots(), self.admission.describe())
        # Start-up objects (modules, classes, the pools) live as long as the worker: moved out of the
        # collector's way, a full collection scans only the jobs' objects. Thousands of coroutine
        # jobs alive at once trigger full collections often; they took a third of the worker's CPU.
        gc.freeze()
        self.connection.start()
        self.loop.call_every(1.0, self._tend_pools)
        try:
            self.loop.run()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Begin a graceful shutdown; safe from a signal handler or another thread."""
        self.loop.call_soon_threadsafe(self._begin_drain)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT drain the worker: running jobs get ``grace`` seconds."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())

    # --- broker messages ---------------------------------------------------------------

    def _hello(self) -> dict:
        """The hello claims the runs going on and those whose results the broker has not confirmed."""
        self._epoch += 1
        running = [[job_id, entry.attempt] for job_id, entry in self.running.items()] + self.reports.new_session()
        return {
            "role": "worker", "name": self.name, "host": socket_module.gethostname(), "pid": os.getpid(),
            "queues": self.queues, "slots": self.pools.slots(), "epoch": self._epoch,
            "running": running[:protocol.MAX_BATCH],  # beyond (never seen): those run again, at least once
            "recycled": self._recycled_told,
        }

    def _tend_pools(self) -> None:
        """Once a second: look after the pool children; tell the broker how many were recycled and the memory
        resident in this process and its pool children (for ``runner status``)."""
        self.pools.tend()
        self._recycled_told = self.pools.recycled()
        if not self.connection.registered.is_set():
            return  # the hello carries the recycled count
        rss, children_rss = self.pools.memory()
        self.connection.send(protocol.HEARTBEAT, {"recycled": self._recycled_told, "rss": rss,
                                                  "children_rss": children_rss})

    def _on_auth_failure(self, reason: str) -> None:
        """The broker refused this worker's key (or it has none): retrying would not help; stop."""
        log.error("{}; stopping", reason)
        self.loop.stop()

    def _on_welcome(self, body: dict, again: bool) -> None:
        limits = body.get("limits", {})  # an older broker sends none
        self.max_message_bytes = limits.get("max_message_bytes", self.max_message_bytes)
        self.max_payload_bytes = limits.get("max_payload_bytes", self.max_payload_bytes)
        log.info("registered with broker {} at {} (epoch {})", str(body.get("broker", "?"))[:8], self.address, self._epoch)
        self._deliver(self.reports.welcomed())  # claimed in the hello: they count for the lease it kept
        if self._draining.is_set():
            self.connection.send(protocol.DRAIN)
        elif self.credit.announced != self.credit.slots:  # hello announced the bare slots
            self.connection.send(protocol.CREDIT, {"slots": self.credit.announced})

    def _on_broker_heartbeat(self, body: dict) -> None:
        """The broker's heartbeat says how many results messages of this session it has journaled."""
        if body.get("session") == self.connection.session and "results" in body:
            self.reports.confirmed(body["results"])

    def _on_message(self, message: protocol.Message) -> None:
        if message.type == protocol.JOBS:
            self._start_jobs(message.body["jobs"], message.body.get("report_start", False), message.body.get("hold"))
        elif message.type == protocol.STOP_JOBS:
            self._stop_jobs(message.body["ids"])
        elif message.type == protocol.ERROR:
            log.warning("the broker rejected a message: {}", message.body["message"])
        else:
            log.warning("ignored an unexpected {} message from the broker", message.type)

    def _start_jobs(self, rows: list, report_start: bool = False, hold: dict[str, float] | None = None) -> None:
        """Hold the leased jobs in the backlog and start what the pools have room for.

        ``hold``: delayed jobs leased ahead of their due time, with the seconds each waits before
        it starts (``_hold``)."""
        if self._draining.is_set():  # leased before the broker heard we drain: give them back
            self._send_results([[job_id, attempt, protocol.REQUEUE, b""] for job_id, attempt, *_ in rows])
            return
        refused, touched = [], set()
        for job_id, attempt, task, pool, payload, timeout, priority in rows:
            if pool not in self.backlog.slots:
                error = execute.encode_error(ValueError(f"this worker has no {pool} pool (it was started with 0)"))
                refused.append([job_id, attempt, protocol.FAILED, error])
            elif self._held[pool] >= self.credit.ceiling[pool]:
                log.bind(job=job_id).error("the broker leased more {} jobs than this worker's credit", pool)
                refused.append([job_id, attempt, protocol.REQUEUE, b""])
            else:
                if job_id in self.running:  # leased again: the new attempt supersedes the one held
                    self._release(job_id)
                self._held[pool] += 1
                entry = self.running[job_id] = Running(attempt, pool, report_start=report_start)
                job = (job_id, attempt, task, payload, timeout)
                seconds = hold.get(job_id) if hold else None
                if seconds:
                    self._hold(entry, pool, priority, job, seconds)
                    continue
                self.backlog.add(pool, priority, job)
                touched.add(pool)
        self._send_results(refused)
        for pool in touched:
            self._feed(pool)

    def _hold(self, entry: Running, pool: str, priority: int, job: tuple, seconds: float) -> None:
        """A job leased ahead of its due time waits ``seconds`` before it starts: in a pool thread,
        which wakes on time however busy this loop is (workers/start_gate.py); elsewhere on this
        loop's timer, then in the backlog."""
        if not self.pools.waits_in_pool(pool):
            entry.held = True
            entry.timer = self.loop.call_later(seconds, partial(self._hold_over, pool, priority, job))
            return
        job_id, attempt, _, _, timeout = job
        entry.gate = StartGate(time.monotonic() + seconds)
        self.backlog.occupy(pool)
        entry.future = self.pools.submit(pool, [job[:4]], self._on_pool_done, entry.gate)
        if timeout is not None:
            entry.timer = self.loop.call_later(seconds + timeout, partial(self._timed_out, job_id, timeout))
        if entry.report_start:
            self.loop.call_later(seconds, partial(self._report_started, job_id, attempt))

    def _report_started(self, job_id: str, attempt: int) -> None:
        if self._holds(job_id, attempt):
            self.connection.send(protocol.STARTED, {"started": [[job_id, attempt]]})

    def _hold_over(self, pool: str, priority: int, job: tuple) -> None:
        """A job leased ahead of its due time is due: to the backlog, and started if there is room."""
        entry = self.running.get(job[0])
        if entry is None or entry.attempt != job[1] or not entry.held:
            return  # stopped, given back or superseded meanwhile
        entry.held, entry.timer = False, None
        self.backlog.add(pool, priority, job)
        self._feed(pool)

    def _holds(self, job_id: str, attempt: int) -> bool:
        """This worker still holds this attempt of the job (not stopped, given back or superseded)."""
        entry = self.running.get(job_id)
        return entry is not None and entry.attempt == attempt

    def _feed(self, pool: str) -> None:
        """Submit waiting jobs to ``pool`` while it has free slots."""
        started = []
        while group := self.backlog.take(pool, self._holds, self.credit.seconds_per_job, self.pools.room(pool)):
            future = self.pools.submit(pool, [row[:4] for row in group], self._on_pool_done)
            for job_id, _, task, _, timeout in group:
                entry = self.running[job_id]
                entry.future = future
                debug_job(log, job_id, "started {} in the {} pool (attempt {})", task, pool, entry.attempt)
                if entry.report_start:
                    started.append([job_id, entry.attempt])
                if timeout is not None:
                    entry.timer = self.loop.call_later(timeout, lambda job_id=job_id, t=timeout: self._timed_out(job_id, t))
        if started:
            self.connection.send(protocol.STARTED, {"started": started})

    # --- stopping jobs -------------------------------------------------------------------

    def _timed_out(self, job_id: str, timeout: float) -> None:
        entry = self.running.get(job_id)
        if entry is None or entry.future is None or entry.future.done():
            return
        log.bind(job=job_id).warning("ran past its timeout of {}s in the {} pool", timeout, entry.pool)
        error = execute.encode_error(TaskTimeoutError.raised_here(
            f"job {job_id} ran past its timeout of {timeout}s; {STOPPED_HOW[entry.pool]}"))
        self._send_results([[job_id, entry.attempt, protocol.FAILED, error]])
        self._release(job_id)
        if entry.pool == "process":
            self._kill_process_pool()
        elif entry.pool == "async":
            self.pools.by_name["async"].cancel(entry.future)
        else:
            self.abandoned_threads += 1

    def _stop_jobs(self, job_ids: list[str]) -> None:
        """The broker cancelled these by force: drop their outcomes, end process-pool runs."""
        kill = False
        for job_id in job_ids:
            entry = self._release(job_id)
            if entry is not None:
                log.bind(job=job_id).info("stopped by the broker (cancelled)")
                kill = kill or (entry.pool == "process" and entry.future is not None)
                if entry.pool == "async" and entry.future is not None:
                    self.pools.by_name["async"].cancel(entry.future)
        if kill:
            self._kill_process_pool()

    def _kill_process_pool(self) -> None:
        """End the process pool; jobs that shared it are given back without an attempt charged."""
        for entry in self.running.values():
            if entry.pool == "process" and entry.future is not None:  # waiting ones are not in the pool
                entry.requeue_if_broken = True
        self.pools.by_name["process"].kill()

    def _release(self, job_id: str) -> Running | None:
        entry = self.running.pop(job_id, None)
        if entry is None:
            return None
        if entry.timer is not None:
            entry.timer.cancel()
        if entry.gate is not None:
            entry.gate.withdraw()  # if it has not started, it never will
        self._held[entry.pool] -= 1
        return entry

    # --- results -----------------------------------------------------------------------

    def _on_pool_done(self, pool: str, task: str, rows: list[ResultRow], seconds: float, ran: float | None) -> None:
        """Runs on a pool's thread: hand the rows over and wake the loop; nothing else."""
        self._finished.put((pool, task, rows, seconds, ran))
        if not self._drain_requested:
            self._drain_requested = True
            self.loop.call_soon_threadsafe(self._send_finished)

    def _send_finished(self) -> None:
        self._drain_requested = False  # before draining, so a later put schedules again
        results, freed = [], set()
        while True:
            try:
                pool, task, rows, seconds, ran = self._finished.get_nowait()
            except queue.Empty:
                break
            self.backlog.finished(pool)
            self.credit.observe(pool, task, seconds, len(rows), ran)
            freed.add(pool)
            for job_id, attempt, status, blob in rows:
                entry = self.running.get(job_id)
                if entry is None or entry.attempt != attempt:
                    continue  # already answered (timed out, stopped, given back)
                if entry.requeue_if_broken and status == protocol.FAILED:
                    status, blob = protocol.REQUEUE, b""
                self._release(job_id)
                results.append([job_id, attempt, status, blob])
        self._send_results(results)
        for pool in freed:
            self._feed(pool)
        self._announce_credit()
        if self._draining.is_set() and not self.running:
            self.loop.stop()

    def _announce_credit(self) -> None:
        """Tell the broker a changed credit; give back waiting jobs beyond a lowered one."""
        credit = self.credit.changed()
        if credit is None or self._draining.is_set():
            return
        log.debug("asking the broker for {} jobs per pool", credit)
        self.connection.send(protocol.CREDIT, {"slots": credit})
        for pool in credit:
            surplus = self.backlog.give_back(pool, self.credit.excess(pool, self._held[pool]), self._holds)
            if surplus:
                log.debug("giving {} waiting {} jobs back: they are slower than the prefetch assumed", len(surplus), pool)
            self._send_results([[job_id, self._release(job_id).attempt, protocol.REQUEUE, b""] for job_id, *_ in surplus])

    def _send_results(self, results: list[list]) -> None:
        """Send result rows in messages the broker accepts; a result over its payload limit fails instead."""
        if not results:
            return
        for row in results:
            debug_job(log, row[0], "finished: {}", row[2])
            if len(row[3]) > self.max_payload_bytes:
                row[2:] = protocol.FAILED, execute.encode_error(PayloadTooLargeError.raised_here(
                    f"the task's result takes {len(row[3])} bytes, more than the broker's limit of "
                    f"{self.max_payload_bytes} (runner broker --max-payload-bytes); return a path or key to it instead"))
        self.jobs_done += sum(1 for row in results if row[2] != protocol.REQUEUE)
        self._deliver(results)

    def _deliver(self, results: list[list]) -> None:
        """Send results to a broker that welcomed this session, kept until it confirms them; hold
        them while a hello waits for its welcome (workers/reports.py)."""
        if not results:
            return
        if not self.connection.welcomed:
            self.reports.hold(results)
            return
        for batch in protocol.split_by_size(results, 3, RESULT_ROW_BYTES, self.max_message_bytes):
            self.reports.sent(batch)
            self.connection.send(protocol.RESULTS, {"results": batch})

    # --- shutdown ----------------------------------------------------------------------

    def _begin_drain(self) -> None:
        if self._draining.is_set():
            return
        self._draining.set()
        self.connection.send(protocol.DRAIN)
        waiting = [row for pool in self.backlog.slots for row in self.backlog.drain(pool) if self._holds(row[0], row[1])]
        for job_id, entry in self.running.items():  # leased ahead of their due time, not started
            if entry.held or entry.gate is not None and entry.gate.withdraw():
                waiting.append((job_id,))
        self._send_results([[job_id, self._release(job_id).attempt, protocol.REQUEUE, b""] for job_id, *_ in waiting])
        if not self.running:
            self.loop.stop()
            return
        log.info("draining: {} running jobs get {}s to finish", len(self.running), self.grace)
        self.loop.call_later(self.grace, self._end_grace)

    def _end_grace(self) -> None:
        """Grace is over: give every unfinished job back to the broker, then stop.

        Stopping the pools then ends process-pool children and cancels coroutines; threads are abandoned.
        """
        unfinished = list(self.running)
        log.warning("grace of {}s is over; stopping {} running jobs and giving them back", self.grace, len(unfinished))
        released = [self._release(job_id) for job_id in unfinished]
        self._send_results([[job_id, entry.attempt, protocol.REQUEUE, b""] for job_id, entry in zip(unfinished, released)])
        self.abandoned_threads += sum(1 for entry in released if entry.pool == "thread")
        self.loop.stop()

    def _shutdown(self) -> None:
        log.info("worker {} stopping after {} jobs", self.name, self.jobs_done)
        self.connection.close(goodbye=True, linger_ms=1000)
        self.pools.shutdown(wait=False)
        self.context.term()
        self.loop.close()
