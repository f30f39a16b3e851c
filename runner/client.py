"""The public Python API: ``Client``, whose ``submit`` returns a real concurrent.futures.Future.

A client owns one I/O thread running the shared event loop with one DEALER
socket. ``submit`` packs the job, parks a future and hands the row to the
JobSender (outgoing.py), which batches rows into messages. Outcomes resolve the
futures on the I/O thread.
"""

from __future__ import annotations

import itertools
import os
import socket as socket_module
import threading
import time
import uuid
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import zmq
from loguru import logger

from runner import current, protocol, sync
from runner import progress as progress_bar
from runner.client_requests import ClientRequests, not_requeued
from runner.client_schedules import ClientSchedules
from runner.connection import BrokerConnection
from runner.errors import (AuthenticationError, BackpressureError, BrokerUnreachable, ClientClosed, ClusterGone,
                           PayloadTooLargeError)
from runner.ids import JobIds
from runner.keys import peer_identity
from runner.mapping import MapCall, decode_outcome
from runner.loop import EventLoop
from runner.outgoing import Acknowledger, JobSender
from runner.transport import check_address
from runner.after import job_options, referrer, with_after
from runner.tasks import NO_WAITS, OPTION_NAMES, JobOptions, Task, encode_arguments, resolve_task

if TYPE_CHECKING:
    from runner.executor import ClusterExecutor

log = logger.bind(component="client")

DEFAULT_TIMEOUT = 10.0  # seconds to reach the broker and to wait for replies
MAP_WINDOW = 10_000  # jobs map keeps in flight ahead of the consumer


class JobFuture(Future):
    """A concurrent.futures.Future for one job; ``cancel()`` asks the broker.

    As with concurrent.futures, a job that already runs cannot be cancelled
    (``cancel()`` returns False); ``client.cancel(future, force=True)`` can.
    """

    def __init__(self, client: "Client", job_id: str) -> None:
        super().__init__()
        self.job_id = job_id
        self._client = client

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        return self._client.cancel(self)

    def __repr__(self) -> str:
        return f"<JobFuture {self.job_id} {self._state.lower()}>"


