"""Processes that live only as long as others: the one way runner ties a child's life to its owner's.

An embedded cluster's broker and workers end with the process that started them
(not with the thread that did, as ``PR_SET_PDEATHSIG`` would have it), and its
workers also end with their broker; a process-pool child ends with its worker.
The child watches the processes it depends on and acts as soon as any of them has
ended, even by SIGKILL: on Linux through a pidfd per process, elsewhere by asking
every POLL_INTERVAL seconds.
"""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from typing import Callable, Iterable

POLL_INTERVAL = 1.0  # seconds between checks where pidfds are not available


def exit_with(pids: Iterable[int], on_end: Callable[[], None] | None = None) -> None:
    """Call ``on_end`` (default: leave at once) as soon as any of ``pids`` has ended.

    ``on_end`` runs on a daemon thread, or right here if one of them is already gone.
    """
    pids = list(pids)
    act = on_end or _leave
    try:
        watched = [os.pidfd_open(pid) for pid in pids]
    except ProcessLookupError:  # ended while this process was starting
        act()
        return
    except (AttributeError, OSError):  # not Linux >= 5.3
        threading.Thread(target=_poll, args=(pids, act), name="runner-exit-with", daemon=True).start()
        return

    def watch() -> None:
        select.select(watched, [], [])
        act()

    threading.Thread(target=watch, name="runner-exit-with", daemon=True).start()


def ignore_interrupts() -> None:
    """A ``preexec_fn`` for children whose owner decides when they stop: Ctrl-C is not theirs.

    The ignored SIGINT lasts from the start of the new interpreter, so a Ctrl-C sent to
    the whole process group cannot hit the child in the middle of its imports.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _poll(pids: list[int], act: Callable[[], None]) -> None:
    while all(_alive(pid) for pid in pids):
        time.sleep(POLL_INTERVAL)
    act()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, and someone else's
        pass
    return True


def _leave() -> None:
    os._exit(1)
