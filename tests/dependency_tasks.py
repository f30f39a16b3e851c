"""Tasks for tests/test_dependencies.py: arithmetic, a failure, and runs that leave a marker.

``marked`` creates its marker file with O_EXCL: a second run of the same job fails with
FileExistsError, so a job that ran twice cannot go unnoticed.
"""

from __future__ import annotations

import os

from jobs import wait_for_gate


def add(a, b):
    return a + b


def total(values: list) -> int:
    return sum(values)


def echo(*args, **kwargs) -> list:
    return [args, kwargs]


def fail(message: str) -> None:
    raise ValueError(message)


def marked(folder: str, name: str, value=0, gate: str | None = None, plus=0):
    """Leave the marker ``folder/name`` (once: O_EXCL), wait for ``gate`` if given, return value + plus."""
    os.close(os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    if gate is not None:
        wait_for_gate(gate)
    return value + plus
