"""The async pool: coroutine jobs on a worker's event loop, with real brokers and workers.

Where they run, how many at once, how a timeout, a forced cancel and a shutdown stop
them (CancelledError inside, finally blocks run), what a plain function gets there,
and what the loop's watchdog says about a coroutine that blocks it. The pool's
decisions apart from I/O (the default pool of a function, the stall watch) are
unit-tested at the end.
"""

from __future__ import annotations

import functools
import signal
import subprocess
from concurrent.futures import CancelledError

import pytest

import async_tasks
import runner
import tasks
from cluster import Processes, wait_until
from runner.errors import TaskTimeoutError
from runner.tasks import JobOptions, default_options, is_coroutine_function, resolve_task
from test_reliability_rules import lines, wait_for_lines
from workers.async_pool import CollectorPace, StallWatch

IMPORTS = ("tasks", "jobs", "async_tasks")
HEARTBEAT = ("--heartbeat", "0.2")
ASYNC_ONLY = ("--processes", "0", "--threads", "1")
STARTING = 60  # seconds for waits that include starting a process (a loaded machine is slow at it)


class Shared:
    """The module's cluster: one broker, one worker with every pool, its log file and a client."""

    def __init__(self, client: runner.Client, worker: subprocess.Popen, log_path) -> None:
        self.client = client
        self.worker = worker
        self.log_path = log_path


@pytest.fixture(scope="module")
def shared():
    started = Processes()
    try:
        _, address = started.broker(*HEARTBEAT)
        log_path = started.scratch / "worker.log"
        with open(log_path, "wb") as log_file:
            worker = started.runner(
                "worker", "--connect", address, "--log-level", "WARNING", *HEARTBEAT, "--name", "every-pool",
                "--processes", "1", "--threads", "2", "--async-tasks", "7",
                *[item for module in IMPORTS for item in ("--import", module)], stderr=log_file)
        with runner.Client(address) as client:
            client.wait_for_workers(1, timeout=STARTING)
            yield Shared(client, worker, log_path)
    finally:
        started.stop_all()


def start_worker(processes, address: str, *arguments: str) -> subprocess.Popen:
    return processes.worker(address, *HEARTBEAT, *arguments, imports=IMPORTS)


# --- where coroutine jobs run ----------------------------------------------------------------


def test_status_shows_the_async_pool_slots(shared):
    (worker,) = shared.client.status()["workers"]
    assert worker["slots"] == {"process": 1, "thread": 2, "async": 7}


def test_coroutine_jobs_run_on_the_workers_loop_thread(shared):
    ran = [future.result(timeout=30) for future in [shared.client.submit(async_tasks.where) for _ in range(5)]]
    assert {(where["pid"], where["thread"]) for where in ran} == {(shared.worker.pid, "runner-async")}
    on_threads = shared.client.submit(tasks.whoami, pool="thread").result(timeout=30)
    assert on_threads["pid"] == shared.worker.pid and on_threads["thread"].startswith("runner-thread")
    assert "MainThread" not in {where["thread"] for where in ran}


def test_a_coroutine_on_the_process_pool_runs_under_asyncio_run(shared):
    ran = shared.client.submit(async_tasks.where, pool="process").result(timeout=STARTING)
    assert ran["pid"] != shared.worker.pid and ran["thread"] == "MainThread"
    assert shared.client.submit(async_tasks.add, 2, 3, pool="process").result(timeout=30) == 5


def test_an_explicit_pool_wins_over_the_async_default(shared):
    assert async_tasks.add_on_threads.options.pool == "thread"
    assert shared.client.submit(async_tasks.add_on_threads, 2, 3).result(timeout=30) == 5
    assert shared.client.submit(async_tasks.add, 2, 3, pool="thread").result(timeout=30) == 5


