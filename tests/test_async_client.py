"""runner.AsyncClient against a real broker and real workers: the Client's behaviour, awaited on one loop."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import statistics
import sys
import threading
import time
from concurrent.futures import CancelledError as JobCancelledError

import pytest
from tasks import add, echo, fail, fail_custom, sleep_then, square

from cluster import ROOT

import runner

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not an installed package

from benchmarks.lag import LagMeter  # noqa: E402

RUN_LIMIT = 120  # seconds any one test's coroutine may take


def run(coroutine) -> object:
    """Run one test's coroutine on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coroutine, RUN_LIMIT))


async def eventually(condition, timeout: float, message: str) -> None:
    """Await until ``condition()`` (a coroutine function) holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"{message} did not hold within {timeout}s"
        await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def address(two_workers) -> str:
    return two_workers.address


def test_submit_returns_a_future_at_once_and_gather_gives_every_result(address):
    async def body():
        async with runner.AsyncClient(address) as client:
            futures = [client.submit(add, index, 1) for index in range(300)]
            assert all(isinstance(future, runner.AsyncJobFuture) and future.job_id for future in futures)
            assert len({future.job_id for future in futures}) == 300
            assert not futures[-1].done()
            assert await asyncio.gather(*futures) == [index + 1 for index in range(300)]
            assert await client.submit("tasks:echo", {"a": [1, b"x"]}, pool="thread") == {"a": [1, b"x"]}

    run(body())


def test_map_gives_results_in_input_order_and_stops_cleanly_when_left(address):
    async def body():
        async with runner.AsyncClient(address) as client:
            assert [value async for value in client.map(square, range(500))] == [x * x for x in range(500)]
            assert [value async for value in client.map(add, [1, 2], [10, 20], pool="thread")] == [11, 22]
            seen = []
            async for value in client.map(sleep_then, [0.0] * 5 + [2.0] * 20, range(25), pool="thread"):
                seen.append(value)
                if len(seen) == 5:
                    break
            assert seen == [0, 1, 2, 3, 4]
            with pytest.raises(TypeError, match="unexpected options"):
                client.map(square, range(3), colour="red")
            with pytest.raises(ValueError, match="bad value"):
                [value async for value in client.map(fail, ["bad value"])]

    run(body())


def test_errors_and_options_are_those_of_client(address):
    async def body():
        async with runner.AsyncClient(address) as client:
            with pytest.raises(ValueError, match="bad value 42") as caught:
                await client.submit(fail, "bad value 42")
            assert isinstance(caught.value.__cause__, runner.RemoteTraceback)
            assert "raise ValueError(message)" in caught.value.__cause__.text
            with pytest.raises(runner.TaskError, match="CustomError") as caught:
                await client.submit(fail_custom, "custom")
            assert caught.value.type_name == "CustomError"
            with pytest.raises(ValueError, match="priority"):
                client.submit(add, 1, 2, priority="high")
            with pytest.raises(ValueError, match="pool must be one of"):
                client.submit(add, 1, 2, pool="gpu")
            with pytest.raises(TypeError, match="positional argument 0 is a object"):
                client.submit(echo, object())
            with pytest.raises(TypeError, match="lambda"):
                client.submit(lambda: 1)
            with pytest.raises(ValueError, match="task reference"):
                client.submit("not a reference")
            with pytest.raises(runner.TaskTimeoutError):
                await client.submit(sleep_then, 5.0, timeout=0.3)
            assert await client.submit(add, 2, 3, pool="thread", queue="default", priority=5, retries=1) == 5

    run(body())


def test_status_wait_for_workers_fetch_and_cancel(address):
    async def body():
        async with runner.AsyncClient(address) as client:
            assert await client.wait_for_workers(2, timeout=10) >= 2
            status = await client.status()
            assert len(status["workers"]) >= 2
            done = client.submit(add, 20, 22)
            assert await done == 42
            assert await client.fetch(done.job_id) == {"id": done.job_id, "state": "done", "result": 42}
            assert (await client.fetch("no-such-job"))["state"] == "unknown"

            waiting = client.submit(add, 1, 1, queue="nobody-serves-this")  # no worker takes this queue
            assert await client.cancel(waiting) is True
            assert waiting.cancelled()
            assert (await client.fetch(waiting.job_id))["state"] == "cancelled"
            with pytest.raises(ValueError, match="not a job of this client"):
                await client.cancel(asyncio.get_running_loop().create_future())

            timed_out = client.submit(add, 1, 1, queue="nobody-serves-this")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(timed_out, 0.1)  # cancelling the awaitable withdraws the job
            await eventually(lambda: _state_is(client, timed_out.job_id, "cancelled"), 10, "the job cancelled")

            running = client.submit(sleep_then, 60.0)  # the process pool: force ends its child
            await eventually(lambda: _state_is(client, running.job_id, "running"), 20, "the job running")
            assert await client.cancel(running) is False  # running: only with force
            assert await client.cancel(running, force=True) is True
            assert running.cancelled()
            with pytest.raises(TimeoutError, match="only .* of 99 workers"):
                await client.wait_for_workers(99, timeout=0.3)

    run(body())


async def _state_is(client: runner.AsyncClient, job_id: str, state: str) -> bool:
    return (await client.fetch(job_id))["state"] == state


def test_lock_semaphore_event_and_queue_awaited(address):
    async def body():
        async with runner.AsyncClient(address) as one, runner.AsyncClient(address) as other:
            lock = one.Lock("aio-lock")
            async with lock:
                assert lock.token is not None
                assert await other.Lock("aio-lock").acquire(blocking=False) is False
                assert await other.Lock("aio-lock").acquire(timeout=0.2) is False
                assert await lock.locked() is True
            assert lock.token is None
            with pytest.raises(RuntimeError):
                await lock.release()
            with pytest.raises(TypeError, match="async with"):
                with lock:
                    pass

            first, second = one.Semaphore("aio-sem", 2), other.Semaphore("aio-sem", 2)
            assert await first.acquire() and await second.acquire()
            assert await one.Semaphore("aio-sem", 2).acquire(blocking=False) is False
            waiter = asyncio.ensure_future(one.Semaphore("aio-sem", 2).acquire())
            await eventually(lambda: _acquire_sent(one), 10, "the waiting acquire sent")
            acquiring = _acquires(one)
            await one.status()  # sent after the acquire on the same connection: answered after the broker queued it
            assert acquiring and not any(future.done() for future in acquiring), "granted with no slot free"
            await second.release()
            assert await asyncio.wait_for(waiter, 10) is True
            with pytest.raises(ValueError, match="value must be an integer"):
                one.Semaphore("aio-sem", 0)

            event = one.Event("aio-event")
            assert await event.wait(timeout=0.1) is False
            waiting = asyncio.ensure_future(other.Event("aio-event").wait())
            await event.set()
            assert await asyncio.wait_for(waiting, 10) is True
            assert await event.is_set() is True
            await event.clear()
            assert await event.is_set() is False

            items = one.Queue("aio-queue", maxsize=2)
            await items.put({"n": 1})
            await items.put_nowait([2])
            with pytest.raises(queue.Full):
                await items.put(3, timeout=0.1)
            assert await items.qsize() == 2 and await items.full()
            assert await other.Queue("aio-queue").get() == {"n": 1}
            assert await items.get_nowait() == [2]
            with pytest.raises(queue.Empty):
                await items.get(timeout=0.1)
            with pytest.raises(TypeError, match="cannot go in a runner Queue"):
                await items.put(object())

    run(body())


def _acquires(client: runner.AsyncClient) -> list[asyncio.Future]:
    """The futures of ``client``'s acquire requests not yet taken by their awaiting coroutines."""
    return [future for future, message_type, body in client._requests.values()  # noqa: SLF001 - its requests
            if message_type == runner.protocol.SYNC and body["op"] == "acquire"]


