"""Key files (runner/keys.py, `runner keys ...`) and how a peer tells a refused handshake (handshake.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
import zmq

from cluster import ROOT, environment
from runner import keys
from runner.handshake import NO_DETAIL_LIMIT, HandshakeJudge


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def run_cli(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *arguments], capture_output=True, text=True,
                          env=environment(), cwd=ROOT, timeout=60)


def test_generate_writes_private_pairs_and_authorizes_client_and_worker(tmp_path):
    folder = tmp_path / "keys"
    keys.generate(folder)
    assert mode(folder) == 0o700
    for name in ("broker", "client", "worker"):
        assert mode(folder / f"{name}.key_secret") == 0o600
        assert (folder / f"{name}.key").is_file()
    roles = keys.read_authorized(folder)
    client = keys.load_peer_keys(folder, "client")
    worker = keys.load_peer_keys(folder, "worker")
    assert roles["client"] == {client.public_text} and roles["worker"] == {worker.public_text}
    assert roles["admin"] == frozenset()
    assert client.server == keys.load_broker_keys(folder)[0]
    assert mode(folder / "authorized" / "admins") == 0o700


def test_nothing_is_overwritten_without_force(tmp_path):
    folder = tmp_path / "keys"
    keys.generate(folder)
    before = (folder / "broker.key_secret").read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        keys.generate(folder)
    assert (folder / "broker.key_secret").read_bytes() == before
    keys.generate(folder, force=True)
    assert (folder / "broker.key_secret").read_bytes() != before


def test_add_makes_a_folder_to_hand_over_and_authorizes_its_key(tmp_path):
    folder = tmp_path / "keys"
    keys.generate(folder)
    for kind, pair in (("client", "client"), ("worker", "worker"), ("admin", "client")):
        bundle = keys.add(folder, kind, f"{kind}-1")
        assert sorted(os.listdir(bundle)) == sorted(["broker.key", f"{pair}.key", f"{pair}.key_secret"])
        assert mode(bundle) == 0o700 and mode(bundle / f"{pair}.key_secret") == 0o600
        loaded = keys.load_peer_keys(bundle, "worker" if kind == "worker" else "client")
        assert loaded.public_text in keys.read_authorized(folder)[kind]
    with pytest.raises(FileExistsError):
        keys.add(folder, "client", "client-1")


@pytest.mark.parametrize("name", ["broker", "authorized", "../up", "", "a b"])
def test_add_refuses_unusable_names(tmp_path, name):
    keys.generate(tmp_path / "keys")
    with pytest.raises(ValueError, match="not usable"):
        keys.add(tmp_path / "keys", "client", name)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(keys.KeyFileError, match="does not exist"):
        keys.load_peer_keys(tmp_path / "nowhere", "client")
    keys.generate(tmp_path / "keys")
    os.remove(tmp_path / "keys" / "worker.key_secret")
    with pytest.raises(keys.KeyFileError, match="worker.key_secret"):
        keys.load_peer_keys(tmp_path / "keys", "worker")
    with pytest.raises(keys.KeyFileError, match="runner keys generate"):
        keys.add(tmp_path / "empty", "client", "bob")


def test_a_client_may_use_a_workers_folder(tmp_path):
    """A task on a worker opens a client with the worker's folder (RUNNER_CURVE_KEYS)."""
    bundle = (keys.generate(tmp_path / "keys"), keys.add(tmp_path / "keys", "worker", "w1"))[1]
    assert keys.load_peer_keys(bundle, "client").source.endswith("worker.key_secret")


def test_the_signature_changes_when_a_key_is_revoked(tmp_path):
    folder = tmp_path / "keys"
    keys.generate(folder)
    before = keys.authorized_signature(folder)
    os.remove(folder / "authorized" / "clients" / "client.key")
    assert keys.authorized_signature(folder) != before


def test_cli_generate_and_add(tmp_path):
    folder = tmp_path / "keys"
    done = run_cli("keys", "generate", str(folder))
    assert done.returncode == 0, done.stderr
    assert str(folder / "broker.key_secret") in done.stdout
    again = run_cli("keys", "generate", str(folder))
    assert again.returncode != 0 and "--force" in again.stderr
    added = run_cli("keys", "add-admin", str(folder), "root")
    assert added.returncode == 0, added.stderr
    assert (folder / "authorized" / "admins" / "root.key").is_file()
    refused = run_cli("keys", "add-client", str(folder), "root")
    assert refused.returncode != 0 and "already exist" in refused.stderr


def test_the_judge_names_a_refused_key_at_once():
    judge = HandshakeJudge("tcp://127.0.0.1:1", "the key K (f)", curve=True)
    message = judge.event(zmq.EVENT_HANDSHAKE_FAILED_AUTH, 400)
    assert message and "authentication failed" in message and "the key K (f)" in message


def test_the_judge_says_keys_are_missing():
    judge = HandshakeJudge("tcp://127.0.0.1:1", "no CURVE key", curve=False)
    message = judge.event(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
    assert message and "--curve-keys" in message


def test_the_judge_waits_for_repeated_silent_failures_and_forgives_after_a_success():
    judge = HandshakeJudge("tcp://127.0.0.1:1", "the key K (f)", curve=True)
    for _ in range(NO_DETAIL_LIMIT - 1):
        assert judge.event(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32) is None
    assert judge.event(zmq.EVENT_HANDSHAKE_SUCCEEDED, 0) is None and judge.succeeded
    for _ in range(NO_DETAIL_LIMIT - 1):
        assert judge.event(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32) is None
    assert "broker.key" in judge.event(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, 32)
