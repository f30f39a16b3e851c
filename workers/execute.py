"""What runs inside a pool: resolve the task as admission.py admits it, call it, capture the outcome.

This module is imported in the worker process (for the thread and async pools) and in
every process-pool child, where :func:`configure` runs as the pool's initializer. It
returns outcomes already encoded as msgpack blobs, so a child hands the parent
plain bytes and an exception never has to be pickled.
"""

from __future__ import annotations

import importlib
import os
import resource
import sys
import time
import traceback
from types import CoroutineType
from typing import Any, Callable

from runner import lifetime, protocol
from runner.errors import TaskNotAllowedError, error_blob
from runner.tasks import is_coroutine_function
from workers.admission import Admission

#: What jobs may run here (admission.py); the default admits nothing until configure().
_admission = Admission()
_resolved: dict[str, Callable[..., Any]] = {}
_coroutine_tasks: dict[str, bool] = {}  # task -> whether it is an async def, looked up once (async pool)
_statm: int | None = None  # descriptor of /proc/self/statm, opened at the first measurement
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024

#: The name this error had before it moved to runner.errors; ``except TaskNotAllowed`` still catches it.
TaskNotAllowed = TaskNotAllowedError


class TaskNotFound(LookupError):
    """The job names a function that does not exist in an allowed module."""


def configure(admission: Admission, worker_pid: int | None = None) -> None:
    """Set what jobs may run and import each ``--import`` module now, so import errors show at start.

    In a pool child, ``worker_pid`` names the worker: the child ends when it does, even
    by SIGKILL (a ProcessPoolExecutor child holds both ends of its call queue, so it
    would never see its parent go and would wait forever as an orphan).
    """
    global _admission
    if worker_pid is not None:
        lifetime.exit_with([worker_pid])
    _admission = admission
    _resolved.clear()
    _coroutine_tasks.clear()
    for module in sorted(admission.imports):
        importlib.import_module(module)


def resolve(task: str) -> Callable[..., Any]:
    """Find the function a ``module:qualname`` reference names, if this worker admits it.

    The module is checked before it is imported, so a refused module is never imported.
    """
    function = _resolved.get(task)
    if function is not None:
        return function
    refusal = _admission.refusal(task)
    if refusal is not None:
        raise TaskNotAllowedError.raised_here(refusal)
    module_name, _, qualname = task.partition(":")
    try:
        path: list[Any] = [importlib.import_module(module_name)]
        for part in qualname.split("."):
            path.append(getattr(path[-1], part))
    except (ImportError, AttributeError) as exc:
        raise TaskNotFound(f"task {task!r} cannot be found on this worker: {exc}") from None
    refusal = _admission.target_refusal(task, path[1:])
    if refusal is not None:
        raise TaskNotAllowedError.raised_here(refusal)
    _resolved[task] = path[-1]
    return path[-1]


def run(task: str, payload: bytes) -> tuple[str, bytes]:
    """Run one job; return (status, blob): the packed result, or the packed error.

    A coroutine function (in the process or thread pool) runs to its end under ``asyncio.run``.
    """
    try:
        function = resolve(task)
        args, kwargs = _arguments(payload)
        value = function(*args, **kwargs)
        if isinstance(value, CoroutineType):
            import asyncio  # only here: most pool children never need it

            value = asyncio.run(value)
    except (Exception, SystemExit) as exc:  # the job's failure, reported to its submitter
        return protocol.FAILED, encode_error(exc)
    return _packed(task, value)


