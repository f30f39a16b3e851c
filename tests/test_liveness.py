"""Heartbeat deadlines with the clock passed in: no sleeps, exact times."""

from __future__ import annotations

import math

import pytest

from runner.broker.liveness import Liveness


@pytest.fixture
def liveness() -> Liveness:
    return Liveness(interval=1.0, liveness=3)  # silent for more than 3 s means dead


def test_grace_is_interval_times_liveness():
    assert Liveness(0.25, 4).grace == 1.0
    assert Liveness(2, 1).grace == 2


def test_a_peer_is_alive_until_its_grace_has_passed(liveness):
    liveness.seen(b"a", now=100.0)
    assert b"a" in liveness
    assert liveness.expired(now=102.99) == []
    assert b"a" in liveness
    assert liveness.expired(now=103.01) == [b"a"]
    assert b"a" not in liveness


def test_every_message_pushes_the_deadline_back(liveness):
    liveness.seen(b"a", now=0.0)
    liveness.seen(b"a", now=2.5)
    assert liveness.expired(now=5.0) == []
    assert liveness.expired(now=5.6) == [b"a"]


def test_only_silent_peers_expire(liveness):
    liveness.seen(b"quiet", now=0.0)
    liveness.seen(b"chatty", now=0.0)
    liveness.seen(b"chatty", now=2.0)
    liveness.seen(b"late", now=1.0)
    assert liveness.expired(now=3.5) == [b"quiet"]
    assert sorted(liveness.expired(now=10.0)) == [b"chatty", b"late"]


def test_each_dead_peer_is_returned_once(liveness):
    liveness.seen(b"a", now=0.0)
    liveness.seen(b"b", now=0.0)
    assert sorted(liveness.expired(now=4.0)) == [b"a", b"b"]
    assert liveness.expired(now=4.0) == []
    assert liveness.expired(now=1000.0) == []


def test_a_dead_peer_that_speaks_again_is_tracked_again(liveness):
    liveness.seen(b"a", now=0.0)
    assert liveness.expired(now=4.0) == [b"a"]
    liveness.seen(b"a", now=5.0)
    assert b"a" in liveness
    assert liveness.expired(now=7.0) == []
    assert liveness.expired(now=8.5) == [b"a"]


def test_a_forgotten_peer_never_expires(liveness):
    liveness.seen(b"leaving", now=0.0)
    liveness.seen(b"staying", now=0.0)
    liveness.forget(b"leaving")
    assert b"leaving" not in liveness
    assert liveness.expired(now=100.0) == [b"staying"]


def test_forget_of_an_unknown_peer_is_harmless(liveness):
    liveness.forget(b"never-seen")
    liveness.seen(b"a", now=0.0)
    liveness.forget(b"a")
    liveness.forget(b"a")
    assert liveness.expired(now=100.0) == []


def test_nothing_expires_with_no_peers(liveness):
    assert liveness.expired(now=1e9) == []


@pytest.mark.parametrize(("interval", "count"), [(0, 3), (-1.0, 3), (1.0, 0), (1.0, -2), (0, 0)])
def test_bad_parameters(interval, count):
    with pytest.raises(ValueError, match="heartbeat interval must be > 0 and liveness >= 1"):
        Liveness(interval, count)


def test_a_nan_interval_is_refused():
    with pytest.raises(ValueError):
        Liveness(math.nan, 3)


def test_silent_for_counts_from_the_last_word_and_knows_only_tracked_peers(liveness):
    liveness.seen(b"a", 10.0)
    assert liveness.silent_for(b"a", 12.5) == 2.5
    assert liveness.silent_for(b"a", 9.0) == 0.0  # a clock read before the word: never negative
    assert liveness.silent_for(b"b", 12.5) is None
