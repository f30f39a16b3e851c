"""ZeroMQ sockets set up the one way runner uses them, and sending that never blocks.

The broker binds one ROUTER; clients and workers connect DEALERs to it, each with
a routing id of its own choosing so that a reconnect keeps its identity. Sends are
non-blocking: what cannot go out now waits in an outbox and leaves when the
socket can take it, so a slow peer never stalls the loop.
"""

from __future__ import annotations

import collections
import re
import threading
from typing import TYPE_CHECKING, Callable

import zmq
from loguru import logger

from runner import protocol
from runner.loop import EVENTS, POLLIN, EventLoop

if TYPE_CHECKING:
    from runner.keys import CurveKeys

log = logger.bind(component="transport")

#: Messages queued per peer inside ZeroMQ before sends report EAGAIN.
HIGH_WATER_MARK = 100_000
#: Messages the broker holds for one peer whose ZeroMQ pipe is full, before it counts as unreachable.
OUTBOX_LIMIT = 100_000
#: Seconds before retrying a ROUTER send that found the peer's pipe full.
ROUTER_RETRY = 0.01


_ADDRESS = re.compile(r"^(tcp://[^\s:]+:(\d+|\*)|ipc://\S+|inproc://\S+)$")


def check_address(address: str) -> str:
    """Return ``address`` if ZeroMQ can use it, else raise ValueError saying what is expected."""
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise ValueError(f"broker address {address!r} is not valid; expected one like tcp://127.0.0.1:5555")
    return address


def bind_router(context: zmq.Context, address: str,
                max_message_bytes: int = protocol.MAX_MESSAGE_BYTES,
                secure: Callable[[zmq.Socket], None] | None = None) -> tuple[zmq.Socket, str]:
    """Bind the broker's ROUTER; return it with the address actually bound.

    ZeroMQ drops the connection of a peer that sends a message over ``max_message_bytes``
    before any of it reaches the broker's memory. ``secure`` sets the socket up as a CURVE
    server before it binds (runner/broker/guard.py).
    """
    socket = context.socket(zmq.ROUTER)
    if secure is not None:
        secure(socket)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a vanished peer raises, not vanishes
    socket.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting peer takes its identity back
    socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    socket.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    try:
        socket.bind(address)
    except zmq.ZMQError as exc:
        socket.close()
        raise OSError(f"cannot bind the broker to {address!r}: {exc} (is another broker using it?)") from None
    return socket, socket.getsockopt_string(zmq.LAST_ENDPOINT)


def connect_dealer(context: zmq.Context, address: str, identity: bytes, *, curve: "CurveKeys | None" = None,
                   watch: Callable[[zmq.Socket], None] | None = None) -> zmq.Socket:
    """Connect a DEALER to the broker under ``identity``, with ``curve`` keys if given.

    ``watch`` is called before the connect (to attach a socket monitor that sees the handshake).
    """
    socket = context.socket(zmq.DEALER)
    if curve is not None:
        socket.curve_serverkey = curve.server
        socket.curve_publickey = curve.public
        socket.curve_secretkey = curve.secret
    if watch is not None:
        watch(socket)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.ROUTING_ID, identity)
    socket.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
    socket.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
    socket.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
    socket.setsockopt(zmq.RECONNECT_IVL, 100)
    socket.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    try:
        socket.connect(address)
    except zmq.ZMQError as exc:
        socket.close()
        raise ValueError(f"cannot connect to {address!r}: {exc}; expected an address like tcp://127.0.0.1:5555") from None
    return socket


class DealerLink:
    """A DEALER socket on a loop: decodes what arrives, queues what cannot go out yet.

    ``send`` is safe from any thread: a client's submitting thread sends without
    waiting for its I/O thread, which a busy submitter can keep from the GIL for the
    interpreter's whole switch interval. Every use of the socket holds ``_lock``, the
    loop's included, which also gives the memory barrier ZeroMQ asks for when a socket
    is used from another thread.
    """

    def __init__(
        self, loop: EventLoop, socket: zmq.Socket, on_message: Callable[[protocol.Message], None]
    ) -> None:
        self.loop = loop
        self.socket = socket
        self._on_message = on_message
        self._outbox: collections.deque[bytes] = collections.deque()
        self._lock = threading.RLock()
        self._closed = False
        loop.add_socket(socket, self._drain, self._lock)

    def send(self, message_type: str, body: dict | None = None) -> None:
        """Send now, or as soon as the socket has room, in order; from any thread.

        After ``close`` (a reconnect replaced this link) it sends nothing: the owner
        resends what matters once the broker welcomes it again.
        """
        frame = protocol.encode(message_type, body)
        with self._lock:
            if self._closed:
                return
            if self._outbox:
                self._outbox.append(frame)
            else:
                try:
                    self.socket.send(frame, zmq.NOBLOCK)
                except zmq.Again:
                    self._outbox.append(frame)
                    self.loop.want_writable(self.socket, self._flush)
            # Off the loop's thread, the send may have consumed the edge that would wake the
            # sleeping loop for a message that arrived meanwhile, or the frame may wait.
            if not self.loop.in_loop_thread() and (self._outbox or self.socket.getsockopt(EVENTS) & POLLIN):
                self.loop.wake()

    def close(self, linger_ms: int = 0) -> None:
        """Stop watching and close; what was sent gets ``linger_ms`` to leave."""
        with self._lock:
            self._closed = True
            self.loop.remove_socket(self.socket)
            self.socket.close(linger=linger_ms)

    def _flush(self) -> None:
        with self._lock:
            while self._outbox:
                try:
                    self.socket.send(self._outbox[0], zmq.NOBLOCK)
                except zmq.Again:
                    self.loop.want_writable(self.socket, self._flush)
                    return
                self._outbox.popleft()

    def _drain(self) -> None:
        for _ in range(self.loop.drain_limit):
            with self._lock:
                try:
                    frame = self.socket.recv(zmq.NOBLOCK, copy=True)
                except zmq.Again:
                    return
            try:
                message = protocol.decode(frame)
            except protocol.ProtocolError as exc:
                log.warning("dropped a malformed message from the broker: {}", exc)
                continue
            self._on_message(message)


