"""A CPU of its own for the measured client, the cluster on the others (case 12c, Linux).

In a deployment an asyncio service and the cluster it awaits run on different machines,
or at least do not share their cores. On the benchmark's machine they do: on two cores
the broker, the workers and their pools, all busy with no-ops, keep the client's loop
waiting for a CPU for milliseconds at a time, which measures the OS's scheduler more than
the client. ``own_core`` puts this process on the first CPU it may use and the cluster's
processes (with their children) on the rest while the block runs, then lets every one of
them use all of those CPUs again.

Linux sets a CPU affinity per thread, so every thread of each process is set
(``/proc/PID/task``); threads and processes started meanwhile inherit the affinity of the
thread that starts them, and are given back too, as the tree is walked again at the end.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterable, Iterator


@contextlib.contextmanager
def own_core(cluster_pids: Iterable[int]) -> Iterator[None]:
    """Every thread of this process on one CPU and ``cluster_pids`` (and their descendants) on the others.

    Raises RuntimeError where that cannot be done: fewer than two usable CPUs, or no
    ``os.sched_setaffinity`` (not Linux).
    """
    if not hasattr(os, "sched_setaffinity"):
        raise RuntimeError("a core of its own needs os.sched_setaffinity (Linux)")
    usable = os.sched_getaffinity(0)
    if len(usable) < 2:
        raise RuntimeError(f"a core of its own needs two usable CPUs; this process may use {sorted(usable)}")
    client = {min(usable)}
    pids = list(cluster_pids)
    _pin_threads(os.getpid(), client)  # what it starts meanwhile (the idle ticker) inherits this
    try:
        _pin(pids, usable - client)
        yield
    finally:
        _pin_threads(os.getpid(), usable)
        _pin(pids, usable)


def _pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of ``pids`` and of their descendants may run on ``cpus`` only."""
    for pid in _with_descendants(pids):
        _pin_threads(pid, cpus)


def _pin_threads(pid: int, cpus: set[int]) -> None:
    for thread in _threads(pid):
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.sched_setaffinity(thread, cpus)


def _with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them, from each process's parent in /proc/PID/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # it ended meanwhile
                continue
            children.setdefault(parent, []).append(int(entry))
    found, waiting = [], list(pids)
    while waiting:
        pid = waiting.pop()
        found.append(pid)
        waiting.extend(children.get(pid, []))
    return found


def _threads(pid: int) -> list[int]:
    try:
        return [int(thread) for thread in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:  # it ended meanwhile
        return []
