"""The worker process: a DEALER to the broker, its own selectors loop, and two pools.

The loop thread owns the socket. Jobs go to the process or thread pool the job
asks for; when a pool future completes, its done-callback (on whatever thread
finished it) puts the result rows in a queue and wakes the loop, which sends
everything that finished in one message. Credit is announced once, in hello:
the broker never leases more jobs per pool than the pool has slots.
"""

from __future__ import annotations

import collections
import os
import queue
import signal
import socket as socket_module
import uuid

import zmq
from loguru import logger

from runner import protocol
from runner.connection import BrokerConnection
from runner.loop import EventLoop
from runner.transport import check_address
from workers.pools import Pools, ResultRow

log = logger.bind(component="worker")


class Worker:
    """Takes jobs from one broker and runs them until stopped."""

    def __init__(
        self,
        connect: str,
        *,
        processes: int,
        threads: int,
        queues: list[str],
        imports: list[str] | None,
        heartbeat: float = 1.0,
        liveness: int = 3,
        name: str | None = None,
    ) -> None:
        self.address = check_address(connect)
        self.queues = list(queues) or ["default"]
        self.name = name or f"{socket_module.gethostname()}-{os.getpid()}"
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.identity = b"w-" + uuid.uuid4().hex.encode()
        self.pools = Pools(processes, threads, None if imports is None else frozenset(imports))
        self.loop = EventLoop()
        self.context = zmq.Context()
        self.connection = BrokerConnection(
            self.loop, self.context, connect, self.identity, hello=self._hello, on_message=self._on_message,
            on_welcome=self._on_welcome, heartbeat=heartbeat, liveness=liveness,
        )
        # Pool callbacks hand finished rows to the loop thread through this queue.
        self._finished: queue.Queue[list[ResultRow]] = queue.Queue()
        self._drain_requested = False
        self.jobs_done = 0

    def run(self) -> None:
        """Say hello, then serve jobs until ``stop()``."""
        log.info("worker {} connecting to {} (queues {}, slots {})", self.name, self.address, self.queues, self.pools.slots())
        self.connection.start()
        try:
            self.loop.run()
        finally:
            self._shutdown()

    def stop(self) -> None:
        """Stop taking jobs and leave; safe from a signal handler or another thread."""
        self.loop.stop()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the worker cleanly."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())

    # --- broker messages ---------------------------------------------------------------

    def _hello(self) -> dict:
        return {
            "role": "worker", "name": self.name, "host": socket_module.gethostname(), "pid": os.getpid(),
            "queues": self.queues, "slots": self.pools.slots(),
        }

    def _on_welcome(self, body: dict, again: bool) -> None:
        log.info("registered with broker {} at {}", str(body.get("broker", "?"))[:8], self.address)

    def _on_message(self, message: protocol.Message) -> None:
        if message.type == protocol.JOBS:
            self._start_jobs(message.body["jobs"])
        elif message.type == protocol.ERROR:
            log.warning("the broker rejected a message: {}", message.body["message"])
        else:
            log.warning("ignored an unexpected {} message from the broker", message.type)

    def _start_jobs(self, rows: list) -> None:
        by_pool: dict[str, list] = collections.defaultdict(list)
        for job_id, attempt, task, pool, payload in rows:
            log.bind(job=job_id).debug("starting {} in the {} pool (attempt {})", task, pool, attempt)
            by_pool[pool].append((job_id, attempt, task, payload))
        for pool, jobs in by_pool.items():
            self.pools.run(pool, jobs, self._on_pool_done)

    # --- results -----------------------------------------------------------------------

    def _on_pool_done(self, rows: list[ResultRow]) -> None:
        """Runs on a pool's thread: hand the rows over and wake the loop; nothing else."""
        self._finished.put(rows)
        if not self._drain_requested:
            self._drain_requested = True
            self.loop.call_soon_threadsafe(self._send_finished)

    def _send_finished(self) -> None:
        self._drain_requested = False  # before draining, so a later put schedules again
        results = []
        while True:
            try:
                rows = self._finished.get_nowait()
            except queue.Empty:
                break
            results.extend([list(row) for row in rows])
        if results:
            for job_id, _, status, _ in results:
                log.bind(job=job_id).debug("finished: {}", status)
            self.jobs_done += len(results)
            self.connection.send(protocol.RESULTS, {"results": results})

    def _shutdown(self) -> None:
        log.info("worker {} stopping after {} jobs", self.name, self.jobs_done)
        self.connection.close(goodbye=True, linger_ms=500)
        self.pools.shutdown(wait=False)
        self.context.term()
        self.loop.close()
