"""The broker's lock/semaphore/event/queue state, driven directly with a fake clock."""

from __future__ import annotations

import collections
import itertools
import math
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runner.broker.sync import PUT, TAKE, Change, Reply, SyncState

A, B, C = b"peer-a", b"peer-b", b"peer-c"
FULL = {"error": "full", "kind": "Full"}
EMPTY = {"error": "empty", "kind": "Empty"}


@pytest.fixture
def state() -> SyncState:
    return SyncState()


def grant(peer: bytes, request: int, token: int) -> Reply:
    return Reply(peer, request, {"acquired": True, "token": token})


def lock(state: SyncState, peer: bytes, request: int, owner: str = "o", *, now: float = 0.0,
         timeout: float | None = None, blocking: bool = True, name: str = "L", limit: int = 1) -> list[Reply]:
    return state.acquire(peer, request, name, limit, owner, now, timeout, blocking)


def kinds(replies: list[Reply]) -> list[str | None]:
    return [reply.body.get("kind") for reply in replies]


# --- locks and semaphores ------------------------------------------------------------------


def test_a_free_lock_is_granted_at_once_with_token_one(state):
    assert lock(state, A, 1) == [grant(A, 1, 1)]
    assert state.locked(B, 2, "L") == [Reply(B, 2, {"locked": True, "holders": 1})]


def test_a_held_lock_makes_the_next_acquire_wait_until_release(state):
    lock(state, A, 1)
    assert lock(state, B, 7) == []
    assert state.release(A, 2, "L", "o") == [Reply(A, 2, {"released": True}), grant(B, 7, 2)]


def test_waiters_are_granted_first_come_first_served(state):
    lock(state, A, 1)
    for peer, request in [(C, 10), (B, 11), (A, 12)]:
        assert lock(state, peer, request, owner="other") == []
    granted = []
    for release_id, (peer, owner) in enumerate([(A, "o"), (C, "other"), (B, "other")], start=100):
        replies = state.release(peer, release_id, "L", owner)
        granted += [(r.peer, r.request) for r in replies if "acquired" in r.body]
    assert granted == [(C, 10), (B, 11), (A, 12)]


def test_a_semaphore_grants_up_to_its_limit_and_no_more(state):
    replies = [lock(state, peer, i, limit=3, name="S") for i, peer in enumerate([A, B, C, A])]
    assert replies[:3] == [[grant(A, 0, 1)], [grant(B, 1, 2)], [grant(C, 2, 3)]] and replies[3] == []
    assert state.locked(A, 9, "S")[0].body == {"locked": True, "holders": 3}
    assert state.release(B, 5, "S", "o") == [Reply(B, 5, {"released": True}), grant(A, 3, 4)]


def test_two_objects_in_one_client_are_two_holders(state):
    lock(state, A, 1, owner="first")
    assert lock(state, A, 2, owner="second", blocking=False) == [Reply(A, 2, {"acquired": False})]


@pytest.mark.parametrize("options", [{"blocking": False}, {"timeout": 0}, {"timeout": 0.0, "blocking": True}])
def test_acquire_without_waiting_fails_at_once_when_held(state, options):
    lock(state, A, 1)
    assert lock(state, B, 2, **options) == [Reply(B, 2, {"acquired": False})]
    assert state.stats()["waits"] == 0


def test_a_timed_acquire_fails_at_its_deadline_and_not_before(state):
    lock(state, A, 1)
    assert lock(state, B, 2, now=10.0, timeout=2.5) == []
    assert state.next_deadline() == 12.5
    assert state.expire(12.4) == []
    assert state.expire(12.5) == [Reply(B, 2, {"acquired": False})]
    assert state.next_deadline() is None
    assert state.release(A, 3, "L", "o") == [Reply(A, 3, {"released": True})]


@pytest.mark.parametrize("timeout", [math.inf, 1e308, 10**30])
def test_an_endless_timeout_waits_forever(state, timeout):
    lock(state, A, 1)
    assert lock(state, B, 2, now=5.0, timeout=timeout) == []
    assert state.next_deadline() is None and state.expire(1e300) == []


