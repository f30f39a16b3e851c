"""Sync requests as they arrive on the wire, turned into calls on SyncState.

A request body carries ``op``, ``name`` and the op's own fields; anything missing
takes the same default as the client API, and SyncState checks every value, so a
bad request gets an error reply, never an exception.
"""

from __future__ import annotations

from typing import Any, Callable

from runner.broker.sync import Reply, SyncState

Call = Callable[[SyncState, bytes, int, dict, float], list[Reply]]

OPS: dict[str, Call] = {
    "acquire": lambda state, peer, request, body, now: state.acquire(
        peer, request, body["name"], body.get("limit", 1), body.get("owner", ""), now,
        body.get("timeout"), body.get("blocking", True)),
    "release": lambda state, peer, request, body, now: state.release(peer, request, body["name"], body.get("owner", "")),
    "locked": lambda state, peer, request, body, now: state.locked(peer, request, body["name"]),
    "event_set": lambda state, peer, request, body, now: state.event_set(peer, request, body["name"]),
    "event_clear": lambda state, peer, request, body, now: state.event_clear(peer, request, body["name"]),
    "event_is_set": lambda state, peer, request, body, now: state.event_is_set(peer, request, body["name"]),
    "event_wait": lambda state, peer, request, body, now: state.event_wait(
        peer, request, body["name"], now, body.get("timeout")),
    "queue_put": lambda state, peer, request, body, now: state.queue_put(
        peer, request, body["name"], body.get("item"), body.get("maxsize", 0), now, body.get("timeout"),
        body.get("blocking", True)),
    "queue_get": lambda state, peer, request, body, now: state.queue_get(
        peer, request, body["name"], now, body.get("timeout"), body.get("blocking", True)),
    "queue_size": lambda state, peer, request, body, now: state.queue_size(peer, request, body["name"]),
}


def handle(state: SyncState, peer: bytes, request: int, body: dict[str, Any], now: float) -> list[Reply]:
    """Run one sync request (already checked by the protocol for op and name)."""
    return OPS[body["op"]](state, peer, request, body, now)