class RouterLink:
    """The broker's ROUTER on a loop: per-peer sends that never block or vanish silently."""

    def __init__(
        self,
        loop: EventLoop,
        socket: zmq.Socket,
        on_frame: Callable[[bytes, bytes], None],
        on_unreachable: Callable[[bytes], None],
        on_invalid: Callable[[bytes, str], None] | None = None,
        on_keyed_frame: Callable[[bytes, bytes, str], None] | None = None,
    ) -> None:
        """``on_keyed_frame`` (CURVE on) replaces ``on_frame`` and gets each frame's User-Id too."""
        self.loop = loop
        self.socket = socket
        self._on_frame = on_frame
        self._on_keyed_frame = on_keyed_frame
        self._on_unreachable = on_unreachable
        self._on_invalid = on_invalid or (lambda peer, problem: log.warning("{!r}: {}", peer, problem))
        self._outboxes: dict[bytes, collections.deque[bytes]] = {}
        self._retry_scheduled = False
        loop.add_socket(socket, self._drain if on_keyed_frame is None else self._drain_keyed)

    def send(self, peer: bytes, message_type: str, body: dict | None = None) -> None:
        """Send to ``peer``; if it is gone, report it through ``on_unreachable``."""
        frame = protocol.encode(message_type, body)
        outbox = self._outboxes.get(peer)
        if outbox is None:
            self._send_frame(peer, frame)
        elif len(outbox) < OUTBOX_LIMIT:
            outbox.append(frame)
        else:  # it reads nothing: hold no more for it than ZeroMQ's pipe and this outbox
            log.warning("{!r} read none of the last {} messages; treating it as unreachable", peer, OUTBOX_LIMIT)
            del self._outboxes[peer]
            self._on_unreachable(peer)

    def forget(self, peer: bytes) -> None:
        """Drop anything still waiting for a peer that is gone."""
        self._outboxes.pop(peer, None)

    def close(self) -> None:
        self.loop.remove_socket(self.socket)
        self.socket.close(linger=0)

    def _send_frame(self, peer: bytes, frame: bytes) -> bool:
        try:
            self.socket.send_multipart((peer, frame), zmq.NOBLOCK)
            return True
        except zmq.Again:
            self._outboxes.setdefault(peer, collections.deque()).append(frame)
            self._schedule_retry()
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            self._outboxes.pop(peer, None)
            self._on_unreachable(peer)
        return False

    def _schedule_retry(self) -> None:
        # ROUTER has no per-peer POLLOUT, so a full pipe is retried on a short timer.
        if not self._retry_scheduled:
            self._retry_scheduled = True
            self.loop.call_later(ROUTER_RETRY, self._retry)

    def _retry(self) -> None:
        self._retry_scheduled = False
        for peer in list(self._outboxes):
            outbox = self._outboxes.pop(peer)
            while outbox:
                frame = outbox.popleft()
                if not self._send_frame(peer, frame):
                    if peer in self._outboxes:  # still full: keep the rest, in order
                        self._outboxes[peer].extend(outbox)
                    break

    def _drain(self) -> None:
        for _ in range(self.loop.drain_limit):
            if self.loop.timer_due():  # a job's due time, say: the rest waits for the next turn
                return
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return
            if len(frames) != 2:
                self._on_invalid(frames[0], f"dropped a message of {len(frames) - 1} frames: expected exactly one")
                continue
            self._on_frame(frames[0], frames[1])

    def _drain_keyed(self) -> None:
        """As ``_drain``, with the key the CURVE handshake proved (only a zmq Frame carries it)."""
        assert self._on_keyed_frame is not None
        for _ in range(self.loop.drain_limit):
            if self.loop.timer_due():
                return
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            if len(frames) != 2:
                self._on_invalid(frames[0].bytes, f"dropped a message of {len(frames) - 1} frames: expected exactly one")
                continue
            self._on_keyed_frame(frames[0].bytes, frames[1].bytes, frames[1].get("User-Id"))
