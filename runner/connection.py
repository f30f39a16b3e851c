"""A peer's session with the broker, shared by clients and workers.

Says hello, keeps heartbeats going both ways (Paranoid Pirate: a side silent for
``interval * liveness`` is presumed dead), reconnects when the broker falls
silent, and registers again when the broker says it does not know us (it
restarted, or declared us dead). Runs on the owner's event loop thread; only
``send`` may be called from other threads.

Each hello carries ``session``, the count of hellos sent, and the welcome echoes it:
a request stamped with the session it was sent in lets the broker drop a copy sent
before the latest hello, which the owner sends again after that hello's welcome.

When authentication fails (the handshake is refused, or the broker answers "denied")
it stops for good: ``failure`` says why and ``settled`` is set, as it is at the first
welcome, so the owner waits for whichever comes first (``on_settled`` tells an owner
that cannot wait on a threading.Event).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Callable

import zmq
from loguru import logger

from runner import protocol
from runner.handshake import HandshakeJudge, HandshakeWatch
from runner.loop import EventLoop, Timer
from runner.transport import DealerLink, connect_dealer

if TYPE_CHECKING:
    from runner.keys import CurveKeys

log = logger.bind(component="connection")

WAITING_LOG_EVERY = 5.0  # seconds between "waiting for the broker" lines until the first welcome
#: Error codes by which the broker refuses a peer (runner/broker/limits.py): it has --max-peers
#: peers already, or cut this one off for invalid frames. The peer's hellos keep trying.
REFUSALS = ("full", "cut_off")


class BrokerConnection:
    """Hello, heartbeats and re-registration around one DEALER socket."""

    def __init__(
        self,
        loop: EventLoop,
        context: zmq.Context,
        address: str,
        identity: bytes,
        *,
        hello: Callable[[], dict],
        on_message: Callable[[protocol.Message], None],
        on_welcome: Callable[[dict, bool], None] | None = None,
        heartbeat: float = 1.0,
        liveness: int = 3,
        say_waiting: bool = False,
        curve: "CurveKeys | None" = None,
        on_failure: Callable[[str], None] | None = None,
        on_settled: Callable[[], None] | None = None,
        on_heartbeat: Callable[[dict], None] | None = None,
    ) -> None:
        self.loop = loop
        self.context = context
        self.address = address
        self.identity = identity
        self.heartbeat = heartbeat
        self.liveness = liveness
        self.registered = threading.Event()  # set at the first welcome; other threads wait on it
        self.settled = threading.Event()  # set at the first welcome or refusal, or when authentication fails
        self.refusal: str | None = None  # why the broker refused our hello (it is full), until it welcomes us
        self.failure: str | None = None  # why authentication failed, for good
        self.curve = curve
        self.key_description = (f"the key {curve.public_text} ({curve.source})" if curve
                                else "no CURVE key")
        self._on_failure = on_failure
        self._on_settled = on_settled  # for an owner that cannot block on ``settled`` (an asyncio loop)
        self._watch: HandshakeWatch | None = None
        self._hello = hello
        self._on_message = on_message
        self._on_welcome = on_welcome
        self._on_heartbeat = on_heartbeat  # the broker's heartbeat bodies (a worker's confirmed results)
        self._link: DealerLink | None = None
        self._timer: Timer | None = None
        self._last_heard = time.monotonic()
        self._silence_limit = heartbeat * liveness  # until the broker tells its own pace
        self._welcomes = 0
        self.session = 0  # hellos sent so far
        self._hello_sent_at: float | None = None  # while a hello waits for its welcome
        # A peer that waits for the broker as long as it takes (a worker) says so until welcomed.
        self._say_waiting_every = WAITING_LOG_EVERY if say_waiting else None
        self._waiting_logged_at: float | None = None

    def start(self) -> None:
        """Connect and say hello (on the loop thread)."""
        if self.failure is not None:
            return
        self._watch = HandshakeWatch(self.loop, HandshakeJudge(self.address, self.key_description, self.curve is not None),
                                     self._fail)
        socket = connect_dealer(self.context, self.address, self.identity, curve=self.curve, watch=self._watch.attach)
        self._link = DealerLink(self.loop, socket, self._receive)
        self._say_hello()
        self._restart_heartbeats()

    def send(self, message_type: str, body: dict | None = None) -> None:
        """Send to the broker, from any thread; while reconnecting, nothing is sent."""
        link = self._link
        if link is not None:
            link.send(message_type, body)

    def close(self, goodbye: bool = True, linger_ms: int = 200) -> None:
        """Say goodbye (so the broker acts now, not after heartbeats) and close."""
        if self._timer is not None:
            self._timer.cancel()
        if self._watch is not None:
            self._watch.detach()
        if self._link is None:
            return
        if goodbye:
            self._link.send(protocol.BYE)
        self._link.close(linger_ms if goodbye else 0)
        self._link = None

    def _say_hello(self) -> None:
        self.session += 1
        self._hello_sent_at = time.monotonic()
        self.send(protocol.HELLO, {**self._hello(), "session": self.session})

    @property
    def welcomed(self) -> bool:
        """The broker welcomed the latest hello on the open socket: what is sent now reaches a broker
        that knows this peer (while a hello waits, a message may go down with its socket)."""
        return self._hello_sent_at is None and self._link is not None

    def _hello_waiting(self) -> bool:
        """A hello is on its way: messages sent before it are refused, and one hello is enough."""
        sent_at = self._hello_sent_at
        return sent_at is not None and time.monotonic() - sent_at < self._silence_limit

    def _receive(self, message: protocol.Message) -> None:
        self._last_heard = time.monotonic()
        if message.type == protocol.HEARTBEAT:
            if message.body and self._on_heartbeat is not None:
                self._on_heartbeat(message.body)
            return
        if message.type == protocol.WELCOME:
            self._welcomed(message.body)
        elif message.type == protocol.ERROR and message.body.get("code") in REFUSALS:
            if self.refusal is None:
                log.warning("the broker at {} refused us: {}", self.address, message.body["message"])
            self.refusal = message.body["message"]
            self._settle()
        elif message.type == protocol.ERROR and message.body.get("code") == "denied":
            self._fail(f"{message.body['message']} (this side used {self.key_description})")
        elif message.type == protocol.ERROR and message.body.get("code") == "hello":
            if not self._hello_waiting():
                log.warning("the broker at {} does not know us ({}); registering again", self.address,
                            message.body["message"])
                self._say_hello()
        else:
            self._on_message(message)

    def _welcomed(self, body: dict) -> None:
        self._welcomes += 1
        self._hello_sent_at = None
        broker_interval = float(body["heartbeat"])
        self._silence_limit = broker_interval * max(self.liveness, int(body["liveness"]))
        if broker_interval < self.heartbeat:  # beat at least as often as the broker expects
            self.heartbeat = broker_interval
            self._restart_heartbeats()
        if self._on_welcome is not None:  # first: a client learns the broker's limits before it submits
            self._on_welcome(body, self._welcomes > 1)
        self.refusal = None
        self.registered.set()
        self._settle()

    def _settle(self) -> None:
        self.settled.set()
        if self._on_settled is not None:
            self._on_settled()

    def _restart_heartbeats(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_every(self.heartbeat, self._beat)

    def _beat(self) -> None:
        silent_for = time.monotonic() - self._last_heard
        # Before the first welcome ZeroMQ is still connecting and the hello waits in its queue.
        if not self.registered.is_set():
            if self._say_waiting_every is not None:
                self._say_waiting(silent_for)
        elif silent_for > self._silence_limit:
            log.warning("no word from the broker at {} for {:.1f}s; reconnecting", self.address, silent_for)
            self.close(goodbye=False)
            self._last_heard = time.monotonic()
            self.start()
            return
        self.send(protocol.HEARTBEAT)

    def _say_waiting(self, waited: float) -> None:
        """At the first heartbeat without a welcome, then every WAITING_LOG_EVERY: a typo shows at once."""
        now = time.monotonic()
        if self._waiting_logged_at is None or now - self._waiting_logged_at >= self._say_waiting_every:
            self._waiting_logged_at = now
            log.info("waiting for the broker at {} ({:.0f}s so far): is it running there, and is the address right?",
                     self.address, waited)

    def _fail(self, reason: str) -> None:
        """Authentication failed: stop for good (retrying would fail the same way) and tell the owner."""
        if self.failure is not None:
            return
        self.failure = reason
        log.debug(reason)  # the owner reports it: the client raises it, the worker logs it and exits
        self.close(goodbye=False)
        self._settle()
        if self._on_failure is not None:
            self._on_failure(reason)
