"""The worker's executors behind one small interface (a strategy per kind of pool).

``ProcessPool`` runs CPU-bound jobs in a ``ProcessPoolExecutor`` whose children are
started by a forkserver (forking a process that holds a ZeroMQ context and
threads is unsafe); ``ThreadPool`` runs I/O-bound jobs in a
``ThreadPoolExecutor``. Both take a list of jobs per submission, so many small
jobs can share one trip into a child process, and both report through a
callback that may run on any thread.

The third, ``AsyncPool`` (async_pool.py), runs coroutine jobs on an event loop of its own.
Which jobs go together in one submission is the backlog's decision (backlog.py).

They differ in what can be stopped: a process-pool job is stopped by ending the
pool's processes and starting new ones (``kill``); a thread cannot be stopped,
so a thread-pool job past its time is abandoned and left to finish unseen; a
coroutine is cancelled (``AsyncPool.cancel``).
"""

from __future__ import annotations

import collections
import functools
import multiprocessing
import os
import resource
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Callable

from loguru import logger

from runner import protocol
from runner.errors import WorkerPoolError
from workers import execute
from workers.admission import Admission
from workers.async_pool import AsyncPool
from workers.recycling import Recycler
from workers.start_gate import StartGate, run_batch_at

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

log = logger.bind(component="pools")

#: Seconds a retired child gets to exit after its executor is shut down before it is killed.
LEAVE_GRACE = 10.0

JobRow = tuple[str, int, str, bytes]  # (job id, attempt, task, payload)
ResultRow = tuple[str, int, str, bytes]  # (job id, attempt, status, blob)
#: (pool, task, result rows, seconds the submission took, seconds its jobs ran in a child or None)
OnDone = Callable[[str, str, list[ResultRow], float, "float | None"], None]


class ThreadPool:
    """I/O-bound jobs, one per thread; the GIL is released while they wait."""

    name = "thread"
    killable = False
    timed = False  # its futures give rows; a ProcessPool's give (rows, seconds in the child)

    def __init__(self, size: int) -> None:
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="runner-thread")

    def submit(self, jobs: list[JobRow], gate: StartGate | None = None) -> Future:
        """``gate``: a job leased ahead of its due time waits for it in its thread (workers/start_gate.py)."""
        if gate is not None:
            return self._executor.submit(run_batch_at, gate, jobs)
        return self._executor.submit(execute.run_batch, jobs)

    def room(self) -> None:
        """Any number of jobs may go in one submission (each runs alone anyway)."""

    def describe_death(self) -> str:
        return "a thread-pool job failed"

    def tend(self) -> None:
        """Threads share the worker's memory and never leave: nothing to look after."""

    def shutdown(self, wait: bool) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)


class _Lane:
    """One ProcessPoolExecutor; in a recycled pool it has one child, so a result names its child."""

    __slots__ = ("executor", "replaced")

    def __init__(self, executor: ProcessPoolExecutor) -> None:
        self.executor = executor
        self.replaced = False  # shut down and replaced: a late callback of its jobs changes nothing


