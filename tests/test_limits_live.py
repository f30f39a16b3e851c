"""Each broker limit, enforced on real processes with its documented error."""

import threading

import pytest
import zmq

import runner
import tasks
from cluster import wait_until
from runner import protocol


def test_max_pending_raises_backpressure_at_once_and_the_broker_enforces_it_too(processes, client_factory):
    _, address = processes.broker("--heartbeat", "0.2", "--max-pending", "3")
    client = client_factory(address)
    assert client.max_pending == 3  # told by the broker's welcome
    held = [client.submit(tasks.add, index, 1) for index in range(3)]  # no worker yet: they stay pending
    with pytest.raises(runner.BackpressureError, match="--max-pending"):
        client.submit(tasks.add, 9, 9)
    # A client that ignores the limit is refused by the broker: the surplus jobs fail, the others wait.
    careless = client_factory(address)
    careless.max_pending = 100
    futures = [careless.submit(tasks.add, index, 2) for index in range(5)]
    for future in futures[3:]:
        with pytest.raises(runner.BackpressureError, match="--max-pending"):
            future.result(timeout=30)
    processes.worker(address, "--processes", "1", "--threads", "2")
    assert [future.result(timeout=30) for future in held] == [1, 2, 3]
    assert [future.result(timeout=30) for future in futures[:3]] == [2, 3, 4]
    assert client.submit(tasks.add, 9, 9).result(timeout=30) == 18  # room again


def test_max_pending_with_block_waits_for_room(processes, client_factory):
    _, address = processes.broker("--heartbeat", "0.2", "--max-pending", "2")
    client = client_factory(address, block=True)
    held = [client.submit(tasks.add, index, 1) for index in range(2)]
    blocked: list = []
    submitter = threading.Thread(target=lambda: blocked.append(client.submit(tasks.add, 5, 5)), daemon=True)
    submitter.start()
    wait_until(lambda: client._waiting_for_room == 1, timeout=10, message="submit waits for room")
    assert not blocked, "submit beyond --max-pending must wait with block=True"
    processes.worker(address, "--processes", "1", "--threads", "2")
    submitter.join(30)
    assert blocked[0].result(timeout=30) == 10
    assert [future.result(timeout=30) for future in held] == [1, 2]
    assert list(client.map(tasks.square, range(10))) == [x * x for x in range(10)]  # map waits for room itself


def test_payload_and_message_limits(processes, client_factory):
    _, address = processes.broker("--heartbeat", "0.2", "--max-message-bytes", "200000",
                                  "--max-payload-bytes", "100000")
    processes.worker(address, "--processes", "1", "--threads", "2", imports=("tasks", "jobs"))
    client = client_factory(address)
    client.wait_for_workers(1, timeout=30)
    with pytest.raises(runner.PayloadTooLargeError, match="--max-payload-bytes"):
        client.submit(tasks.echo, b"x" * 100_001)
    with pytest.raises(ValueError):  # what handlers caught before
        client.submit(tasks.echo, b"x" * 100_001)
    # Jobs whose payloads add up to more than one message leave in several: all run.
    futures = [client.submit(tasks.echo, b"y" * 90_000, pool="thread") for _ in range(10)]
    assert all(future.result(timeout=30) == b"y" * 90_000 for future in futures)
    # A result over the payload limit fails its job, it does not cost the worker its connection.
    with pytest.raises(runner.PayloadTooLargeError, match="result takes"):
        client.submit("jobs:blob", 150_000, pool="thread").result(timeout=30)
    # The broker refuses a large payload from a client that ignores the limit.
    client.max_payload_bytes = 10**9
    with pytest.raises(runner.PayloadTooLargeError, match="--max-payload-bytes"):
        client.submit(tasks.echo, b"x" * 150_000).result(timeout=30)
    # A message over --max-message-bytes only costs its sender its connection (ZeroMQ's MAXMSGSIZE).
    context = zmq.Context()
    try:
        sender = context.socket(zmq.DEALER)
        sender.setsockopt(zmq.LINGER, 0)
        sender.connect(address)
        sender.send(protocol.encode(protocol.SUBMIT, {"jobs": []}) + b"\0" * 200_001)
        sender.close()
    finally:
        context.term()
    assert client.submit(tasks.add, 1, 2).result(timeout=30) == 3


def test_max_peers_refuses_a_hello_beyond_it_and_admits_once_there_is_room(processes, client_factory):
    _, address = processes.broker("--heartbeat", "0.2", "--max-peers", "2")
    first = client_factory(address)
    client_factory(address)
    with pytest.raises(runner.BrokerUnreachable, match="--max-peers"):
        runner.Client(address, timeout=10)
    first.close()
    wait_until(lambda: _connects(address), timeout=10, message="a client gets in once one left")


def _connects(address: str) -> bool:
    try:
        runner.Client(address, timeout=2).close()
        return True
    except runner.BrokerUnreachable:
        return False


def test_max_sync_objects_per_client(processes, client_factory):
    _, address = processes.broker("--heartbeat", "0.2", "--max-sync-objects", "2")
    client = client_factory(address)
    with client.Lock("a"), client.Lock("b"):
        pass
    with pytest.raises(runner.LimitError, match="--max-sync-objects"):
        client.Event("c").set()
    assert client_factory(address).Event("c").is_set() is False  # another client has its own count


def next_error(socket: zmq.Socket) -> dict:
    """The body of the next error the broker sends (heartbeats skipped), within 10 s."""
    while socket.poll(10_000):
        message = protocol.decode(socket.recv())
        if message.type == protocol.ERROR:
            return message.body
    raise AssertionError("the broker sent no error within 10s")


def test_a_registered_peer_sending_invalid_frames_is_forgotten_and_ignored(processes, client_factory):
    _, address = processes.broker("--heartbeat", "0.2", "--max-invalid-frames", "5")
    client = client_factory(address)
    context = zmq.Context()
    try:
        peer = context.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(address)
        peer.send(protocol.encode(protocol.HELLO, {"role": "client", "name": "noisy", "pid": 1, "host": "h"}))
        assert peer.poll(10_000) and protocol.decode(peer.recv()).type == protocol.WELCOME
        assert client.status()["clients"] == 2
        codes = []
        for _ in range(5):
            peer.send(b"\xc1 not msgpack")
            codes.append(next_error(peer)["code"])
        assert codes == ["invalid"] * 4 + ["cut_off"]
        wait_until(lambda: client.status()["clients"] == 1, timeout=10, message="the noisy peer is forgotten")
        peer.send(protocol.encode(protocol.STATUS, {"request": 1}))  # valid, but ignored while cut off
        assert not any(protocol.decode(peer.recv()).type == protocol.REPLY for _ in iter(lambda: peer.poll(500), 0))
    finally:
        context.destroy(linger=0)
    assert client.status()["clients"] == 1  # the broker serves the others as before
