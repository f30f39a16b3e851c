"""Task functions used by the examples, the tests and the CLI docs.

A worker runs these when started with ``--import tasks`` and this folder on its
``PYTHONPATH``; a client refers to them as ``"tasks:add"`` or by the function itself.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time


def noop() -> None:
    """Do nothing: measures the runner's own cost per job."""


def add(a: float, b: float) -> float:
    """Return a + b."""
    return a + b


def square(x: float) -> float:
    """Return x squared."""
    return x * x


def echo(value):
    """Return the value unchanged: a round trip through the codec."""
    return value


def whoami() -> dict:
    """Say where this job ran: host, process id and thread name."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "thread": threading.current_thread().name,
    }


def sleep_then(seconds: float, value=None):
    """Sleep (I/O-like wait), then return value: an I/O-bound job."""
    time.sleep(seconds)
    return value


def blocking_request(seconds: float) -> str:
    """A request that waits ``seconds`` in a blocking call; returns the thread that served it."""
    time.sleep(seconds)
    return threading.current_thread().name


async def awaiting_request(seconds: float) -> str:
    """The same request as a coroutine: it awaits instead (runs in the async pool by default)."""
    await asyncio.sleep(seconds)
    return threading.current_thread().name


def slow_whoami(seconds: float) -> dict:
    """Sleep, then say where the job ran: a long job whose placement matters."""
    time.sleep(seconds)
    return whoami()


def cpu_burn(iterations: int) -> int:
    """Pure-Python arithmetic that holds the GIL: a CPU-bound job."""
    total = 0
    for i in range(iterations):
        total = (total + i * i) % 1_000_003
    return total


def fail(message: str):
    """Raise ValueError(message): shows how a remote builtin exception comes back."""
    raise ValueError(message)


class CustomError(Exception):
    """An exception type the client does not know: comes back as runner.TaskError."""


def fail_custom(message: str):
    """Raise CustomError(message)."""
    raise CustomError(message)


def record_order(label: str, seconds: float = 0.0) -> dict:
    """Return the label with the time it started: used to observe dispatch order."""
    started = time.time()
    if seconds:
        time.sleep(seconds)
    return {"label": label, "started": started, "pid": os.getpid()}