async def _acquire_sent(client: runner.AsyncClient) -> bool:
    return bool(_acquires(client))


def test_a_cancelled_acquire_never_keeps_the_lock(address):
    async def body():
        async with runner.AsyncClient(address) as one, runner.AsyncClient(address) as other:
            holder = one.Lock("aio-cancelled")
            await holder.acquire()
            late = other.Lock("aio-cancelled")
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(late.acquire(), 0.2)  # its request stays queued at the broker
            await holder.release()  # the broker grants it to the cancelled waiter, which gives it back
            checker = one.Lock("aio-cancelled")
            assert await checker.acquire(timeout=10) is True
            await checker.release()

    run(body())


def test_a_thousand_awaited_jobs_while_a_ticker_measures_the_loop_lag(address):
    async def body():
        async with runner.AsyncClient(address) as client:
            async with LagMeter() as lag:
                results = await asyncio.gather(*(client.submit(add, index, index, pool="thread")
                                                 for index in range(1000)))
            assert results == [2 * index for index in range(1000)]
            print(f"\nloop lag while 1,000 jobs were in flight: p50 {lag.percentile(50) * 1e3:.2f} ms, "
                  f"p99 {lag.percentile(99) * 1e3:.2f} ms (the loop's own: {lag.percentile(99, 'own') * 1e3:.2f} ms), "
                  f"max {max(lag.lags) * 1e3:.2f} ms "
                  f"({len(lag.lags)} ticks, mean {statistics.fmean(lag.lags) * 1e3:.2f} ms)")
            assert len(lag.lags) > 0 and len(lag.own) == len(lag.lags)
            if lag.waits:  # Linux: each lag splits into the OS running others and the loop's own part
                assert all(abs(wait + own - late) < 1e-9 for wait, own, late in zip(lag.waits, lag.own, lag.lags))

    run(body())


