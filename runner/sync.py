"""Cluster-wide Lock, Semaphore, Event and Queue: the shapes of ``threading`` and ``queue``.

These are proxies: the state lives in the broker (runner/broker/sync.py), and
every call is one request that the broker answers, so a blocking call waits on
the broker's reply, never by polling. A lock or semaphore slot is a lease held by
this client's connection: if the process dies or its heartbeats stop, the broker
frees it within the heartbeat liveness (docs/sync.md). Each grant comes with a
fencing ``token`` that strictly increases per name.
"""

from __future__ import annotations

import queue as stdlib_queue
import uuid
from typing import TYPE_CHECKING, Any

from runner.errors import LimitError
from runner import protocol
from runner.current import get_client

if TYPE_CHECKING:
    from runner.client import Client


def _client(client: "Client | None") -> "Client":
    return client if client is not None else get_client()


def _wait_for(blocking: bool, timeout: float | None) -> float | None:
    """The broker-side timeout of a call shaped like threading's (None: forever)."""
    if not blocking:
        if timeout is not None and timeout != -1:
            raise ValueError("can't specify a timeout for a non-blocking call")
        return 0.0
    if timeout is None or timeout == -1:
        return None
    if timeout < 0:
        raise ValueError(f"timeout must be a non-negative number or None, got {timeout!r}")
    return float(timeout)


def _raise_for(answer: dict) -> dict:
    kind = answer.get("kind")
    if "error" not in answer:
        return answer
    if kind == "RuntimeError":
        raise RuntimeError(answer["error"])
    if kind == "Full":
        raise stdlib_queue.Full
    if kind == "Empty":
        raise stdlib_queue.Empty
    if kind == "LimitError":
        raise LimitError.raised_here(answer["error"])
    raise ValueError(answer["error"])


def pack_item(item: Any) -> bytes:
    """A queue item as msgpack; a TypeError saying so when it cannot be sent."""
    try:
        return protocol.pack(item)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"a {type(item).__name__} cannot go in a runner Queue ({exc}); use msgpack types") from None


class Holdings:
    """The fencing tokens of the slots each Lock/Semaphore object of one client holds.

    Kept from the broker's answers on the client's I/O thread, in the order they arrive, and
    forgotten when the client registers again (the broker freed every slot it held then).
    Tuples replace each other whole, so a reading thread sees one state or the next.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[int, ...]] = {}  # owner -> tokens, oldest first

    def answered(self, request: dict, answer: dict) -> None:
        """Record a granted acquire or a release (which gives back the owner's oldest slot)."""
        owner = request.get("owner", "")
        if answer.get("acquired"):
            self._tokens[owner] = (*self._tokens.get(owner, ()), answer["token"])
        elif answer.get("released"):
            rest = self._tokens.get(owner, ())[1:]
            if rest:
                self._tokens[owner] = rest
            else:
                self._tokens.pop(owner, None)

    def token(self, owner: str) -> int | None:
        """The newest token ``owner`` holds, or None."""
        tokens = self._tokens.get(owner)
        return tokens[-1] if tokens else None

    def forget(self) -> None:
        """The client registered again: the broker freed every slot it held."""
        self._tokens = {}


class Semaphore:
    """At most ``value`` holders across the cluster; waiters are served first come, first served."""

    _limit_name = "value"

    def __init__(self, name: str, value: int = 1, *, client: "Client | None" = None) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{self._limit_name} must be an integer >= 1, got {value!r}")
        self.name = name
        self.value = value
        self._client = _client(client)
        self._owner = uuid.uuid4().hex  # this object is one holder, apart from others in this client

    @property
    def token(self) -> int | None:
        """The fencing token of the newest slot this object holds (None when it holds none)."""
        return self._client.holdings.token(self._owner)

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take a slot; False if ``blocking`` is False or ``timeout`` passed first."""
        wait = _wait_for(blocking, timeout)
        answer = _raise_for(self._client._sync("acquire", self.name, wait, limit=self.value, owner=self._owner,
                                               timeout=wait, blocking=blocking))
        return answer["acquired"]

    def release(self) -> None:
        """Give a slot back; RuntimeError if this object holds none, as threading raises."""
        _raise_for(self._client._sync("release", self.name, owner=self._owner))

    def locked(self) -> bool:
        """True when no slot is free."""
        return _raise_for(self._client._sync("locked", self.name))["locked"]

    def __enter__(self) -> "Semaphore":
        self.acquire()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<runner.{type(self).__name__} {self.name!r} token={self.token}>"


class Lock(Semaphore):
    """A cluster-wide mutex: a Semaphore of one."""

    def __init__(self, name: str, *, client: "Client | None" = None) -> None:
        super().__init__(name, 1, client=client)


class Event:
    """A flag every process of the cluster can set, clear and wait for."""

    def __init__(self, name: str, *, client: "Client | None" = None) -> None:
        self.name = name
        self._client = _client(client)

    def set(self) -> None:
        _raise_for(self._client._sync("event_set", self.name))

    def clear(self) -> None:
        _raise_for(self._client._sync("event_clear", self.name))

    def is_set(self) -> bool:
        return _raise_for(self._client._sync("event_is_set", self.name))["set"]

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the event is set (True) or ``timeout`` passes (False)."""
        wait = _wait_for(True, timeout)
        return _raise_for(self._client._sync("event_wait", self.name, wait, timeout=wait))["set"]

    def __repr__(self) -> str:
        return f"<runner.Event {self.name!r}>"


class Queue:
    """A FIFO of msgpack values shared by the cluster; ``maxsize`` > 0 makes producers wait.

    A ``get`` removes the item for good: each item goes to one consumer at most once.
    Items put (and acknowledged) survive a broker restart when its journal is on.
    """

    def __init__(self, name: str, maxsize: int = 0, *, client: "Client | None" = None) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 0:
            raise ValueError(f"maxsize must be an integer >= 0, got {maxsize!r}")
        self.name = name
        self.maxsize = maxsize
        self._client = _client(client)

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        """Add an item, waiting for room if the queue is full; queue.Full if none came in time."""
        blob = pack_item(item)
        wait = _wait_for(block, timeout)
        _raise_for(self._client._sync("queue_put", self.name, wait, item=blob, maxsize=self.maxsize,
                                      timeout=wait, blocking=block))

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """Remove and return the oldest item, waiting for one; queue.Empty if none came in time."""
        wait = _wait_for(block, timeout)
        answer = _raise_for(self._client._sync("queue_get", self.name, wait, timeout=wait, blocking=block))
        return protocol.unpack(answer["item"])

    def put_nowait(self, item: Any) -> None:
        self.put(item, block=False)

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def qsize(self) -> int:
        return _raise_for(self._client._sync("queue_size", self.name))["size"]

    def empty(self) -> bool:
        return self.qsize() == 0

    def full(self) -> bool:
        return 0 < self.maxsize <= self.qsize()

    def __repr__(self) -> str:
        return f"<runner.Queue {self.name!r} maxsize={self.maxsize}>"