def test_tokens_keep_increasing_after_the_name_is_forgotten(state):
    tokens = []
    for request in range(0, 6, 2):
        tokens.append(lock(state, A, request)[0].body["token"])
        state.release(A, request + 1, "L", "o")
        assert state.stats()["semaphores"] == 0
    assert tokens == [1, 2, 3]
    assert lock(state, A, 9, name="other")[0].body["token"] == 1


def test_releasing_what_is_not_held_is_a_runtime_error(state):
    lock(state, A, 1, owner="mine")
    for peer, owner, name in [(A, "not-mine", "L"), (B, "mine", "L"), (A, "mine", "unknown")]:
        [reply] = state.release(peer, 5, name, owner)
        assert reply.body["kind"] == "RuntimeError" and "not hold" in reply.body["error"]
    assert state.release(A, 6, "L", "mine") == [Reply(A, 6, {"released": True})]
    assert kinds(state.release(A, 7, "L", "mine")) == ["RuntimeError"]


def test_a_name_in_use_with_another_limit_is_refused_until_it_is_idle(state):
    lock(state, A, 1, name="S", limit=2)
    [reply] = lock(state, B, 2, name="S", limit=1)
    assert reply.body["kind"] == "ValueError" and "limit 2, not 1" in reply.body["error"]
    state.release(A, 3, "S", "o")
    assert lock(state, B, 4, name="S", limit=1) == [grant(B, 4, 2)]


def test_locked_on_an_unknown_name(state):
    assert state.locked(A, 1, "nothing") == [Reply(A, 1, {"locked": False, "holders": 0})]


BAD_ACQUIRES = [
    {"limit": 0}, {"limit": -1}, {"limit": True}, {"limit": 1.5}, {"limit": "2"}, {"timeout": -1},
    {"timeout": math.nan}, {"timeout": "1"}, {"timeout": True}, {"name": ""}, {"name": 5}, {"name": ["L"]},
    {"owner": None}, {"owner": b"o"},
]


@pytest.mark.parametrize("bad", BAD_ACQUIRES)
def test_bad_acquire_arguments_get_a_value_error_that_names_them(state, bad):
    arguments = {"name": "L", "limit": 1, "owner": "o", "timeout": None} | bad
    [reply] = state.acquire(A, 1, arguments["name"], arguments["limit"], arguments["owner"], 0.0,
                            arguments["timeout"])
    assert reply.body["kind"] == "ValueError"
    assert reply.body["error"].startswith(f"{next(iter(bad))} must be")
    assert state.stats() == SyncState().stats()


@pytest.mark.parametrize("bad", [{"maxsize": -1}, {"maxsize": None}, {"item": "text"}, {"timeout": -0.5}])
def test_bad_put_arguments_get_a_value_error(state, bad):
    arguments = {"item": b"x", "maxsize": 0, "timeout": None} | bad
    [reply] = state.queue_put(A, 1, "Q", arguments["item"], arguments["maxsize"], 0.0, arguments["timeout"])
    assert reply.body["kind"] == "ValueError" and state.queue_items("Q") == []


def test_a_huge_bad_value_is_shortened_in_the_message(state):
    [reply] = lock(state, A, 1, name="x" * 10_000, limit=0)
    assert len(reply.body["error"]) < 200


# --- events --------------------------------------------------------------------------------


def test_setting_an_event_wakes_every_waiter_in_order(state):
    assert state.event_wait(A, 1, "E", 0.0, None) == []
    assert state.event_wait(B, 2, "E", 0.0, 5.0) == []
    assert state.event_is_set(C, 3, "E") == [Reply(C, 3, {"set": False})]
    assert state.event_set(C, 4, "E") == [Reply(C, 4, {"set": True}), Reply(A, 1, {"set": True}),
                                          Reply(B, 2, {"set": True})]
    assert state.event_wait(A, 5, "E", 1.0, 0) == [Reply(A, 5, {"set": True})]
    assert state.expire(100.0) == [] and state.stats()["waits"] == 0


