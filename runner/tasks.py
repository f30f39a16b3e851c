"""Task references, per-function defaults (``@task``) and the argument codec.

Nothing is pickled on the wire. A function travels as a ``module:qualname``
reference that the worker imports, and its arguments as msgpack.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import types
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any, Callable

import msgpack

from runner import protocol
from runner.broker.retry import DEFAULT_MAX_ATTEMPTS
from runner.due import check_due, one_due_time

_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
SENDABLE = "None, bool, int, float, str, bytes, list, tuple, dict"


@dataclass(frozen=True)
class JobOptions:
    """How and where a job runs; ``@task`` sets defaults, ``submit`` keywords override them.

    ``pool`` defaults to "process", and to "async" for an ``async def`` (see ``default_options``).
    """

    pool: str = "process"
    queue: str = "default"
    priority: int = 0
    retries: int = 0  # re-runs after the task raised or timed out
    retry_backoff: float = 1.0  # seconds before the first retry; doubles each time, with jitter
    timeout: float | None = None  # seconds a run may take before it is stopped
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # attempts in all, counting those lost to dying workers
    delay: float | None = None  # seconds from the broker's acceptance before the job may run (runner/due.py)
    at: datetime | None = None  # an aware moment before which the job does not run; not with delay

    def __post_init__(self) -> None:
        if self.pool not in protocol.POOLS:
            raise ValueError(f"pool must be one of {protocol.POOLS}, got {self.pool!r}")
        if not isinstance(self.queue, str) or not self.queue or len(self.queue) > protocol.MAX_NAME:
            raise ValueError(f"queue must be a non-empty string of at most {protocol.MAX_NAME} characters, got {self.queue!r}")
        _check_int("priority", self.priority, protocol.PRIORITY_MIN, protocol.PRIORITY_MAX)
        _check_int("retries", self.retries, 0, 1000)
        _check_int("max_attempts", self.max_attempts, 1, 1000)
        if not isinstance(self.retry_backoff, (int, float)) or not 0 <= self.retry_backoff <= 3600:
            raise ValueError(f"retry_backoff must be a number of seconds from 0 to 3600, got {self.retry_backoff!r}")
        if self.timeout is not None and (not isinstance(self.timeout, (int, float)) or not 0.001 <= self.timeout <= 10**7):
            raise ValueError(f"timeout must be None or a number of seconds above 0, got {self.timeout!r}")
        if self.delay is not None or self.at is not None:
            check_due(self.delay, self.at)

    def merged(self, overrides: dict[str, Any]) -> "JobOptions":
        """These options with the given non-None fields replaced."""
        changes = {key: value for key, value in overrides.items() if value is not None}
        if not changes:
            return self
        if "delay" in changes or "at" in changes:
            changes = one_due_time(self, changes)
        return replace(self, **changes)

    def wire_options(self) -> dict[str, Any]:
        """The submit row's options map: only what differs from the defaults."""
        wire = {}
        if self.retries:
            wire["retries"] = self.retries
            wire["backoff"] = self.retry_backoff
        if self.timeout is not None:
            wire["timeout"] = self.timeout
        if self.max_attempts != DEFAULT_MAX_ATTEMPTS:
            wire["max_attempts"] = self.max_attempts
        if self.delay is not None:
            wire["delay"] = float(self.delay)
        elif self.at is not None:
            wire["due"] = self.at.timestamp()
        return wire


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")


OPTION_NAMES = frozenset(field.name for field in fields(JobOptions))
_DEFAULTS = JobOptions()
_COROUTINE_DEFAULTS = JobOptions(pool="async")


def is_coroutine_function(function: Any) -> bool:
    """Whether calling ``function`` gives a coroutine: an ``async def``, also behind ``@task`` or ``functools.wraps``."""
    return inspect.iscoroutinefunction(inspect.unwrap(function))


def default_options(function: Callable[..., Any]) -> JobOptions:
    """The options a job of ``function`` gets unless told otherwise: a coroutine function goes to the async pool."""
    return _COROUTINE_DEFAULTS if is_coroutine_function(function) else _DEFAULTS


class Task:
    """A function with default job options; calling it still runs it locally."""

    def __init__(self, function: Callable[..., Any], options: JobOptions) -> None:
        functools.update_wrapper(self, function)
        self.function = function
        self.options = options
        self.reference = reference_of(function)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<runner task {self.reference} {self.options}>"