def test_a_plain_function_on_the_async_pool_fails_clearly(shared):
    with pytest.raises(TypeError) as refused:
        shared.client.submit(tasks.add, 2, 3, pool="async").result(timeout=30)
    message = str(refused.value)
    assert "'tasks:add'" in message and "plain function" in message, message
    assert "pool='thread'" in message and "async def" in message, message
    assert shared.client.submit(async_tasks.add, 2, 3).result(timeout=30) == 5, "the pool went on"


def test_a_coroutine_that_blocks_the_loop_is_logged_with_its_job(shared):
    future = shared.client.submit(async_tasks.block_loop, 0.4)
    assert future.result(timeout=30) == "blocked"
    wait_until(lambda: future.job_id in shared.log_path.read_text(), timeout=10, message="the stall logged")
    logged = [line for line in shared.log_path.read_text().splitlines() if future.job_id in line]
    assert "async_tasks:block_loop" in logged[0] and "held the async pool's event loop" in logged[0], logged
    quick = [shared.client.submit(async_tasks.add, n, 1) for n in range(20)]
    assert [f.result(timeout=30) for f in quick] == list(range(1, 21))
    assert not any(f.job_id in shared.log_path.read_text() for f in quick), "a coroutine that awaits is not blamed"


def test_a_coroutine_job_awaits_another_job_and_a_cluster_lock(shared):
    futures = [shared.client.submit(async_tasks.job_then_lock, "async-lock", n) for n in range(3)]
    assert [future.result(timeout=30) for future in futures] == [[n + 1, "AsyncClient"] for n in range(3)]


# --- many at once ------------------------------------------------------------------------------


def test_five_thousand_sleeping_coroutines_on_one_worker(processes, broker_address, client_factory):
    start_worker(processes, broker_address, *ASYNC_ONLY, "--async-tasks", "5000")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=STARTING)
    futures = [client.submit(async_tasks.nap, 1.0, n) for n in range(5000)]
    results = [future.result(timeout=120) for future in futures]
    assert [value for value, _ in results] == list(range(5000))
    # Each job saw how many naps were asleep beside it when it woke: one at a time would be 1.
    assert max(held for _, held in results) >= 100, "the sleeps did not overlap"
    assert client.status()["jobs"]["done"] >= 5000


# --- stopping a coroutine ------------------------------------------------------------------------


def gated(client: runner.Client, folder, name: str, **options):
    """A coroutine job waiting at its gate (never opened here); its future, record and marker."""
    record, gate, marker = folder / name, folder / f"{name}.gate", folder / f"{name}.marker"
    return client.submit(async_tasks.gated, str(record), str(gate), str(marker), **options), record, marker


def test_a_timed_out_coroutine_is_cancelled_and_its_finally_runs(processes, broker_address, client_factory,
                                                                 tmp_path):
    start_worker(processes, broker_address, *ASYNC_ONLY, "--async-tasks", "1")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=STARTING)
    future, record, marker = gated(client, tmp_path, "late", timeout=0.5)
    with pytest.raises(TaskTimeoutError) as timed_out:
        future.result(timeout=30)
    assert "its coroutine was cancelled" in str(timed_out.value)
    assert wait_for_lines(marker, 2) == ["cancelled", "finally"]
    # Its only slot is free again: the next coroutine runs.
    assert client.submit(async_tasks.add, 2, 3).result(timeout=30) == 5
    assert len(lines(record)) == 1


def test_a_forced_cancel_stops_a_running_coroutine(processes, broker_address, client_factory, tmp_path):
    start_worker(processes, broker_address, *ASYNC_ONLY, "--async-tasks", "1")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=STARTING)
    future, record, marker = gated(client, tmp_path, "stopped")
    wait_for_lines(record, 1)  # it runs
    assert client.cancel(future, force=True) is True
    with pytest.raises(CancelledError):
        future.result(timeout=1)
    assert wait_for_lines(marker, 2) == ["cancelled", "finally"]
    assert client.submit(async_tasks.add, 2, 3).result(timeout=30) == 5
    assert client.fetch(future.job_id)["state"] == "cancelled"
    assert len(lines(record)) == 1, "a cancelled job is not run again"


