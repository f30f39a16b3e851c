"""Task references, per-function defaults (``@task``) and the argument codec.

Nothing is pickled on the wire. A function travels as a ``module:qualname``
reference that the worker imports, and its arguments as msgpack.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from runner import protocol

_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
SENDABLE = "None, bool, int, float, str, bytes, list, tuple, dict"


@dataclass(frozen=True)
class JobOptions:
    """How and where a job runs; ``@task`` sets defaults, ``submit`` keywords override them."""

    pool: str = "process"
    queue: str = "default"
    priority: int = 0

    def __post_init__(self) -> None:
        if self.pool not in protocol.POOLS:
            raise ValueError(f"pool must be one of {protocol.POOLS}, got {self.pool!r}")
        if not isinstance(self.queue, str) or not self.queue or len(self.queue) > protocol.MAX_NAME:
            raise ValueError(f"queue must be a non-empty string of at most {protocol.MAX_NAME} characters, got {self.queue!r}")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool) or abs(self.priority) >= 2**31:
            raise ValueError(f"priority must be an integer between -2**31 and 2**31, got {self.priority!r}")

    def merged(self, overrides: dict[str, Any]) -> "JobOptions":
        """These options with the given non-None fields replaced."""
        changes = {key: value for key, value in overrides.items() if value is not None}
        return replace(self, **changes) if changes else self


OPTION_NAMES = frozenset(field.name for field in fields(JobOptions))


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


def task(function: Callable[..., Any] | None = None, *, pool: str | None = None,
         queue: str | None = None, priority: int | None = None) -> Any:
    """Decorate a module-level function with default job options.

    ``@task`` and ``@task(pool="thread", queue="io", priority=5)`` both work.
    """
    options = JobOptions().merged({"pool": pool, "queue": queue, "priority": priority})

    def wrap(inner: Callable[..., Any]) -> Task:
        return Task(inner, options)

    return wrap(function) if function is not None else wrap


def resolve_task(function: Callable[..., Any] | str | Task) -> tuple[str, JobOptions]:
    """The reference to send and the default options of what the user passed to submit."""
    if isinstance(function, Task):
        return function.reference, function.options
    if isinstance(function, str):
        if not _REFERENCE.match(function) or len(function) > protocol.MAX_NAME:
            raise ValueError(f"task reference {function!r} must look like 'package.module:function'")
        return function, JobOptions()
    return reference_of(function), JobOptions()


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


def encode_arguments(args: tuple, kwargs: dict[str, Any]) -> bytes:
    """Pack arguments as msgpack; a TypeError names the argument that cannot be sent."""
    try:
        payload = protocol.pack([args, kwargs])
    except (TypeError, ValueError, OverflowError):
        _raise_for_unsendable(args, kwargs)
        raise
    if len(payload) > protocol.MAX_MESSAGE_BYTES // 2:
        raise ValueError(
            f"the job's arguments take {len(payload)} bytes, more than the {protocol.MAX_MESSAGE_BYTES // 2} byte "
            "limit; pass a path or key to the data instead"
        )
    return payload


def _raise_for_unsendable(args: tuple, kwargs: dict[str, Any]) -> None:
    named = [(f"positional argument {index}", value) for index, value in enumerate(args)]
    named += [(f"keyword argument {name!r}", value) for name, value in kwargs.items()]
    for label, value in named:
        try:
            protocol.pack(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(
                f"{label} is a {type(value).__name__}, which runner cannot send ({exc}); "
                f"arguments must be msgpack types: {SENDABLE}"
            ) from None
