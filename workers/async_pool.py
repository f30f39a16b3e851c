"""The worker's third pool: coroutine jobs on one asyncio event loop in a thread of its own.

``AsyncPool`` has the shape of the other two (pools.py): ``submit`` takes jobs and
returns a ``concurrent.futures.Future`` whose done-callback reports their rows, on
the pool's thread. The worker's loop thread hands submissions over through a
deque and wakes the pool's loop once for all that arrived meanwhile; each job
becomes an asyncio task, up to ``size`` at once (the worker's credit keeps it there).

Unlike a thread, a coroutine can be stopped: ``cancel`` cancels its task, so a
timeout or a forced cancel raises ``CancelledError`` inside it and its ``finally``
blocks run; ``shutdown`` cancels every task left.

The loop must never block: a coroutine that does not await for BLOCKED_SECONDS
stalls every other one. A watchdog thread notices (``StallWatch``, from a beat
the loop keeps while it has tasks) and logs the job and task that hold the loop.
Beat and watchdog sleep while the pool has no task.

Thousands of coroutine jobs alive at once (asleep in an ``await``) make Python's
collector busy: every 700 net allocations it scans the young objects, and the jobs'
tasks, frames and futures survive into the older generations, which it then scans
again and again (a quarter to a third of a worker's CPU in benchmark case 12a, for
objects that reference counting frees anyway once their job ends). ``CollectorPace``
raises the young generation's threshold while the pool holds many tasks and gives
the old one back once it is empty.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING

from loguru import logger

from runner import current, protocol
from workers import execute

if TYPE_CHECKING:
    from workers.pools import JobRow, ResultRow

log = logger.bind(component="async-pool")

THREAD_NAME = "runner-async"  # the pool loop's thread; coroutine jobs see it as their current thread
BLOCKED_SECONDS = 0.1  # a coroutine that holds the loop this long without awaiting is logged
BEAT_SECONDS = 0.02  # while tasks run, the loop notes the time this often
SAMPLE_SECONDS = 0.01  # and the watchdog looks at the loop this often
CLOSE_GRACE = 2.0  # seconds cancelled coroutines get to run their finally blocks when the pool shuts down
BUSY_TASKS = 100  # with this many coroutine jobs alive, the collector's young threshold is raised ...
BUSY_THRESHOLD = 50_000  # ... to this many net allocations (Python's default 700); a young collection then
# takes about 10 ms instead of 0.1 ms, but few happen, and the old generations are hardly ever scanned


class CollectorPace:
    """When to raise the collector's young threshold for a busy pool, and when to give it back (sans-IO).

    ``tasks`` is told the pool's count of tasks after each change; it answers the
    threshold to set now, or None to leave it. Raised at ``busy`` tasks, given back
    (the threshold in force before, which ``current`` reads) only when the pool is empty,
    so that a count hovering near ``busy`` does not flip it back and forth.
    """

    def __init__(self, busy: int = BUSY_TASKS, raised: int = BUSY_THRESHOLD) -> None:
        self.busy = busy
        self.raised = raised
        self._before: int | None = None  # the threshold to give back, while raised

    def tasks(self, count: int, current: int) -> int | None:
        if self._before is None and count >= self.busy and current < self.raised:
            self._before = current
            return self.raised
        if self._before is not None and count == 0:
            before, self._before = self._before, None
            return before
        return None


class StallWatch:
    """Decides, from periodic samples of the loop, when one coroutine holds it too long (sans-IO).

    A sample is (now, beat, current): the time, the last time the loop ran its beat
    callback, and the task running on the loop at that moment (None between steps).
    The same task running at every sample while the beat stands still is one step of
    that task holding the loop; it is reported once per stall, when the time since the
    first such sample reaches ``limit`` (a lower bound of the real stall).
    """

    def __init__(self, limit: float = BLOCKED_SECONDS) -> None:
        self.limit = limit
        self._task: object = None
        self._beat = 0.0
        self._since = 0.0
        self._told = False

    def sample(self, now: float, beat: float, current: object) -> float | None:
        """The seconds ``current`` has held the loop, the first time that reaches the limit; else None."""
        if current is None or current is not self._task or beat != self._beat:
            self._task, self._beat, self._since, self._told = current, beat, now, False
            return None
        held = now - self._since
        if self._told or held < self.limit:
            return None
        self._told = True
        return held


class AsyncPool:
    """Coroutine jobs (``async def`` tasks), ``size`` at once, on one event loop in its own thread."""

    name = "async"
    killable = False
    timed = False  # its futures give plain rows (workers/pools.py)

    def __init__(self, size: int) -> None:
        self.size = size
        self.loop = asyncio.new_event_loop()
        self._incoming: collections.deque[tuple[list[JobRow], Future]] = collections.deque()
        self._wake_requested = False
        self._tasks: dict[Future, asyncio.Task] = {}  # touched by the pool's thread only
        self._active = threading.Event()  # set while tasks run: the beat and the watchdog work
        self._closed = threading.Event()
        self._beat = time.monotonic()
        self._beating = False  # a beat is scheduled on the loop (pool's thread only)
        self._pace = CollectorPace()  # pool's thread only
        current.serve_coroutine_jobs(self.loop)  # runner.get_client() on this loop gives an AsyncClient
        self._thread = threading.Thread(target=self._run, name=THREAD_NAME, daemon=True)
        self._thread.start()
        threading.Thread(target=self._watch, name=f"{THREAD_NAME}-watchdog", daemon=True).start()

    # --- the worker's side (its loop thread) ----------------------------------------------

    def submit(self, jobs: list[JobRow]) -> Future:
        """Run ``jobs`` (one, as the backlog hands them) as one task; the future gets their rows."""
        future: Future = Future()
        self._incoming.append((jobs, future))
        if not self._wake_requested:  # one wake-up of the pool's loop for every job handed over meanwhile
            self._wake_requested = True
            self.loop.call_soon_threadsafe(self._start_incoming)
        return future

    def cancel(self, future: Future) -> None:
        """Cancel the coroutine behind ``future`` (a timeout or a forced cancel); its finally blocks run.

        The cancellation is queued behind the wake-up that starts the job, so it finds its task.
        """
        self.loop.call_soon_threadsafe(self._cancel, future)

    def room(self) -> None:
        """Any number of jobs may go in one submission."""

    def describe_death(self) -> str:
        return "a coroutine job failed"

    def tend(self) -> None:
        """Coroutines share the worker's memory: nothing to look after."""

    def shutdown(self, wait: bool) -> None:
        """Cancel every coroutine, give them CLOSE_GRACE to finish their finally blocks, stop the loop.

        Either way it waits for the loop's thread that long and a second more, at most (a
        coroutine that blocks the loop can hold it: the thread is a daemon and does not keep
        the worker alive).
        """
        if self._closed.is_set():
            return
        self._closed.set()
        self._active.set()  # the watchdog wakes up and sees the pool closed
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._close()))
            self._thread.join(CLOSE_GRACE + 1.0)

    # --- the pool's thread ----------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def _start_incoming(self) -> None:
        self._wake_requested = False  # before taking, so a later submit wakes the loop again
        while self._incoming:
            jobs, future = self._incoming.popleft()
            job_id, _, task_name, _ = jobs[0]
            task = self.loop.create_task(self._run_jobs(jobs), name=f"{job_id} {task_name}")
            self._tasks[future] = task
            task.add_done_callback(lambda task, jobs=jobs, future=future: self._task_done(jobs, future, task))
        self._pace_collector()
        if self._tasks:
            self._active.set()
            if not self._beating:
                self._beating = True
                self._keep_beat()

    async def _run_jobs(self, jobs: list[JobRow]) -> list[ResultRow]:
        rows = []  # a loop, not a comprehension: one coroutine object fewer a job
        for job_id, attempt, task, payload in jobs:
            rows.append((job_id, attempt, *await execute.run_async(task, payload)))
        return rows

    def _task_done(self, jobs: list[JobRow], future: Future, task: asyncio.Task) -> None:
        del self._tasks[future]
        if not self._tasks:
            self._pace_collector()
            if not self._closed.is_set():
                self._active.clear()  # the watchdog sleeps until the next job
        if task.cancelled():  # stopped (the worker answered already) or cancelled by the job itself
            error = execute.encode_error(asyncio.CancelledError(f"the coroutine of task {jobs[0][2]!r} was cancelled"))
            future.set_result([(job_id, attempt, protocol.FAILED, error) for job_id, attempt, *_ in jobs])
        elif task.exception() is not None:
            future.set_exception(task.exception())
        else:
            future.set_result(task.result())

    def _pace_collector(self) -> None:
        threshold = self._pace.tasks(len(self._tasks), gc.get_threshold()[0])
        if threshold is not None:
            gc.set_threshold(threshold, *gc.get_threshold()[1:])

    def _cancel(self, future: Future) -> None:
        task = self._tasks.get(future)
        if task is not None:
            task.cancel()

    def _keep_beat(self) -> None:
        self._beat = time.monotonic()
        if self._tasks and not self._closed.is_set():
            self.loop.call_later(BEAT_SECONDS, self._keep_beat)
        else:
            self._beating = False

    async def _close(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_GRACE)
        await current.close_coroutine_client()
        self.loop.stop()

    # --- the watchdog's thread ------------------------------------------------------------

    def _watch(self) -> None:
        watch = StallWatch()
        while self._active.wait() and not self._closed.wait(SAMPLE_SECONDS):
            task = asyncio.current_task(self.loop)
            held = watch.sample(time.monotonic(), self._beat, task)
            if held is not None:
                self._report_stall(task, held)

    def _report_stall(self, task: asyncio.Task, held: float) -> None:
        job_id, _, task_name = task.get_name().rpartition(" ")  # named in _start_incoming
        log.bind(job=job_id).warning(
            "job {} ({}) has held the async pool's event loop for over {:.0f} ms without awaiting: every other "
            "coroutine job waits meanwhile; await instead of blocking (asyncio.to_thread), or run blocking code "
            "with pool='thread'", job_id, task_name, held * 1000)
