"""The broker's limits, and the decisions that enforce them: no sockets, the clock passed in.

``Limits`` holds the numbers (each a ``runner broker`` flag; defaults in docs/usage.md).
``ClientQuota`` counts each client's unfinished jobs against ``max_pending``;
``SyncQuota`` counts the sync names each peer uses; ``Offenders`` counts invalid
frames per peer and cuts a peer off once it passes ``max_invalid_frames``. Every
check is O(1), so the per-job path pays a dict lookup and a comparison.
"""

from __future__ import annotations

import collections
from dataclasses import asdict, dataclass

from runner import protocol

MIB = 1024 * 1024
#: Room a submit row needs beside its payload (id, task, queue, options: each at most MAX_NAME).
ROW_OVERHEAD = 4 * protocol.MAX_NAME + 256
CUT_OFF_SECONDS = 60.0  # how long frames of a peer that passed max_invalid_frames are ignored
TRACKED_PEERS = 10_000  # peers whose invalid frames are counted; the oldest is forgotten beyond it


@dataclass(frozen=True)
class Limits:
    """What one broker accepts; sent to every peer in its welcome (``wire()``)."""

    max_message_bytes: int = protocol.MAX_MESSAGE_BYTES  # ZeroMQ MAXMSGSIZE on the ROUTER
    max_payload_bytes: int = 32 * MIB  # the packed arguments of one job
    max_pending: int = 1_000_000  # unfinished jobs per client (the benchmarks queue a million)
    max_peers: int = 10_000  # connected clients and workers
    max_sync_objects: int = 10_000  # lock, semaphore, event and queue names per peer
    max_invalid_frames: int = 100  # invalid frames from one peer before it is cut off

    def __post_init__(self) -> None:
        if not 64 * 1024 <= self.max_message_bytes <= protocol.MAX_MESSAGE_BYTES:
            raise ValueError(f"max_message_bytes must be from 65536 to {protocol.MAX_MESSAGE_BYTES}, "
                             f"got {self.max_message_bytes!r}")
        if not 1 <= self.max_payload_bytes <= self.max_message_bytes - ROW_OVERHEAD:
            raise ValueError(f"max_payload_bytes must be from 1 to max_message_bytes - {ROW_OVERHEAD} "
                             f"({self.max_message_bytes - ROW_OVERHEAD}), got {self.max_payload_bytes!r}")
        for name in ("max_pending", "max_peers", "max_sync_objects", "max_invalid_frames"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def wire(self) -> dict[str, int]:
        """The limits a peer must respect, for the welcome message."""
        return asdict(self)

    def payload_refusal(self, size: int) -> str | None:
        """None if a job's packed arguments of ``size`` bytes fit, else the error text."""
        if size <= self.max_payload_bytes:
            return None
        return (f"the job's arguments take {size} bytes, more than the broker's limit of {self.max_payload_bytes} "
                "(runner broker --max-payload-bytes); pass a path or key to the data instead")


class ClientQuota:
    """Unfinished jobs per client, against ``max_pending``."""

    def __init__(self, max_pending: int) -> None:
        self.max_pending = max_pending
        self.held: dict[bytes, int] = {}

    def room(self, client: bytes) -> int:
        """How many more jobs ``client`` may have accepted now."""
        return self.max_pending - self.held.get(client, 0)

    def add(self, client: bytes, count: int = 1) -> None:
        if count:  # a batch with nothing new leaves no empty entry behind
            self.held[client] = self.held.get(client, 0) + count

    def remove(self, client: bytes) -> None:
        held = self.held.get(client, 0) - 1
        if held > 0:
            self.held[client] = held
        else:
            self.held.pop(client, None)

    def refusal(self) -> str:
        return (f"this client already has {self.max_pending} unfinished jobs at the broker, its limit "
                "(runner broker --max-pending); wait for some to finish, or create the Client with block=True")


class SyncQuota:
    """The sync names each peer has used during its connection, against ``max_sync_objects``."""

    def __init__(self, max_objects: int) -> None:
        self.max_objects = max_objects
        self._names: dict[bytes, set[str]] = {}

    def use(self, peer: bytes, name: str) -> str | None:
        """Record that ``peer`` uses ``name``; the error text if that is one name too many."""
        names = self._names.setdefault(peer, set())
        if name in names:
            return None
        if len(names) >= self.max_objects:
            return (f"this client already uses {self.max_objects} lock, semaphore, event and queue names, its "
                    f"limit (runner broker --max-sync-objects); {name!r:.80} was not created")
        names.add(name)
        return None

    def forget(self, peer: bytes) -> None:
        self._names.pop(peer, None)


class Offenders:
    """Peers that send invalid frames: counted, and cut off (ignored) past the threshold.

    A ROUTER cannot close one peer's connection, so "disconnected" means the broker
    forgets the peer (as if it had left) and drops its frames unread for
    CUT_OFF_SECONDS; after that it may say hello again. Memory is bounded: at most
    TRACKED_PEERS peers are counted and cut off at once, the oldest forgotten first.
    """

    def __init__(self, threshold: int, cut_off: float = CUT_OFF_SECONDS, tracked: int = TRACKED_PEERS) -> None:
        self.threshold = threshold
        self.cut_off = cut_off
        self.tracked = tracked
        self._counts: collections.OrderedDict[bytes, int] = collections.OrderedDict()
        #: Peers cut off, to the monotonic time they stay so; empty in normal service, so
        #: the per-frame check is a truth test.
        self.cut: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def ignored(self, peer: bytes, now: float) -> bool:
        """True while ``peer`` is cut off: drop its frame unread and unanswered."""
        if not self.cut:
            return False
        until = self.cut.get(peer)
        if until is None:
            return False
        if now < until:
            return True
        del self.cut[peer]
        return False

    def invalid(self, peer: bytes, now: float) -> bool:
        """Count one invalid frame; True exactly when this one cuts the peer off."""
        count = self._counts.pop(peer, 0) + 1
        if count < self.threshold:
            self._counts[peer] = count
            _bound(self._counts, self.tracked)
            return False
        self.cut[peer] = now + self.cut_off
        _bound(self.cut, self.tracked)
        return True


def _bound(table: collections.OrderedDict, size: int) -> None:
    while len(table) > size:
        table.popitem(last=False)
