"""Who may do what at the broker, decided from a peer's authenticated CURVE key (no sockets).

With CURVE on, a peer's routing id carries its public key (``peer_identity``), and ZeroMQ
stamps every message with the key the handshake proved (its ``User-Id``). A frame counts
only when the two agree and the key is still authorized, so a key removed from
``authorized/`` shuts its peer out at its next frame. Roles:

- any authorized key may submit, and fetch, cancel and requeue the jobs it submitted;
- only keys in ``authorized/workers`` may register as workers;
- keys in ``authorized/admins`` may see and act on every job.

A job belongs to the key in the routing id that submitted it, so ownership survives a
broker restart (the journal keeps that id) without a table of its own. With CURVE off
there are no keys and everyone is an admin.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from runner.keys import key_of

#: Seconds during which the same rejection is logged only once.
LOG_EVERY = 60.0


@dataclass(frozen=True)
class Keyring:
    """The authorized public keys (z85 text), by role."""

    clients: frozenset[str] = frozenset()
    workers: frozenset[str] = frozenset()
    admins: frozenset[str] = frozenset()

    @classmethod
    def from_roles(cls, roles: dict[str, frozenset[str]]) -> "Keyring":
        return cls(roles.get("client", frozenset()), roles.get("worker", frozenset()), roles.get("admin", frozenset()))

    @property
    def everyone(self) -> frozenset[str]:
        return self.clients | self.workers | self.admins


class Access:
    """The broker's decisions about keys; ``Access(None)`` (CURVE off) allows everything."""

    def __init__(self, keyring: Keyring | None) -> None:
        self.enabled = keyring is not None
        self.keyring = keyring or Keyring()
        self.allowed = self.keyring.everyone  # read once per frame: a plain set

    def admits(self, key: str) -> bool:
        """May this key complete the handshake (ZAP)?"""
        return not self.enabled or key in self.allowed

    def frame_ok(self, peer_id: bytes, key: str) -> bool:
        """Does a frame stamped with ``key`` from ``peer_id`` count? (The id must carry that key.)"""
        return key in self.allowed and key_of(peer_id) == key

    def may_work(self, peer_id: bytes) -> bool:
        """May this peer register as a worker?"""
        return not self.enabled or key_of(peer_id) in self.keyring.workers

    def may_touch(self, peer_id: bytes, owner_id: bytes | None) -> bool:
        """May ``peer_id`` see or act on a job submitted by ``owner_id``? (None: an unknown job, nobody's.)"""
        if not self.enabled or owner_id is None:
            return True
        key = key_of(peer_id)
        return key in self.keyring.admins or key == key_of(owner_id)

    def is_admin(self, peer_id: bytes) -> bool:
        """Does this peer hold an admin key (or are keys off, making everyone one)?"""
        return not self.enabled or key_of(peer_id) in self.keyring.admins

    def may_schedule(self, peer_id: bytes) -> bool:
        """May this peer add, remove or list periodic schedules? Client and admin keys, not worker keys."""
        return not self.enabled or key_of(peer_id) in self.keyring.clients | self.keyring.admins

    def same_owner(self, peer_id: bytes, owner_id: bytes) -> bool:
        """May ``peer_id`` take over a job id ``owner_id`` submitted (a resend)? Only under the same key."""
        return not self.enabled or key_of(peer_id) == key_of(owner_id)

    def reload(self, keyring: Keyring, peers: dict[bytes, str]) -> list[bytes]:
        """Take the new keys; return the connected peers (id -> role) that must be shut out."""
        self.keyring = keyring
        self.allowed = keyring.everyone
        return [peer_id for peer_id, role in peers.items()
                if key_of(peer_id) not in self.allowed or role == "worker" and not self.may_work(peer_id)]


class OncePer:
    """Says yes to the first report of each thing per ``interval`` seconds (for logging)."""

    def __init__(self, interval: float = LOG_EVERY, limit: int = 10_000) -> None:
        self.interval = interval
        self.limit = limit  # things remembered at most, so a flood of addresses cannot grow it forever
        self._last: dict[str, float] = {}

    def __call__(self, what: str, now: float) -> bool:
        last = self._last.get(what)
        if last is not None and now - last < self.interval:
            return False
        if len(self._last) >= self.limit:
            self._last = {key: at for key, at in self._last.items() if now - at < self.interval}
            if len(self._last) >= self.limit:  # a flood within one interval: forget it all, log again
                self._last.clear()
        self._last[what] = now
        return True


_TCP = re.compile(r"^tcp://(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:]+)):")


def is_private(address: str) -> bool:
    """Can only this machine reach ``address``? ipc:// and inproc://, or tcp:// on a loopback address."""
    if address.startswith(("ipc://", "inproc://")):
        return True
    match = _TCP.match(address)
    if match is None:
        return False
    host = match.group("v6") or match.group("host")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name or a host name: may be reachable from elsewhere


def check_bind(address: str, curve: bool, insecure: bool) -> str | None:
    """Refuse an open bind without CURVE; return a warning to log when ``insecure`` allows one."""
    if curve or is_private(address):
        return None
    if not insecure:
        raise ValueError(
            f"refusing to listen on {address} without CURVE keys: anyone who can reach it could run code on your "
            "workers and read every job. Give --curve-keys DIR (make one with `runner keys generate DIR`), bind a "
            "loopback address, or pass --insecure on a network you trust")
    return (f"listening on {address} WITHOUT authentication or encryption (--insecure): anyone who can reach it can "
            "submit jobs, read results and register as a worker")
