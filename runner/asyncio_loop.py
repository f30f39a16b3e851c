"""runner's loop interface on a running asyncio loop, so one BrokerConnection serves both clients.

``BrokerConnection``, ``DealerLink``, ``HandshakeWatch``, ``JobSender`` and ``Acknowledger``
ask their loop for a few things: watch a zmq socket, call back soon, later or every so
often, and wake up. ``AsyncioLoop`` gives them those on the caller's asyncio loop, so the
``AsyncClient`` says hello, beats and registers again with the very code ``Client`` uses,
with no thread of its own.

A zmq socket's FD is edge-triggered (see runner/loop.py): it is watched with
``add_reader``, and every wake-up reads ``EVENTS`` and serves the socket while messages
wait, one message per turn so that other coroutines and timers get the loop between them.
asyncio has no hook before it sleeps, where runner's own loop looks at every socket once
more; instead, ``in_loop_thread`` answers False, which makes ``DealerLink.send`` read
``EVENTS`` after each send and call ``wake`` when a message waits (or a frame could not
leave): ``wake`` schedules one more look at the sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Callable, ContextManager, TypeVar

import zmq
from loguru import logger

from runner.loop import EVENTS, POLLIN, POLLOUT

log = logger.bind(component="asyncio-loop")
T = TypeVar("T")


class _Watched:
    """A watched socket: its FD, the lock its owner guards it with, and its callbacks."""

    __slots__ = ("socket", "fd", "lock", "on_readable", "on_writable")

    def __init__(self, socket: zmq.Socket, on_readable: Callable[[], None], lock: ContextManager) -> None:
        self.socket = socket
        self.fd = socket.getsockopt(zmq.FD)
        self.lock = lock
        self.on_readable = on_readable
        self.on_writable: Callable[[], None] | None = None


class Repeating:
    """The handle ``call_every`` returns: ``cancel()`` stops it (no callback stays on the loop)."""

    __slots__ = ("next", "cancelled")

    def __init__(self) -> None:
        self.next: asyncio.TimerHandle | None = None
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        if self.next is not None:
            self.next.cancel()


class AsyncioLoop:
    """The part of runner.loop.EventLoop a peer's connection uses, on ``loop`` (running in this thread)."""

    #: Messages the socket's reader handles per turn: one batch of outcomes, then the loop's
    #: other callbacks and timers run before the next (an AsyncClient's loop is the caller's).
    drain_limit = 1

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._thread_id = threading.get_ident()
        self._watched: dict[zmq.Socket, _Watched] = {}
        self._look_scheduled = False

    # --- sockets --------------------------------------------------------------------------

    def add_socket(self, socket: zmq.Socket, on_readable: Callable[[], None], lock: ContextManager | None = None) -> None:
        """Call ``on_readable`` whenever ``socket`` has messages (it drains up to a batch)."""
        watched = _Watched(socket, on_readable, lock or contextlib.nullcontext())
        self._watched[socket] = watched
        self.loop.add_reader(watched.fd, self._serve, watched)
        self._look_soon()  # an edge may have passed before the reader was added

    def remove_socket(self, socket: zmq.Socket) -> None:
        """Stop watching ``socket`` (before closing it)."""
        watched = self._watched.pop(socket, None)
        if watched is not None:
            self.loop.remove_reader(watched.fd)

    def want_writable(self, socket: zmq.Socket, on_writable: Callable[[], None] | None) -> None:
        """Call ``on_writable`` once ``socket`` can send again (None: stop asking)."""
        watched = self._watched.get(socket)
        if watched is not None:
            watched.on_writable = on_writable
            if on_writable is not None:
                self._look_soon()

    def in_loop_thread(self) -> bool:
        """False: asyncio does not look at the sockets before it sleeps, so a sender must (see above)."""
        return False

    def wake(self) -> None:
        """Look at every socket soon: a send may have consumed the edge of a waiting message."""
        if threading.get_ident() == self._thread_id:
            self._look_soon()
        else:
            self.loop.call_soon_threadsafe(self._look_soon)

    # --- scheduling -------------------------------------------------------------------------

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.loop.call_soon(callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """On the loop's thread: a plain call_soon (no self-pipe write); elsewhere the threadsafe one."""
        if threading.get_ident() == self._thread_id:
            self.loop.call_soon(callback)
        else:
            self.loop.call_soon_threadsafe(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_later(delay, callback)

    def call_every(self, interval: float, callback: Callable[[], None]) -> Repeating:
        """Run ``callback`` every ``interval`` seconds until the returned handle is cancelled."""
        handle = Repeating()

        def tick() -> None:
            if handle.cancelled:
                return
            handle.next = self.loop.call_later(interval, tick)  # first, so a raising callback still ticks again
            callback()

        handle.next = self.loop.call_later(interval, tick)
        return handle

    # --- serving ------------------------------------------------------------------------------

    def _look_soon(self) -> None:
        if not self._look_scheduled:
            self._look_scheduled = True
            self.loop.call_soon(self._look)

    def _look(self) -> None:
        self._look_scheduled = False
        for watched in list(self._watched.values()):
            self._serve(watched)

    def _serve(self, watched: _Watched) -> None:
        """Serve one socket if its EVENTS say so; look again next turn after reading (more may wait)."""
        if self._watched.get(watched.socket) is not watched:  # removed (and closed) meanwhile
            return
        with watched.lock:
            events = watched.socket.getsockopt(EVENTS)
        if watched.on_writable is not None and events & POLLOUT:
            on_writable, watched.on_writable = watched.on_writable, None
            self._guard(on_writable)
        if events & POLLIN:
            self._guard(watched.on_readable)
            self._look_soon()

    @staticmethod
    def _guard(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            log.exception("a socket callback raised; the client goes on")


async def in_own_thread(function: Callable[[], T], name: str, undo: Callable[[T], None] | None = None) -> T:
    """``function()`` in a thread of its own, awaited; the thread has ended when this returns.

    Not the loop's default executor, whose idle threads would outlive the client. If the
    awaiting coroutine is cancelled, the loop does not wait for the thread: ``undo`` gets
    the result once it comes (an embedded cluster that finished starting is stopped).
    """
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def deliver(outcome: tuple[Any, BaseException | None]) -> None:
        if outcome[1] is not None:
            done.set_exception(outcome[1])
        else:
            done.set_result(outcome[0])

    def run() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (function(), None)
        except BaseException as exc:  # noqa: B902 - handed to the awaiting coroutine
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(deliver, outcome)
        except RuntimeError:  # the loop is closed: nobody takes the result
            if undo is not None and outcome[1] is None:
                undo(outcome[0])

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        result = await asyncio.shield(done)
    except asyncio.CancelledError:
        if undo is not None:
            done.add_done_callback(lambda finished: _undo_later(finished, undo, name))
        raise
    thread.join()
    return result


def _undo_later(finished: asyncio.Future, undo: Callable[[Any], None], name: str) -> None:
    if not finished.cancelled() and finished.exception() is None:
        threading.Thread(target=undo, args=(finished.result(),), name=name, daemon=True).start()