def test_shutdown_gives_coroutines_the_grace_then_cancels_them(processes, broker_address, client_factory, tmp_path):
    worker = start_worker(processes, broker_address, *ASYNC_ONLY, "--async-tasks", "2", "--grace", "0.5")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=STARTING)
    future, record, marker = gated(client, tmp_path, "graced")
    wait_for_lines(record, 1)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert lines(marker) == ["cancelled", "finally"]
    assert not future.done(), "a job its worker gave back waits for another worker"
    start_worker(processes, broker_address, *ASYNC_ONLY, "--async-tasks", "2")
    (tmp_path / "graced.gate").touch()
    assert future.result(timeout=STARTING) == "opened"
    assert len(lines(record)) == 2


# --- decisions, without processes ----------------------------------------------------------------


async def _coroutine() -> None:
    """An async def, for the default-pool decisions."""


def _plain() -> None:
    """A plain function, for the default-pool decisions."""


def test_async_def_functions_default_to_the_async_pool():
    assert is_coroutine_function(_coroutine) and not is_coroutine_function(_plain)
    assert default_options(_coroutine).pool == "async" and default_options(_plain).pool == "process"
    assert resolve_task(_coroutine)[1].pool == "async"
    assert resolve_task(f"{__name__}:_coroutine")[1].pool == "process", "a reference is not imported to look"
    assert resolve_task(runner.task(_coroutine))[1].pool == "async"
    assert resolve_task(runner.task(pool="thread")(_coroutine))[1].pool == "thread"
    assert resolve_task(runner.task(priority=2)(_coroutine))[1] == JobOptions(pool="async", priority=2)
    assert resolve_task(_coroutine)[1].merged({"pool": "process"}).pool == "process", "submit's pool= wins"

    @functools.wraps(_coroutine)
    async def wrapped() -> None:
        await _coroutine()

    assert is_coroutine_function(wrapped) and is_coroutine_function(runner.task(_coroutine))


def test_resolving_a_function_again_gives_the_same_answer_and_a_lambda_is_refused_every_time():
    first = resolve_task(_coroutine)
    assert resolve_task(_coroutine) == first == (f"{__name__}:_coroutine", JobOptions(pool="async"))
    assert resolve_task(_plain) == (f"{__name__}:_plain", JobOptions())
    for _ in range(2):
        with pytest.raises(TypeError, match="lambda"):
            resolve_task(lambda: None)


def test_a_bad_pool_names_the_choices():
    with pytest.raises(ValueError, match="'process', 'thread', 'async'"):
        JobOptions(pool="asyncio")


class _Step:
    """A stand-in for an asyncio task in StallWatch samples (it only compares identities)."""


def test_stall_watch_reports_one_task_holding_the_loop_once():
    watch, task = StallWatch(limit=0.1), _Step()
    assert watch.sample(10.00, beat=9.99, current=task) is None  # first seen
    assert watch.sample(10.05, beat=9.99, current=task) is None  # 50 ms: not yet
    assert watch.sample(10.11, beat=9.99, current=task) == pytest.approx(0.11)
    assert watch.sample(10.20, beat=9.99, current=task) is None, "once per stall"
    assert watch.sample(10.21, beat=10.205, current=None) is None  # the loop is free again
    assert watch.sample(10.22, beat=10.205, current=task) is None
    assert watch.sample(10.35, beat=10.205, current=task) == pytest.approx(0.13), "a new stall is told again"


def test_stall_watch_ignores_a_busy_loop_whose_tasks_take_turns():
    watch, first, second = StallWatch(limit=0.1), _Step(), _Step()
    beat, now = 0.0, 0.0
    for step in range(100):  # 10 ms apart for a second: another task, or a beat, at every sample
        now += 0.01
        if step % 2:
            beat = now
        assert watch.sample(now, beat, first if step % 3 else second) is None


