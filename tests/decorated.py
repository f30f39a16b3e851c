"""A task module for tests: per-function defaults with @runner.task."""

import os
import threading

import runner


@runner.task(pool="thread", priority=3)
def where() -> dict:
    """Where this call ran: process id and thread name."""
    return {"pid": os.getpid(), "thread": threading.current_thread().name}