async def run_async(task: str, payload: bytes) -> tuple[str, bytes]:
    """Run one coroutine job on the running loop (the async pool); (status, blob) as ``run`` gives.

    A plain function is refused before it is called: it would block the loop, and every
    other coroutine job with it. ``CancelledError`` (a timeout, a forced cancel) goes through.
    """
    try:
        function = resolve(task)
        coroutine = _coroutine_tasks.get(task)
        if coroutine is None:
            coroutine = _coroutine_tasks[task] = is_coroutine_function(function)
        if not coroutine:
            raise TypeError(f"task {task!r} is a plain function, not an async def: the async pool runs coroutines "
                            "only (a blocking call would stall every other job on its event loop); submit it with "
                            "pool='thread' (or 'process'), or make it an async def")
        args, kwargs = _arguments(payload)
        value = await function(*args, **kwargs)
    except (Exception, SystemExit) as exc:  # the job's failure, reported to its submitter
        return protocol.FAILED, encode_error(exc)
    return _packed(task, value)


def _packed(task: str, value: Any) -> tuple[str, bytes]:
    """(ok, the packed value), or (failed, a TypeError naming what cannot be sent back)."""
    try:
        return protocol.OK, protocol.pack(value)
    except (TypeError, ValueError, OverflowError) as exc:
        error = TypeError(
            f"task {task!r} returned a {type(value).__name__}, which cannot be sent back: {exc}; "
            "return msgpack types (None, bool, int, float, str, bytes, list, tuple, dict)"
        )
        return protocol.FAILED, encode_error(error)


def run_batch(jobs: list[tuple[str, int, str, bytes]]) -> list[tuple[str, int, str, bytes]]:
    """Run several small jobs in one pool submission: (id, attempt, task, payload) each."""
    return [(job_id, attempt, *run(task, payload)) for job_id, attempt, task, payload in jobs]


def run_batch_timed(jobs: list[tuple[str, int, str, bytes]]) -> tuple[list[tuple[str, int, str, bytes]], float]:
    """In a process-pool child: ``run_batch``, and the seconds its jobs took here.

    The worker sizes its groups and its prefetch by this time, not by the submission's round
    trip, whose fixed cost (pickling, pipes, the executor's threads) would make a group of
    no-ops look slow and keep the groups and the prefetch small (credit.py).
    """
    started = time.perf_counter()
    rows = run_batch(jobs)
    return rows, time.perf_counter() - started


def run_batch_measured(jobs: list[tuple[str, int, str, bytes]],
                       max_rss_kib: int | None) -> tuple[list[tuple[str, int, str, bytes]], int, int | None]:
    """In a pool child that may be recycled: run the jobs; return their rows, this pid, and its RSS in KiB.

    Without ``max_rss_kib`` memory is not measured (None). With it, RSS is read after
    each job, and a job that leaves the child above the limit is the last it runs: the
    rest of its group come back as ``requeue`` (unrun, no attempt charged), and the
    worker retires this child on seeing its size (recycling.py).
    """
    if max_rss_kib is None:
        return run_batch(jobs), os.getpid(), None
    rows, rss = [], 0
    for index, (job_id, attempt, task, payload) in enumerate(jobs):
        rows.append((job_id, attempt, *run(task, payload)))
        rss = _rss_kib()
        if rss > max_rss_kib:
            rows.extend((later, later_attempt, protocol.REQUEUE, b"") for later, later_attempt, *_ in jobs[index + 1:])
            break
    return rows, os.getpid(), rss


def _rss_kib() -> int:
    """This process's resident memory now, in KiB: /proc/self/statm, kept open (one pread per call)."""
    global _statm
    try:
        if _statm is None:
            _statm = os.open("/proc/self/statm", os.O_RDONLY)
        return int(os.pread(_statm, 128, 0).split()[1]) * _PAGE_KIB
    except (OSError, ValueError, IndexError):  # no /proc: the peak so far bounds it from above
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB elsewhere


def encode_error(exc: BaseException) -> bytes:
    """Pack an exception with its formatted traceback, as the client will rebuild it."""
    return error_blob(exc, "".join(traceback.format_exception(exc)))


def _arguments(payload: bytes) -> tuple[list, dict]:
    try:
        args, kwargs = protocol.unpack(payload)
    except Exception as exc:
        raise ValueError(f"the job's arguments are not a valid msgpack [args, kwargs] pair: {exc}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("the job's arguments must be a list of positional and a map of keyword arguments")
    return args, kwargs
