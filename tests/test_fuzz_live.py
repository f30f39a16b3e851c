"""Property-based fuzzing of live processes: a broker, and a worker's link to its broker.

Hypothesis draws frames: random bytes, random msgpack values, and valid messages of
every type mutated (a field dropped, replaced, added; the version, type or body
changed; bytes flipped or cut; extra frames). At least 20,000 go to each target.
The properties checked afterwards: the target still serves normal jobs, every job
accepted before the fuzzing completed, and the broker's RSS grew less than 50 MB.

``transport`` runs each test twice: CURVE "off" (plain TCP) and "on" (every process keyed
from one folder made by runner/keys.py). With CURVE on, the fuzzing socket at the broker is
an authorized worker key whose routing id carries that key, so its frames pass the handshake
and the per-frame key check and reach the broker's logic; the fake broker a worker's link
is fuzzed from is a CURVE server with the broker's key. Peers without an authorized key
fuzz the CURVE broker too, and must get nothing done.
"""

from __future__ import annotations

import contextlib
import random
import socket as tcp
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zmq.utils.monitor import recv_monitor_message

import tasks
from cluster import wait_until
from runner import keys, protocol
from runner.handshake import EVENTS, HandshakeJudge

DRAWN, VARIANTS = 5, 4  # messages Hypothesis draws per example, and further mutations sent of each
EXAMPLES = 800  # 800 * 5 * (1 + 4) = 20,000 frames a target
RSS_GROWTH_LIMIT_KIB = 50 * 1024
BEFORE_JOBS = 100
UNAUTHORIZED_EXAMPLES = 20  # 20 * 5 * (1 + 4) = 500 frames from each peer without an authorized key
FUZZ_QUEUE = "fuzzq"  # fuzzed jobs go here; the jobs checked afterwards use another queue


@dataclass(frozen=True)
class Transport:
    """How every process and fuzzing socket of a test connects: CURVE keys from ``folder``, or none."""

    folder: Path | None

    @property
    def arguments(self) -> tuple[str, ...]:
        """What a broker or worker is started with."""
        return ("--curve-keys", str(self.folder)) if self.folder else ()

    @property
    def client_options(self) -> dict:
        return {"curve_keys": str(self.folder)} if self.folder else {}


@pytest.fixture(params=["off", "on"])
def transport(request, tmp_path) -> Transport:
    """CURVE off, or on with a fresh key folder holding one more worker key, "fuzzer", for the fuzzing socket."""
    if request.param == "off":
        return Transport(None)
    folder = tmp_path / "keys"
    keys.generate(folder)
    keys.add(folder, "worker", "fuzzer")
    return Transport(folder)


def plain_socket(context: zmq.Context, kind: int) -> zmq.Socket:
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    socket.setsockopt(zmq.SNDHWM, 0)
    return socket


def fuzzing_peer(context: zmq.Context, transport: Transport) -> zmq.Socket:
    """A DEALER for fuzzing a broker; with CURVE, an authorized worker key whose frames the broker takes."""
    socket = plain_socket(context, zmq.DEALER)
    if transport.folder:
        curve = keys.load_peer_keys(transport.folder / "fuzzer", "worker")
        socket.curve_serverkey, socket.curve_publickey, socket.curve_secretkey = curve.server, curve.public, curve.secret
        socket.setsockopt(zmq.ROUTING_ID, keys.peer_identity(b"w-", curve.public_text, uuid.uuid4().hex))
    return socket


def fake_broker_socket(context: zmq.Context, transport: Transport) -> zmq.Socket:
    """A ROUTER for fuzzing a worker's link; with CURVE, a server with the broker's key (no ZAP: any peer gets in)."""
    socket = plain_socket(context, zmq.ROUTER)
    if transport.folder:
        socket.curve_secretkey = keys.load_broker_keys(transport.folder)[1]
        socket.curve_server = True
    return socket


# --- frames ---------------------------------------------------------------------------------

values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=12) | st.binary(max_size=24),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
job_ids = st.sampled_from(["j-1", "j-2", "j-3", "", "x" * 300]) | st.text(max_size=8)
task_names = st.sampled_from(["tasks:add", "tasks:echo", "tasks:noop", "tasks:nope", "os:system", "tasks:_x",
                              "builtins:eval", "nomodule:f", "tasks"])
