"""CurveZMQ with real processes: who gets in, who gets nothing done, and whose jobs each key may touch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest

import runner
from cluster import read_line, wait_until
from runner import keys, protocol

AUTH_TIMEOUT = 20.0  # bounded: a refused peer must say so well before this


@pytest.fixture
def key_folder(tmp_path):
    """Keys for a broker, a client, a worker (generate), a second client bob, a worker w2 and an admin root."""
    folder = tmp_path / "keys"
    keys.generate(folder)
    keys.add(folder, "client", "bob")
    keys.add(folder, "worker", "w2")
    keys.add(folder, "admin", "root")
    return folder


@pytest.fixture
def secure_cluster(processes, key_folder):
    """A CURVE broker (heartbeat 0.2 s) and one keyed worker; returns (broker process, address)."""
    broker, address = processes.broker("--curve-keys", str(key_folder), "--heartbeat", "0.2")
    processes.worker(address, "--curve-keys", str(key_folder), "--heartbeat", "0.2", "--processes", "1",
                     "--threads", "2")
    return broker, address


def keyed_client(client_factory, address: str, folder) -> runner.Client:
    return client_factory(address, curve_keys=str(folder), timeout=AUTH_TIMEOUT)


def start_worker(processes, address: str, *arguments: str) -> subprocess.Popen:
    return processes.runner("worker", "--connect", address, "--import", "tasks", "--processes", "1", "--threads", "1",
                            "--log-level", "WARNING", *arguments, stderr=subprocess.PIPE)


def exit_of(process: subprocess.Popen) -> tuple[int, str]:
    code = process.wait(timeout=AUTH_TIMEOUT)
    return code, process.stderr.read().decode()


def test_keyed_clients_workers_and_cli_work(secure_cluster, client_factory, key_folder, processes):
    _, address = secure_cluster
    client = keyed_client(client_factory, address, key_folder)
    client.wait_for_workers(1, timeout=30)
    assert client.submit("tasks:add", 2, 3).result(timeout=30) == 5
    assert list(client.map("tasks:square", range(20), timeout=30)) == [n * n for n in range(20)]
    done = processes.runner("submit", "tasks:add", "1", "2", "--connect", address, "--curve-keys", str(key_folder),
                            stdout=subprocess.PIPE)
    assert done.wait(timeout=60) == 0 and done.stdout.read().strip() == b"3"


def test_keyless_and_wrong_key_clients_fail_saying_so(secure_cluster, tmp_path, key_folder, processes):
    _, address = secure_cluster
    stranger = tmp_path / "stranger"
    keys.generate(stranger)  # keys made for another broker
    impostor = tmp_path / "impostor"
    keys.generate(impostor)
    shutil.copyfile(key_folder / "broker.key", impostor / "broker.key")  # the right broker, an unknown key
    cases = {"no key": "", "an unknown key": str(impostor), "another broker's keys": str(stranger)}
    for what, folder in cases.items():
        started = time.monotonic()
        with pytest.raises(runner.AuthenticationError, match="authentication failed") as raised:
            runner.Client(address, curve_keys=folder, timeout=AUTH_TIMEOUT)
        assert time.monotonic() - started < AUTH_TIMEOUT - 5, f"{what}: not refused before the timeout"
        if folder:
            assert folder in str(raised.value), f"{what}: the message does not name the key it used"
        assert isinstance(raised.value, runner.BrokerUnreachable)
    status = processes.runner("status", "--connect", address, "--curve-keys", str(impostor), stderr=subprocess.PIPE)
    code, stderr = exit_of_plain(status)
    assert code != 0 and "authentication failed" in stderr and str(impostor) in stderr


def exit_of_plain(process: subprocess.Popen) -> tuple[int, str]:
    code = process.wait(timeout=AUTH_TIMEOUT)
    return code, process.stderr.read().decode()


def test_keyless_and_client_key_workers_exit_and_run_nothing(secure_cluster, client_factory, key_folder, tmp_path,
                                                             processes):
    broker, address = secure_cluster
    client = keyed_client(client_factory, address, key_folder)
    client.wait_for_workers(1, timeout=30)
    waiting = client.submit("tasks:add", 1, 1, queue="nobody-else")  # only the bad workers serve this queue
    keyless = start_worker(processes, address, "--queue", "nobody-else")
    code, stderr = exit_of(keyless)
    assert code != 0 and "authentication failed" in stderr and "--curve-keys" in stderr

    posing = tmp_path / "posing"  # a client's pair, presented as a worker's
    posing.mkdir()
    shutil.copyfile(key_folder / "broker.key", posing / "broker.key")
    shutil.copyfile(key_folder / "bob" / "client.key_secret", posing / "worker.key_secret")
    as_worker = start_worker(processes, address, "--queue", "nobody-else", "--curve-keys", str(posing))
    code, stderr = exit_of(as_worker)
    assert code != 0 and "may not register as a worker" in stderr, stderr
    assert client.fetch(waiting.job_id)["state"] == "pending"
    assert len(client.status()["workers"]) == 1


def test_revoking_a_key_shuts_its_peers_out(secure_cluster, client_factory, key_folder, processes):
    broker, address = secure_cluster
    bob = keyed_client(client_factory, address, key_folder / "bob")
    extra_worker = start_worker(processes, address, "--curve-keys", str(key_folder / "w2"), "--heartbeat", "0.2")
    bob.wait_for_workers(2, timeout=30)
    assert bob.submit("tasks:add", 1, 2).result(timeout=30) == 3

    os.remove(key_folder / "authorized" / "clients" / "bob.key")
    os.remove(key_folder / "authorized" / "workers" / "w2.key")
    broker.send_signal(signal.SIGHUP)

    def bob_refused() -> bool:
        try:
            bob.status(timeout=5)
        except runner.AuthenticationError:
            return True
        return False

    wait_until(bob_refused, timeout=AUTH_TIMEOUT, message="bob's revoked key refused")
    code, stderr = exit_of(extra_worker)
    assert code != 0 and "authentication failed" in stderr
    with pytest.raises(runner.AuthenticationError):
        runner.Client(address, curve_keys=str(key_folder / "bob"), timeout=AUTH_TIMEOUT)
    alice = keyed_client(client_factory, address, key_folder)  # everyone else is untouched
    assert alice.submit("tasks:add", 2, 2).result(timeout=30) == 4
    assert len(alice.status()["workers"]) == 1


def test_a_client_touches_only_its_own_jobs_and_an_admin_all(secure_cluster, client_factory, key_folder):
    _, address = secure_cluster
    alice = keyed_client(client_factory, address, key_folder)
    bob = keyed_client(client_factory, address, key_folder / "bob")
    root = keyed_client(client_factory, address, key_folder / "root")
    alice.wait_for_workers(1, timeout=30)
    done = alice.submit("tasks:add", 20, 22)
    assert done.result(timeout=30) == 42
    failed = alice.submit("tasks:fail", "boom")
    with pytest.raises(Exception):
        failed.result(timeout=30)
    pending = alice.submit("tasks:add", 1, 1, queue="nobody")

    unknown = bob.fetch("no-such-job")
    for job in (done, failed, pending):
        assert bob.fetch(job.job_id) == {**unknown, "id": job.job_id}, "bob sees alice's job"
    assert bob._request(protocol.CANCEL, {"id": pending.job_id}, None)["result"] == "unknown"
    with pytest.raises(ValueError, match="not requeued"):
        bob.requeue(failed.job_id)
    assert all(job["id"] != failed.job_id for job in bob.dead_letters())

    assert root.fetch(done.job_id)["result"] == 42
    assert alice.fetch(done.job_id)["result"] == 42
    assert root._request(protocol.CANCEL, {"id": pending.job_id}, None)["result"] == "cancelled"
    assert alice.fetch(pending.job_id)["state"] == "cancelled"
    again = root.requeue(failed.job_id)
    with pytest.raises(Exception, match="boom"):
        again.result(timeout=30)


def test_another_keys_ack_leaves_an_outcome_to_its_owner(processes, client_factory, key_folder):
    _, address = processes.broker("--curve-keys", str(key_folder), "--heartbeat", "0.2", "--result-ttl", "0.5")
    processes.worker(address, "--curve-keys", str(key_folder), "--heartbeat", "0.2", "--processes", "1",
                     "--threads", "2")
    submitted = processes.runner("submit", "tasks:add", "20", "22", "--no-wait", "--connect", address,
                                 "--curve-keys", str(key_folder), stdout=subprocess.PIPE)
    assert submitted.wait(timeout=60) == 0
    job_id = submitted.stdout.read().decode().strip()  # nobody has its outcome: nobody acknowledged it
    alice = keyed_client(client_factory, address, key_folder)
    wait_until(lambda: alice.fetch(job_id)["state"] == "done", timeout=30, message="alice's job done")

    bob = keyed_client(client_factory, address, key_folder / "bob")
    bob.connection.send(protocol.ACK, {"ids": [job_id]})
    own = bob.submit("tasks:add", 1, 1)  # acknowledged after that ack, so it expires after it
    assert own.result(timeout=30) == 2
    wait_until(lambda: bob.fetch(own.job_id)["state"] == "unknown", timeout=20, message="bob's own outcome expired")
    assert alice.fetch(job_id) == {"id": job_id, "state": "done", "result": 42}, "bob's ack did not count"

    alice.connection.send(protocol.ACK, {"ids": [job_id]})
    wait_until(lambda: alice.fetch(job_id)["state"] == "unknown", timeout=20, message="alice's outcome expired")


def test_an_open_bind_needs_keys_or_insecure(processes, key_folder):
    refused = processes.runner("broker", "--bind", "tcp://0.0.0.0:*", "--journal", ":memory:",
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    code, stderr = exit_of_plain(refused)
    assert code != 0 and "--curve-keys" in stderr and "--insecure" in stderr
    insecure = processes.runner("broker", "--bind", "tcp://0.0.0.0:*", "--journal", ":memory:", "--insecure",
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert read_line(insecure, 30).startswith("tcp://")
    insecure.send_signal(signal.SIGTERM)
    _, stderr = insecure.communicate(timeout=30)
    assert b"WITHOUT authentication" in stderr


def test_the_embedded_cluster_listens_privately():
    with runner.LocalCluster(workers=0) as cluster:
        assert cluster.address.startswith("ipc://")
        folder = os.path.dirname(cluster.address[len("ipc://"):])
        assert os.stat(folder).st_mode & 0o077 == 0
        with cluster.client() as client:
            assert client.status()["workers"] == []


def test_refusals_are_logged_once_a_minute_per_address(processes, key_folder, tmp_path):
    log_path = tmp_path / "broker.log"
    with open(log_path, "wb") as log_file:
        broker = processes.runner("broker", "--bind", "tcp://127.0.0.1:*", "--journal", ":memory:",
                                  "--curve-keys", str(key_folder), stdout=subprocess.PIPE, stderr=log_file)
    address = read_line(broker, 30)
    impostor = tmp_path / "impostor"
    keys.generate(impostor)
    shutil.copyfile(key_folder / "broker.key", impostor / "broker.key")
    for _ in range(3):
        with pytest.raises(runner.AuthenticationError):
            runner.Client(address, curve_keys=str(impostor), timeout=AUTH_TIMEOUT)
    for _ in range(3):
        with pytest.raises(runner.AuthenticationError):
            runner.Client(address, curve_keys="", timeout=AUTH_TIMEOUT)
    wait_until(lambda: "failed the CURVE handshake" in log_path.read_text(), timeout=10, message="keyless logged")
    logged = log_path.read_text()
    assert logged.count("refused a connection from 127.0.0.1") == 1, logged
    assert logged.count("failed the CURVE handshake") == 1, logged
    assert keys.load_peer_keys(impostor, "client").public_text in logged


def test_a_keyed_local_cluster(key_folder):
    with runner.LocalCluster(workers=1, processes=1, threads=1, curve_keys=str(key_folder)) as cluster:
        with cluster.client() as client:
            assert client.submit("tasks:add", 3, 4).result(timeout=60) == 7
        with pytest.raises(runner.AuthenticationError):
            runner.Client(cluster.address, curve_keys="", timeout=AUTH_TIMEOUT)