def test_a_cleared_event_makes_waits_wait_and_time_out(state):
    state.event_set(A, 1, "E")
    assert state.event_clear(A, 2, "E") == [Reply(A, 2, {"set": False})]
    assert state.event_wait(B, 3, "E", 0.0, 0) == [Reply(B, 3, {"set": False})]
    assert state.event_wait(B, 4, "E", 0.0, 1.0) == []
    assert state.expire(1.0) == [Reply(B, 4, {"set": False})]
    assert state.stats()["events"] == 0


# --- queues --------------------------------------------------------------------------------


def put(state: SyncState, peer: bytes, request: int, item: bytes, *, maxsize: int = 0, now: float = 0.0,
        timeout: float | None = None, blocking: bool = True) -> list[Reply]:
    return state.queue_put(peer, request, "Q", item, maxsize, now, timeout, blocking)


def get(state: SyncState, peer: bytes, request: int, *, now: float = 0.0, timeout: float | None = None,
        blocking: bool = True) -> list[Reply]:
    return state.queue_get(peer, request, "Q", now, timeout, blocking)


def test_items_come_out_in_the_order_they_went_in(state):
    for i, item in enumerate([b"1", b"2", b"3"]):
        assert put(state, A, i, item) == [Reply(A, i, {"put": True})]
    assert state.queue_size(B, 9, "Q") == [Reply(B, 9, {"size": 3})]
    assert [get(state, B, i)[0].body["item"] for i in range(3)] == [b"1", b"2", b"3"]
    assert state.drain_changes() == [Change(PUT, "Q", b"1"), Change(PUT, "Q", b"2"), Change(PUT, "Q", b"3"),
                                     Change(TAKE, "Q", b"1"), Change(TAKE, "Q", b"2"), Change(TAKE, "Q", b"3")]
    assert state.drain_changes() == [] and state.stats()["queues"] == 0


def test_an_empty_queue_fails_at_once_without_waiting(state):
    assert get(state, A, 1, blocking=False) == [Reply(A, 1, EMPTY)]
    assert get(state, A, 2, timeout=0) == [Reply(A, 2, EMPTY)]
    assert state.stats()["queues"] == 0


def test_a_put_goes_straight_to_the_first_waiting_getter(state):
    assert get(state, A, 1) == [] and get(state, B, 2, timeout=3.0) == []
    assert put(state, C, 3, b"x") == [Reply(C, 3, {"put": True}), Reply(A, 1, {"item": b"x"})]
    assert put(state, C, 4, b"y") == [Reply(C, 4, {"put": True}), Reply(B, 2, {"item": b"y"})]
    assert state.drain_changes() == [] and state.stats()["queues"] == 0


def test_a_waiting_get_gets_empty_at_its_deadline(state):
    assert get(state, A, 1, now=5.0, timeout=1.0) == []
    assert state.expire(6.0) == [Reply(A, 1, EMPTY)]
    assert put(state, B, 2, b"x") == [Reply(B, 2, {"put": True})]
    assert state.queue_items("Q") == [b"x"]


def test_a_full_queue_refuses_a_put_that_may_not_wait(state):
    put(state, A, 1, b"1", maxsize=1)
    assert put(state, A, 2, b"2", maxsize=1, blocking=False) == [Reply(A, 2, FULL)]
    assert put(state, A, 3, b"3", maxsize=1, timeout=0) == [Reply(A, 3, FULL)]
    assert state.queue_items("Q") == [b"1"]


def test_a_full_queue_lets_waiting_puts_in_first_come_first_served(state):
    put(state, A, 1, b"1", maxsize=1)
    assert put(state, B, 2, b"2", maxsize=1) == [] and put(state, C, 3, b"3", maxsize=1) == []
    state.drain_changes()
    assert get(state, A, 4) == [Reply(A, 4, {"item": b"1"}), Reply(B, 2, {"put": True})]
    assert state.drain_changes() == [Change(TAKE, "Q", b"1"), Change(PUT, "Q", b"2")]
    assert get(state, A, 5) == [Reply(A, 5, {"item": b"2"}), Reply(C, 3, {"put": True})]
    assert state.queue_items("Q") == [b"3"]