class Client(ClientRequests, ClientSchedules):
    """A connection to a broker; with no address, to a new embedded local cluster.

    ``block`` decides what ``submit`` does when this client already has the broker's
    ``--max-pending`` unfinished jobs: raise ``runner.BackpressureError`` (False, the
    default) or wait until outcomes make room (True). ``map`` always waits.

    ``curve_keys``: a key folder (``runner keys generate``); None: RUNNER_CURVE_KEYS when set;
    "": none. The embedded cluster (no address) listens privately and takes no keys.
    """

    def __init__(self, address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT, name: str | None = None,
                 block: bool = False, curve_keys: str | None = None) -> None:
        self._cluster = None
        if address is None:  # an embedded cluster: its processes end with this one, or at close()
            from runner.local import LocalCluster

            self._cluster = LocalCluster()
            address = self._cluster.address
        elif curve_keys is None:
            curve_keys = os.environ.get("RUNNER_CURVE_KEYS") or None
        self.address = check_address(address)
        self.timeout = timeout
        self.name = name or f"{socket_module.gethostname()}-{os.getpid()}"
        curve = None
        if curve_keys:
            from runner.keys import CLIENT, load_peer_keys  # zmq.auth only when needed

            curve = load_peer_keys(curve_keys, CLIENT)
        self.identity = peer_identity(b"c-", curve and curve.public_text, uuid.uuid4().hex)
        self._job_ids = JobIds()
        self._refer = referrer(self)  # what a Future passed as an argument sends (runner/after.py)
        self._request_numbers = itertools.count(1)
        self._futures: dict[str, Future | tuple[MapCall, int]] = {}  # job id -> who waits for it
        self._unresolved: dict[str, list] = {}  # job id -> submit row, resent after re-registration
        self._requests: dict[int, list] = {}  # request -> [future, type, body], resent after re-registration
        self.holdings = sync.Holdings()  # the slots its Lock/Semaphore objects hold
        self.block = block  # at max_pending unfinished jobs, submit waits (True) or raises BackpressureError
        # The broker's limits (its welcome says them); until then, what any broker allows.
        self.max_pending: float = float("inf")  # an older broker has no such limit
        self.max_payload_bytes = protocol.MAX_MESSAGE_BYTES // 2
        self._room = threading.Condition()
        self._waiting_for_room = 0
        self._closed = False
        self._refusal: Callable[[], Exception] | None = None  # why this client takes no more work
        self._pid = os.getpid()  # a forked copy of this client is not this process's client
        self.loop = EventLoop()
        self.context = zmq.Context()
        self.connection = BrokerConnection(
            self.loop, self.context, address, self.identity,
            hello=self._hello, on_message=self._on_message, on_welcome=self._on_welcome,
            curve=curve, on_failure=self._on_auth_failure,
        )
        self._jobs_out = JobSender(self.loop, self.connection)
        self._acknowledger = Acknowledger(self.loop, self.connection)
        self._thread = threading.Thread(target=self._run_loop, name=f"runner-client-{self.identity[2:10].decode()}", daemon=True)
        self._thread.start()
        try:
            if self._cluster is not None:
                self._cluster.on_broker_exit(self._broker_ended)
            self.loop.call_soon_threadsafe(self.connection.start)
            settled = self.connection.settled.wait(timeout)
            if self.connection.failure is not None:
                raise AuthenticationError(self.connection.failure)
            if self.connection.refusal is not None:
                raise BrokerUnreachable(f"the broker at {address} refused this client: {self.connection.refusal}")
            if not settled:
                raise BrokerUnreachable(
                    f"cannot reach the broker at {address} within {timeout:g}s: is `runner broker` running there? "
                    "(set the address with --connect or RUNNER_BROKER)"
                )
        except BaseException:  # KeyboardInterrupt included: an embedded cluster stops with it
            self.close()
            raise
        current.make_current(self)

    # --- submitting ---------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any] | str | Task, /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` on the cluster; return a Future of its result.

        The keywords ``pool`` ("process" or "thread"), ``queue`` and ``priority``
        choose how the job runs and are not passed to ``fn``; ``delay`` (seconds) or ``at``
        (an aware datetime) hold it in the broker until then (runner/due.py).
        """
        reference, options = resolve_task(fn)
        after = NO_WAITS
        if kwargs:  # a plain call skips the options' lookup (about 1 µs a job)
            options, after = job_options(options, kwargs, self._refer)
        return self._submit(reference, options, args, kwargs, after)

    def map(self, fn: Callable[..., Any] | str | Task, *iterables: Iterable[Any], timeout: float | None = None,
            progress: bool = False, **options: Any) -> Iterator[Any]:
        """Like the builtin ``map``, on the cluster: results in input order, lazily.

        Keeps up to MAP_WINDOW jobs in flight ahead of the consumer, sent in batches.
        ``progress``: draw a bar (done, jobs a second, time left) on stderr while the
        results are taken, if stderr is a terminal; otherwise nothing extra is printed.
        """
        unknown = set(options) - OPTION_NAMES
        if unknown:
            raise TypeError(f"map() got unexpected options {sorted(unknown)}; it takes {sorted(OPTION_NAMES)}")
        reference, defaults = resolve_task(fn)
        job_options = defaults.merged(options)
        total = progress_bar.size_of(iterables) if progress else None
        argument_tuples = enumerate(zip(*iterables))
        call = MapCall()
        window: deque[tuple[int, str]] = deque()  # (input index, job id) in flight, in order

        def fill() -> None:
            for index, args in itertools.islice(argument_tuples, MAP_WINDOW - len(window)):
                window.append((index, self._enqueue(reference, job_options, args, {}, (call, index), block=True)))

        fill()  # work starts now, as with Executor.map, not at the first next()
        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            try:
                while window:
                    index, _ = window[0]
                    value = call.take(index, deadline)
                    window.popleft()
                    yield value
                    if len(window) < MAP_WINDOW // 2:
                        fill()
            finally:
                self._abandon([job_id for _, job_id in window])

        return progress_bar.track(results(), total, reference) if progress else results()

    def Lock(self, name: str) -> "sync.Lock":  # noqa: N802 - the shape of threading.Lock
        """A cluster-wide lock held by this client (see runner.sync)."""
        return sync.Lock(name, client=self)

    def Semaphore(self, name: str, value: int = 1) -> "sync.Semaphore":  # noqa: N802
        return sync.Semaphore(name, value, client=self)

    def Event(self, name: str) -> "sync.Event":  # noqa: N802
        return sync.Event(name, client=self)

    def Queue(self, name: str, maxsize: int = 0) -> "sync.Queue":  # noqa: N802
        return sync.Queue(name, maxsize, client=self)

    def executor(self, **submit_defaults: Any) -> "ClusterExecutor":
        """A concurrent.futures.Executor that runs everything on this cluster."""
        from runner.executor import ClusterExecutor

        return ClusterExecutor(self, JobOptions().merged(submit_defaults))

    def _submit(self, reference: str, options: JobOptions, args: tuple, kwargs: dict[str, Any],
                after: list[str] = NO_WAITS) -> Future:
        job_id = self._job_ids.next()
        future = JobFuture(self, job_id)
        self._enqueue(reference, options, args, kwargs, future, job_id, after=after)
        return future

    def _enqueue(self, reference: str, options: JobOptions, args: tuple, kwargs: dict[str, Any],
                 waiter: "Future | tuple[MapCall, int]", job_id: str | None = None, block: bool | None = None,
                 after: list[str] = NO_WAITS) -> str:
        """Queue one job to send: now from this thread (a lone job, a full batch), else by the I/O thread."""
        if len(self._futures) >= self.max_pending:
            self._wait_for_room(self.block if block is None else block)
        payload, waits = encode_arguments(args, kwargs, self._refer)
        if len(payload) > self.max_payload_bytes:
            raise PayloadTooLargeError.raised_here(
                f"the job's arguments take {len(payload)} bytes, more than the broker's limit of "
                f"{self.max_payload_bytes} (runner broker --max-payload-bytes); pass a path or key to the data instead")
        job_id = job_id or self._job_ids.next()
        wire = options.wire_options()
        if waits or after:  # it waits for other jobs
            wire = with_after(wire, waits, after)
        row = [job_id, reference, options.pool, options.queue, options.priority, payload, wire]
        self._futures[job_id] = waiter
        if self._refusal is not None:  # checked after the insert, so a concurrent _fail_waiters cannot miss it
            self._futures.pop(job_id, None)
            raise self._refusal()
        self._unresolved[job_id] = row
        self._jobs_out.add(row, alone=len(self._futures) == 1)
        return job_id

    def _wait_for_room(self, block: bool) -> None:
        """At the broker's max_pending: raise BackpressureError, or wait until an outcome frees room."""
        if not block:
            raise BackpressureError.raised_here(
                f"this client has {len(self._futures)} unfinished jobs, the broker's limit (runner broker "
                "--max-pending); wait for some to finish, or create the Client with block=True")
        with self._room:
            self._waiting_for_room += 1
            try:
                while len(self._futures) >= self.max_pending and not self._closed:
                    self._room.wait()
            finally:
                self._waiting_for_room -= 1
        if self._closed:
            raise ClientClosed("this client was closed while submit waited for room")

    def _made_room(self) -> None:
        """Outcomes arrived or jobs were dropped: wake submitters waiting for room (rarely any)."""
        if self._waiting_for_room:
            with self._room:
                self._room.notify_all()

    def _abandon(self, job_ids: list[str]) -> None:
        """Cancel jobs nobody waits for any more (an unfinished map), without waiting for answers."""
        for job_id in job_ids:
            self._forget(job_id)
        if job_ids and not self._closed:
            self.loop.call_soon_threadsafe(lambda: [
                self.connection.send(protocol.CANCEL, {"request": 0, "id": job_id}) for job_id in job_ids])

    # --- this client's futures: cancel, requeue ---------------------------------------

    def cancel(self, future: Future, *, force: bool = False) -> bool:
        """Cancel a job: one still waiting never runs; a running one only with ``force``.

        ``force`` stops a process-pool job by ending its pool process; a thread
        cannot be stopped, so a forced thread-pool job is abandoned (it finishes
        unseen). Returns True once the future is cancelled.
        """
        job_id = getattr(future, "job_id", None)
        if job_id is None or job_id not in self._futures and not future.done():
            raise ValueError(f"{future!r} is not a job of this client")
        if future.done():
            return future.cancelled()
        if self.loop.in_loop_thread():
            return False  # a done-callback on the I/O thread must not wait for the broker
        if self.cancel_job(job_id, force=force) != "cancelled":
            return False
        self._forget(job_id)
        Future.cancel(future)
        return True

    def requeue(self, job_id: str, timeout: float | None = None) -> Future:
        """Run a failed or dead job again with fresh attempts; a Future of the new run."""
        future = JobFuture(self, job_id)
        self._futures[job_id] = future
        if not self._request(protocol.REQUEUE_JOB, {"id": job_id}, timeout)["requeued"]:
            self._forget(job_id)
            raise not_requeued(job_id)
        return future

    def _forget(self, job_id: str) -> None:
        self._futures.pop(job_id, None)
        self._unresolved.pop(job_id, None)
        self._made_room()

    def _request(self, message_type: str, body: dict, timeout: float | None, *, forever: bool = False) -> dict:
        """Send a request and wait for its reply: ``timeout`` seconds (None: the client's), or ``forever``."""
        request = next(self._request_numbers)
        future: Future = Future()
        body = {**body, "request": request}
        self._requests[request] = [future, message_type, body]
        if self._refusal is not None:
            self._requests.pop(request, None)
            raise self._refusal()
        self.connection.send(message_type, body)
        try:
            return future.result(None if forever else self.timeout if timeout is None else timeout)
        except TimeoutError:
            raise TimeoutError(f"the broker at {self.address} did not answer {message_type} in time") from None
        finally:
            self._requests.pop(request, None)

    def _sync(self, op: str, name: str, wait: float | None = None, **fields: Any) -> dict:
        """One cluster-wide lock/semaphore/event/queue operation; ``wait`` None waits as long as it takes."""
        budget = None if wait is None else wait + self.timeout  # the broker answers at the deadline
        body = {"op": op, "name": name, **fields, "session": self.connection.session}
        return self._request(protocol.SYNC, body, budget, forever=budget is None)

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Leave the broker, stop the I/O thread, and stop an embedded cluster."""
        if self._closed:
            return
        self._closed = True
        if self._refusal is None:  # else the embedded cluster is gone, which says more
            self._refusal = lambda: ClientClosed("this client is closed; create a new runner.Client to submit")
        self.loop.call_soon_threadsafe(self._say_goodbye)
        self._thread.join(timeout=5)
        self._fail_waiters(ClientClosed("the client was closed before this job finished"))
        if self._cluster is not None:
            self._cluster.close()
        current.forget(self)

    def _fail_waiters(self, error: Exception) -> None:
        """Fail every pending job and request with ``error``."""
        for waiter in list(self._futures.values()) + [pending[0] for pending in list(self._requests.values())]:
            if isinstance(waiter, tuple):
                waiter[0].fail(error)
            elif not waiter.done():
                waiter.set_exception(error)
        self._futures.clear()
        self._unresolved.clear()
        self._made_room()

    def _broker_ended(self, pid: int, status: int) -> None:
        """On the cluster's watcher thread: hand the news to the I/O thread, unless closing anyway."""
        if not self._closed:
            self.loop.call_soon_threadsafe(lambda: self._cluster_gone(pid, status))

    def _cluster_gone(self, pid: int, status: int) -> None:
        """On the I/O thread: the embedded broker ended, and with it every job; stop waiting for it."""
        if self._refusal is not None:
            return
        self._refusal = lambda: ClusterGone(pid, status)
        self.connection.close(goodbye=False)  # no reconnecting to a broker that cannot come back
        error = self._refusal()
        log.error("{}", error)
        self._fail_waiters(error)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<runner.Client {self.address} {'closed' if self._closed else 'open'}>"

    # --- the I/O thread -------------------------------------------------------------------

    def _run_loop(self) -> None:
        try:
            self.loop.run()
        finally:
            self.connection.close(goodbye=False)
            self.context.term()
            self.loop.close()

    def _hello(self) -> dict:
        return {"role": "client", "name": self.name, "host": socket_module.gethostname(), "pid": os.getpid()}

    def _say_goodbye(self) -> None:
        """Tell the broker we leave (so it forgets us now, not after heartbeats), then stop."""
        self._acknowledger.send()
        self.connection.close(goodbye=True)
        self.loop.stop()

    def _on_welcome(self, body: dict, again: bool) -> None:
        limits = body.get("limits", {})  # an older broker sends none
        self.max_pending = limits.get("max_pending", self.max_pending)
        self.max_payload_bytes = limits.get("max_payload_bytes", self.max_payload_bytes)
        self._jobs_out.max_message_bytes = limits.get("max_message_bytes", self._jobs_out.max_message_bytes)
        if not again:
            return
        # The broker forgot us: we hold no slot, and every job without an outcome and every
        # unanswered request goes again, except sync requests sent after this hello (it has them).
        self.holdings.forget()
        rows = list(self._unresolved.values())
        log.warning("registered again with {}; resending {} unfinished jobs", self.address, len(rows))
        self._jobs_out.send(rows, resend=True)
        session = body.get("session", self.connection.session)
        for pending in list(self._requests.values()):
            future, message_type, request_body = pending
            if future.done() or request_body.get("session", 0) >= session:
                continue
            if message_type == protocol.SYNC:  # a new dict: the caller's thread may still send the old one
                pending[2] = request_body = {**request_body, "session": session}
            self.connection.send(message_type, request_body)

    def _on_auth_failure(self, reason: str) -> None:
        """The key was refused (or revoked): everything waiting fails now rather than at its timeout."""
        if self._refusal is None:
            self._refusal = lambda: AuthenticationError(reason)
        self._fail_waiters(AuthenticationError(reason))

    def _on_message(self, message: protocol.Message) -> None:
        body = message.body
        if message.type == protocol.OUTCOMES:
            self._resolve(body["outcomes"])
        elif message.type == protocol.REPLY:
            pending = self._requests.get(body["request"])
            if pending is not None and not pending[0].done():
                if pending[1] == protocol.SYNC:
                    self.holdings.answered(pending[2], body)
                pending[0].set_result(body)
        elif message.type == protocol.ERROR:
            log.warning("the broker rejected a message: {}", body["message"])
        elif message.type != protocol.ACCEPTED:
            log.warning("ignored an unexpected {} message from the broker", message.type)

    def _resolve(self, outcomes: list) -> None:
        for_maps: dict[MapCall, list] = {}
        for job_id, status, blob in outcomes:
            self._unresolved.pop(job_id, None)
            waiter = self._futures.pop(job_id, None)
            if isinstance(waiter, tuple):
                call, index = waiter
                for_maps.setdefault(call, []).append((index, job_id, status, blob))
            elif waiter is not None and not waiter.done():
                _settle(waiter, job_id, status, blob)
        for call, delivered in for_maps.items():
            call.deliver(delivered)
        self._made_room()
        self._acknowledger.add([row[0] for row in outcomes])  # the broker keeps each outcome until then


def _settle(future: Future, job_id: str, status: str, blob: bytes) -> None:
    """Resolve a job's future with its outcome."""
    value, error = decode_outcome(job_id, status, blob)
    if status == protocol.CANCELLED:
        Future.cancel(future)
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)
