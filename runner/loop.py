"""The one event loop under the broker, the worker and the client's I/O thread.

A ``selectors.DefaultSelector`` watches ZeroMQ sockets (through their ``FD``), a
wake-up pipe that other threads write to, and nothing else; timers live in a heap.
The loop knows nothing about jobs.

ZeroMQ's file descriptor is edge-triggered: it signals that the socket's state
*changed*, not that a message is waiting, and any call that reads ``EVENTS`` (a
send included) can consume the edge. So before every ``select`` the loop asks each
socket for ``EVENTS`` and serves it while messages wait; only an idle loop sleeps.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import os
import selectors
import threading
import time
from typing import Callable, ContextManager

import zmq
from loguru import logger

log = logger.bind(component="loop")
# pyzmq's constants are enums: ``events & zmq.POLLIN`` runs enum.Flag's Python code (~1 µs), and the
# loops test a socket's EVENTS several times a message. Plain ints keep it at C speed.
EVENTS, POLLIN, POLLOUT = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.POLLOUT)


class Timer:
    """A handle to a scheduled callback; ``cancel()`` stops it from running."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Watched:
    """A zmq socket, the lock its owner guards it with, and what to do when it can be read or written."""

    __slots__ = ("socket", "lock", "on_readable", "on_writable", "want_write")

    def __init__(self, socket: zmq.Socket, on_readable: Callable[[], None], lock: ContextManager) -> None:
        self.socket = socket
        self.lock = lock
        self.on_readable = on_readable
        self.on_writable: Callable[[], None] | None = None
        self.want_write = False

    def events(self) -> int:
        with self.lock:
            return self.socket.getsockopt(EVENTS)


class EventLoop:
    """A single-threaded loop: zmq sockets, thread-safe callbacks and timers."""

    #: Messages a socket's reader handles per turn, so one busy socket cannot starve timers.
    drain_limit = 1_000

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._watched: list[_Watched] = []
        self._ready: collections.deque[Callable[[], None]] = collections.deque()
        self._timers: list[tuple[float, int, Timer]] = []
        self._timer_order = itertools.count()
        self._end_of_turn: list[Callable[[], None]] = []
        self._running = True  # until stop(); a loop is run once
        self._woken = False
        self._thread: threading.Thread | None = None

    # --- registration ---------------------------------------------------------------

    def add_socket(self, socket: zmq.Socket, on_readable: Callable[[], None], lock: ContextManager | None = None) -> None:
        """Call ``on_readable`` whenever ``socket`` has messages (it must drain them).

        ``lock``: for a socket that other threads also send on (holding it), so the loop
        holds it too when it reads the socket's state.
        """
        self._watched.append(_Watched(socket, on_readable, lock or contextlib.nullcontext()))
        self._selector.register(socket.getsockopt(zmq.FD), selectors.EVENT_READ, None)

    def remove_socket(self, socket: zmq.Socket) -> None:
        """Stop watching ``socket`` (before closing it)."""
        for watched in self._watched:
            if watched.socket is socket:
                self._watched.remove(watched)
                self._selector.unregister(socket.getsockopt(zmq.FD))
                return

    def want_writable(self, socket: zmq.Socket, on_writable: Callable[[], None] | None) -> None:
        """Call ``on_writable`` once ``socket`` can send again (None: stop asking)."""
        for watched in self._watched:
            if watched.socket is socket:
                watched.on_writable = on_writable
                watched.want_write = on_writable is not None

    def at_end_of_turn(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` after this turn's messages are handled (for batching)."""
        self._end_of_turn.append(callback)

    # --- scheduling -----------------------------------------------------------------

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the next turn; only from the loop's own thread."""
        self._ready.append(callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop's thread; safe from any thread."""
        self._ready.append(callback)  # deque.append is atomic
        self.wake()

    def wake(self) -> None:
        """Make a sleeping ``select`` return; safe from any thread, cheap when repeated."""
        if self._woken:
            return
        self._woken = True
        try:
            os.write(self._wake_write, b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full or closed: the loop is awake or gone anyway

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` after ``delay`` seconds, on the loop's thread."""
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._timer_order), timer))
        return timer

    def call_every(self, interval: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` every ``interval`` seconds until the returned timer is cancelled."""
        handle = Timer(0.0, callback)

        def tick() -> None:
            if handle.cancelled:
                return
            self.call_later(interval, tick)  # first, so a raising callback still ticks again
            callback()

        self.call_later(interval, tick)
        return handle

    def timer_due(self) -> bool:
        """Whether a timer's time has come: a socket drained message by message yields to it."""
        return bool(self._timers) and self._timers[0][0] <= time.monotonic()

    # --- running --------------------------------------------------------------------

    def run(self) -> None:
        """Run until ``stop()`` (even one called before ``run``); callbacks' exceptions are logged."""
        self._thread = threading.current_thread()
        while self._running:
            self._turn()

    def stop(self) -> None:
        """Ask the loop to return from ``run()``; safe from any thread."""
        self._running = False
        self.wake()

    def in_loop_thread(self) -> bool:
        return self._thread is threading.current_thread()

    def close(self) -> None:
        """Release the selector and wake-up pipe (sockets belong to their owners)."""
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)

    def _turn(self) -> None:
        self._serve_sockets()
        self._run_ready()
        self._run_due_timers()
        self._run_end_of_turn()
        # Sends above may have consumed a socket's edge: look again before sleeping.
        if self._ready or not self._running or self._any_readable():
            timeout = 0.0
        else:
            timeout = self._next_timeout()
        for key, _ in self._selector.select(timeout):
            if key.fileobj == self._wake_read:
                self._drain_wake_pipe()

    def _serve_sockets(self) -> None:
        """Serve every socket whose EVENTS says it can be read (or written, if asked)."""
        for watched in list(self._watched):
            if watched not in self._watched:  # a callback removed (and closed) it this turn
                continue
            events = watched.events()
            if watched.want_write and events & POLLOUT:
                watched.want_write = False
                self._guard(watched.on_writable)
            if events & POLLIN:
                self._guard(watched.on_readable)

    def _any_readable(self) -> bool:
        for watched in self._watched:
            events = watched.events()
            if events & POLLIN or watched.want_write and events & POLLOUT:
                return True
        return False

    def _run_ready(self) -> None:
        for _ in range(len(self._ready)):
            self._guard(self._ready.popleft())

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self._guard(timer.callback)

    def _run_end_of_turn(self) -> None:
        while self._end_of_turn:
            callbacks, self._end_of_turn = self._end_of_turn, []
            for callback in callbacks:
                self._guard(callback)

    def _next_timeout(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        # Only after the read: a wake() in between skips its write, but its callback
        # is already queued and runs on the next turn.
        self._woken = False

    @staticmethod
    def _guard(callback: Callable[[], None] | None) -> None:
        if callback is None:
            return
        try:
            callback()
        except Exception:
            log.exception("a loop callback raised; the loop goes on")
