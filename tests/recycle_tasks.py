"""Task functions of tests/test_recycling.py: which pool child ran a job, and a child that grows."""

import os
import threading
import time

_kept: list[bytes] = []  # memory a job leaves behind in its pool child, as a leak would
_never = threading.Event()


def pid(value: int) -> list:
    """Return the input and the id of the process that ran the job."""
    return [value, os.getpid()]


def record(path: str, value: int) -> list:
    """Append 'value pid' to the file at ``path`` (one write: lines never interleave); return both."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, f"{value} {os.getpid()}\n".encode())
    finally:
        os.close(descriptor)
    return [value, os.getpid()]


def grow(mib: int) -> int:
    """Allocate ``mib`` MiB, touch every page, keep it for the rest of this process's life; return the pid."""
    _kept.append(b"\x01" * (mib * 1024 * 1024))
    return os.getpid()


def sleep_pid(seconds: float) -> int:
    """Sleep, then return the pid (a job to stop at its timeout)."""
    time.sleep(seconds)
    return os.getpid()


def linger() -> int:
    """Leave a thread behind that never ends and is no daemon: the process cannot exit on its own."""
    threading.Thread(target=_never.wait, name="lingering").start()
    return os.getpid()
