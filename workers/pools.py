"""The worker's two executors behind one small interface (a strategy per kind of pool).

``ProcessPool`` runs CPU-bound jobs in a ``ProcessPoolExecutor`` whose children are
started by a forkserver (forking a process that holds a ZeroMQ context and
threads is unsafe); ``ThreadPool`` runs I/O-bound jobs in a
``ThreadPoolExecutor``. Both take a list of jobs per submission, so many small
jobs can share one trip into a child process, and both report through a
callback that may run on any thread.

Which jobs go together in one submission is the backlog's decision (backlog.py).

They differ in what can be stopped: a process-pool job is stopped by ending the
pool's processes and starting new ones (``kill``); a thread cannot be stopped,
so a thread-pool job past its time is abandoned and left to finish unseen.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable

from loguru import logger

from runner import protocol
from runner.errors import WorkerPoolError
from workers import execute
from workers.admission import Admission

log = logger.bind(component="pools")

JobRow = tuple[str, int, str, bytes]  # (job id, attempt, task, payload)
ResultRow = tuple[str, int, str, bytes]  # (job id, attempt, status, blob)
OnDone = Callable[[str, str, list[ResultRow], float], None]  # (pool, task, result rows, seconds taken)


class ThreadPool:
    """I/O-bound jobs, one per thread; the GIL is released while they wait."""

    name = "thread"
    killable = False

    def __init__(self, size: int) -> None:
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="runner-thread")

    def submit(self, jobs: list[JobRow]) -> Future:
        return self._executor.submit(execute.run_batch, jobs)

    def describe_death(self) -> str:
        return "a thread-pool job failed"

    def sample_memory(self) -> None:
        """Threads share the worker's memory: nothing to sample."""

    def shutdown(self, wait: bool) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)


class ProcessPool:
    """CPU-bound jobs in child processes; rebuilt when a child dies or is killed."""

    name = "process"
    killable = True

    def __init__(self, size: int, admission: Admission) -> None:
        self.size = size
        self._admission = admission
        self._context = multiprocessing.get_context("forkserver")
        self._peak_kib: dict[int, int] = {}  # child pid -> highest VmHWM seen
        # The loop thread samples and replaces; pool callbacks read the children when one dies.
        self._children_lock = threading.Lock()
        self._executor = self._start()

    def submit(self, jobs: list[JobRow]) -> Future:
        try:
            return self._executor.submit(execute.run_batch, jobs)
        except BrokenProcessPool:
            log.warning("process pool was broken by a dying child: {}; starting a new one", self.describe_death())
            self._replace()
            return self._executor.submit(execute.run_batch, jobs)

    def kill(self) -> None:
        """End every child now (their jobs fail as BrokenProcessPool) and start fresh ones."""
        for process in self._children():
            if process.is_alive():
                process.kill()
        self._replace()

    def describe_death(self) -> str:
        """Which children died, how, and how much memory they had reached."""
        deaths = []
        with self._children_lock:
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

    def sample_memory(self) -> None:
        """Remember each child's high-water RSS, to report it if the child dies."""
        with self._children_lock:
            for pid in self._children_by_pid():
                peak = _high_water_kib(pid)
                if peak:
                    self._peak_kib[pid] = max(peak, self._peak_kib.get(pid, 0))

    def shutdown(self, wait: bool) -> None:
        """Stop the pool; without ``wait`` its children are ended first, so joining is quick."""
        if not wait:
            for process in self._children():
                if process.is_alive():
                    process.terminate()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _replace(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._children_lock:
            self._peak_kib.clear()
            self._executor = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.size,
            mp_context=self._context,
            initializer=execute.configure,
            initargs=(self._admission, os.getpid()),
        )

    def _children_by_pid(self) -> dict:
        # ProcessPoolExecutor keeps its children here; there is no public view of them.
        return dict(getattr(self._executor, "_processes", None) or {})

    def _children(self) -> list:
        return list(self._children_by_pid().values())


class Pools:
    """Both pools of a worker: submit jobs by pool name, hear back through ``on_done``."""

    def __init__(self, processes: int, threads: int, admission: Admission) -> None:
        execute.configure(admission)  # the thread pool runs in this process
        self.by_name: dict[str, ThreadPool | ProcessPool] = {}
        if processes:
            self.by_name["process"] = ProcessPool(processes, admission)
        if threads:
            self.by_name["thread"] = ThreadPool(threads)

    def slots(self) -> dict[str, int]:
        """How many jobs each pool runs at once."""
        return {name: pool.size for name, pool in self.by_name.items()}

    def submit(self, pool_name: str, jobs: list[JobRow], on_done: OnDone) -> Future:
        """Start ``jobs`` (of one task) as one submission; ``on_done`` gets their result rows, from any thread."""
        pool = self.by_name[pool_name]
        started = time.monotonic()
        future = pool.submit(jobs)
        future.add_done_callback(
            lambda done: on_done(pool_name, jobs[0][2], _outcome(done, jobs, pool), time.monotonic() - started))
        return future

    def sample_memory(self) -> None:
        for pool in self.by_name.values():
            pool.sample_memory()

    def shutdown(self, wait: bool = True) -> None:
        for pool in self.by_name.values():
            pool.shutdown(wait)


def _outcome(future: Future, jobs: list[JobRow], pool: ThreadPool | ProcessPool) -> list[ResultRow]:
    """Result rows of a finished submission; a broken pool fails every job in it."""
    if future.cancelled():  # the worker is shutting down; the broker gives these jobs back
        return []
    exc = future.exception()
    if exc is None:
        return future.result()
    if isinstance(exc, BrokenProcessPool):
        exc = WorkerPoolError.raised_here(f"a process-pool child died while running this job: {pool.describe_death()}")
    error = execute.encode_error(exc)
    return [(job_id, attempt, protocol.FAILED, error) for job_id, attempt, _, _ in jobs]


def _high_water_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0