payloads = st.sampled_from([protocol.pack([[1, 2], {}]), protocol.pack([[], {}]), b"", b"\xc1", protocol.pack(7)])
pools = st.sampled_from(["process", "thread", "gpu"])
small_ints = st.integers(-3, 5)


def peer_templates() -> st.SearchStrategy[tuple[str, dict]]:
    """Valid-looking messages a client or worker sends the broker."""
    row = st.tuples(job_ids, task_names, pools, st.just(FUZZ_QUEUE), small_ints, payloads,
                    st.sampled_from([{}, {"retries": 1, "backoff": 0.0}, {"max_attempts": 1}])).map(list)
    result = st.tuples(job_ids, st.integers(1, 3), st.sampled_from(protocol.RESULT_STATUSES), payloads).map(list)
    hello = st.fixed_dictionaries({"role": st.sampled_from(protocol.ROLES), "name": st.just("fuzz"),
                                   "pid": st.just(1), "host": st.just("h"),
                                   "slots": st.just({"thread": 2}), "queues": st.just([FUZZ_QUEUE])})
    return st.one_of(
        hello.map(lambda body: (protocol.HELLO, body)),
        st.lists(row, max_size=3).map(lambda rows: (protocol.SUBMIT, {"jobs": rows})),
        st.lists(result, max_size=3).map(lambda rows: (protocol.RESULTS, {"results": rows})),
        st.sampled_from([protocol.HEARTBEAT, protocol.DRAIN, protocol.BYE]).map(lambda kind: (kind, {})),
        st.sampled_from([protocol.STATUS, protocol.DEAD_LETTERS]).map(lambda kind: (kind, {"request": 1})),
        job_ids.map(lambda job_id: (protocol.CANCEL, {"request": 2, "id": job_id, "force": True})),
        job_ids.map(lambda job_id: (protocol.FETCH, {"request": 3, "id": job_id})),
        job_ids.map(lambda job_id: (protocol.REQUEUE_JOB, {"request": 4, "id": job_id})),
        st.lists(job_ids, max_size=3).map(lambda ids: (protocol.ACK, {"ids": ids})),
        st.integers(0, 3).map(lambda count: (protocol.WAIT_WORKERS, {"request": 5, "count": count})),
        st.tuples(st.sampled_from(protocol.SYNC_OPS), st.sampled_from(["lock", "q", "ev"]), small_ints).map(
            lambda t: (protocol.SYNC, {"request": 6, "op": t[0], "name": t[1], "limit": t[2], "timeout": 0.05,
                                       "item": b"i", "blocking": False})),
        st.just((protocol.CREDIT, {"slots": {"thread": 2}})),
    )


def broker_templates() -> st.SearchStrategy[tuple[str, dict]]:
    """Valid-looking messages a broker sends a worker."""
    row = st.tuples(job_ids, st.integers(1, 3), task_names, pools, payloads,
                    st.sampled_from([None, 30.0, 0.0, -1]), small_ints).map(list)
    return st.one_of(
        st.lists(row, max_size=3).map(lambda rows: (protocol.JOBS, {"jobs": rows})),
        st.lists(job_ids, max_size=3).map(lambda ids: (protocol.STOP_JOBS, {"ids": ids})),
        st.just((protocol.WELCOME, {"heartbeat": 5.0, "liveness": 100, "limits": {"max_payload_bytes": 10**6}})),
        st.just((protocol.HEARTBEAT, {})),
        st.sampled_from(["invalid", "hello", "full"]).map(lambda code: (protocol.ERROR, {"message": "m", "code": code})),
        st.just((protocol.OUTCOMES, {"outcomes": [["j-1", "ok", b""]]})),
    )


@st.composite
def mutated(draw, templates: st.SearchStrategy[tuple[str, dict]]) -> list[bytes]:
    """One message (a list of frames): valid, mutated at the message level, at the byte level, or noise."""
    kind, body = draw(templates)
    body = dict(body)
    how = draw(st.sampled_from(["valid", "field", "drop", "add", "version", "type", "body", "bytes", "cut",
                                "noise", "value", "frames"]))
    if how == "field" and body:
        body[draw(st.sampled_from(sorted(body)))] = draw(values)
    elif how == "drop" and body:
        del body[draw(st.sampled_from(sorted(body)))]
    elif how == "add":
        body[draw(st.text(max_size=8))] = draw(values)
    envelope: list = [protocol.VERSION, kind, body]
    if how == "version":
        envelope[0] = draw(values)
    elif how == "type":
        envelope[1] = draw(values)
    elif how == "body":
        envelope[2] = draw(values)
    frame = msgpack.packb(envelope, use_bin_type=True)
    if how == "bytes" and frame:
        index = draw(st.integers(0, len(frame) - 1))
        frame = frame[:index] + bytes([draw(st.integers(0, 255))]) + frame[index + 1:]
    elif how == "cut":
        frame = frame[: draw(st.integers(0, len(frame)))]
    elif how == "noise":
        frame = draw(st.binary(max_size=64))
    elif how == "value":
        frame = msgpack.packb(draw(values), use_bin_type=True)
    if how == "frames":
        return [frame, draw(st.binary(max_size=16))]
    return [frame]


