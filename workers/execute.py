"""What runs inside a pool: resolve the task against the allowlist, call it, capture the outcome.

This module is imported in the worker process (for the thread pool) and in every
process-pool child, where :func:`configure` runs as the pool's initializer. It
returns outcomes already encoded as msgpack blobs, so a child hands the parent
plain bytes and an exception never has to be pickled.
"""

from __future__ import annotations

import importlib
import os
import resource
import sys
import traceback
from typing import Any, Callable, Iterable

from runner import lifetime, protocol
from runner.errors import error_blob

#: Modules whose functions may run here; None means any module (embedded cluster only).
_allowed_modules: frozenset[str] | None = frozenset()
_resolved: dict[str, Callable[..., Any]] = {}
_statm: int | None = None  # descriptor of /proc/self/statm, opened at the first measurement
_PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


class TaskNotAllowed(LookupError):
    """The job names a function outside the modules this worker was started with."""


class TaskNotFound(LookupError):
    """The job names a function that does not exist in an allowed module."""


def configure(allowed_modules: Iterable[str] | None, worker_pid: int | None = None) -> None:
    """Set the allowlist and import each allowed module now, so import errors show at start.

    In a pool child, ``worker_pid`` names the worker: the child ends when it does, even
    by SIGKILL (a ProcessPoolExecutor child holds both ends of its call queue, so it
    would never see its parent go and would wait forever as an orphan).
    """
    global _allowed_modules
    if worker_pid is not None:
        lifetime.exit_with([worker_pid])
    _allowed_modules = None if allowed_modules is None else frozenset(allowed_modules)
    _resolved.clear()
    for module in sorted(_allowed_modules or ()):
        importlib.import_module(module)


def resolve(task: str) -> Callable[..., Any]:
    """Find the function a ``module:qualname`` reference names, if the allowlist permits it."""
    function = _resolved.get(task)
    if function is not None:
        return function
    module_name, _, qualname = task.partition(":")
    if _allowed_modules is not None and module_name not in _allowed_modules:
        allowed = ", ".join(sorted(_allowed_modules)) or "none"
        raise TaskNotAllowed(
            f"task {task!r} is not allowed on this worker: module {module_name!r} was not given "
            f"with --import (allowed: {allowed}); start the worker with --import {module_name}"
        )
    try:
        target: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise TaskNotFound(f"task {task!r} cannot be found on this worker: {exc}") from None
    if not callable(target):
        raise TaskNotFound(f"task {task!r} names a {type(target).__name__}, not a function")
    _resolved[task] = target
    return target


def run(task: str, payload: bytes) -> tuple[str, bytes]:
    """Run one job; return (status, blob): the packed result, or the packed error."""
    try:
        function = resolve(task)
        args, kwargs = _arguments(payload)
        value = function(*args, **kwargs)
    except (Exception, SystemExit) as exc:  # the job's failure, reported to its submitter
        return protocol.FAILED, encode_error(exc)
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
