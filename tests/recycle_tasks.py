"""Task functions of tests/test_recycling.py: which pool child ran a job, and a child that grows."""

import os

_kept: list[bytes] = []  # memory a job leaves behind in its pool child, as a leak would


def pid(value: int) -> list:
    """Return the input and the id of the process that ran the job."""
    return [value, os.getpid()]


def grow(mib: int) -> int:
    """Allocate ``mib`` MiB, touch every page, keep it for the rest of this process's life; return the pid."""
    _kept.append(b"\x01" * (mib * 1024 * 1024))
    return os.getpid()
