"""runner.asyncio_loop: a DealerLink served by an asyncio loop over real zmq sockets, edges and timers included."""

from __future__ import annotations

import asyncio
import threading

import zmq

from runner import protocol
from runner.asyncio_loop import AsyncioLoop
from runner.transport import DealerLink

ROUNDS = 2_000
BURST = 5_000  # messages, each read in a turn of its own (AsyncioLoop.drain_limit)


def sockets() -> tuple[zmq.Context, zmq.Socket, zmq.Socket]:
    """A ROUTER and a DEALER connected over 127.0.0.1, with no high-water mark to drop a burst."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.SNDHWM, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.RCVHWM, 0)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    return context, router, dealer


def echo_until(router: zmq.Socket, rounds: int) -> None:
    """Answer each message the dealer sends with a reply carrying the same number, ``rounds`` times."""
    for _ in range(rounds):
        if not router.poll(10_000):
            return  # the test fails on its side: it did not get every reply
        identity, frame = router.recv_multipart()
        number = protocol.decode(frame).body["request"]
        router.send_multipart([identity, protocol.encode(protocol.REPLY, {"request": number})])


def test_a_ping_pong_never_loses_an_edge():
    """Each reply makes the loop send the next request: a send that consumed a message's edge would stall it."""
    context, router, dealer = sockets()
    echo = threading.Thread(target=echo_until, args=(router, ROUNDS))
    echo.start()

    async def body() -> list[int]:
        adapter = AsyncioLoop(asyncio.get_running_loop())
        received: list[int] = []
        finished = asyncio.get_running_loop().create_future()
        link: DealerLink

        def on_message(message: protocol.Message) -> None:
            received.append(message.body["request"])
            if len(received) == ROUNDS:
                finished.set_result(None)
            else:
                link.send(protocol.STATUS, {"request": len(received) + 1})

        link = DealerLink(adapter, dealer, on_message)  # type: ignore[arg-type] - the loop's interface
        link.send(protocol.STATUS, {"request": 1})
        await asyncio.wait_for(finished, 60)
        link.close()
        return received

    try:
        assert asyncio.run(body()) == list(range(1, ROUNDS + 1))
    finally:
        echo.join(timeout=15)
        for socket in (router, dealer):
            socket.close(linger=0)
        context.term()


def test_a_burst_that_arrives_while_the_loop_sleeps_is_served_in_batches():
    context, router, dealer = sockets()

    async def body() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        adapter = AsyncioLoop(loop)
        received: list[int] = []
        turns_between = [0]
        everything = loop.create_future()

        def on_message(message: protocol.Message) -> None:
            received.append(message.body["request"])
            if len(received) == BURST:
                everything.set_result(None)

        async def other_coroutine() -> None:  # gets turns while the burst is served
            while not everything.done():
                turns_between[0] += 1
                await asyncio.sleep(0)

        link = DealerLink(adapter, dealer, on_message)  # type: ignore[arg-type]
        link.send(protocol.HEARTBEAT)
        identity, _ = router.recv_multipart()
        for number in range(BURST):  # they arrive while this coroutine holds the loop
            router.send_multipart([identity, protocol.encode(protocol.REPLY, {"request": number})])
        other = asyncio.ensure_future(other_coroutine())
        await asyncio.wait_for(everything, 60)
        await other
        link.close()
        return len(received), turns_between[0]

    try:
        count, turns = asyncio.run(body())
        assert count == BURST
        assert turns >= 3  # served in bounded batches, not in one callback that holds the loop
    finally:
        for socket in (router, dealer):
            socket.close(linger=0)
        context.term()


def test_call_every_repeats_until_cancelled_and_leaves_no_timer():
    async def body() -> int:
        loop = asyncio.get_running_loop()
        adapter = AsyncioLoop(loop)
        ticks: list[float] = []
        fifth = loop.create_future()

        def tick() -> None:
            ticks.append(loop.time())
            if len(ticks) == 5:
                fifth.set_result(None)

        handle = adapter.call_every(0.01, tick)
        await asyncio.wait_for(fifth, 10)
        handle.cancel()
        assert not [timer for timer in loop._scheduled if not timer.cancelled()]  # noqa: SLF001
        return len(ticks)

    assert asyncio.run(body()) == 5