def test_a_waiting_put_that_times_out_is_full_and_its_item_is_never_stored(state):
    put(state, A, 1, b"1", maxsize=1)
    assert put(state, B, 2, b"late", maxsize=1, now=0.0, timeout=1.0) == []
    assert state.expire(1.0) == [Reply(B, 2, FULL)]
    assert get(state, A, 3)[0].body == {"item": b"1"}
    assert state.queue_items("Q") == [] and get(state, A, 4, blocking=False)[0].body == EMPTY


def test_a_queue_in_use_refuses_another_maxsize(state):
    put(state, A, 1, b"1", maxsize=2)
    [reply] = put(state, A, 2, b"2", maxsize=3)
    assert reply.body["kind"] == "ValueError" and "maxsize 2, not 3" in reply.body["error"]
    get(state, A, 3)
    assert put(state, A, 4, b"2", maxsize=3) == [Reply(A, 4, {"put": True})]


def test_restored_items_come_out_first_and_are_not_journalled_again(state):
    state.restore_queue("Q", [b"old-1", b"old-2"])
    put(state, A, 1, b"new", maxsize=3)
    assert [get(state, B, i)[0].body["item"] for i in range(3)] == [b"old-1", b"old-2", b"new"]
    assert [change.op for change in state.drain_changes()] == [PUT, TAKE, TAKE, TAKE]
    state.restore_queue("R", [])
    assert state.queue_names() == []


def test_restoring_a_queue_with_waiters_is_a_programming_error(state):
    get(state, A, 1)
    with pytest.raises(ValueError, match="wait"):
        state.restore_queue("Q", [b"x"])


def test_without_a_journal_no_changes_pile_up():
    state = SyncState(journal=False)
    put(state, A, 1, b"x")
    get(state, A, 2)
    assert state.drain_changes() == []


# --- peers that go away --------------------------------------------------------------------


def test_a_dead_holder_releases_to_the_next_live_waiter(state):
    lock(state, A, 1)
    lock(state, A, 2, owner="another")  # the dead peer's own wait is dropped, never granted
    lock(state, B, 3)
    assert state.peer_gone(A) == [grant(B, 3, 2)]
    assert state.locked(C, 4, "L")[0].body == {"locked": True, "holders": 1}


def test_a_dead_peer_holding_several_slots_frees_them_all(state):
    for request in range(3):
        lock(state, A, request, name="S", limit=3, owner=f"o{request % 2}")
    lock(state, B, 10, name="S", limit=3)
    lock(state, C, 11, name="S", limit=3)
    assert state.peer_gone(A) == [grant(B, 10, 4), grant(C, 11, 5)]


def test_a_dead_peer_gets_no_replies_and_its_waits_are_forgotten(state):
    lock(state, B, 1)
    assert lock(state, A, 2, timeout=10.0) == []
    assert state.queue_get(A, 3, "other queue", 0.0, 10.0) == []
    assert state.event_wait(A, 4, "E", 0.0, None) == []
    put(state, C, 5, b"keep", maxsize=1)
    assert put(state, A, 6, b"lost", maxsize=1) == []
    assert state.peer_gone(A) == []
    assert state.release(B, 7, "L", "o") == [Reply(B, 7, {"released": True})]
    assert state.queue_put(B, 8, "other queue", b"y", 0, 0.0) == [Reply(B, 8, {"put": True})]
    assert state.event_set(B, 9, "E") == [Reply(B, 9, {"set": True})]
    assert get(state, B, 10) == [Reply(B, 10, {"item": b"keep"})]
    assert state.expire(100.0) == [] and state.next_deadline() is None
    assert state.stats()["waits"] == 0 and state.queue_items("Q") == []


