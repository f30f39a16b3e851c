"""Cluster-wide Lock, Semaphore, Event and Queue: the broker's state, with no I/O.

A plain object (sans-IO, like the scheduler): no sockets, clock or threads. The server
calls one method per request and sends the returned ``Reply`` actions; a request that
must wait is answered by a later call (release, put, set, ``expire``, ``peer_gone``).
Every request gets exactly one reply, unless its peer is gone. ``now`` is the server's
clock in seconds; ``timeout`` None waits forever, 0 never waits.

Method (arguments after ``peer, request``)            Reply body
acquire(name, limit, owner, now, timeout, blocking)   {"acquired": True, "token": n} / {"acquired": False}
release(name, owner)                                  {"released": True} / error kind "RuntimeError"
locked(name)                                          {"locked": no slot free, "holders": n}
event_set, event_clear, event_is_set(name)            {"set": the event's state}
event_wait(name, now, timeout)                        {"set": True} once set / {"set": False} at the deadline
queue_put(name, item, maxsize, now, timeout, blocking) {"put": True} / {"error": "full", "kind": "Full"}
queue_get(name, now, timeout, blocking)               {"item": blob} / {"error": "empty", "kind": "Empty"}
queue_size(name)                                      {"size": items stored, not counting waiting puts}

Errors are ``{"error": text, "kind": exception name}``: "ValueError" for bad arguments or
a limit (maxsize) other than the one the name is in use with. A Lock is a semaphore of
limit 1; ``owner`` names one Lock/Semaphore object of a client (two objects, two holders);
``token`` is a fencing token, strictly increasing over every grant of a name, ever, across
restarts too: the state starts in the broker's ``epoch`` (a count of starts the journal
keeps) and every token of a run is above ``epoch << TOKEN_BITS``, so above every token of an
earlier run. A run that uses up a name's ``2 ** TOKEN_BITS`` tokens moves on to the next
epoch and reports ``Change(EPOCH, ...)`` for the journal to keep before the token goes out.
Waiters are served first come, first served; ``expire(now)`` answers those whose deadline
passed, ``next_deadline()`` says when to call it; ``peer_gone(peer)`` frees what the peer
held and drops its waits (a waiting put's item is discarded: that put never succeeded).
Memory stays bounded: a name is forgotten once nothing is held, waiting or stored, except
a lock's last token and an event left set. For the journal, stored queue items change only by ``Change(PUT, ...)``
(appended) and ``Change(TAKE, ...)`` (taken from the head), drained in order with
``drain_changes()``; ``restore_queue`` loads items back at start-up. An item handed
straight to a waiting getter is never stored, so it makes no change.
"""

from __future__ import annotations

import collections
import itertools
from dataclasses import dataclass, field
from typing import Any

from runner.broker.waits import Deadlines, Wait

PUT = "put"
TAKE = "take"
EPOCH = "epoch"
#: A token is ``epoch << TOKEN_BITS`` plus a count of grants of its name in that epoch.
TOKEN_BITS = 32
FULL: dict[str, Any] = {"error": "full", "kind": "Full"}
EMPTY: dict[str, Any] = {"error": "empty", "kind": "Empty"}
# What a wait is told when its deadline passes, by kind of wait (copied before sending).
_TIMED_OUT: dict[str, dict[str, Any]] = {
    "acquire": {"acquired": False}, "event": {"set": False}, "get": EMPTY, "put": FULL}
# A timeout longer than this (about 31 years, or inf) waits forever: no deadline to overflow.
_FOREVER = 1e9
# Error messages show at most this many characters of a bad value.
_SHOW_LIMIT = 80


@dataclass(frozen=True)
class Reply:
    """Answer request ``request`` of ``peer`` with ``body`` (a dict of msgpack types)."""

    peer: bytes
    request: int
    body: dict[str, Any]


@dataclass(frozen=True)
class Change:
    """One change for the journal: ``op`` PUT or TAKE changes a queue's stored items; EPOCH
    (``name`` and ``item`` empty) says the state's ``epoch`` moved on."""

    op: str
    name: str
    item: bytes


