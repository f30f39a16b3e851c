"""Who may do what at the broker (runner/broker/access.py), decided without sockets."""

from __future__ import annotations

import pytest

from runner.broker.access import Access, Keyring, OncePer, check_bind, is_private
from runner.keys import key_of, peer_identity

ALICE, BOB, WORKER, ROOT = ("A" * 40, "B" * 40, "W" * 40, "R" * 40)
KEYRING = Keyring(clients=frozenset({ALICE, BOB}), workers=frozenset({WORKER}), admins=frozenset({ROOT}))


def peer(key: str, prefix: bytes = b"c-") -> bytes:
    return peer_identity(prefix, key, "0123456789abcdef0123456789abcdef")


def test_a_routing_id_carries_its_key():
    assert key_of(peer(ALICE)) == ALICE
    assert peer_identity(b"c-", None, "abc") == b"c-abc"


def test_frames_count_only_from_an_authorized_key_that_matches_the_routing_id():
    access = Access(KEYRING)
    assert access.frame_ok(peer(ALICE), ALICE)
    assert not access.frame_ok(peer(ALICE), BOB), "a peer claiming another key's routing id"
    assert not access.frame_ok(peer("X" * 40), "X" * 40), "a key nobody authorized"
    assert access.admits(BOB) and not access.admits("X" * 40)


def test_only_worker_keys_register_as_workers():
    access = Access(KEYRING)
    assert access.may_work(peer(WORKER, b"w-"))
    assert not access.may_work(peer(ALICE, b"w-"))
    assert not access.may_work(peer(ROOT, b"w-")), "an admin is not a worker"


def test_a_client_touches_only_its_own_jobs_and_an_admin_every_job():
    access = Access(KEYRING)
    alice_job_owner = peer(ALICE)
    assert access.may_touch(peer(ALICE), alice_job_owner)
    assert access.may_touch(peer_identity(b"c-", ALICE, "another-process"), alice_job_owner), "same key, other process"
    assert not access.may_touch(peer(BOB), alice_job_owner)
    assert access.may_touch(peer(ROOT), alice_job_owner)


def test_without_curve_everyone_is_an_admin():
    access = Access(None)
    assert not access.enabled
    assert access.admits("anything")
    assert access.may_work(b"w-123") and access.may_touch(b"c-1", b"c-2")


def test_a_reload_names_the_peers_to_shut_out():
    access = Access(KEYRING)
    peers = {peer(ALICE): "client", peer(BOB): "client", peer(WORKER, b"w-"): "worker"}
    # Bob is revoked; the worker key is demoted to a plain client key.
    shut_out = access.reload(Keyring(clients=frozenset({ALICE, WORKER})), peers)
    assert sorted(shut_out) == sorted([peer(BOB), peer(WORKER, b"w-")])
    assert not access.frame_ok(peer(BOB), BOB)
    assert access.frame_ok(peer(ALICE), ALICE)


def test_once_per_interval_and_bounded():
    once = OncePer(interval=60.0, limit=3)
    assert once("10.0.0.1", 0.0) and not once("10.0.0.1", 59.0) and once("10.0.0.1", 61.0)
    for n in range(10):
        once(f"10.0.1.{n}", 100.0)
    assert len(once._last) <= 4


@pytest.mark.parametrize("address, private", [
    ("tcp://127.0.0.1:5555", True), ("tcp://127.1.2.3:*", True), ("tcp://localhost:5555", True),
    ("tcp://[::1]:5555", True), ("ipc:///tmp/x/broker", True), ("inproc://x", True),
    ("tcp://0.0.0.0:5555", False), ("tcp://*:5555", False), ("tcp://eth0:5555", False),
    ("tcp://192.168.1.5:5555", False), ("tcp://[::]:5555", False),
])
def test_which_addresses_are_private(address, private):
    assert is_private(address) is private


def test_an_open_bind_needs_keys_or_insecure():
    assert check_bind("tcp://127.0.0.1:5555", curve=False, insecure=False) is None
    assert check_bind("tcp://0.0.0.0:5555", curve=True, insecure=False) is None
    with pytest.raises(ValueError, match="--curve-keys"):
        check_bind("tcp://0.0.0.0:5555", curve=False, insecure=False)
    assert "WITHOUT authentication" in check_bind("tcp://0.0.0.0:5555", curve=False, insecure=True)