class ProcessPool:
    """CPU-bound jobs in child processes; rebuilt when a child dies or is killed.

    Without a recycler one executor runs all ``size`` children. With one (recycling.py)
    every child has an executor of its own, a lane: a submission goes to an idle lane,
    and its child reports its size with the result. A lane holds one submission at a
    time, so a child the recycler retires is idle: its executor is shut down without
    waiting and a fresh lane takes its place. No child ever exits on its own, which is
    what hangs ``ProcessPoolExecutor(max_tasks_per_child=...)`` on 3.11.
    """

    name = "process"
    killable = True
    timed = True  # its futures give (rows, seconds the jobs ran in the child, or None)

    def __init__(self, size: int, admission: Admission, recycler: Recycler | None = None) -> None:
        self.size = size
        self.recycler = recycler
        self._admission = admission
        self._context = multiprocessing.get_context("forkserver")
        self._peak_kib: dict[int, int] = {}  # child pid -> highest VmHWM seen
        # Pool callbacks (on any thread) free and retire lanes and read the children to explain a
        # death; the loop thread submits, samples and replaces.
        self._lanes_lock = threading.Lock()
        lanes, self._per_lane = (size, 1) if recycler else (1, size)
        self._lanes = [_Lane(self._start()) for _ in range(lanes)]
        self._idle = collections.deque(self._lanes if recycler else ())  # lanes with no job (recycled pool)
        self._retired: list[_Lane] = []  # lanes whose child runs no more jobs, until replaced
        self._leaving: list[tuple[float, Any]] = []  # (deadline, process): retired children on their way out

    def submit(self, jobs: list[JobRow]) -> Future:
        if self.recycler is None:
            return self._submit(self._lanes[0], execute.run_batch_timed, jobs)[1]
        self._replace_retired()
        with self._lanes_lock:
            lane = self._idle.popleft()
        lane, source = self._submit(lane, execute.run_batch_measured, jobs, self.recycler.max_memory_kib)
        done: Future = Future()
        source.add_done_callback(lambda source: self._lane_done(lane, len(jobs), source, done))
        return done

    def room(self) -> int | None:
        """How many jobs the next submission may carry (None: any number); replaces retired children first."""
        if self.recycler is None:
            return None
        self._replace_retired()
        if self.recycler.max_jobs is None:
            return None
        with self._lanes_lock:
            return self.recycler.room(self._idle[0]) if self._idle else 0

    @property
    def recycled(self) -> int:
        """Children retired by the recycler so far."""
        return self.recycler.recycled if self.recycler else 0

    def kill(self) -> None:
        """End every child now (their jobs fail as BrokenProcessPool) and start fresh ones."""
        for process in self._children():
            if process.is_alive():
                process.kill()
        with self._lanes_lock:
            lanes = list(self._lanes)
            for lane in lanes:  # before their jobs' callbacks can free them
                lane.replaced = True
            self._idle.clear()
            self._retired.clear()
        fresh = [self._swap(lane) for lane in lanes]
        if self.recycler:
            with self._lanes_lock:
                self._idle.extend(fresh)

    def describe_death(self) -> str:
        """Which children died, how, and how much memory they had reached."""
        deaths = []
        with self._lanes_lock:
            children, peaks = self._children_by_pid(), dict(self._peak_kib)
        for pid, process in children.items():
            code = process.exitcode
            if code is None or code == -signal.SIGTERM:  # alive, or ended by the pool's own clean-up
                continue
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            peak = peaks.get(pid)
            if peak:
                memory = f", peak RSS {peak / 1024:.1f} MiB"
            else:  # died before it was sampled: the largest ended child bounds it
                bound = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                memory = f", peak RSS at most {bound / 1024:.1f} MiB"
            deaths.append(f"pool process {pid} {how}{memory}")
        if not deaths:
            children_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            return f"a pool process ended abruptly (largest child peak RSS so far {children_peak / 1024:.1f} MiB)"
        return "; ".join(deaths)

    def tend(self) -> None:
        """Once a second: sample the children's memory; end retired children that did not leave in time."""
        self._sample_memory()
        now, staying = time.monotonic(), []
        for deadline, process in self._leaving:
            if not process.is_alive():
                continue
            if now < deadline:
                staying.append((deadline, process))
                continue
            log.warning("retired pool process {} did not exit within {}s (a thread of a task keeps it?); "
                        "killing it", process.pid, LEAVE_GRACE)
            process.kill()
        self._leaving = staying

    def _sample_memory(self) -> None:
        """Remember each child's high-water RSS, to report it if the child dies."""
        with self._lanes_lock:
            children = self._children_by_pid()
            self._peak_kib = {pid: peak for pid, peak in self._peak_kib.items() if pid in children}
            for pid in children:
                peak = _high_water_kib(pid)
                if peak:
                    self._peak_kib[pid] = max(peak, self._peak_kib.get(pid, 0))

    def shutdown(self, wait: bool) -> None:
        """Stop the pool; without ``wait`` its children are ended first, so joining is quick."""
        if not wait:
            for process in self._children() + [process for _, process in self._leaving]:
                if process.is_alive():
                    process.terminate()
        for lane in list(self._lanes):
            lane.executor.shutdown(wait=True, cancel_futures=True)

    def _submit(self, lane: _Lane, function: Callable, *args) -> tuple[_Lane, Future]:
        """Submit to ``lane``, or to a fresh lane in its place if a dying child broke it."""
        try:
            return lane, lane.executor.submit(function, *args)
        except BrokenProcessPool:
            log.warning("process pool was broken by a dying child: {}; starting a new one", self.describe_death())
            lane = self._swap(lane)
            return lane, lane.executor.submit(function, *args)

    def _lane_done(self, lane: _Lane, jobs: int, source: Future, done: Future) -> None:
        """On the lane's own thread: free or retire the lane, then complete ``done`` (the worker hears)."""
        if source.cancelled():  # the pool is shutting down
            done.cancel()
            return
        error = source.exception()
        rows, pid, rss_kib = source.result() if error is None else (None, None, None)
        retirement = None
        with self._lanes_lock:
            if not lane.replaced:  # a broken lane stays idle: its next submission replaces it
                retirement = None if error is not None else self.recycler.finished(lane, jobs, rss_kib)
                (self._retired if retirement else self._idle).append(lane)
        if retirement:
            log.log("INFO" if retirement.memory else "DEBUG", "pool process {} is replaced by a fresh one: {}",
                    pid, retirement.reason)
        if error is None:
            done.set_result((rows, None))  # the round trip measures these jobs
        else:
            done.set_exception(error)

    def _replace_retired(self) -> None:
        if not self._retired:  # unlocked: a lane retired meanwhile is replaced on the next call
            return
        with self._lanes_lock:
            retired, self._retired = self._retired, []
        deadline = time.monotonic() + LEAVE_GRACE
        for lane in retired:
            leaving = [(deadline, process) for process in _processes(lane.executor).values()]
            fresh = self._swap(lane)
            self._leaving += leaving
            with self._lanes_lock:
                self._idle.append(fresh)

    def _swap(self, lane: _Lane) -> _Lane:
        """Shut ``lane`` down without waiting; a fresh lane (no child until its first job) takes its place."""
        fresh = _Lane(self._start())
        with self._lanes_lock:
            lane.replaced = True
            self._lanes[self._lanes.index(lane)] = fresh
            if self.recycler:
                self.recycler.forget(lane)
        lane.executor.shutdown(wait=False, cancel_futures=True)
        return fresh

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._per_lane,
            mp_context=self._context,
            initializer=execute.configure,
            initargs=(self._admission, os.getpid()),
        )

    def _children_by_pid(self) -> dict:
        # Merged with dict.update, which no other thread can interrupt.
        children: dict = {}
        for lane in self._lanes:
            children.update(_processes(lane.executor))
        return children

    def child_pids(self) -> list[int]:
        """The pids of the pool's live children."""
        with self._lanes_lock:
            return list(self._children_by_pid())

    def _children(self) -> list:
        with self._lanes_lock:
            return list(self._children_by_pid().values())