ODD_VALUES = [None, -1, 0, 2**63, 1.5, float("nan"), True, "", "x" * 300, b"", b"\xff", [], {}, [[]], {"": None}]


def variant(frames: list[bytes], rng: random.Random) -> list[bytes]:
    """A cheap further mutation of a drawn message, chosen by Hypothesis's own random source."""
    frame = frames[0]
    how = rng.randrange(5)
    if how == 0 and frame:
        index = rng.randrange(len(frame))
        return [frame[:index] + bytes([rng.randrange(256)]) + frame[index + 1:]]
    if how == 1:
        return [frame[: rng.randrange(len(frame) + 1)]]
    if how == 2:
        index = rng.randrange(len(frame) + 1)
        return [frame[:index] + rng.randbytes(rng.randrange(1, 8)) + frame[index:]]
    try:
        envelope = msgpack.unpackb(frame, strict_map_key=False)
    except Exception:
        return [rng.randbytes(rng.randrange(64))]
    if how == 3 and isinstance(envelope, list) and len(envelope) == 3 and isinstance(envelope[2], dict) and envelope[2]:
        envelope[2][rng.choice(sorted(envelope[2], key=repr))] = rng.choice(ODD_VALUES)
        return [msgpack.packb(envelope, use_bin_type=True)]
    return [frame, frame]  # the same message twice, as two frames of one


def fuzz(socket: zmq.Socket, templates: st.SearchStrategy[tuple[str, dict]],
         examples: int = EXAMPLES) -> tuple[int, Counter]:
    """Send ``examples`` * DRAWN * (1 + VARIANTS) messages on ``socket``; return how many were sent
    and the replies, by type (an error by its code: "error:invalid").

    Each example draws DRAWN messages and sends each with VARIANTS cheap mutations of it,
    so Hypothesis's generation (about a millisecond a message here) stays a fraction of the run.
    """
    sent = [0]
    replies: Counter = Counter()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(mutated(templates), min_size=DRAWN, max_size=DRAWN), st.randoms(use_true_random=False))
    def send(drawn: list[list[bytes]], rng: random.Random) -> None:
        for frames in drawn:
            socket.send_multipart(frames)
            for _ in range(VARIANTS):
                socket.send_multipart(variant(frames, rng))
            sent[0] += 1 + VARIANTS
        while socket.poll(0):
            replies[reply_kind(socket.recv_multipart()[-1])] += 1

    send()
    return sent[0], replies


def reply_kind(frame: bytes) -> str:
    try:
        message = protocol.decode(frame)
    except protocol.ProtocolError:
        return "undecodable"
    return f"error:{message.body.get('code')}" if message.type == protocol.ERROR else message.type


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


# --- the broker -----------------------------------------------------------------------------------


def test_fuzzed_frames_at_a_live_broker(processes, client_factory, transport):
    broker, address = processes.broker("--heartbeat", "0.2", "--max-invalid-frames", "1000000",
                                       "--journal", ":memory:", *transport.arguments, log_level="CRITICAL")
    processes.worker(address, "--processes", "1", "--threads", "4", "--queue", "checked", "--heartbeat", "0.2",
                     *transport.arguments)
    client = client_factory(address, **transport.client_options)
    client.wait_for_workers(1, timeout=30)
    before = [client.submit(tasks.sleep_then, 0.01, index, pool="thread", queue="checked", max_attempts=1000)
              for index in range(BEFORE_JOBS)]
    rss_before = rss_kib(broker.pid)

    context = zmq.Context()
    try:
        socket = fuzzing_peer(context, transport)
        socket.connect(address)
        sent, replies = fuzz(socket, peer_templates())
        socket.close()
    finally:
        context.term()

    assert sent >= 20_000
    # The frames reached the broker's logic: fuzzed hellos were welcomed, nothing was refused for its key.
    assert replies[protocol.WELCOME] > 0 and replies["error:invalid"] > 0, replies
    assert replies["error:denied"] == 0, replies
    assert [future.result(timeout=60) for future in before] == list(range(BEFORE_JOBS))
    assert client.submit(tasks.add, 2, 3, queue="checked").result(timeout=30) == 5
    assert client.submit(tasks.add, 2, 3, pool="thread", queue="checked").result(timeout=30) == 5
    assert broker.poll() is None
    growth = rss_kib(broker.pid) - rss_before
    assert growth < RSS_GROWTH_LIMIT_KIB, f"the broker's RSS grew by {growth} KiB"
    status = client.status()
    assert [worker["queues"] for worker in status["workers"]] == [["checked"]]  # the fuzzing 'worker' is gone


