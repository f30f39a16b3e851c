"""Tasks of the delayed-job tests: each run leaves a marker saying when it started.

The marker of a job is created with O_EXCL, so a second run of the same job cannot hide:
it leaves a second marker (``NAME.again-PID-N``) that the test counts.
"""

from __future__ import annotations

import itertools
import os
import time

_again = itertools.count(1)


def stamp(folder: str, name: str) -> float:
    """Record this run's start time (time.time()) in ``folder/name``; return it."""
    started = time.time()
    path = os.path.join(folder, name)
    try:
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        descriptor = os.open(f"{path}.again-{os.getpid()}-{next(_again)}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(descriptor, "w") as marker:
        marker.write(repr(started))
    return started


def runs(folder: str, name: str) -> list[float]:
    """The start times of every run of job ``name`` recorded in ``folder`` (the test side)."""
    found = [entry for entry in os.listdir(folder) if entry == name or entry.startswith(f"{name}.again-")]
    return [float(open(os.path.join(folder, entry)).read()) for entry in found]