def test_stall_watch_needs_the_beat_to_stand_still():
    watch, task = StallWatch(limit=0.1), _Step()
    for step in range(50):  # the same task at every sample, but the loop ran its beat in between
        assert watch.sample(step * 0.01, beat=step * 0.01 - 0.005, current=task) is None


def test_collector_pace_raises_the_threshold_for_a_busy_pool_and_gives_it_back_when_empty():
    pace = CollectorPace(busy=3, raised=1000)
    assert [pace.tasks(count, 700) for count in (1, 2)] == [None, None], "a few tasks leave the collector alone"
    assert pace.tasks(3, 700) == 1000
    assert [pace.tasks(count, 1000) for count in (5, 2, 4, 1)] == [None] * 4, "no flapping near the mark"
    assert pace.tasks(0, 1000) == 700, "the threshold in force before comes back"
    assert pace.tasks(0, 700) is None
    assert CollectorPace(busy=3, raised=1000).tasks(9, 5000) is None, "a threshold set higher already stays"


def test_the_pool_runs_coroutines_cancels_them_and_refuses_plain_functions():
    """In process: AsyncPool's futures, its cancel, and its shutdown's cancellation."""
    from runner import protocol
    from workers import execute
    from workers.admission import Admission
    from workers.async_pool import AsyncPool

    execute.configure(Admission(["async_tasks", "tasks"]))
    pool = AsyncPool(4)
    try:
        payload = protocol.pack([[2, 3], {}])
        done = pool.submit([("a", 1, "async_tasks:add", payload)])
        assert [(job_id, status, protocol.unpack(blob)) for job_id, _, status, blob in done.result(timeout=10)] == [
            ("a", protocol.OK, 5)]
        refused = pool.submit([("b", 1, "tasks:add", payload)]).result(timeout=10)
        assert refused[0][2] == protocol.FAILED and b"plain function" in refused[0][3]

        stuck = pool.submit([("c", 1, "async_tasks:nap", protocol.pack([[60, 0], {}]))])
        pool.cancel(stuck)
        rows = stuck.result(timeout=10)
        assert rows[0][2] == protocol.FAILED and b"CancelledError" in rows[0][3]

        left = pool.submit([("d", 1, "async_tasks:nap", protocol.pack([[60, 0], {}]))])
    finally:
        pool.shutdown(wait=False)
        execute.configure(Admission())
    assert left.result(timeout=1)[0][2] == protocol.FAILED, "shutdown cancels what still runs"
    assert pool.loop.is_closed()


def test_a_busy_pool_raises_the_collectors_threshold_and_gives_it_back_once_empty():
    """In process: BUSY_TASKS coroutines asleep raise the young threshold; the empty pool restores it."""
    import gc

    from runner import protocol
    from workers import execute
    from workers.admission import Admission
    from workers.async_pool import BUSY_TASKS, BUSY_THRESHOLD, AsyncPool

    before = gc.get_threshold()
    assert before[0] < BUSY_THRESHOLD
    execute.configure(Admission(["async_tasks"]))
    pool = AsyncPool(BUSY_TASKS + 10)
    try:
        naps = [pool.submit([(f"n{n}", 1, "async_tasks:nap", protocol.pack([[1.0, n], {}]))])
                for n in range(BUSY_TASKS)]
        wait_until(lambda: gc.get_threshold()[0] == BUSY_THRESHOLD, 10, message="the raised threshold")
        assert gc.get_threshold()[1:] == before[1:], "only the young generation's threshold changes"
        assert [protocol.unpack(future.result(timeout=30)[0][3])[0] for future in naps] == list(range(BUSY_TASKS))
        wait_until(lambda: gc.get_threshold() == before, 10, message="the threshold given back")
    finally:
        pool.shutdown(wait=False)
        execute.configure(Admission())
        gc.set_threshold(*before)