def test_closing_leaves_no_task_thread_or_reader_behind(address):
    async def body():
        loop = asyncio.get_running_loop()
        threads, tasks = set(threading.enumerate()), asyncio.all_tasks()
        readers = len(loop._selector.get_map())  # noqa: SLF001 - the loop's watched file descriptors
        timers = set(loop._scheduled)  # noqa: SLF001 - run()'s own wait_for
        client = runner.AsyncClient(address)
        await client.start()
        assert await client.submit(add, 1, 2) == 3
        pending = client.submit(add, 1, 1, queue="nobody-serves-this")
        await client.close()
        with pytest.raises(runner.ClientClosed):
            await pending
        with pytest.raises(runner.ClientClosed):
            client.submit(add, 1, 2)
        with pytest.raises(runner.ClientClosed):
            await client.status()
        assert set(threading.enumerate()) == threads
        assert asyncio.all_tasks() == tasks
        assert len(loop._selector.get_map()) == readers  # noqa: SLF001
        assert not [handle for handle in loop._scheduled  # noqa: SLF001 - no timer of the client
                    if not handle.cancelled() and handle not in timers]

    run(body())


def test_usable_at_once_from_a_coroutine_without_start(address, monkeypatch):
    """What runner.get_client() in a coroutine job relies on: construct, submit, await; no start()."""
    monkeypatch.setenv("RUNNER_BROKER", address)

    async def body():
        client = runner.AsyncClient(os.environ["RUNNER_BROKER"])
        try:
            assert await client.submit(add, 3, 4) == 7
            assert (await client.status())["workers"]
        finally:
            await client.close()

    run(body())
    with pytest.raises(RuntimeError, match="running asyncio loop"):
        runner.AsyncClient(address)


def test_unreachable_broker_and_bad_address(processes):
    async def body():
        with pytest.raises(ValueError, match="not valid"):
            runner.AsyncClient("localhost:5555")
        with pytest.raises(runner.BrokerUnreachable, match="cannot reach the broker"):
            async with runner.AsyncClient("tcp://127.0.0.1:1", timeout=0.5):
                pass

    run(body())


def test_backpressure_raises_or_holds_the_job_as_client_does(processes):
    _, address = processes.broker("--heartbeat", "0.2", "--max-pending", "3")  # no worker: nothing finishes

    async def body():
        async with runner.AsyncClient(address) as client:
            futures = [client.submit(add, 1, index) for index in range(3)]
            with pytest.raises(runner.BackpressureError, match="max-pending"):
                client.submit(add, 1, 2)
            assert await client.cancel(futures[0]) is True
            futures.append(client.submit(add, 1, 3))  # room again
        async with runner.AsyncClient(address, block=True) as client:
            futures = [client.submit(add, 1, index) for index in range(4)]  # the fourth waits here
            assert await client.cancel(futures[3]) is True  # held here: cancelled without the broker
            assert await client.cancel(futures[0]) is True

    run(body())


