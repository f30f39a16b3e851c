"""Bad arguments to every lock, semaphore, event and queue request (runner/broker/sync.py, sans-IO).

Each request a client library or a hand-written peer can send gets a ValueError naming the
argument and what it must be, and changes nothing: no name created, nothing held, no wait
queued, no journal change. test_sync_state.py covers acquire and put in detail; this covers
the rest, against a state that already holds, stores and waits, so "nothing changed" means
something.
"""

from __future__ import annotations

import pytest

from runner.broker.sync import Reply, SyncState

A, B = b"peer-a", b"peer-b"

# Each request, called with one bad argument: (what is called, the argument named in the error).
BAD_REQUESTS = {
    "release with no name": (lambda s: s.release(A, 9, "", "o"), "name"),
    "release with a bytes owner": (lambda s: s.release(A, 9, "L", b"o"), "owner"),
    "locked with a number for a name": (lambda s: s.locked(A, 9, 5), "name"),
    "event_set with no name": (lambda s: s.event_set(A, 9, ""), "name"),
    "event_clear with a list for a name": (lambda s: s.event_clear(A, 9, ["E"]), "name"),
    "event_is_set with None for a name": (lambda s: s.event_is_set(A, 9, None), "name"),
    "event_wait with a negative timeout": (lambda s: s.event_wait(A, 9, "E", 0.0, -1), "timeout"),
    "event_wait with no name": (lambda s: s.event_wait(A, 9, "", 0.0, 5.0), "name"),
    "queue_get with a text timeout": (lambda s: s.queue_get(A, 9, "Q", 0.0, "1"), "timeout"),
    "queue_get with bytes for a name": (lambda s: s.queue_get(A, 9, b"Q", 0.0, None), "name"),
    "queue_size with no name": (lambda s: s.queue_size(A, 9, ""), "name"),
}


def busy_state() -> tuple[SyncState, list[Reply]]:
    """A lock held by A with B waiting, an event B waits on, a queue storing one item."""
    state = SyncState()
    replies = state.acquire(A, 1, "L", 1, "o", 0.0) + state.acquire(B, 2, "L", 1, "o", 0.0, 30.0)
    replies += state.event_wait(B, 3, "E", 0.0, 30.0) + state.queue_put(A, 4, "Q", b"item", 0, 0.0)
    state.drain_changes()
    return state, replies


@pytest.mark.parametrize("request_name", list(BAD_REQUESTS))
def test_a_bad_argument_gets_a_value_error_naming_it_and_changes_nothing(request_name):
    call, argument = BAD_REQUESTS[request_name]
    state, _ = busy_state()
    before = (state.stats(), state.queue_items("Q"), state.next_deadline())
    [reply] = call(state)
    assert reply.peer == A and reply.request == 9
    assert reply.body["kind"] == "ValueError" and reply.body["error"].startswith(f"{argument} must be"), reply.body
    assert "got" in reply.body["error"], "the error shows the value it refused"
    assert (state.stats(), state.queue_items("Q"), state.next_deadline()) == before
    assert state.drain_changes() == [], "a refused request journals nothing"
    # The state still works as before: A's release goes to the waiting B; E and Q are untouched.
    assert state.release(A, 10, "L", "o") == [Reply(A, 10, {"released": True}),
                                              Reply(B, 2, {"acquired": True, "token": 2})]
    assert state.event_set(A, 11, "E") == [Reply(A, 11, {"set": True}), Reply(B, 3, {"set": True})]
    assert state.queue_get(A, 12, "Q", 1.0) == [Reply(A, 12, {"item": b"item"})]