class Unheard:
    """A DEALER whose handshake is failing: ZeroMQ may have dropped its only pipe, and a send would block
    for ever, so a send that cannot be queued is skipped (it could not have reached the broker either)."""

    def __init__(self, socket: zmq.Socket) -> None:
        self.socket = socket
        self.poll, self.recv_multipart = socket.poll, socket.recv_multipart

    def send_multipart(self, frames: list[bytes]) -> None:
        with contextlib.suppress(zmq.Again):
            self.socket.send_multipart(frames, zmq.NOBLOCK)


def test_fuzzers_without_an_authorized_key_get_nothing_done(processes, client_factory, tmp_path):
    """CURVE on: peers with no key, an unknown key, or another broker's key, and raw TCP noise, change nothing."""
    folder = tmp_path / "keys"
    keys.generate(folder)
    keys.add(folder, "admin", "root")
    broker, address = processes.broker("--heartbeat", "0.2", "--journal", ":memory:", "--curve-keys", str(folder),
                                       log_level="CRITICAL")
    processes.worker(address, "--processes", "1", "--threads", "2", "--queue", "checked", "--heartbeat", "0.2",
                     "--curve-keys", str(folder))
    client = client_factory(address, curve_keys=str(folder))
    client.wait_for_workers(1, timeout=30)
    good = keys.load_peer_keys(folder, "worker")
    stranger_public, stranger_secret = zmq.curve_keypair()
    peers = {  # what: (server key, own pair or None, the key its routing id claims)
        "no key": (None, None, good.public_text),  # and a routing id forging an authorized worker's key
        "an unknown key": (good.server, (stranger_public, stranger_secret), stranger_public.decode()),
        "another broker's key": (zmq.curve_keypair()[0], (good.public, good.secret), good.public_text),
    }
    job_ids = [f"intruder-{index}" for index in range(len(peers))]
    context = zmq.Context()
    try:
        judged = {}
        for (what, (server, pair, claimed)), job_id in zip(peers.items(), job_ids):
            socket = plain_socket(context, zmq.DEALER)
            if server is not None:
                socket.curve_serverkey, (socket.curve_publickey, socket.curve_secretkey) = server, pair
            socket.setsockopt(zmq.ROUTING_ID, keys.peer_identity(b"w-", claimed, uuid.uuid4().hex))
            monitor = socket.get_monitor_socket(EVENTS)
            socket.connect(address)
            hello = {"role": "worker", "name": "intruder", "pid": 1, "host": "h", "slots": {"thread": 2},
                     "queues": ["checked"]}
            row = [job_id, "tasks:add", "thread", "checked", 0, protocol.pack([[1, 2], {}]), {}]
            socket.send_multipart([protocol.encode(protocol.HELLO, hello)])
            socket.send_multipart([protocol.encode(protocol.SUBMIT, {"jobs": [row]})])
            sent, replies = fuzz(Unheard(socket), peer_templates(), examples=UNAUTHORIZED_EXAMPLES)
            assert sent >= 500 and not replies, f"{what}: {replies}"
            judged[what] = (socket, monitor, HandshakeJudge(address, what, server is not None))
        host, port = address[len("tcp://"):].rsplit(":", 1)
        with tcp.create_connection((host, int(port)), timeout=10) as raw, contextlib.suppress(OSError):
            raw.sendall(random.Random(15).randbytes(256 * 1024))  # not even ZMTP: the broker may hang up mid-way

        failures: dict[str, str] = {}

        def all_refused() -> bool:
            for what, (_, monitor, judge) in judged.items():
                while what not in failures and monitor.poll(0):
                    event = recv_monitor_message(monitor)
                    failure = judge.event(event["event"], event["value"])
                    if failure is not None:
                        failures[what] = failure
            return len(failures) == len(judged)

        wait_until(all_refused, timeout=30, message="every unauthorized peer's handshake refused")
        assert all("authentication failed" in failure for failure in failures.values()), failures
        for what, (socket, _, _) in judged.items():
            assert socket.poll(0) == 0, f"{what} got an answer"
    finally:
        context.destroy(linger=0)

    admin = client_factory(address, curve_keys=str(folder / "root"))
    assert [admin.fetch(job_id)["state"] for job_id in job_ids] == ["unknown"] * len(job_ids)
    assert [worker["queues"] for worker in admin.status()["workers"]] == [["checked"]]
    assert client.submit(tasks.add, 2, 3, queue="checked").result(timeout=30) == 5
    assert broker.poll() is None


