"""Task functions of the schedule tests: each run leaves one marker file, created exclusively."""

import os
import time
import uuid


def mark(folder: str) -> str:
    """Create a marker file of this run in ``folder`` (O_EXCL: a name made twice fails the run)."""
    name = f"{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex}"
    os.close(os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    return name
