"""The event loop on a thread of its own: wake-ups, timers, and real zmq sockets.

Every wait has a deadline, and a test waits on an Event set by the loop, never on a
sleep. A lost wake-up or a missed zmq edge shows up as a timeout: the loops of the
wake-up and socket tests have no timers that would wake them by chance.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from runner import protocol, transport
from runner.loop import EventLoop
from runner.transport import DealerLink, RouterLink, bind_router, connect_dealer

TIMEOUT = 10.0  # seconds any single wait may take before the test fails


class LoopThread:
    """Runs ``loop.run()`` on a thread; remembers an exception that ended it."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.error: BaseException | None = None
        self.exited = threading.Event()
        self.thread = threading.Thread(target=self._run, name="test-loop", daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run()
        except BaseException as exc:  # noqa: BLE001 - the loop must never die: the test reports it
            self.error = exc
        finally:
            self.exited.set()

    def stop(self) -> None:
        self.loop.stop()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), f"the loop did not stop within {TIMEOUT} s"


@contextlib.contextmanager
def running(loop: EventLoop) -> Iterator[LoopThread]:
    """Run the loop on a thread for the ``with`` block; it must stop and not have crashed."""
    runner = LoopThread(loop)
    runner.thread.start()
    try:
        yield runner
    finally:
        runner.stop()
    assert runner.error is None, f"the loop crashed: {runner.error!r}"