# --- a worker's link -------------------------------------------------------------------------------


def test_fuzzed_frames_at_a_live_workers_link(processes, transport):
    context = zmq.Context()
    try:
        fake_broker = fake_broker_socket(context, transport)
        fake_broker.bind("tcp://127.0.0.1:*")
        address = fake_broker.getsockopt_string(zmq.LAST_ENDPOINT)
        worker = processes.worker(address, "--processes", "1", "--threads", "2", "--heartbeat", "0.2",
                                  "--queue", FUZZ_QUEUE, "--log-level", "CRITICAL", *transport.arguments)
        identity = welcome_worker(fake_broker)

        class Peer:  # a DEALER-shaped view of the ROUTER: every frame goes to the worker
            @staticmethod
            def send_multipart(frames: list[bytes]) -> None:
                fake_broker.send_multipart([identity, *frames])

            poll, recv_multipart = fake_broker.poll, fake_broker.recv_multipart

        sent, replies = fuzz(Peer, broker_templates())
        assert sent >= 20_000
        assert replies[protocol.RESULTS] > 0, replies  # the fuzzed frames reached the worker: it ran some jobs
        assert worker.poll() is None, "the worker died of fuzzed frames"
        # A hello the fuzzed "say hello" errors drew, swallowed by the fuzzer, is welcomed now: a worker
        # sends results only to a broker that welcomed its latest hello (it holds them until then).
        Peer.send_multipart([protocol.encode(protocol.WELCOME, {"heartbeat": 5.0, "liveness": 100})])
        # Afterwards it still runs jobs it is sent (within its credit: one a pool at a time) and answers each.
        for index in range(5):
            rows = [[f"after-{index}-{pool}", 1, "tasks:add", pool, protocol.pack([[index, 1], {}]), None, 0]
                    for pool in ("thread", "process")]
            Peer.send_multipart([protocol.encode(protocol.JOBS, {"jobs": rows})])
            answered = collect_results(fake_broker, {row[0] for row in rows})
            assert answered == {row[0]: (protocol.OK, index + 1) for row in rows}
    finally:
        context.destroy(linger=0)


def welcome_worker(router: zmq.Socket) -> bytes:
    """Wait for the worker's hello and welcome it; return its identity."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if router.poll(1000):
            identity, frame = router.recv_multipart()
            if protocol.decode(frame).type == protocol.HELLO:
                router.send_multipart([identity, protocol.encode(protocol.WELCOME, {"heartbeat": 5.0, "liveness": 100})])
                return identity
    raise AssertionError("the worker did not say hello within 30s")


def collect_results(router: zmq.Socket, wanted: set[str]) -> dict:
    """Results for the ``wanted`` job ids (status, value), ignoring everything else; bounded in time."""
    answered: dict = {}
    deadline = time.monotonic() + 60

    def done() -> bool:
        while router.poll(0):
            _, *frames = router.recv_multipart()
            message = protocol.decode(frames[0])
            if message.type == protocol.HELLO:  # it registers again after a fuzzed error: welcome it
                router.send_multipart([_, protocol.encode(protocol.WELCOME, {"heartbeat": 5.0, "liveness": 100})])
            if message.type != protocol.RESULTS:
                continue
            for job_id, _attempt, status, blob in message.body["results"]:
                if job_id in wanted:
                    answered[job_id] = (status, protocol.unpack(blob) if status == protocol.OK else blob)
        return set(answered) == wanted

    wait_until(done, timeout=max(1.0, deadline - time.monotonic()), message="results for every job sent afterwards")
    return answered
