"""The embedded cluster's scratch folder (``runner-local-*`` in the temp dir), which holds its journal.

It goes away with its cluster: ``LocalCluster.close()`` removes it, and so does the
broker when it ends, which covers an owner killed by SIGKILL. For the one case left,
owner and broker killed together, each folder carries a lock held (``flock``) by the
owner and, through an inherited descriptor, by its broker: a folder whose lock no
process holds is abandoned, and the next embedded cluster to start removes it.
"""

from __future__ import annotations

import fcntl
import glob
import os
import shutil
import tempfile
import time

PREFIX = "runner-local-"
LOCK_NAME = "lock"
ABANDONED_AFTER = 60.0  # seconds an unlocked folder must be old before it counts as abandoned, not being made


class Scratch:
    """A new scratch folder, locked for as long as ``lock_fd`` (or a child's inherited copy) is open."""

    def __init__(self) -> None:
        remove_abandoned()
        self.path = tempfile.mkdtemp(prefix=PREFIX)
        self.lock_fd = os.open(os.path.join(self.path, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)

    def remove(self) -> None:
        """Remove the folder and let go of its lock (idempotent)."""
        remove_folder(self.path)
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def remove_folder(path: str) -> None:
    """Remove a scratch folder; a path that is not one (a mistyped ``--scratch``) is left alone."""
    if os.path.basename(os.path.normpath(path)).startswith(PREFIX):
        shutil.rmtree(path, ignore_errors=True)


def remove_abandoned(folder: str | None = None) -> list[str]:
    """Remove the scratch folders in ``folder`` (the temp dir) that no live cluster holds; return them.

    Folders of other users, of older runners (no lock file) and young ones are left alone.
    """
    removed = []
    for path in glob.glob(os.path.join(folder or tempfile.gettempdir(), PREFIX + "*")):
        try:
            if time.time() - os.stat(path).st_mtime < ABANDONED_AFTER:
                continue
            lock_fd = os.open(os.path.join(path, LOCK_NAME), os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # held: its cluster still runs
        else:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(lock_fd)
    return removed
