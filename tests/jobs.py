"""Task functions only the tests use: a pool child that dies, and where a job ran."""

import os
import time


def crash(code: int = 13) -> None:
    """End the pool process at once, as a segfault or os._exit in user code would."""
    os._exit(code)


def pid_after(seconds: float) -> int:
    """Sleep, then return the process id that ran the job."""
    time.sleep(seconds)
    return os.getpid()


def unsendable_result() -> set:
    """Return a set, which msgpack cannot carry back."""
    return {1, 2}


def note_pid_after(seconds: float, path: str) -> int:
    """Sleep, then append this process's id to the file at ``path``, and return it."""
    time.sleep(seconds)
    with open(path, "a") as marker:
        marker.write(f"{os.getpid()}\n")
    return os.getpid()