class Pools:
    """The pools of a worker: submit jobs by pool name, hear back through ``on_done``."""

    def __init__(self, processes: int, threads: int, admission: Admission, recycler: Recycler | None = None,
                 async_tasks: int = 0) -> None:
        execute.configure(admission)  # the thread and async pools run in this process
        self.by_name: dict[str, ThreadPool | ProcessPool | AsyncPool] = {}
        if processes:
            self.by_name["process"] = ProcessPool(processes, admission, recycler)
        if threads:
            self.by_name["thread"] = ThreadPool(threads)
        if async_tasks:
            self.by_name["async"] = AsyncPool(async_tasks)

    def slots(self) -> dict[str, int]:
        """How many jobs each pool runs at once."""
        return {name: pool.size for name, pool in self.by_name.items()}

    def submit(self, pool_name: str, jobs: list[JobRow], on_done: OnDone, gate: StartGate | None = None) -> Future:
        """Start ``jobs`` (of one task) as one submission; ``on_done`` gets their result rows, from any thread.

        ``gate``: the job waits for its due time in the pool (only where ``waits_in_pool``)."""
        pool = self.by_name[pool_name]
        started = time.monotonic()
        if gate is None:
            future = pool.submit(jobs)
        else:
            assert isinstance(pool, ThreadPool), f"the {pool_name} pool does not hold jobs until their time"
            future = pool.submit(jobs, gate)
            started = max(started, gate.start_at)  # the wait is not the job's run time
        # a partial, not a closure: two objects a submission instead of seven (the collector scans
        # every one while thousands of coroutine jobs are alive)
        future.add_done_callback(functools.partial(_report, on_done, pool_name, jobs, pool, started))
        return future

    def waits_in_pool(self, pool_name: str) -> bool:
        """Whether a job leased ahead of its due time can wait for it inside ``pool_name`` (a thread)."""
        return isinstance(self.by_name.get(pool_name), ThreadPool)

    def room(self, pool_name: str) -> int | None:
        """How many jobs the next submission to ``pool_name`` may carry (None: any number)."""
        return self.by_name[pool_name].room()

    def recycled(self) -> int:
        """Process-pool children replaced by a fresh one so far (--max-jobs/--max-memory-per-child)."""
        pool = self.by_name.get("process")
        return pool.recycled if pool else 0

    def memory(self) -> tuple[int, int]:
        """Resident bytes of this process and of its process-pool children (summed)."""
        pool = self.by_name.get("process")
        children = pool.child_pids() if isinstance(pool, ProcessPool) else []
        return resident_bytes(os.getpid()), sum(resident_bytes(pid) for pid in children)

    def tend(self) -> None:
        """Once a second: let each pool sample its children and end the ones overdue to leave."""
        for pool in self.by_name.values():
            pool.tend()

    def shutdown(self, wait: bool = True) -> None:
        for pool in self.by_name.values():
            pool.shutdown(wait)