@dataclass(slots=True)
class _Semaphore:
    limit: int
    count: int = 0
    holders: collections.Counter[tuple[bytes, str]] = field(default_factory=collections.Counter)
    waiters: dict[int, Wait] = field(default_factory=dict)

    def idle(self) -> bool:
        return self.count == 0 and not self.waiters


@dataclass(slots=True)
class _Event:
    is_set: bool = False
    waiters: dict[int, Wait] = field(default_factory=dict)

    def idle(self) -> bool:
        return not self.is_set and not self.waiters


@dataclass(slots=True)
class _Queue:
    maxsize: int | None = None  # None until a put names it (made by a get or a restore)
    items: collections.deque[bytes] = field(default_factory=collections.deque)
    getters: dict[int, Wait] = field(default_factory=dict)
    putters: dict[int, Wait] = field(default_factory=dict)

    def idle(self) -> bool:
        return not self.items and not self.getters and not self.putters

    def has_room(self) -> bool:
        return not self.maxsize or len(self.items) < self.maxsize


class SyncState:
    """Every cluster-wide lock, semaphore, event and queue the broker holds."""

    def __init__(self, journal: bool = True, epoch: int = 0, token_bits: int = TOKEN_BITS) -> None:
        """``journal=False`` records no queue changes (a broker without a journal); ``epoch``
        is this run's (see the module's docstring); ``token_bits`` is smaller only in tests."""
        epochs = 2 ** (63 - token_bits)  # so that every token fits in a signed 64-bit integer
        if not _at_least(epoch, 0) or epoch >= epochs:
            raise ValueError(f"the fencing epoch must be an integer from 0 to {epochs - 1}, got {_show(epoch)}: "
                             "start the broker on a new journal")
        self.epoch = epoch
        self._token_bits = token_bits
        self._semaphores: dict[str, _Semaphore] = {}
        self._events: dict[str, _Event] = {}
        self._queues: dict[str, _Queue] = {}
        self._tables: dict[str, dict[str, Any]] = {"acquire": self._semaphores, "event": self._events,
                                                   "get": self._queues, "put": self._queues}
        self._tokens: dict[str, int] = {}  # the last fencing token granted, per lock name
        self._held: dict[bytes, collections.Counter[str]] = {}  # peer -> slots held per name
        self._waits: dict[bytes, dict[int, Wait]] = {}  # peer -> its waits
        self._deadlines = Deadlines()
        self._seq = itertools.count()
        self._journal = journal
        self._changes: list[Change] = []

    # --- locks and semaphores -----------------------------------------------------------

    def acquire(self, peer: bytes, request: int, name: str, limit: int, owner: str, now: float,
                timeout: float | None = None, blocking: bool = True) -> list[Reply]:
        """Take one slot of semaphore ``name`` for ``owner``, now or once one frees."""
        sem = self._semaphores.get(name) if isinstance(name, str) else None
        error = _problem(name=name, owner=owner, limit=limit, timeout=timeout)
        if not error and sem is not None and sem.limit != limit:
            error = (f"semaphore {_show(name)} is in use with limit {sem.limit}, not {limit}: "
                     "every Lock/Semaphore of one name must use the same limit")
        if error:
            return [_error(peer, request, error)]
        sem = self._semaphores.setdefault(name, _Semaphore(limit))
        if sem.count < limit:
            return [self._grant(sem, name, peer, request, owner)]
        return self._wait(sem.waiters, "acquire", peer, request, name, now, timeout, blocking, owner=owner)

    def release(self, peer: bytes, request: int, name: str, owner: str) -> list[Reply]:
        """Give back one slot ``owner`` holds, granting it to the first waiter."""
        if error := _problem(name=name, owner=owner):
            return [_error(peer, request, error)]
        sem = self._semaphores.get(name)
        if sem is None or not sem.holders.get((peer, owner)):
            text = f"release of a lock/semaphore {_show(name)} that this Lock/Semaphore object does not hold"
            return [_error(peer, request, text, "RuntimeError")]
        self._free_slots(sem, name, peer, owner, 1)
        replies = [Reply(peer, request, {"released": True}), *self._admit_acquirers(sem, name)]
        self._tidy("acquire", name)
        return replies

    def locked(self, peer: bytes, request: int, name: str) -> list[Reply]:
        """Whether an acquire of ``name`` would wait now, and how many slots are held."""
        if error := _problem(name=name):
            return [_error(peer, request, error)]
        sem = self._semaphores.get(name)
        count = sem.count if sem else 0
        return [Reply(peer, request, {"locked": sem is not None and count >= sem.limit, "holders": count})]

    def _grant(self, sem: _Semaphore, name: str, peer: bytes, request: int, owner: str) -> Reply:
        sem.holders[(peer, owner)] += 1
        sem.count += 1
        self._held.setdefault(peer, collections.Counter())[name] += 1
        return Reply(peer, request, {"acquired": True, "token": self._next_token(name)})

    def _next_token(self, name: str) -> int:
        """Above the name's last token and above every token of earlier epochs."""
        floor = self.epoch << self._token_bits
        token = max(self._tokens.get(name, floor), floor) + 1
        if token >> self._token_bits != self.epoch:  # the name used up this epoch's tokens
            self.epoch += 1
            self._changes.append(Change(EPOCH, "", b""))
            token = (self.epoch << self._token_bits) + 1
        self._tokens[name] = token
        return token

    def _free_slots(self, sem: _Semaphore, name: str, peer: bytes, owner: str, slots: int) -> None:
        sem.count -= slots
        _decrease(sem.holders, (peer, owner), slots)
        _decrease(self._held[peer], name, slots)
        if not self._held[peer]:
            del self._held[peer]

    def _admit_acquirers(self, sem: _Semaphore, name: str) -> list[Reply]:
        replies = []
        while sem.waiters and sem.count < sem.limit:
            wait = self._pop_first(sem.waiters)
            replies.append(self._grant(sem, name, wait.peer, wait.request, wait.owner))
        return replies

    def _release_all(self, peer: bytes, name: str) -> list[Reply]:
        sem = self._semaphores[name]
        for (holder, owner), slots in list(sem.holders.items()):
            if holder == peer:
                self._free_slots(sem, name, peer, owner, slots)
        replies = self._admit_acquirers(sem, name)
        self._tidy("acquire", name)
        return replies

    # --- events -------------------------------------------------------------------------

    def event_set(self, peer: bytes, request: int, name: str) -> list[Reply]:
        """Set the event and wake every waiter, in the order they came."""
        return self._event(peer, request, name, True)

    def event_clear(self, peer: bytes, request: int, name: str) -> list[Reply]:
        """Clear the event, so later waits wait again."""
        return self._event(peer, request, name, False)

    def event_is_set(self, peer: bytes, request: int, name: str) -> list[Reply]:
        """Whether the event is set."""
        return self._event(peer, request, name, None)

    def _event(self, peer: bytes, request: int, name: str, flag: bool | None) -> list[Reply]:
        if error := _problem(name=name):
            return [_error(peer, request, error)]
        event = self._events.setdefault(name, _Event())
        event.is_set = event.is_set if flag is None else flag
        woken = [self._pop_first(event.waiters) for _ in range(len(event.waiters) if event.is_set else 0)]
        self._tidy("event", name)
        callers = [(peer, request)] + [(wait.peer, wait.request) for wait in woken]
        return [Reply(*caller, {"set": event.is_set}) for caller in callers]

    def event_wait(self, peer: bytes, request: int, name: str, now: float,
                   timeout: float | None = None) -> list[Reply]:
        """True at once if set; else wait for a set (True) or the deadline (False)."""
        if error := _problem(name=name, timeout=timeout):
            return [_error(peer, request, error)]
        event = self._events.setdefault(name, _Event())
        if event.is_set:
            return [Reply(peer, request, {"set": True})]
        replies = self._wait(event.waiters, "event", peer, request, name, now, timeout)
        self._tidy("event", name)
        return replies

    # --- queues -------------------------------------------------------------------------

    def queue_put(self, peer: bytes, request: int, name: str, item: bytes, maxsize: int, now: float,
                  timeout: float | None = None, blocking: bool = True) -> list[Reply]:
        """Hand ``item`` to the first waiting getter, store it, or wait for room."""
        queue = self._queues.get(name) if isinstance(name, str) else None
        error = _problem(name=name, item=item, maxsize=maxsize, timeout=timeout)
        if not error and queue is not None and queue.maxsize not in (None, maxsize):
            error = (f"queue {_show(name)} is in use with maxsize {queue.maxsize}, not {maxsize}: "
                     "every Queue of one name must use the same maxsize")
        if error:
            return [_error(peer, request, error)]
        queue = self._queues.setdefault(name, _Queue())
        queue.maxsize = maxsize
        if queue.getters:
            getter = self._pop_first(queue.getters)
            self._tidy("put", name)
            return [Reply(peer, request, {"put": True}), Reply(getter.peer, getter.request, {"item": item})]
        if queue.has_room():
            self._store(queue, name, item)
            return [Reply(peer, request, {"put": True})]
        return self._wait(queue.putters, "put", peer, request, name, now, timeout, blocking, item=item)

    def queue_get(self, peer: bytes, request: int, name: str, now: float,
                  timeout: float | None = None, blocking: bool = True) -> list[Reply]:
        """Take the oldest item (letting the first waiting put in), or wait for one."""
        if error := _problem(name=name, timeout=timeout):
            return [_error(peer, request, error)]
        queue = self._queues.setdefault(name, _Queue())
        if queue.items:
            replies = [Reply(peer, request, {"item": self._take(queue, name)})]
            replies += self._admit_putters(queue, name)
        else:
            replies = self._wait(queue.getters, "get", peer, request, name, now, timeout, blocking)
        self._tidy("get", name)
        return replies

    def queue_size(self, peer: bytes, request: int, name: str) -> list[Reply]:
        """How many items the queue stores."""
        if error := _problem(name=name):
            return [_error(peer, request, error)]
        return [Reply(peer, request, {"size": len(self.queue_items(name))})]

    def queue_items(self, name: str) -> list[bytes]:
        """The items stored in queue ``name``, oldest first (for a journal snapshot)."""
        queue = self._queues.get(name)
        return list(queue.items) if queue else []

    def queue_names(self) -> list[str]:
        """Names of the queues that store items or have waiters."""
        return list(self._queues)

    def restore_queue(self, name: str, items: list[bytes]) -> None:
        """Load a queue's items back from the journal, at start-up (before any wait)."""
        queue = self._queues.setdefault(name, _Queue())
        if queue.getters or queue.putters:
            raise ValueError(f"cannot restore queue {_show(name)} while requests wait on it")
        queue.items = collections.deque(items)
        self._tidy("put", name)

    def drain_changes(self) -> list[Change]:
        """Changes since the last drain, in order, for the server to journal."""
        changes, self._changes = self._changes, []
        return changes

    def _admit_putters(self, queue: _Queue, name: str) -> list[Reply]:
        replies = []
        while queue.putters and queue.has_room():
            wait = self._pop_first(queue.putters)
            self._store(queue, name, wait.item)
            replies.append(Reply(wait.peer, wait.request, {"put": True}))
        return replies

    def _store(self, queue: _Queue, name: str, item: bytes) -> None:
        queue.items.append(item)
        if self._journal:
            self._changes.append(Change(PUT, name, item))

    def _take(self, queue: _Queue, name: str) -> bytes:
        item = queue.items.popleft()
        if self._journal:
            self._changes.append(Change(TAKE, name, item))
        return item

    # --- deadlines and peers ------------------------------------------------------------

    def expire(self, now: float) -> list[Reply]:
        """Answer every wait whose deadline is ``now`` or earlier; call on each timer tick."""
        replies = []
        for wait in self._deadlines.due(now):
            self._finish(wait)
            self._tidy(wait.kind, wait.name)
            replies.append(Reply(wait.peer, wait.request, dict(_TIMED_OUT[wait.kind])))
        return replies

    def next_deadline(self) -> float | None:
        """The earliest deadline of a waiting request; None when no wait has one."""
        return self._deadlines.earliest()

    def peer_gone(self, peer: bytes) -> list[Reply]:
        """Drop the peer's waits, then release all it holds; return the replies to others.

        Dropping the waits first means no slot freed here can be granted back to the peer.
        """
        for wait in list(self._waits.get(peer, {}).values()):
            self._finish(wait)
            self._tidy(wait.kind, wait.name)
        return [reply for name in list(self._held.get(peer, ())) for reply in self._release_all(peer, name)]

    def stats(self) -> dict[str, int]:
        """Sizes of the state: for status pages, and to check memory stays bounded."""
        return {"semaphores": len(self._semaphores), "events": len(self._events), "queues": len(self._queues),
                "tokens": len(self._tokens), "waits": sum(map(len, self._waits.values())),
                "timers": len(self._deadlines.heap), "holding_peers": len(self._held)}

    # --- waits --------------------------------------------------------------------------

    def _wait(self, line: dict[int, Wait], kind: str, peer: bytes, request: int, name: str, now: float,
              timeout: float | None, blocking: bool = True, owner: str = "", item: bytes = b"") -> list[Reply]:
        """Queue the request in ``line``; one that may not wait gets its timeout reply now."""
        if not blocking or timeout == 0:
            return [Reply(peer, request, dict(_TIMED_OUT[kind]))]
        deadline = None if timeout is None or timeout > _FOREVER else now + timeout
        wait = Wait(next(self._seq), peer, request, kind, name, deadline, line, owner, item)
        line[wait.seq] = wait
        self._waits.setdefault(peer, {})[wait.seq] = wait
        if deadline is not None:
            self._deadlines.add(wait, deadline)
        return []

    def _pop_first(self, line: dict[int, Wait]) -> Wait:
        wait = next(iter(line.values()))
        self._finish(wait)
        return wait

    def _finish(self, wait: Wait) -> None:
        """The wait is answered or dropped: take it out of its line and the indexes."""
        wait.live = False
        del wait.line[wait.seq]
        waits = self._waits[wait.peer]
        del waits[wait.seq]
        if not waits:
            del self._waits[wait.peer]
        if wait.deadline is not None:
            self._deadlines.discard()

    def _tidy(self, kind: str, name: str) -> None:
        """Forget a name with nothing held, waiting or stored, so memory stays bounded."""
        table = self._tables[kind]
        state = table.get(name)
        if state is not None and state.idle():
            del table[name]


