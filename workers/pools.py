"""The worker's two executors behind one small interface (a strategy per kind of pool).

``ProcessPool`` runs CPU-bound jobs in a ``ProcessPoolExecutor`` whose children are
started by a forkserver (forking a process that holds a ZeroMQ context and
threads is unsafe); ``ThreadPool`` runs I/O-bound jobs in a
``ThreadPoolExecutor``. Both take a list of jobs per submission, so many small
jobs can share one trip into a child process, and both report through a
callback that may run on any thread.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable

from loguru import logger

from runner import protocol
from workers import execute

log = logger.bind(component="pools")

#: Jobs at most in one process-pool submission.
MAX_GROUP = 64

JobRow = tuple[str, int, str, bytes]  # (job id, attempt, task, payload)
ResultRow = tuple[str, int, str, bytes]  # (job id, attempt, status, blob)
OnDone = Callable[[list[ResultRow]], None]


class WorkerPoolError(RuntimeError):
    """A pool process died while running jobs; those jobs fail with this error."""


class ThreadPool:
    """I/O-bound jobs, one per thread; the GIL is released while they wait."""

    name = "thread"

    def __init__(self, size: int) -> None:
        self.size = size
        self._executor = ThreadPoolExecutor(max_workers=size, thread_name_prefix="runner-thread")

    def groups(self, jobs: list[JobRow]) -> Iterable[list[JobRow]]:
        """One job per submission: a sleeping job must not hold back its neighbours."""
        return ([job] for job in jobs)

    def submit(self, jobs: list[JobRow]) -> Future:
        return self._executor.submit(execute.run_batch, jobs)

    def shutdown(self, wait: bool) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)


class ProcessPool:
    """CPU-bound jobs in child processes; rebuilt when a child dies and breaks it."""

    name = "process"

    def __init__(self, size: int, allowed_modules: frozenset[str] | None) -> None:
        self.size = size
        self._allowed = allowed_modules
        self._context = multiprocessing.get_context("forkserver")
        self._executor = self._start()

    def groups(self, jobs: list[JobRow]) -> Iterable[list[JobRow]]:
        """Split into about two submissions per process when many wait, else one job each."""
        group = max(1, min(MAX_GROUP, len(jobs) // (2 * self.size)))
        return (jobs[i : i + group] for i in range(0, len(jobs), group))

    def submit(self, jobs: list[JobRow]) -> Future:
        try:
            return self._executor.submit(execute.run_batch, jobs)
        except BrokenProcessPool:
            log.warning("process pool was broken by a dying child; starting a new one")
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = self._start()
            return self._executor.submit(execute.run_batch, jobs)

    def shutdown(self, wait: bool) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=True)

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.size,
            mp_context=self._context,
            initializer=execute.configure,
            initargs=(self._allowed,),
        )


class Pools:
    """Both pools of a worker: submit jobs by pool name, hear back through ``on_done``."""

    def __init__(self, processes: int, threads: int, allowed_modules: frozenset[str] | None) -> None:
        execute.configure(allowed_modules)  # the thread pool runs in this process
        self.by_name: dict[str, ThreadPool | ProcessPool] = {}
        if processes:
            self.by_name["process"] = ProcessPool(processes, allowed_modules)
        if threads:
            self.by_name["thread"] = ThreadPool(threads)

    def slots(self) -> dict[str, int]:
        """How many jobs each pool runs at once."""
        return {name: pool.size for name, pool in self.by_name.items()}

    def run(self, pool_name: str, jobs: list[JobRow], on_done: OnDone) -> None:
        """Start ``jobs`` on the named pool; ``on_done`` gets result rows, from any thread."""
        pool = self.by_name.get(pool_name)
        if pool is None:
            error = execute.encode_error(ValueError(f"this worker has no {pool_name} pool"))
            on_done([(job_id, attempt, protocol.FAILED, error) for job_id, attempt, _, _ in jobs])
            return
        for group in pool.groups(jobs):
            future = pool.submit(group)
            future.add_done_callback(lambda done, group=group: on_done(_outcome(done, group)))

    def shutdown(self, wait: bool = True) -> None:
        for pool in self.by_name.values():
            pool.shutdown(wait)


def _outcome(future: Future, jobs: list[JobRow]) -> list[ResultRow]:
    """Result rows of a finished submission; a broken pool fails every job in it."""
    if future.cancelled():  # the worker is shutting down; the broker gives these jobs back
        return []
    exc = future.exception()
    if exc is None:
        return future.result()
    if isinstance(exc, BrokenProcessPool):
        exc = WorkerPoolError(f"a process-pool child died while running this job ({exc}); a new pool takes the next jobs")
    error = execute.encode_error(exc)
    return [(job_id, attempt, protocol.FAILED, error) for job_id, attempt, _, _ in jobs]