def wait(event: threading.Event, what: str | Callable[[], str]) -> None:
    """Wait for ``event``; ``what`` may be a callable, to describe the progress at the timeout."""
    if not event.wait(TIMEOUT):
        raise AssertionError(f"timed out after {TIMEOUT} s waiting for {what() if callable(what) else what}")


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` with short Event waits (for states no callback announces)."""
    ticker = threading.Event()
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {TIMEOUT} s waiting for {what}"
        ticker.wait(0.005)


@pytest.fixture
def loop() -> Iterator[EventLoop]:
    loop = EventLoop()
    yield loop
    loop.close()


@pytest.fixture
def context() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


# --- callbacks from other threads ----------------------------------------------------------

THREADS = 8
PER_THREAD = 2000


def test_call_soon_threadsafe_from_many_threads_runs_every_callback_once(loop):
    total = THREADS * PER_THREAD
    runs: collections.Counter = collections.Counter()
    calls = 0
    done = threading.Event()

    def callback(key: tuple[int, int]) -> None:  # runs on the loop thread only
        nonlocal calls
        runs[key] += 1
        calls += 1
        if calls == total:
            done.set()
            loop.stop()

    start = threading.Barrier(THREADS)

    def post(thread: int) -> None:
        start.wait(TIMEOUT)
        for i in range(PER_THREAD):
            loop.call_soon_threadsafe(functools.partial(callback, (thread, i)))

    posters = [threading.Thread(target=post, args=(t,), daemon=True) for t in range(THREADS)]
    with running(loop):
        for poster in posters:
            poster.start()
        wait(done, lambda: f"{total} callbacks (ran {calls})")
    for poster in posters:
        poster.join(TIMEOUT)
        assert not poster.is_alive()
    assert len(runs) == total and set(runs.values()) == {1}


def test_a_sleeping_loop_wakes_for_every_callback(loop):
    # Each thread waits for its callback before posting the next, so the loop goes
    # back to sleep (select with no timeout) between them: a lost wake-up hangs here.
    rounds, threads = 300, 4
    failures: list[str] = []

    def ping_pong(thread: int) -> None:
        ran = threading.Event()
        for i in range(rounds):
            ran.clear()
            loop.call_soon_threadsafe(ran.set)
            if not ran.wait(TIMEOUT):
                failures.append(f"thread {thread}: callback {i} never ran")
                return

    with running(loop):
        players = [threading.Thread(target=ping_pong, args=(t,), daemon=True) for t in range(threads)]
        for player in players:
            player.start()
        for player in players:
            player.join(TIMEOUT * 2)
            assert not player.is_alive()
    assert failures == []


def test_callbacks_queued_before_run_are_run(loop):
    ran = threading.Event()
    loop.call_soon_threadsafe(ran.set)
    with running(loop):
        wait(ran, "a callback queued before run()")


def test_a_stop_before_run_is_honoured(loop):
    loop.stop()
    runner = LoopThread(loop)
    runner.thread.start()
    assert runner.exited.wait(TIMEOUT), "run() after stop() did not return"
    assert runner.error is None


def test_a_callback_that_raises_does_not_stop_the_loop(loop):
    after = threading.Event()

    def boom() -> None:
        raise RuntimeError("a callback failed on purpose")

    with running(loop):
        loop.call_soon_threadsafe(boom)
        loop.call_soon_threadsafe(after.set)
        wait(after, "the callback after the raising one")
        after.clear()
        loop.call_soon_threadsafe(lambda: loop.call_later(0.0, boom))
        loop.call_soon_threadsafe(lambda: loop.call_later(0.001, after.set))
        wait(after, "the timer after the raising one")


def test_at_end_of_turn_runs_after_the_turns_callbacks(loop):
    order: list[str] = []
    done = threading.Event()

    def first() -> None:
        order.append("callback")
        loop.at_end_of_turn(lambda: order.append("end of turn"))
        loop.call_soon(lambda: (order.append("next turn"), done.set()))

    loop.call_soon_threadsafe(first)
    loop.call_soon_threadsafe(lambda: order.append("same turn"))
    with running(loop):
        wait(done, "the next turn")
    assert order == ["callback", "same turn", "end of turn", "next turn"]


# --- timers --------------------------------------------------------------------------------------


def test_call_later_runs_in_time_order_and_skips_cancelled_timers(loop):
    order: list[str] = []
    done = threading.Event()
    # Scheduled before run(): until then the main thread is the loop's thread.
    loop.call_later(0.03, lambda: order.append("30ms"))
    loop.call_later(0.01, lambda: order.append("10ms"))
    cancelled = loop.call_later(0.015, lambda: order.append("cancelled"))
    loop.call_later(0.02, lambda: order.append("20ms"))
    loop.call_later(0.0, lambda: order.append("now"))
    loop.call_later(3600, lambda: order.append("an hour")).cancel()
    loop.call_later(0.04, done.set)
    cancelled.cancel()
    with running(loop):
        wait(done, "the last timer")
    assert order == ["now", "10ms", "20ms", "30ms"]


def test_timers_with_the_same_delay_run_in_the_order_they_were_set(loop):
    order: list[int] = []
    done = threading.Event()
    for i in range(20):
        loop.call_later(0.01, functools.partial(order.append, i))
    loop.call_later(0.02, done.set)
    with running(loop):
        wait(done, "the timers")
    assert order == list(range(20))


def test_a_timer_never_runs_early(loop):
    delay = 0.05
    ran_after: list[float] = []
    done = threading.Event()

    def schedule() -> None:
        started = time.monotonic()
        loop.call_later(delay, lambda: (ran_after.append(time.monotonic() - started), done.set()))

    with running(loop):
        loop.call_soon_threadsafe(schedule)
        wait(done, "the timer")
    assert ran_after[0] >= delay


def test_a_timer_cancelled_by_an_earlier_callback_does_not_run(loop):
    ran: list[str] = []
    done = threading.Event()

    def schedule() -> None:
        victim = loop.call_later(0.02, lambda: ran.append("victim"))
        loop.call_later(0.01, victim.cancel)
        loop.call_later(0.03, done.set)

    with running(loop):
        loop.call_soon_threadsafe(schedule)
        wait(done, "the timers")
    assert ran == []


def test_call_every_keeps_ticking_when_the_callback_raises(loop):
    ticks = 0
    done = threading.Event()

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 5:
            done.set()
        raise RuntimeError("a periodic callback failed on purpose")

    loop.call_every(0.002, tick)
    with running(loop):
        wait(done, "five ticks of a raising periodic callback")


def test_call_every_stops_once_cancelled(loop):
    ticks = 0
    settled = threading.Event()

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 3:
            handle.cancel()
            loop.call_later(0.03, settled.set)  # fifteen intervals later

    handle = loop.call_every(0.002, tick)
    never = loop.call_every(0.001, lambda: pytest.fail("a timer cancelled before its first tick ran"))
    never.cancel()
    with running(loop):
        wait(settled, "time after the cancel")
    assert ticks == 3


# --- zmq sockets (edge-triggered file descriptors) -------------------------------------------------

BURST = 1000
BURSTS = 5


def endpoint_of(kind: str, name: str) -> str:
    return f"inproc://{name}" if kind == "inproc" else "tcp://127.0.0.1:*"


def pair_sockets(context: zmq.Context, kind: str, name: str) -> tuple[zmq.Socket, zmq.Socket]:
    """Two connected PAIR sockets with no high-water mark."""
    left, right = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    for socket in (left, right):
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.SNDHWM, 0)
        socket.setsockopt(zmq.RCVHWM, 0)
    left.bind(endpoint_of(kind, name))
    right.connect(left.getsockopt_string(zmq.LAST_ENDPOINT))
    # A PAIR cannot send before it is connected: shake hands both ways first (on this
    # thread, before the loop's thread takes the sockets over).
    for one, other in ((left, right), (right, left)):
        one.setsockopt(zmq.SNDTIMEO, int(TIMEOUT * 1000))
        other.setsockopt(zmq.RCVTIMEO, int(TIMEOUT * 1000))
        one.send(b"handshake")
        assert other.recv() == b"handshake"
    return left, right


def receive_some(socket: zmq.Socket, limit: int | None) -> list[bytes]:
    """What a handler reads in one call: everything, or at most ``limit`` messages."""
    frames = []
    while limit is None or len(frames) < limit:
        try:
            frames.append(socket.recv(zmq.NOBLOCK))
        except zmq.Again:
            break
    return frames


@pytest.mark.parametrize("kind", ["inproc", "tcp"])
@pytest.mark.parametrize("limit", [None, 7], ids=["drain-all", "seven-per-call"])
def test_bursts_echoed_between_two_sockets_all_arrive(loop, context, kind, limit):
    # Both sockets live on the loop and send from inside their read handlers, the case
    # where a send eats the other direction's edge. The loop has no timers: if it ever
    # sleeps with messages waiting, nothing wakes it and the wait below times out.
    sender, echoer = pair_sockets(context, kind, f"echo-{limit}")
    received: list[int] = []
    sent = 0
    done = threading.Event()

    def send_burst() -> None:
        nonlocal sent
        for _ in range(BURST):
            sender.send(b"%d" % sent, zmq.NOBLOCK)
            sent += 1

    def on_echoer() -> None:
        for frame in receive_some(echoer, limit):
            echoer.send(frame, zmq.NOBLOCK)

    def on_sender() -> None:
        for frame in receive_some(sender, limit):
            received.append(int(frame))
        if len(received) == sent < BURST * BURSTS:
            send_burst()
        elif len(received) == BURST * BURSTS:
            done.set()

    loop.add_socket(sender, on_sender)
    loop.add_socket(echoer, on_echoer)
    with running(loop):
        loop.call_soon_threadsafe(send_burst)
        wait(done, lambda: f"{BURST * BURSTS} echoes (got {len(received)})")
    assert received == list(range(BURST * BURSTS))


@pytest.mark.parametrize("kind", ["inproc", "tcp"])
def test_bursts_from_the_loop_thread_are_all_received(loop, context, kind):
    # One way only: the receiver is the only watched socket, and each burst is sent by
    # a timer-free callback on the loop thread after the previous one was read.
    sender, receiver = pair_sockets(context, kind, "one-way")
    received = 0
    done = threading.Event()

    def send_burst() -> None:
        for _ in range(BURST):
            sender.send(b"x", zmq.NOBLOCK)

    def on_receiver() -> None:
        nonlocal received
        received += len(receive_some(receiver, None))
        if received == BURST * BURSTS:
            done.set()
        elif received % BURST == 0:
            loop.call_soon(send_burst)

    loop.add_socket(receiver, on_receiver)
    with running(loop):
        loop.call_soon_threadsafe(send_burst)
        wait(done, lambda: f"{BURST * BURSTS} messages (got {received})")


def links(loop: EventLoop, context: zmq.Context, on_frame, on_message) -> tuple[RouterLink, DealerLink]:
    """A RouterLink and a DealerLink connected over TCP, both on ``loop``."""
    router_socket, address = bind_router(context, "tcp://127.0.0.1:*")
    router = RouterLink(loop, router_socket, on_frame, on_unreachable=lambda peer: None)
    dealer = DealerLink(loop, connect_dealer(context, address, b"peer-1"), on_message)
    return router, dealer


def test_dealer_and_router_links_echo_bursts_in_order(loop, context):
    received: list[int] = []
    sent = 0
    done = threading.Event()

    def on_frame(peer: bytes, frame: bytes) -> None:
        router.send(peer, protocol.HEARTBEAT, protocol.decode(frame).body)

    def on_message(message: protocol.Message) -> None:
        received.append(message.body["seq"])
        if len(received) == BURST * BURSTS:
            done.set()
        elif len(received) == sent:
            send_burst()

    def send_burst() -> None:
        nonlocal sent
        for _ in range(BURST):
            dealer.send(protocol.HEARTBEAT, {"seq": sent})
            sent += 1

    router, dealer = links(loop, context, on_frame, on_message)
    with running(loop):
        loop.call_soon_threadsafe(send_burst)
        wait(done, lambda: f"{BURST * BURSTS} echoes (got {len(received)})")
    assert received == list(range(BURST * BURSTS))


def test_dealer_link_sends_from_other_threads_and_the_loop_still_hears_every_echo(loop, context):
    # Threads send on the link while the loop sleeps in select; their sends read the
    # socket's state and can eat the edge that would wake the loop for an echo. The loop
    # has no timers: if it ever slept with echoes waiting, the wait below would time out.
    threads, per_thread = 4, BURST * BURSTS
    received: dict[int, list[int]] = collections.defaultdict(list)
    done = threading.Event()

    def on_frame(peer: bytes, frame: bytes) -> None:
        router.send(peer, protocol.HEARTBEAT, protocol.decode(frame).body)

    def on_message(message: protocol.Message) -> None:
        received[message.body["thread"]].append(message.body["seq"])
        if sum(map(len, received.values())) == threads * per_thread:
            done.set()

    def send_all(thread: int) -> None:
        for seq in range(per_thread):
            dealer.send(protocol.HEARTBEAT, {"thread": thread, "seq": seq})

    router, dealer = links(loop, context, on_frame, on_message)
    with running(loop):
        senders = [threading.Thread(target=send_all, args=(number,)) for number in range(threads)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        wait(done, lambda: f"{threads * per_thread} echoes (got {sum(map(len, received.values()))})")
    assert all(received[number] == list(range(per_thread)) for number in range(threads)), "each thread's in order"


def test_a_closed_dealer_link_drops_sends_from_any_thread(loop, context):
    _, dealer = links(loop, context, on_frame=lambda peer, frame: None, on_message=lambda message: None)
    dealer.close()
    errors: list[BaseException] = []

    def send() -> None:
        try:
            dealer.send(protocol.HEARTBEAT)
        except BaseException as exc:  # noqa: BLE001 - the test reports whatever escaped
            errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    sender.join()
    send()
    assert errors == [], "a reconnect closes links that other threads may still send on"


@pytest.mark.parametrize("kind", ["inproc", "tcp"])
def test_dealer_link_outbox_with_a_tiny_high_water_mark_delivers_everything_in_order(loop, context, kind):
    router_socket = context.socket(zmq.ROUTER)
    router_socket.setsockopt(zmq.LINGER, 0)
    router_socket.setsockopt(zmq.RCVHWM, 1)
    router_socket.bind(endpoint_of(kind, "tiny-hwm"))
    dealer_socket = context.socket(zmq.DEALER)
    dealer_socket.setsockopt(zmq.LINGER, 0)
    dealer_socket.setsockopt(zmq.SNDHWM, 1)
    dealer_socket.connect(router_socket.getsockopt_string(zmq.LAST_ENDPOINT))

    total = 3 * 2000
    received: list[int] = []
    outbox_sizes: list[int] = []
    done = threading.Event()

    def on_frame(peer: bytes, frame: bytes) -> None:
        received.append(protocol.decode(frame).body["seq"])
        if len(received) == total:
            done.set()

    def send_burst(first: int) -> None:
        for seq in range(first, first + 2000):
            dealer.send(protocol.HEARTBEAT, {"seq": seq})
        outbox_sizes.append(len(dealer._outbox))  # how much had to wait for room

    RouterLink(loop, router_socket, on_frame, on_unreachable=lambda peer: None)
    dealer = DealerLink(loop, dealer_socket, on_message=lambda message: None)
    with running(loop):
        # Three bursts, each queued behind what the one before could not send yet.
        for first in (0, 2000, 4000):
            loop.call_soon_threadsafe(functools.partial(send_burst, first))
        wait(done, lambda: f"{total} messages (got {len(received)})")
    assert received == list(range(total))
    assert not dealer._outbox
    assert outbox_sizes[0] > 0, "the high-water mark never filled: the outbox went untested"


def test_router_link_retries_a_full_peer_pipe_in_order(loop, context):
    router_socket = context.socket(zmq.ROUTER)
    router_socket.setsockopt(zmq.LINGER, 0)
    router_socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # as bind_router: a full pipe raises EAGAIN
    router_socket.setsockopt(zmq.SNDHWM, 50)  # before bind: the listener copies the options
    router_socket.bind("tcp://127.0.0.1:*")
    address = router_socket.getsockopt_string(zmq.LAST_ENDPOINT)
    dealer_socket = context.socket(zmq.DEALER)
    dealer_socket.setsockopt(zmq.LINGER, 0)
    dealer_socket.setsockopt(zmq.RCVHWM, 1)
    dealer_socket.setsockopt(zmq.ROUTING_ID, b"slow-peer")
    dealer_socket.connect(address)

    total = 1000  # a retry every ROUTER_RETRY sends what fits: 1000 / 50 makes about 20
    received: list[int] = []
    unreachable: list[bytes] = []
    waiting: list[int] = []
    done = threading.Event()

    def on_frame(peer: bytes, frame: bytes) -> None:  # the peer said hello: flood it
        for seq in range(total):
            router.send(peer, protocol.HEARTBEAT, {"seq": seq})
        waiting.append(len(router._outboxes.get(peer, ())))  # how much the retry timer must send

    def on_message(message: protocol.Message) -> None:
        received.append(message.body["seq"])
        if len(received) == total:
            done.set()

    router = RouterLink(loop, router_socket, on_frame, on_unreachable=unreachable.append)
    dealer = DealerLink(loop, dealer_socket, on_message)
    with running(loop):
        loop.call_soon_threadsafe(lambda: dealer.send(protocol.HELLO, {}))
        wait(done, lambda: f"{total} messages (got {len(received)})")
    assert received == list(range(total))
    assert unreachable == [] and not router._outboxes
    assert waiting[0] > 0


def test_router_link_reports_an_unknown_peer(loop, context):
    socket, _ = bind_router(context, "tcp://127.0.0.1:*")
    unreachable: list[bytes] = []
    router = RouterLink(loop, socket, on_frame=lambda peer, frame: None, on_unreachable=unreachable.append)
    router.send(b"ghost", protocol.HEARTBEAT)
    assert unreachable == [b"ghost"]


def test_a_callback_may_remove_and_close_another_socket(loop, context):
    first_in, first_out = pair_sockets(context, "inproc", "first")
    second_in, _second_out = pair_sockets(context, "inproc", "second")
    closed = threading.Event()

    def on_first() -> None:
        receive_some(first_in, None)
        second.close()  # remove_socket, then close: the order remove_socket asks for
        closed.set()

    loop.add_socket(first_in, on_first)  # served before `second` in the same turn
    second = DealerLink(loop, second_in, on_message=lambda message: None)
    after = threading.Event()
    runner = LoopThread(loop)
    runner.thread.start()
    try:
        first_out.send(b"close the other one")
        wait(closed, "the socket to be closed")
        loop.call_soon_threadsafe(after.set)
        wait_until(lambda: after.is_set() or runner.exited.is_set(), "the next turn")
        assert runner.error is None, f"the loop crashed: {runner.error!r}"
    finally:
        runner.stop()


def test_router_link_holds_a_bounded_outbox_for_a_peer_that_reads_nothing(loop, context, monkeypatch):
    monkeypatch.setattr(transport, "OUTBOX_LIMIT", 50)
    monkeypatch.setattr(transport, "HIGH_WATER_MARK", 10)
    socket, address = bind_router(context, "tcp://127.0.0.1:*")
    unreachable: list[bytes] = []
    peers: list[bytes] = []
    router = RouterLink(loop, socket, on_frame=lambda peer, frame: peers.append(peer),
                        on_unreachable=unreachable.append)
    silent = context.socket(zmq.DEALER)
    silent.setsockopt(zmq.RCVHWM, 10)
    silent.setsockopt(zmq.LINGER, 0)
    silent.connect(address)
    silent.send(protocol.encode(protocol.HELLO, {}))
    deadline = time.monotonic() + 10
    while not peers and time.monotonic() < deadline:
        socket.poll(100)
        router._drain()
    for seq in range(10_000):  # far beyond both high-water marks and the outbox limit
        router.send(peers[0], protocol.HEARTBEAT, {"seq": seq, "pad": b"x" * 10_000})  # past the kernel's buffers
        if unreachable:
            break
    assert unreachable == peers and len(router._outboxes.get(peers[0], ())) <= 50
    silent.close()


def test_a_router_drain_yields_to_a_timer_that_came_due(loop, context):
    """A busy ROUTER socket does not hold back a due timer (a delayed job's, say) until it is drained."""
    router_socket = context.socket(zmq.ROUTER)
    router_socket.setsockopt(zmq.LINGER, 0)
    router_socket.bind("tcp://127.0.0.1:*")
    dealer_socket = context.socket(zmq.DEALER)
    dealer_socket.setsockopt(zmq.LINGER, 0)
    dealer_socket.connect(router_socket.getsockopt_string(zmq.LAST_ENDPOINT))
    order: list = []
    done = threading.Event()

    def on_frame(peer: bytes, frame: bytes) -> None:
        order.append(protocol.decode(frame).body["seq"])
        if order == [0]:
            loop.call_later(0.0, lambda: order.append("timer"))
        if len(order) == 51:
            done.set()

    RouterLink(loop, router_socket, on_frame, on_unreachable=lambda peer: None)
    for seq in range(50):
        dealer_socket.send(protocol.encode(protocol.HEARTBEAT, {"seq": seq}))
    with running(loop):
        wait(done, lambda: f"50 messages and the timer (got {order})")
    assert order[:2] == [0, "timer"] and order[2:] == list(range(1, 50))
    dealer_socket.close()


def test_timer_due_says_whether_a_timer_came_due(loop):
    assert not loop.timer_due()
    loop.call_later(3600.0, lambda: None)
    assert not loop.timer_due()
    loop.call_later(0.0, lambda: None)
    assert loop.timer_due()