def test_an_unknown_peer_going_away_is_harmless(state):
    assert state.peer_gone(b"stranger") == []


# --- memory --------------------------------------------------------------------------------


def test_answered_waits_do_not_pile_up_in_the_deadline_heap(state):
    lock(state, A, 0)
    for request in range(1, 2000, 2):
        assert lock(state, B, request, owner=f"w{request}", timeout=1e9) == []
        state.release(A if request == 1 else B, request + 1, "L", "o" if request == 1 else f"w{request - 2}")
    assert state.stats()["timers"] < 200


def test_reply_bodies_are_fresh_dicts(state):
    get(state, A, 1, blocking=False)[0].body["mutated"] = True
    assert get(state, A, 2, blocking=False)[0].body == EMPTY


# --- random runs ---------------------------------------------------------------------------

LIMITS = {"L": 1, "S": 2}
MAXSIZE = 2
TIMEOUTS = st.sampled_from([None, 0, 0.5, 1.0, 3.0, "nonblocking"])  # None: wait forever


@dataclass
class Pending:
    """A request sent and not yet answered, as the test remembers it."""

    kind: str
    name: str
    seq: int
    deadline: float | None
    forever: bool  # may wait with no deadline
    owner: str = ""
    item: bytes = b""


class SyncMachine(RuleBasedStateMachine):
    """Random requests, time and peer deaths against a model of what must hold."""

    def __init__(self) -> None:
        super().__init__()
        self.state = SyncState()
        self.now = 0.0
        self.ids = itertools.count()
        self.peers = [b"p0", b"p1", b"p2"]
        self.dead: set[bytes] = set()
        self.pending: dict[tuple[bytes, int], Pending] = {}
        self.holders = {name: collections.Counter() for name in LIMITS}
        self.last_token = dict.fromkeys(LIMITS, 0)
        self.event_set = False
        self.queue: collections.deque[bytes] = collections.deque()  # replayed from the changes
        self.put_items: set[bytes] = set()
        self.taken: set[bytes] = set()
        self.refused: set[bytes] = set()  # a Full reply, or the putter died while waiting

    # --- sending requests ------------------------------------------------------------

    def send(self, call, peer: bytes, kind: str, name: str, timeout="now", **extra) -> None:
        """Send a request; ``timeout`` "now", "nonblocking" and 0 must be answered at once."""
        request = next(self.ids)
        timed = isinstance(timeout, float) and timeout > 0
        deadline = self.now + timeout if timed else None
        self.pending[(peer, request)] = Pending(kind, name, request, deadline, timeout is None, **extra)
        self.handle(call(request))
        if not timed and timeout is not None:
            assert (peer, request) not in self.pending, "a request that may not wait was left waiting"

    def handle(self, replies: list[Reply]) -> None:
        for reply in replies:
            assert reply.peer not in self.dead, f"a reply to a dead peer: {reply}"
            pending = self.pending.pop((reply.peer, reply.request))  # exactly one reply each
            getattr(self, f"on_{pending.kind}")(reply.peer, pending, reply.body)
        self.replay_journal()

    def replay_journal(self) -> None:
        for change in self.state.drain_changes():
            if change.op == PUT:
                assert change.item in self.put_items and change.item not in self.queue
                self.queue.append(change.item)
            else:
                assert self.queue.popleft() == change.item, "taken out of order"

    def was_first(self, pending: Pending) -> None:
        earlier = [p for p in self.pending.values()
                   if (p.kind, p.name) == (pending.kind, pending.name) and p.seq < pending.seq]
        assert not earlier, f"{pending} served before earlier waiters {earlier}"

    def refused_in_time(self, pending: Pending) -> None:
        """A negative answer comes at once (may not wait) or at the deadline, never early."""
        assert not pending.forever, f"a wait without deadline was refused: {pending}"
        assert pending.deadline is None or pending.deadline <= self.now, f"refused early: {pending}"

    def on_acquire(self, peer: bytes, pending: Pending, body: dict) -> None:
        if body.get("acquired"):
            self.was_first(pending)
            assert body["token"] > self.last_token[pending.name]
            self.last_token[pending.name] = body["token"]
            self.holders[pending.name][(peer, pending.owner)] += 1
        else:
            assert body == {"acquired": False}
            self.refused_in_time(pending)

    def on_release(self, peer: bytes, pending: Pending, body: dict) -> None:
        key = (peer, pending.owner)
        if body == {"released": True}:
            assert self.holders[pending.name][key] > 0
            self.holders[pending.name][key] -= 1
            self.holders[pending.name] += collections.Counter()  # drop zero counts
        else:
            assert body["kind"] == "RuntimeError" and not self.holders[pending.name][key]

    def on_event(self, peer: bytes, pending: Pending, body: dict) -> None:
        self.event_set = body["set"]

    def on_event_wait(self, peer: bytes, pending: Pending, body: dict) -> None:
        assert body["set"] == self.event_set
        if not body["set"]:
            self.refused_in_time(pending)

    def on_put(self, peer: bytes, pending: Pending, body: dict) -> None:
        if body == {"put": True}:
            self.was_first(pending)
        else:
            assert body == FULL
            self.refused_in_time(pending)
            self.refused.add(pending.item)

    def on_get(self, peer: bytes, pending: Pending, body: dict) -> None:
        if "item" in body:
            self.was_first(pending)
            assert body["item"] in self.put_items and body["item"] not in self.taken, "delivered twice"
            self.taken.add(body["item"])
        else:
            assert body == EMPTY
            self.refused_in_time(pending)

    def on_size(self, peer: bytes, pending: Pending, body: dict) -> None:
        assert body == {"size": len(self.state.queue_items("Q"))}

    # --- rules -----------------------------------------------------------------------

    @rule(who=st.integers(0, 2), owner=st.sampled_from(["x", "y"]), name=st.sampled_from(sorted(LIMITS)),
          timeout=TIMEOUTS)
    def acquire(self, who, owner, name, timeout):
        peer, blocking = self.peers[who], timeout != "nonblocking"
        wait = timeout if blocking else None
        self.send(lambda r: self.state.acquire(peer, r, name, LIMITS[name], owner, self.now, wait, blocking),
                  peer, "acquire", name, timeout, owner=owner)

    @rule(who=st.integers(0, 2), owner=st.sampled_from(["x", "y"]), name=st.sampled_from(sorted(LIMITS)))
    def release(self, who, owner, name):
        peer = self.peers[who]
        self.send(lambda r: self.state.release(peer, r, name, owner), peer, "release", name, owner=owner)

    @precondition(lambda self: any(self.holders.values()))
    @rule(data=st.data())
    def release_held(self, data):
        name = data.draw(st.sampled_from([name for name, held in self.holders.items() if held]))
        peer, owner = data.draw(st.sampled_from(sorted(self.holders[name])))
        self.send(lambda r: self.state.release(peer, r, name, owner), peer, "release", name, owner=owner)

    @rule(who=st.integers(0, 2), timeout=TIMEOUTS)
    def queue_put(self, who, timeout):
        peer, blocking, item = self.peers[who], timeout != "nonblocking", f"item-{next(self.ids)}".encode()
        wait = timeout if blocking else None
        self.put_items.add(item)
        self.send(lambda r: self.state.queue_put(peer, r, "Q", item, MAXSIZE, self.now, wait, blocking),
                  peer, "put", "Q", timeout, item=item)

    @rule(who=st.integers(0, 2), timeout=TIMEOUTS)
    def queue_get(self, who, timeout):
        peer, blocking = self.peers[who], timeout != "nonblocking"
        wait = timeout if blocking else None
        self.send(lambda r: self.state.queue_get(peer, r, "Q", self.now, wait, blocking),
                  peer, "get", "Q", timeout)

    @rule(who=st.integers(0, 2))
    def queue_size(self, who):
        peer = self.peers[who]
        self.send(lambda r: self.state.queue_size(peer, r, "Q"), peer, "size", "Q")

    @rule(who=st.integers(0, 2), action=st.sampled_from(["event_set", "event_clear", "event_is_set"]))
    def event(self, who, action):
        peer = self.peers[who]
        self.send(lambda r: getattr(self.state, action)(peer, r, "E"), peer, "event", "E")

    @rule(who=st.integers(0, 2), timeout=st.sampled_from([None, 0, 0.5, 2.0]))
    def event_wait(self, who, timeout):
        peer = self.peers[who]
        self.send(lambda r: self.state.event_wait(peer, r, "E", self.now, timeout),
                  peer, "event_wait", "E", timeout)

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 2.5]))
    def advance(self, seconds):
        self.now += seconds
        self.handle(self.state.expire(self.now))
        assert not [p for p in self.pending.values() if p.deadline is not None and p.deadline <= self.now]

    @rule(who=st.integers(0, 2))
    def peer_dies(self, who):
        self.kill(self.peers[who])
        self.peers[who] = f"reborn-{next(self.ids)}".encode()

    def kill(self, peer: bytes) -> None:
        self.dead.add(peer)
        for key in [key for key in self.pending if key[0] == peer]:
            pending = self.pending.pop(key)
            if pending.kind == "put":
                self.refused.add(pending.item)  # the put never succeeded
        for held in self.holders.values():
            for key in [key for key in held if key[0] == peer]:
                del held[key]
        self.handle(self.state.peer_gone(peer))

    # --- invariants ------------------------------------------------------------------

    @invariant()
    def journal_replays_to_the_queue(self):
        assert list(self.queue) == self.state.queue_items("Q")

    @invariant()
    def no_item_is_lost_or_doubled(self):
        stored = set(self.queue)
        waiting = {p.item for p in self.pending.values() if p.kind == "put"}
        parts = [self.taken, stored, waiting, self.refused]
        assert sum(map(len, parts)) == len(self.put_items) == len(set().union(*parts))

    @invariant()
    def holders_stay_within_limits_and_match(self):
        for name, limit in LIMITS.items():
            count = sum(self.holders[name].values())
            assert count <= limit
            [reply] = self.state.locked(b"observer", -1, name)
            assert reply.body == {"locked": count >= limit, "holders": count}

    @invariant()
    def deadlines_and_waits_match(self):
        deadlines = [p.deadline for p in self.pending.values() if p.deadline is not None]
        assert self.state.next_deadline() == (min(deadlines) if deadlines else None)
        assert self.state.stats()["waits"] == len(self.pending)
        assert not (self.event_set and any(p.kind == "event_wait" for p in self.pending.values()))

    @invariant()
    def nothing_waits_that_could_be_served(self):
        waiting = collections.Counter((p.kind, p.name) for p in self.pending.values())
        for name, limit in LIMITS.items():
            assert not waiting["acquire", name] or sum(self.holders[name].values()) == limit
        assert not waiting["get", "Q"] or not self.queue
        assert not waiting["put", "Q"] or len(self.queue) == MAXSIZE

    @invariant()
    def idle_names_are_forgotten(self):
        busy = {p.name for p in self.pending.values()} | {name for name, held in self.holders.items() if held}
        stats = self.state.stats()
        assert stats["semaphores"] == len(busy & set(LIMITS))
        assert stats["queues"] == int("Q" in busy or bool(self.queue))
        assert stats["events"] == int("E" in busy or self.event_set)

    def teardown(self):
        self.now += 1e6
        self.handle(self.state.expire(self.now))
        assert all(p.deadline is None for p in self.pending.values())
        for peer in self.peers:
            self.kill(peer)
        assert not self.pending, f"requests never answered: {self.pending}"
        assert self.state.stats()["waits"] == self.state.stats()["holding_peers"] == 0


TestSyncMachine = SyncMachine.TestCase
TestSyncMachine.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
