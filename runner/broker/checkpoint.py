"""The journal's WAL checkpoints, run by a thread of their own instead of the broker's loop.

In WAL mode SQLite appends each commit to the ``-wal`` file; a checkpoint copies those pages
into the database file and, under ``synchronous=NORMAL``, fsyncs both. By default the
connection that commits runs one whenever the WAL passes 1,000 pages: on the broker, the
loop's thread, in the middle of a turn. On a disk other processes write to, that fsync took
the turn tens of milliseconds (up to 150 ms measured while the map case ran, the commit's own
CPU 2 ms), and every due job, lease and reply waited behind it.

``Checkpointer`` runs a PASSIVE checkpoint (it never takes the write lock, so the loop keeps
committing) on a connection of its own, at most once an ``interval`` while commits arrive;
``sqlite3`` releases the GIL while SQLite works. A checkpoint made while the loop commits
cannot let the WAL start over from its beginning, so under a sustained load the loop's
connection keeps an automatic checkpoint as a backstop, at ``BACKSTOP_PAGES``: it then finds
the pages mostly copied already, and the WAL stays bounded.
"""

from __future__ import annotations

import sqlite3
import threading

from loguru import logger

log = logger.bind(component="journal")

INTERVAL = 0.5  # seconds between two background checkpoints at most (while commits arrive)
BACKSTOP_PAGES = 10_000  # WAL pages (about 40 MB) at which the committing connection checkpoints itself
JOIN_TIMEOUT = 10.0  # seconds close() waits for a checkpoint under way


class Checkpointer:
    """A thread that checkpoints the WAL of the database at ``path`` when ``committed`` asks."""

    def __init__(self, path: str, interval: float = INTERVAL) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA synchronous=NORMAL")  # per connection: sync as the committing one would
        self._interval = interval
        self._next = 0.0  # monotonic time before which committed() does not ask again
        self._wanted = threading.Event()
        self._stopping = False
        self.checkpoints = 0  # made so far (for tests and curiosity)
        self._thread = threading.Thread(target=self._run, name="journal-checkpoints", daemon=True)
        self._thread.start()

    def committed(self, now: float) -> None:
        """The loop committed at ``now`` (monotonic): ask for a checkpoint, once an interval at most."""
        if now >= self._next:
            self._next = now + self._interval
            self._wanted.set()

    def close(self) -> None:
        """Stop the thread (after the checkpoint under way, if any) and close its connection."""
        self._stopping = True
        self._wanted.set()
        self._thread.join(JOIN_TIMEOUT)
        if self._thread.is_alive():
            log.warning("a journal checkpoint still runs after {:.0f}s; closing without waiting for it", JOIN_TIMEOUT)
            return
        self._db.close()

    def _run(self) -> None:
        while not self._stopping:
            if not self._wanted.wait(1.0):
                continue
            self._wanted.clear()
            if self._stopping:
                return
            try:
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.checkpoints += 1
            except sqlite3.Error as exc:  # the next commit asks again; the backstop bounds the WAL meanwhile
                log.warning("a background checkpoint of the journal failed: {}", exc)
