"""Bad input to a live broker: it answers with errors, drops the input, and keeps serving."""

from __future__ import annotations

import random

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

import tasks
from runner import protocol


def _malformed_frames(count: int, seed: int = 7) -> list[list[bytes]]:
    """A mix of every kind of bad message: noise, wrong shapes, wrong versions, bad fields."""
    rng = random.Random(seed)
    valid_job = ["job-1", "tasks:add", "process", "default", 0, protocol.pack([[1, 2], {}]), {}]
    kinds = [
        lambda: [rng.randbytes(rng.randint(0, 64))],
        lambda: [msgpack.packb(rng.choice([1, "x", None, {"a": 1}, [1, 2], [1, 2, 3, 4]]))],
        lambda: [msgpack.packb([99, protocol.SUBMIT, {"jobs": []}])],
        lambda: [msgpack.packb([protocol.VERSION, "launch_missiles", {}])],
        lambda: [msgpack.packb([protocol.VERSION, protocol.SUBMIT, {"jobs": [valid_job[:3]]}])],
        lambda: [msgpack.packb([protocol.VERSION, protocol.SUBMIT, {"jobs": [[*valid_job[:4], "high", *valid_job[5:]]]}])],
        lambda: [msgpack.packb([protocol.VERSION, protocol.SUBMIT, {"jobs": [[*valid_job[:6], {"retries": -1}]]}])],
        lambda: [msgpack.packb([protocol.VERSION, protocol.HELLO, {"role": "admin", "name": "x", "pid": 1, "host": "h"}])],
        lambda: [msgpack.packb([protocol.VERSION, protocol.HELLO, {"role": "worker", "name": "x", "pid": 1, "host": "h",
                                                                   "slots": {"process": -1}, "queues": ["q"]}])],
        lambda: [msgpack.packb([protocol.VERSION, protocol.RESULTS, {"results": [["job-1", True, "ok", b""]]}])],
        lambda: [b"first", b"second"],  # a multi-frame message
        lambda: [b"\xc1" * rng.randint(1, 100)],  # msgpack's reserved byte
    ]
    return [rng.choice(kinds)() for _ in range(count)]


def test_a_thousand_malformed_frames_then_a_job_still_succeeds(processes, broker_address, client_factory):
    processes.worker(broker_address, "--processes", "1", "--threads", "2")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    before = client.submit(tasks.add, 1, 1)

    context = zmq.Context()
    attacker = context.socket(zmq.DEALER)
    attacker.setsockopt(zmq.LINGER, 0)
    monitor = attacker.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    attacker.connect(broker_address)
    try:
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_CONNECTED
        for frames in _malformed_frames(1000):
            attacker.send_multipart(frames)
        # Each invalid message gets an error reply until the 100th (--max-invalid-frames): that one
        # says the peer is cut off, and the rest are dropped unanswered.
        errors = []
        while attacker.poll(10_000 if not errors else 500):
            message = protocol.decode(attacker.recv())
            assert message.type == protocol.ERROR and message.body["message"]
            errors.append(message.body.get("code"))
        assert errors == ["invalid"] * 99 + ["cut_off"]

        # A frame over the limit (ZeroMQ's MAXMSGSIZE on the broker) is never read: the broker
        # closes the sender's connection, and answers nothing.
        attacker.send(b"\0" * (protocol.MAX_MESSAGE_BYTES + 1))
        assert monitor.poll(10_000), "the broker kept the connection of a peer that sent an oversized frame"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        assert not attacker.poll(500), "the broker answered an oversized frame"
    finally:
        monitor.close()
        attacker.close()
        context.term()

    assert before.result(timeout=30) == 2
    assert client.submit(tasks.add, 20, 22).result(timeout=30) == 42
    assert client.submit(tasks.add, 1, 2, pool="thread").result(timeout=30) == 3
    status = client.status()
    assert len(status["workers"]) == 1
    assert (status["jobs"]["pending"], status["jobs"]["running"], status["jobs"]["done"]) == (0, 0, 3)