# --- helpers ----------------------------------------------------------------------------


def _at_least(value: object, minimum: int, kinds: tuple[type, ...] = (int,)) -> bool:
    return isinstance(value, kinds) and not isinstance(value, bool) and value >= minimum  # type: ignore[operator]


# What each argument must be: (test, what to tell the user). NaN fails ">= 0" too.
_RULES: dict[str, tuple[Any, str]] = {
    "name": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "owner": (lambda v: isinstance(v, str), "a string naming the Lock/Semaphore object"),
    "item": (lambda v: isinstance(v, bytes), "packed bytes"),
    "limit": (lambda v: _at_least(v, 1), "an integer >= 1"),
    "maxsize": (lambda v: _at_least(v, 0), "an integer >= 0 (0: unbounded)"),
    "timeout": (lambda v: v is None or _at_least(v, 0, (int, float)), "None (no deadline) or seconds >= 0"),
}


def _problem(**arguments: object) -> str | None:
    """What is wrong with the first argument that breaks its rule, or None."""
    for key, value in arguments.items():
        test, wanted = _RULES[key]
        if not test(value):
            return f"{key} must be {wanted}, got {_show(value)}"
    return None


def _error(peer: bytes, request: int, text: str, kind: str = "ValueError") -> Reply:
    return Reply(peer, request, {"error": text, "kind": kind})


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


def _decrease(counter: collections.Counter[Any], key: Any, amount: int) -> None:
    counter[key] -= amount
    if counter[key] <= 0:
        del counter[key]