def task(function: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Decorate a module-level function with default job options (see JobOptions).

    ``@task`` and ``@task(pool="thread", queue="io", priority=5, retries=3)`` both work.
    An ``async def`` goes to the async pool unless ``pool`` is given.
    """
    unknown = set(options) - OPTION_NAMES
    if unknown:
        raise TypeError(f"task() got unknown options {sorted(unknown)}; it takes {sorted(OPTION_NAMES)}")
    if options.get("at") is not None:
        raise TypeError("task() does not take at=: a moment is not a default for every job of a task; pass at= to "
                        "submit (or delay= here, seconds each job waits after it is submitted)")
    JobOptions().merged(options)  # bad options raise now, where the decorator is written

    def wrap(inner: Callable[..., Any]) -> Task:
        return Task(inner, default_options(inner).merged(options))

    return wrap(function) if function is not None else wrap


def resolve_task(function: Callable[..., Any] | str | Task) -> tuple[str, JobOptions]:
    """The reference to send and the default options of what the user passed to submit."""
    if isinstance(function, Task):
        return function.reference, function.options
    if isinstance(function, str):
        if not _REFERENCE.match(function) or len(function) > protocol.MAX_NAME:
            raise ValueError(f"task reference {function!r} must look like 'package.module:function'")
        return function, _DEFAULTS  # a coroutine function named by reference needs pool="async"
    resolved = _RESOLVED.get(function) if type(function) is types.FunctionType else None
    if resolved is None:
        resolved = reference_of(function), default_options(function)
        if type(function) is types.FunctionType and len(_RESOLVED) < _RESOLVED_MAX:
            _RESOLVED[function] = resolved
    return resolved


#: Plain functions already resolved (compared by identity): a submit skips inspect's unwrapping, 3 µs a
#: job. A program submits a handful of functions; past _RESOLVED_MAX (functions made on the fly) they
#: are resolved every time rather than kept alive here. Other callables (a bound method would keep its
#: object alive) are always resolved afresh.
_RESOLVED: dict[Any, tuple[str, JobOptions]] = {}
_RESOLVED_MAX = 1024


def reference_of(function: Callable[..., Any]) -> str:
    """``module:qualname`` of a module-level function, which a worker can import."""
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not callable(function) or not module or not qualname:
        raise TypeError(f"{function!r} is not a function; pass a module-level function or 'module:function'")
    if "<" in qualname:
        raise TypeError(
            f"{qualname!r} is a lambda or nested function, which a worker cannot import; "
            "define it at module level"
        )
    if module == "__main__":
        module = _main_module_name(function)
    return f"{module}:{qualname}"


def _main_module_name(function: Callable[..., Any]) -> str:
    """A script's functions are importable by the script's file name (its folder on the path)."""
    path = getattr(sys.modules["__main__"], "__file__", None)
    if not path:
        raise TypeError(
            f"{function.__qualname__!r} is defined in an interactive session, which a worker cannot import; "
            "put it in a module"
        )
    return os.path.splitext(os.path.basename(path))[0]


class JobResult:
    """The result of job ``job_id``, as an argument of another job: that job waits for it.

    ``client.submit(fn, runner.JobResult(job_id))`` is what passing the job's Future does, for a
    job known only by its id (another process's, ``runner jobs``). The broker puts the result
    in its place when that job is done; a bare string argument stays a string.
    """

    __slots__ = ("job_id",)

    def __init__(self, job_id: str) -> None:
        if not isinstance(job_id, str) or not job_id or len(job_id) > protocol.MAX_NAME:
            raise ValueError(f"JobResult takes a job id (a non-empty string of at most {protocol.MAX_NAME} "
                             f"characters), got {job_id!r}")
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"runner.JobResult({self.job_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobResult) and other.job_id == self.job_id

    def __hash__(self) -> int:
        return hash(self.job_id)


#: What a non-msgpack argument stands for: a JobResult (a Future of the client), a value to send
#: instead, or a TypeError (not sendable) or ValueError (a Future of another client).
Referrer = Callable[[Any], Any]
NO_WAITS: list[str] = []  # shared by every job that waits for none; never changed


def encode_arguments(args: tuple, kwargs: dict[str, Any], refer: Referrer | None = None) -> tuple[bytes, list[str]]:
    """Pack arguments as msgpack; a TypeError names the argument that cannot be sent.

    Returns the payload and the ids of the jobs whose results it holds placeholders for:
    a ``JobResult``, or anything ``refer`` turns into a job id (a client's Futures), at any
    depth. Plain arguments never reach that path: msgpack calls it only for what it cannot pack.
    """
    try:
        payload = protocol.pack([args, kwargs])
        waits = NO_WAITS
    except (TypeError, ValueError, OverflowError):
        waits = []
        payload = _pack_with_placeholders(args, kwargs, refer, waits)
    if len(payload) > protocol.MAX_MESSAGE_BYTES // 2:
        raise ValueError(
            f"the job's arguments take {len(payload)} bytes, more than the {protocol.MAX_MESSAGE_BYTES // 2} byte "
            "limit; pass a path or key to the data instead"
        )
    return payload, waits


def decode_arguments(payload: bytes) -> list:
    """A job's packed ``[args, kwargs]`` as a user reads them: a placeholder shows as its JobResult."""
    def placeholder(code: int, data: bytes) -> Any:
        return JobResult(data.decode()) if code == protocol.RESULT_OF_EXT else msgpack.ExtType(code, data)

    return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True, ext_hook=placeholder)


class _Refused(Exception):
    """Carries an error of ``refer`` (a Future of another client) through msgpack, unchanged."""


def _pack_with_placeholders(args: tuple, kwargs: dict[str, Any], refer: Referrer | None, waits: list[str]) -> bytes:
    def default(value: Any) -> Any:
        if refer is not None and not isinstance(value, JobResult):
            try:
                value = refer(value)
            except ValueError as exc:
                raise _Refused(exc) from None
            if not isinstance(value, JobResult):  # a finished Future's value, or a group's Futures
                return value
        if not isinstance(value, JobResult):
            raise TypeError(f"cannot serialize {type(value).__name__!r} object")
        waits.append(value.job_id)
        return msgpack.ExtType(protocol.RESULT_OF_EXT, value.job_id.encode())

    try:
        return msgpack.packb([args, kwargs], use_bin_type=True, default=default)
    except _Refused as refused:
        raise refused.args[0] from None
    except (TypeError, ValueError, OverflowError):
        _raise_for_unsendable(args, kwargs, default)
        raise


def _raise_for_unsendable(args: tuple, kwargs: dict[str, Any], default: Callable[[Any], Any]) -> None:
    named = [(f"positional argument {index}", value) for index, value in enumerate(args)]
    named += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
    for label, value in named:
        try:
            msgpack.packb(value, use_bin_type=True, default=default)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(
                f"{label} is a {type(value).__name__}, which runner cannot send ({exc}); "
                f"arguments must be msgpack types: {SENDABLE} (or a Future of this client)"
            ) from None