def test_no_address_starts_the_embedded_cluster_and_reports_its_end(processes):
    async def body():
        threads = set(threading.enumerate())
        async with runner.AsyncClient() as client:
            assert await client.submit(add, 2, 2) == 4
            assert [value async for value in client.map(square, range(4))] == [0, 1, 4, 9]
        await eventually(_async_true_when(lambda: set(threading.enumerate()) == threads), 10, "no thread left")

        async with runner.AsyncClient() as client:
            pending = client.submit(add, 1, 1, queue="nobody-serves-this")
            broker = client._cluster.processes[0]  # noqa: SLF001 - the embedded broker, which this test ends
            os.kill(broker.pid, signal.SIGKILL)
            with pytest.raises(runner.ClusterGone, match="SIGKILL"):
                await asyncio.wait_for(pending, 30)
            with pytest.raises(runner.ClusterGone):
                client.submit(add, 1, 1)

    run(body())


def test_a_cancelled_start_stops_the_embedded_cluster_once_it_is_up(processes):
    async def body():
        threads = set(threading.enumerate())
        client = runner.AsyncClient()
        starting = asyncio.ensure_future(client.start())
        await eventually(_async_true_when(lambda: any(thread.name == "runner-aio-start" for thread in
                                                      threading.enumerate())), 10, "the cluster starting")
        assert not starting.done()  # into the cluster's start, which takes about a second
        starting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starting
        # The loop is free at once; the cluster that finished starting is stopped in the background
        # (the leak check after the test finds none of its processes).
        await eventually(_async_true_when(lambda: set(threading.enumerate()) == threads), 60, "no thread left")

    run(body())


def _async_true_when(condition):
    async def check() -> bool:
        return condition()
    return check


def test_a_cancelled_map_item_raises_what_client_map_raises():
    """A map's cancelled job raises concurrent.futures.CancelledError, as Client.map does, not asyncio's."""
    from runner.aio_future import settle

    async def body():
        future = asyncio.get_running_loop().create_future()
        settle(future, "j1", runner.protocol.CANCELLED, b"")
        with pytest.raises(JobCancelledError):
            future.result()

    run(body())


def test_curve_keys_as_client_does_from_the_argument_or_the_environment(processes, tmp_path, monkeypatch):
    from runner import keys

    folder = tmp_path / "keys"
    keys.generate(folder)
    _, address = processes.broker("--curve-keys", str(folder), "--heartbeat", "0.2")
    processes.worker(address, "--curve-keys", str(folder), "--heartbeat", "0.2", "--processes", "1", "--threads", "2")

    async def body():
        async with runner.AsyncClient(address, curve_keys=str(folder), timeout=20) as client:
            assert await client.submit("tasks:add", 2, 3, pool="thread") == 5
        monkeypatch.setenv("RUNNER_CURVE_KEYS", str(folder))  # what a coroutine job's client finds
        async with runner.AsyncClient(address, timeout=20) as client:
            assert await client.submit("tasks:add", 1, 1, pool="thread") == 2
        started = time.monotonic()
        with pytest.raises(runner.AuthenticationError, match="authentication failed"):
            async with runner.AsyncClient(address, curve_keys="", timeout=20):
                pass
        assert time.monotonic() - started < 15, "not refused before the timeout"

    run(body())


def test_jobs_and_waits_go_again_to_a_restarted_broker_that_forgot_them(processes, tmp_path):
    """The heartbeats, the reconnect and the registering again of BrokerConnection, on the asyncio loop."""
    from test_chaos import free_address

    address = free_address()
    broker, _ = processes.broker("--heartbeat", "0.2", bind=address, journal=tmp_path / "first.db")

    async def body():
        async with runner.AsyncClient(address) as client:
            futures = [client.submit(add, index, index, pool="thread") for index in range(50)]  # no worker yet
            waiting = asyncio.ensure_future(client.Event("aio-restart").wait())
            await eventually(lambda: _pending_is(client, 50), 30, "50 jobs pending")
            broker.send_signal(signal.SIGKILL)
            broker.wait()
            # A broker with an empty journal: it knows neither the client nor its jobs and waits.
            processes.broker("--heartbeat", "0.2", bind=address, journal=tmp_path / "second.db")
            processes.worker(address, "--heartbeat", "0.2", "--threads", "4")
            assert await asyncio.wait_for(asyncio.gather(*futures), 60) == [2 * index for index in range(50)]
            assert not waiting.done()
            await client.Event("aio-restart").set()
            assert await asyncio.wait_for(waiting, 30) is True

    run(body())


async def _pending_is(client: runner.AsyncClient, count: int) -> bool:
    return (await client.status())["jobs"]["pending"] == count
