"""Telling "authentication failed" apart from "the broker is not there yet", for clients and workers.

ZeroMQ retries a refused handshake forever and says nothing to the socket's user; only a
socket monitor sees why. ``HandshakeJudge`` reads the monitor's events (no sockets, testable
alone) and names a failure once it is certain; ``HandshakeWatch`` feeds it from a monitor on
the peer's loop. The watch ends at the first successful handshake, so the connection's
steady state costs nothing more: a key revoked later is answered "denied" by the broker,
and the connection starts a new watch whenever it reconnects.
"""

from __future__ import annotations

from typing import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from runner.loop import EventLoop

#: Handshakes in a row that the broker ends without a reason before we call it an authentication
#: failure (a wrong broker key looks like this; one such end can also be a broker restarting).
NO_DETAIL_LIMIT = 3
EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
          | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


class HandshakeJudge:
    """Takes monitor events; returns the failure message once authentication has surely failed.

    ``key`` describes the key this side used (shown in the message), ``curve`` whether it has one.
    """

    def __init__(self, address: str, key: str, curve: bool) -> None:
        self.address = address
        self.key = key
        self.curve = curve
        self.succeeded = False
        self._silent_failures = 0

    def event(self, event: int, value: int) -> str | None:
        if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            self.succeeded = True
            self._silent_failures = 0
            return None
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return self._failed(f"the broker refused {self.key} (ZAP status {value}): it is not authorized there")
        if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                return self._failed("the broker requires CURVE keys and this side has none: give --curve-keys DIR "
                                    "(or RUNNER_CURVE_KEYS)" if not self.curve else
                                    f"this side uses {self.key} but the broker has no CURVE keys")
            return self._failed(f"the handshake with {self.key} failed (protocol error {value:#x})")
        if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
            self._silent_failures += 1
            if self._silent_failures >= NO_DETAIL_LIMIT:
                why = ("broker.key is not this broker's key, or the broker requires CURVE keys" if self.curve
                       else "the broker requires CURVE keys and this side has none: give --curve-keys DIR")
                return self._failed(f"the broker ended {self._silent_failures} handshakes in a row with {self.key}: "
                                    f"{why}")
        return None

    def _failed(self, reason: str) -> str:
        return f"authentication failed at {self.address}: {reason}"


class HandshakeWatch:
    """A monitor on one DEALER, on the peer's loop until the handshake succeeds; reports a sure
    failure to ``on_failed``."""

    def __init__(self, loop: EventLoop, judge: HandshakeJudge, on_failed: Callable[[str], None]) -> None:
        self.loop = loop
        self.judge = judge
        self._on_failed = on_failed
        self._socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None

    def attach(self, socket: zmq.Socket) -> None:
        """Watch ``socket`` (call before it connects, so no event is missed)."""
        self._socket = socket
        self._monitor = socket.get_monitor_socket(EVENTS)
        self.loop.add_socket(self._monitor, self._serve)

    def detach(self) -> None:
        """Stop watching (before the socket closes)."""
        if self._monitor is None:
            return
        self.loop.remove_socket(self._monitor)
        if self._socket is not None and not self._socket.closed:
            self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._monitor = None

    def _serve(self) -> None:
        while self._monitor is not None:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            failure = self.judge.event(event["event"], event["value"])
            if failure is not None:
                self.detach()
                self._on_failed(failure)
            elif self.judge.succeeded:
                self.detach()