def _report(on_done: OnDone, pool_name: str, jobs: list[JobRow], pool: ThreadPool | ProcessPool | AsyncPool,
            started: float, done: Future) -> None:
    """A submission finished: hand ``on_done`` its rows, how long it took and how long its jobs ran."""
    rows, ran = _outcome(done, jobs, pool)
    on_done(pool_name, jobs[0][2], rows, time.monotonic() - started, ran)


def _outcome(future: Future, jobs: list[JobRow],
             pool: ThreadPool | ProcessPool | AsyncPool) -> tuple[list[ResultRow], float | None]:
    """Result rows of a finished submission, and the seconds its jobs ran in a child if known; a broken pool
    fails every job in it."""
    if future.cancelled():  # the worker is shutting down; the broker gives these jobs back
        return [], None
    exc = future.exception()
    if exc is None:
        return future.result() if pool.timed else (future.result(), None)
    if isinstance(exc, BrokenProcessPool):
        exc = WorkerPoolError.raised_here(f"a process-pool child died while running this job: {pool.describe_death()}")
    error = execute.encode_error(exc)
    return [(job_id, attempt, protocol.FAILED, error) for job_id, attempt, _, _ in jobs], None


def _processes(executor: ProcessPoolExecutor) -> dict:
    # ProcessPoolExecutor keeps its children here (pid -> Process); there is no public view of them.
    return getattr(executor, "_processes", None) or {}


def resident_bytes(pid: int) -> int:
    """A process's resident memory from /proc/PID/statm (0 if it is gone or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def _high_water_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
