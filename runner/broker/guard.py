"""The CURVE side of the broker: keys on its ROUTER, ZAP served by its own loop, key reloads.

ZeroMQ asks the ZAP handler (RFC 27) bound at ``inproc://zeromq.zap.01`` whether each
CURVE handshake may complete. pyzmq's ``zmq.auth.Authenticator`` makes the decision; its
REP socket is one more socket on the broker's selectors loop, so no thread of its own runs.
A socket monitor on the ROUTER reports handshakes that fail before ZAP is asked (a peer
without keys, or with keys made for another broker). What the handshake cannot catch, a
key revoked while its peer is connected, Access checks on every frame (see access.py).

The authorized keys are read again on ``reload()`` (SIGHUP) and whenever the files under
``authorized/`` change (checked every RELOAD_CHECK seconds).
"""

from __future__ import annotations

import inspect
import logging
import time
from typing import Callable

import zmq
import zmq.auth
from loguru import logger
from zmq.utils.monitor import recv_monitor_message

from runner import keys
from runner.broker.access import Access, Keyring, OncePer
from runner.loop import EventLoop

log = logger.bind(component="auth")

#: Seconds between checks of authorized/ for added, removed or edited key files.
RELOAD_CHECK = 2.0
_FAILED_BEFORE_ZAP = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


class Guard:
    """Serves ZAP on ``loop`` from the keys in ``folder``; ``on_keys`` hears of every reload."""

    def __init__(self, loop: EventLoop, context: zmq.Context, folder: str,
                 on_keys: Callable[[Keyring], None]) -> None:
        self.folder = folder
        self.public, self.secret = keys.load_broker_keys(folder)
        self.access = Access(self._read())
        self._signature = keys.authorized_signature(folder)
        self._on_keys = on_keys
        self._loop = loop
        self._once = OncePer()
        self._zap_address = ""
        self._failed_handshakes = 0
        self._authenticator = zmq.auth.Authenticator(context, log=logging.getLogger("runner.zap"))
        self._authenticator.configure_curve_callback("*", self)
        self._authenticator.start()  # bound before the ROUTER is: no handshake ever skips ZAP
        loop.add_socket(self._authenticator.zap_socket, self._serve_zap)
        loop.call_every(RELOAD_CHECK, self._reload_if_changed)
        self._monitor: zmq.Socket | None = None

    def secure(self, router: zmq.Socket) -> None:
        """Make ``router`` a CURVE server (before it binds) and watch its failed handshakes."""
        router.curve_secretkey = self.secret
        router.curve_publickey = self.public
        router.curve_server = True
        self._monitor = router.get_monitor_socket(_FAILED_BEFORE_ZAP)
        self._loop.add_socket(self._monitor, self._serve_monitor)

    def reload(self) -> None:
        """Read authorized/ again now (SIGHUP); on the loop's thread."""
        self._signature = keys.authorized_signature(self.folder)
        keyring = self._read()
        log.info("read the authorized keys again: {} clients, {} workers, {} admins",
                 len(keyring.clients), len(keyring.workers), len(keyring.admins))
        self._on_keys(keyring)

    def once(self, what: str) -> bool:
        """True the first time ``what`` is reported in a minute: log it then, not on every frame."""
        return self._once(what, time.monotonic())

    def close(self) -> None:
        for socket in (self._authenticator.zap_socket, self._monitor):
            if socket is not None:
                self._loop.remove_socket(socket)
                socket.close(linger=0)

    # --- ZAP ------------------------------------------------------------------------------

    def callback(self, domain: str, key: bytes) -> bool:
        """The Authenticator's question: may this public key (z85) in? Logs a refusal once a minute."""
        text = key.decode("ascii", "replace")
        if self.access.admits(text):
            return True
        if self.once(f"zap {self._zap_address}"):
            log.warning("refused a connection from {}: its key {} is not under {}/authorized "
                        "(logged once a minute per address)", self._zap_address, text, self.folder)
        return False

    def _serve_zap(self) -> None:
        socket = self._authenticator.zap_socket
        while True:
            try:
                request = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._zap_address = request[3].decode("utf-8", "replace") if len(request) > 3 else "?"
            _complete(self._authenticator.handle_zap_message(request))

    # --- the rest -------------------------------------------------------------------------------

    def _serve_monitor(self) -> None:
        assert self._monitor is not None
        while True:
            try:
                event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            if event["event"] & _FAILED_BEFORE_ZAP:
                self._failed_handshakes += 1
                if self.once("handshake"):
                    log.warning("a peer failed the CURVE handshake on {} ({} since the last report): it has no "
                                "keys, or keys made for another broker (logged once a minute)",
                                event["endpoint"].decode(errors="replace"), self._failed_handshakes)
                    self._failed_handshakes = 0

    def _reload_if_changed(self) -> None:
        if keys.authorized_signature(self.folder) != self._signature:
            self.reload()

    def _read(self) -> Keyring:
        return Keyring.from_roles(keys.read_authorized(self.folder))


def _complete(result: object) -> None:
    """Run the Authenticator's handler to its end: a coroutine in pyzmq >= 25 that never waits
    here (our callback answers at once), a plain call before."""
    if not inspect.iscoroutine(result):
        return
    try:
        result.send(None)
    except StopIteration:
        return
    result.close()
    raise RuntimeError("the ZAP handler waited for something; runner's callback must answer at once")
