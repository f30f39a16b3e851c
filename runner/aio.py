"""``AsyncClient``: the client for asyncio programs, on the caller's own event loop.

It speaks to the broker exactly as ``Client`` does: the same BrokerConnection (hello,
heartbeats, registering again), JobSender and Acknowledger, driven by an AsyncioLoop
(asyncio_loop.py) instead of an I/O thread; and the same handlers of the broker's
messages, which it takes from ``Client`` itself. What differs is only how a caller waits:
``submit`` returns an asyncio future at once, and every request is awaited (the requests
about the cluster and its jobs are in aio_requests.py, shaped by Client's own functions).

Construction binds the client to the running loop and never blocks: with an address it
connects and says hello at once (what it sends next queues behind the hello);
``await start()`` (``async with`` does it) waits for the broker's welcome, or first
starts the embedded cluster in a thread of its own. Everything runs on that loop's
thread: call it from there only.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket as socket_module
import time
import uuid
from collections import deque
from typing import Any, AsyncIterator, Callable, Iterable

import zmq
from loguru import logger

from runner import protocol, sync
from runner.aio_future import AsyncJobFuture, expire, settle
from runner.aio_requests import AsyncClientRequests
from runner.aio_sync import AsyncEvent, AsyncLock, AsyncQueue, AsyncSemaphore
from runner.asyncio_loop import AsyncioLoop, in_own_thread
from runner.client import DEFAULT_TIMEOUT, MAP_WINDOW, Client
from runner.client_requests import not_requeued
from runner.client_schedules import AsyncClientSchedules
from runner.connection import BrokerConnection
from runner.errors import AuthenticationError, BackpressureError, BrokerUnreachable, ClientClosed, PayloadTooLargeError
from runner.ids import JobIds
from runner.keys import peer_identity
from runner.outgoing import Acknowledger, JobSender
from runner.after import job_options, referrer, with_after
from runner.tasks import NO_WAITS, OPTION_NAMES, JobOptions, Task, encode_arguments, resolve_task
from runner.transport import check_address

log = logger.bind(component="aio")
#: Outcomes resolved per turn of the loop: the coroutines they wake run before the next batch, so
#: a burst never holds the loop long. A coroutine waiting for a timer wakes about two turns late:
#: 16 keeps the loop's own part of its lag near 1 ms with 1,000 jobs in flight (32: about 2 ms).
RESOLVE_BATCH = 16
#: While a burst of outcomes is resolved, the jobs its waiters submit leave every this many
#: batches and at its end, in one message: each send wakes ZeroMQ's I/O thread, and every
#: wake-up is a chance for the OS to take the CPU from the loop (issue 12, case 12c).
SEND_EVERY_BATCHES = 16


class AsyncClient(AsyncClientRequests, AsyncClientSchedules):
    """A connection to a broker for asyncio code; with no address, to a new embedded local cluster.

    The options are ``Client``'s: ``timeout`` for reaching the broker and its replies;
    ``name``; ``block`` (at the broker's ``--max-pending``, ``submit`` raises
    ``BackpressureError``, or with True its job waits here and leaves once outcomes make
    room); ``curve_keys`` (a key folder; None: RUNNER_CURVE_KEYS; "": none).
    """

    def __init__(self, address: str | None = None, *, timeout: float = DEFAULT_TIMEOUT, name: str | None = None,
                 block: bool = False, curve_keys: str | None = None) -> None:
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("runner.AsyncClient needs a running asyncio loop: create it inside a coroutine "
                               "(use runner.Client in code without one)") from None
        self.address = None if address is None else check_address(address)
        if address is not None and curve_keys is None:
            curve_keys = os.environ.get("RUNNER_CURVE_KEYS") or None
        self.timeout = timeout
        self.name = name or f"{socket_module.gethostname()}-{os.getpid()}"
        self.block = block
        self._curve = None
        if curve_keys:
            from runner.keys import CLIENT, load_peer_keys  # zmq.auth only when needed

            self._curve = load_peer_keys(curve_keys, CLIENT)
        self.identity = peer_identity(b"c-", self._curve and self._curve.public_text, uuid.uuid4().hex)
        self._job_ids = JobIds()
        self._refer = referrer(self)  # what a Future passed as an argument sends (runner/after.py)
        self._request_numbers = itertools.count(1)
        self._futures: dict[str, asyncio.Future] = {}  # job id -> its future, until its outcome
        self._unresolved: dict[str, list] = {}  # job id -> submit row, resent after re-registration
        self._requests: dict[int, list] = {}  # request -> [future, type, body], resent after re-registration
        self._backlog: deque[tuple[list, asyncio.Future]] = deque()  # block=True jobs waiting for room
        self._outcomes: deque[list] = deque()  # arrived, not yet resolved (RESOLVE_BATCH a turn)
        self._resolving = False  # a burst of outcomes is being resolved: submitted jobs are held (_send)
        self._batches = 0  # batches resolved so far
        self.holdings = sync.Holdings()
        self.max_pending: float = float("inf")  # the broker's limits, once it welcomes us
        self.max_payload_bytes = protocol.MAX_MESSAGE_BYTES // 2
        self._closed = False
        self._started = False
        self._cluster = None
        self._settled: asyncio.Future = self._loop.create_future()
        self._refusal: Callable[[], Exception] | None = None
        self.loop = AsyncioLoop(self._loop)
        self.context = zmq.Context()
        self.connection: BrokerConnection | None = None
        if self.address is None:
            self._refusal = lambda: RuntimeError("this AsyncClient starts its embedded cluster first: "
                                                 "use `async with runner.AsyncClient() as client` or `await client.start()`")
        else:
            self._connect()

    # --- starting and closing -----------------------------------------------------------------

    async def start(self) -> "AsyncClient":
        """Wait for the broker's welcome (starting the embedded cluster first, without an address).

        Raises as ``Client()`` does: BrokerUnreachable, AuthenticationError. Returns the client.
        """
        if self._started:
            return self
        self._started = True
        try:
            if self.connection is None:
                await self._start_cluster()
            await self._wait_settled()
        except BaseException:
            await self.close()
            raise
        return self

    async def _start_cluster(self) -> None:
        from runner.local import LocalCluster

        self._cluster = await in_own_thread(LocalCluster, "runner-aio-start", undo=LocalCluster.close)
        self._cluster.on_broker_exit(self._broker_ended)
        self.address = self._cluster.address
        self._refusal = None
        self._connect()

    async def _wait_settled(self) -> None:
        connection = self.connection
        try:
            await asyncio.wait_for(asyncio.shield(self._settled), self.timeout)
        except asyncio.TimeoutError:
            pass
        if connection.failure is not None:
            raise AuthenticationError(connection.failure)
        if connection.refusal is not None:
            raise BrokerUnreachable(f"the broker at {self.address} refused this client: {connection.refusal}")
        if not self._settled.done():
            raise BrokerUnreachable(
                f"cannot reach the broker at {self.address} within {self.timeout:g}s: is `runner broker` running "
                "there? (set the address with --connect or RUNNER_BROKER)")

    def _connect(self) -> None:
        self.connection = BrokerConnection(
            self.loop, self.context, self.address, self.identity,  # type: ignore[arg-type] - the loop's interface
            hello=self._hello, on_message=self._on_message, on_welcome=self._on_welcome,
            curve=self._curve, on_failure=self._on_auth_failure, on_settled=self._on_settled,
        )
        self._jobs_out = JobSender(self.loop, self.connection)  # type: ignore[arg-type]
        self._acknowledger = Acknowledger(self.loop, self.connection)  # type: ignore[arg-type]
        self.connection.start()

    def _on_settled(self) -> None:
        if not self._settled.done():
            self._settled.set_result(None)

    async def close(self) -> None:
        """Leave the broker, fail what still waits with ClientClosed, stop an embedded cluster.

        Leaves nothing on the loop and no thread behind.
        """
        if self._closed:
            return
        self._closed = True
        if self._refusal is None or self.connection is None:  # else ClusterGone or AuthenticationError says more
            self._refusal = lambda: ClientClosed("this client is closed; create a new runner.AsyncClient to submit")
        if self.connection is not None:
            self._acknowledger.send()
            self.connection.close(goodbye=True)
        self._fail_waiters(ClientClosed("the client was closed before this job finished"))
        self._on_settled()
        await in_own_thread(self.context.term, "runner-aio-close")  # the goodbye gets its linger to leave
        if self._cluster is not None:
            await in_own_thread(self._cluster.close, "runner-aio-close")

    async def __aenter__(self) -> "AsyncClient":
        return await self.start()

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<runner.AsyncClient {self.address} {'closed' if self._closed else 'open'}>"

    # --- submitting ---------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any] | str | Task, /, *args: Any, **kwargs: Any) -> AsyncJobFuture:
        """Run ``fn(*args, **kwargs)`` on the cluster; return at once a future to await for its result.

        The keywords of ``Client.submit`` (``pool``, ``queue``, ``priority``, ``retries``, ...)
        choose how the job runs; a bad one raises ValueError, an unsendable argument TypeError.
        """
        reference, options = resolve_task(fn)
        after = NO_WAITS
        if kwargs:  # a plain call skips the options' lookup (about 1 µs a job)
            options, after = job_options(options, kwargs, self._refer)
        future = AsyncJobFuture(self, self._job_ids.next())
        self._enqueue(reference, options, args, kwargs, future, self.block, after)
        return future

    def map(self, fn: Callable[..., Any] | str | Task, *iterables: Iterable[Any], timeout: float | None = None,
            **options: Any) -> AsyncIterator[Any]:
        """``async for result in client.map(fn, inputs)``: results in input order.

        Work starts now; up to MAP_WINDOW jobs are in flight ahead of the consumer. A job
        that fails raises its error there, as ``Client.map`` does (a cancelled one
        concurrent.futures.CancelledError); ``timeout`` bounds the whole call.
        """
        unknown = set(options) - OPTION_NAMES
        if unknown:
            raise TypeError(f"map() got unexpected options {sorted(unknown)}; it takes {sorted(OPTION_NAMES)}")
        reference, defaults = resolve_task(fn)
        job_options = defaults.merged(options)
        inputs = enumerate(zip(*iterables))
        window: deque[tuple[int, str, asyncio.Future]] = deque()  # (input index, job id, future), in order

        def fill() -> None:
            for index, args in itertools.islice(inputs, MAP_WINDOW - len(window)):
                future = self._loop.create_future()
                window.append((index, self._enqueue(reference, job_options, args, {}, future, True), future))

        fill()
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._map_results(window, fill, deadline)

    async def _map_results(self, window: deque, fill: Callable[[], None], deadline: float | None) -> AsyncIterator[Any]:
        try:
            while window:
                index, _, future = window[0]
                if deadline is not None and not future.done():
                    await asyncio.wait([future], timeout=max(0.0, deadline - time.monotonic()))
                    if not future.done():
                        raise TimeoutError(f"map: the result of input {index} did not come within the timeout")
                value = await future
                window.popleft()
                yield value
                if len(window) < MAP_WINDOW // 2:
                    fill()
        finally:
            self._abandon([job_id for _, job_id, _ in window])

    def _enqueue(self, reference: str, options: JobOptions, args: tuple, kwargs: dict[str, Any],
                 future: asyncio.Future, block: bool, after: list[str] = NO_WAITS) -> str:
        """Send one job (in the next batch), or hold it here until the broker's max_pending makes room."""
        if self._refusal is not None:
            raise self._refusal()
        waits = bool(self._backlog) or len(self._futures) >= self.max_pending
        if waits and not block:
            raise BackpressureError.raised_here(
                f"this client has {len(self._futures)} unfinished jobs, the broker's limit (runner broker "
                "--max-pending); await some first, or create the AsyncClient with block=True")
        payload, results_of = encode_arguments(args, kwargs, self._refer)
        if len(payload) > self.max_payload_bytes:
            raise PayloadTooLargeError.raised_here(
                f"the job's arguments take {len(payload)} bytes, more than the broker's limit of "
                f"{self.max_payload_bytes} (runner broker --max-payload-bytes); pass a path or key to the data instead")
        job_id = getattr(future, "job_id", None) or self._job_ids.next()
        wire = options.wire_options()
        if results_of or after:  # it waits for other jobs
            wire = with_after(wire, results_of, after)
        row = [job_id, reference, options.pool, options.queue, options.priority, payload, wire]
        if waits:
            self._backlog.append((row, future))
        else:
            self._send(row, future)
        return job_id

    def _send(self, row: list, future: asyncio.Future) -> None:
        self._futures[row[0]] = future
        self._unresolved[row[0]] = row
        self._jobs_out.add(row, alone=len(self._futures) == 1, hold=self._resolving)

    def _made_room(self) -> None:
        """Outcomes arrived or jobs were dropped: send held jobs while the broker's limit allows."""
        while self._backlog and len(self._futures) < self.max_pending:
            row, future = self._backlog.popleft()
            if not future.done():  # cancelled while it waited
                self._send(row, future)

    # --- this client's futures: cancel, requeue ------------------------------------------------

    async def cancel(self, future: asyncio.Future, *, force: bool = False) -> bool:
        """Cancel a job as ``Client.cancel`` does: one still waiting never runs; a running one only with ``force``."""
        job_id = getattr(future, "job_id", None)
        held = any(waiting is future for _, waiting in self._backlog)
        if job_id is None or job_id not in self._futures and not held and not future.done():
            raise ValueError(f"{future!r} is not a job of this client")
        if future.done():
            return future.cancelled()
        if held:
            return future.cancel()
        answer = await self._request(protocol.CANCEL, {"id": job_id, "force": force}, None)
        if answer["result"] != "cancelled":
            return False
        self._forget(job_id)
        if not future.done():
            asyncio.Future.cancel(future)  # the broker has cancelled it: no second message
        return True

    async def requeue(self, job_id: str, timeout: float | None = None) -> AsyncJobFuture:
        """Run a failed or dead job again with fresh attempts; a future of the new run, as ``Client.requeue``."""
        future = AsyncJobFuture(self, job_id)
        self._futures[job_id] = future  # before asking: its outcome may come before the answer
        try:
            requeued = (await self._request(protocol.REQUEUE_JOB, {"id": job_id}, timeout))["requeued"]
        except BaseException:
            self._forget(job_id)
            raise
        if not requeued:
            self._forget(job_id)
            raise not_requeued(job_id)
        return future

    # --- coordination -------------------------------------------------------------------------

    def Lock(self, name: str) -> AsyncLock:  # noqa: N802 - the shape of asyncio.Lock
        """A cluster-wide lock held by this client: ``async with client.Lock(name):`` (see runner.aio_sync)."""
        return AsyncLock(name, client=self)

    def Semaphore(self, name: str, value: int = 1) -> AsyncSemaphore:  # noqa: N802
        return AsyncSemaphore(name, value, client=self)

    def Event(self, name: str) -> AsyncEvent:  # noqa: N802
        return AsyncEvent(name, client=self)

    def Queue(self, name: str, maxsize: int = 0) -> AsyncQueue:  # noqa: N802
        return AsyncQueue(name, maxsize, client=self)

    async def _sync(self, op: str, name: str, wait: float | None = None, **fields: Any) -> dict:
        """One cluster-wide lock/semaphore/event/queue operation; ``wait`` None waits as long as it takes."""
        if self._refusal is not None:
            raise self._refusal()
        budget = None if wait is None else wait + self.timeout  # the broker answers at the deadline
        body = {"op": op, "name": name, **fields, "session": self.connection.session}
        return await self._request(protocol.SYNC, body, budget, forever=budget is None)

    async def _request(self, message_type: str, body: dict, timeout: float | None, *, forever: bool = False) -> dict:
        """Send a request and await its reply: ``timeout`` seconds (None: the client's), or ``forever``."""
        if self._refusal is not None:
            raise self._refusal()
        request = next(self._request_numbers)
        future = self._loop.create_future()
        body = {**body, "request": request}
        self._requests[request] = [future, message_type, body]
        limit = None if forever else self.timeout if timeout is None else timeout
        timer = None if limit is None else self._loop.call_later(limit, expire, future, message_type, self.address)
        self.connection.send(message_type, body)
        try:
            return await future
        finally:
            self._requests.pop(request, None)
            if timer is not None:
                timer.cancel()

    # --- the broker's messages: Client's own handlers, with this client's waiters ------------------

    _hello = Client._hello
    _on_welcome = Client._on_welcome
    _on_message = Client._on_message
    _on_auth_failure = Client._on_auth_failure
    _cluster_gone = Client._cluster_gone
    _forget = Client._forget
    _abandon = Client._abandon

    def _resolve(self, outcomes: list) -> None:
        """Outcomes arrived: resolve them RESOLVE_BATCH per loop turn, the first batch now."""
        self._outcomes.extend(outcomes)
        if not self._resolving:
            self._resolving = True
            self._resolve_some()

    def _resolve_some(self) -> None:
        """Resolve up to RESOLVE_BATCH outcomes; the awaiting coroutines run before the next batch."""
        if self._closed:  # everything still waiting has failed with ClientClosed
            self._outcomes.clear()
        batch = [self._outcomes.popleft() for _ in range(min(RESOLVE_BATCH, len(self._outcomes)))]
        for job_id, status, blob in batch:
            self._unresolved.pop(job_id, None)
            future = self._futures.pop(job_id, None)
            if future is not None and not future.done():
                settle(future, job_id, status, blob)
        if batch:
            self._made_room()
            self._acknowledger.add([row[0] for row in batch])  # the broker keeps each outcome until then
        self._batches += 1
        if self._outcomes:
            self._loop.call_soon(self._resolve_some)
            if self._batches % SEND_EVERY_BATCHES:
                return
        else:
            self._resolving = False
        self._jobs_out.send_queued()  # what the coroutines woken so far submitted, held meanwhile

    def _fail_waiters(self, error: Exception) -> None:
        """Fail every held, pending job and every request with ``error``."""
        while self._backlog:
            _, future = self._backlog.popleft()
            if not future.done():
                future.set_exception(error)
        Client._fail_waiters(self, error)

    def _broker_ended(self, pid: int, status: int) -> None:
        """On the cluster's watcher thread: hand the news to the loop, unless closing anyway."""
        if not self._closed:
            try:
                self._loop.call_soon_threadsafe(self._cluster_gone, pid, status)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass
