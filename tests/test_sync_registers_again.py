"""A client whose connection drops while the broker stays up, on the sync side.

The client is a real process frozen with SIGSTOP: its heartbeats stop, the broker
declares it dead (heartbeat 0.2 s x liveness 3), and SIGCONT lets it register again.
Then it holds nothing (its Lock and Semaphore objects report no token, a release is a
RuntimeError, the slots went to others), and a put that was waiting in the broker when
it was dropped is sent again and stored once. The frozen client reports what it sees as
one JSON line per step; the test waits on those lines and on the broker, never by sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager

import zmq
from cluster import environment, read_line, wait_until

from runner import protocol

HEARTBEAT = "0.2"
STEP_TIMEOUT = 60  # seconds a step of the frozen client may take, its frozen time included

HOLDER = """
import json, sys
import runner
from cluster import wait_until

address, kind, slots = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = runner.Client(address)
holder = client.Lock("frozen") if kind == "lock" else client.Semaphore("frozen", slots)
tokens = []
for _ in range(slots):
    assert holder.acquire(timeout=10)
    tokens.append(holder.token)
print(json.dumps({"tokens": tokens}), flush=True)
# The test freezes this process here, takes the slots, and lets it go on.
wait_until(lambda: holder.token is None, timeout=60, message="the token forgotten on registering again")
try:
    holder.release()
    released = "no error"
except RuntimeError as exc:
    released = type(exc).__name__
print(json.dumps({"token": holder.token, "locked": holder.locked(), "release": released,
                  "try": holder.acquire(blocking=False)}), flush=True)
assert holder.acquire(timeout=60)  # granted once the test gives a slot back
print(json.dumps({"token": holder.token}), flush=True)
holder.release()
assert holder.token is None
client.close()
"""

PUTTER = """
import json, sys, threading
import runner

client = runner.Client(sys.argv[1])
shared = client.Queue("frozen-queue", maxsize=1)
sent = threading.Event()
send = client.connection.send

def send_and_record(message_type, body=None):  # observation only: the real send still happens
    send(message_type, body)
    if message_type == "sync" and body is not None and body.get("op") == "queue_put":
        sent.set()

client.connection.send = send_and_record
putter = threading.Thread(target=shared.put, args=("second",))
putter.start()
assert sent.wait(10)
client.status()  # answered after the broker took the put, so the put waits there for room
print(json.dumps({"waiting": True}), flush=True)
# The test freezes this process here, makes room while the broker has forgotten it, lets it go on.
putter.join(60)
print(json.dumps({"put returned": not putter.is_alive()}), flush=True)
client.close()
"""


def start(processes, script: str, *arguments: str) -> subprocess.Popen:
    """A client process running ``script``, stopped with the others, pass or fail."""
    child = subprocess.Popen([sys.executable, "-c", script, *arguments], stdout=subprocess.PIPE, env=environment())
    processes.started.append(child)
    return child


def step(child: subprocess.Popen) -> dict:
    """The next JSON line the frozen client prints."""
    line = read_line(child, STEP_TIMEOUT)
    if not line:
        raise AssertionError(f"the client process ended ({child.wait(timeout=10)}) before its step; see its log above")
    return json.loads(line)


@contextmanager
def frozen(child: subprocess.Popen):
    """SIGSTOP ``child`` for the block; SIGCONT after it, even when the block fails."""
    os.kill(child.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(child.pid, signal.SIGCONT)


def lose_and_register_again(processes, client_factory, kind: str, slots: int) -> None:
    """Freeze a holder of ``slots`` slots, take them, let it register again; check it holds nothing."""
    _, address = processes.broker("--heartbeat", HEARTBEAT, "--liveness", "3")
    holder = start(processes, HOLDER, address, kind, str(slots))
    held = step(holder)["tokens"]
    client = client_factory(address)
    takers = [client.Lock("frozen") if kind == "lock" else client.Semaphore("frozen", slots) for _ in range(slots)]
    with frozen(holder):
        for taker in takers:  # possible only once the broker has freed the frozen holder's slots
            assert taker.acquire(timeout=10), "the frozen holder's slots were never freed"
    taken = [taker.token for taker in takers]
    assert min(taken) > max(held)
    after = step(holder)
    assert after == {"token": None, "locked": True, "release": "RuntimeError", "try": False}, (
        "a client that registered again must hold nothing and know it")
    takers[0].release()
    assert step(holder)["token"] > max(taken), "granted again, with a token above the takers'"
    assert holder.wait(timeout=30) == 0
    for taker in takers[1:]:
        taker.release()


def test_a_client_that_registers_again_holds_nothing(processes, client_factory):
    lose_and_register_again(processes, client_factory, "lock", 1)


def test_a_client_that_registers_again_has_its_semaphore_tokens_cleared(processes, client_factory):
    lose_and_register_again(processes, client_factory, "semaphore", 2)


def test_a_put_in_flight_when_the_client_was_dropped_is_sent_again_and_stored_once(processes, client_factory):
    _, address = processes.broker("--heartbeat", HEARTBEAT, "--liveness", "3")
    client = client_factory(address)
    shared = client.Queue("frozen-queue", maxsize=1)
    shared.put("first")
    putter = start(processes, PUTTER, address)
    assert step(putter) == {"waiting": True}
    with frozen(putter):
        wait_until(lambda: client.status()["clients"] == 1, timeout=30, message="the frozen client declared dead")
        assert shared.get(timeout=10) == "first"
        assert shared.qsize() == 0, "the dropped client's waiting put must not get in"
    assert step(putter) == {"put returned": True}
    assert shared.get(timeout=10) == "second"
    assert shared.qsize() == 0, "the put sent again was stored once"
    assert putter.wait(timeout=30) == 0


def test_the_broker_drops_a_sync_request_sent_before_the_peers_latest_hello(processes):
    """On the wire: a copy stamped with an older session gets no answer (the client sends it
    again once welcomed); one stamped with the current session is answered."""
    _, address = processes.broker("--heartbeat", "5")
    context = zmq.Context()
    peer = context.socket(zmq.DEALER)
    peer.setsockopt(zmq.LINGER, 0)
    peer.connect(address)

    def send(message_type: str, body: dict) -> None:
        peer.send(protocol.encode(message_type, body))

    def next_reply() -> protocol.Message:
        while True:
            assert peer.poll(10_000), "the broker did not answer"
            message = protocol.decode(peer.recv())
            if message.type != protocol.HEARTBEAT:
                return message

    try:
        for session in (1, 2):  # two hellos: the second starts session 2
            send(protocol.HELLO, {"role": "client", "name": "raw", "host": "h", "pid": os.getpid(), "session": session})
            welcome = next_reply()
            assert welcome.type == protocol.WELCOME and welcome.body["session"] == session
        acquire = {"op": "acquire", "name": "raw-lock", "owner": "o"}
        send(protocol.SYNC, {**acquire, "request": 1, "session": 1})
        send(protocol.SYNC, {**acquire, "request": 2, "session": 2})
        reply = next_reply()
        assert reply.type == protocol.REPLY and reply.body["request"] == 2 and reply.body["acquired"] is True
        send(protocol.SYNC, {"op": "locked", "name": "raw-lock", "request": 3, "session": 2})
        assert next_reply().body == {"request": 3, "locked": True, "holders": 1}, "request 1 was not dropped"
    finally:
        peer.close()
        context.term()
