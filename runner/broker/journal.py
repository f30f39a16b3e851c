"""The broker's durable memory: every accepted job, its state and its outcome, in SQLite.

A job is acknowledged to its client only after the row that records it is
committed, so a broker killed at any moment loses nothing it acknowledged. Writes
made during a loop turn are grouped into one transaction (``commit`` at the end
of the turn), so durability costs one fsync-free WAL commit per turn, not per job.
The checkpoints that copy the WAL into the database file (and fsync) run on a
thread of their own (runner/broker/checkpoint.py), so a slow disk does not stall the loop.

WAL with ``synchronous=NORMAL`` survives the broker process dying (kill -9); a
power cut may lose the last commits. ``:memory:`` turns durability off.

States: ``pending`` (waiting or running: a restart queues it again), ``done``,
``failed`` and ``dead`` (final outcomes, kept until delivered plus a TTL),
``cancelled`` (never runs). A delayed job's due time is kept in its ``due`` column
(epoch seconds; NULL for a job that may run at once), so a restart holds it until then.
The ``workers`` table lists the workers connected (by routing id, which a worker keeps across
a broker restart): a restart holds restored jobs for their claims until each has said hello again.
"""

from __future__ import annotations

import json
import operator
import sqlite3
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from runner import protocol
from runner.broker.checkpoint import BACKSTOP_PAGES, Checkpointer

PENDING = "pending"
DONE = "done"
FAILED = "failed"
DEAD = "dead"
CANCELLED = "cancelled"
FINAL_STATES = (DONE, FAILED, DEAD, CANCELLED)

#: Undelivered outcomes are kept at least this long, even with a shorter result TTL.
UNCLAIMED_KEEP = 24 * 3600.0
#: Acknowledgement messages whose outcomes one expiry call deletes at most.
EXPIRE_BATCH = 500
#: How the default (empty) options are stored: most jobs have them, so they are packed once.
EMPTY_OPTIONS = protocol.pack({})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    client BLOB NOT NULL,
    task TEXT NOT NULL,
    pool TEXT NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload BLOB NOT NULL,
    options BLOB NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT,
    outcome BLOB,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS deliveries (
    at REAL NOT NULL,
    ids TEXT NOT NULL,
    client BLOB
);
CREATE TABLE IF NOT EXISTS queue_items (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    item BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS fencing (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    definition BLOB NOT NULL,
    done_until REAL NOT NULL,
    last_tick REAL,
    fired INTEGER NOT NULL,
    skipped INTEGER NOT NULL,
    unfinished TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL
);
"""
#: Added after the first journals were written: opening an older file adds them (NULL in old rows).
_WORKER_COLUMN = "ALTER TABLE jobs ADD COLUMN worker TEXT"
_DUE_COLUMN = "ALTER TABLE jobs ADD COLUMN due REAL"  # a delayed job's due time (NULL: not delayed)
_ACKNOWLEDGER_COLUMN = "ALTER TABLE deliveries ADD COLUMN client BLOB"  # who acknowledged (NULL: any owner)


@dataclass
class StoredJob:
    """A job as the journal keeps it."""

    id: str
    client: bytes
    task: str
    pool: str
    queue: str
    priority: int
    payload: bytes
    options: dict
    state: str
    attempts: int
    status: str | None = None
    outcome: bytes | None = None
    worker: str | None = None  # the name of the worker whose run gave the final outcome


class Journal:
    """SQLite-backed record of jobs; call ``commit()`` once per loop turn."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.durable = path != ":memory:"
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._checkpointer: Checkpointer | None = None
        # A journal written before the broker listed its workers opens with that list unknown.
        tables = {name for (name,) in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        self._workers_listed = "workers" in tables or "jobs" not in tables
        if self.durable:  # checkpoints run off the loop's thread; the loop's own is a backstop
            self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            self._checkpointer = Checkpointer(path)
        self._db.executescript(_SCHEMA)
        self._add_column("jobs", "worker", _WORKER_COLUMN)
        self._add_column("jobs", "due", _DUE_COLUMN)
        self._add_column("deliveries", "client", _ACKNOWLEDGER_COLUMN)
        self._in_transaction = False
        self._finished: list[tuple] = []  # final outcomes of this turn, written together at commit
        self.worker_joined_uncommitted = False  # a worker was listed this turn: commit before leasing to it
        self.counts = self._count_by_state()  # kept up to date in memory: a status must not scan the table

    # --- writes (grouped until commit) ----------------------------------------------------

    def _begin(self) -> None:
        if not self._in_transaction:
            self._db.execute("BEGIN")
            self._in_transaction = True

    def add_jobs(self, rows: Iterable[tuple]) -> int:
        """Record accepted jobs: (id, client, task, pool, queue, priority, payload, options).

        Returns how many were new: an id the journal already has keeps its row.
        """
        self._begin()
        cursor = self._db.executemany(
            "INSERT OR IGNORE INTO jobs (id, client, task, pool, queue, priority, payload, options, state) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, '{PENDING}')",
            ((*row[:7], protocol.pack(row[7]) if row[7] else EMPTY_OPTIONS) for row in rows),
        )
        self.counts[PENDING] = self.counts.get(PENDING, 0) + cursor.rowcount
        return cursor.rowcount

    def set_due(self, dues: list[tuple[float, str]]) -> None:
        """Record when delayed jobs just added are due: (due time, job id) pairs."""
        self._begin()
        self._db.executemany("UPDATE jobs SET due=? WHERE id=?", dues)

    def finish(self, job_id: str, state: str, status: str, outcome: bytes, attempts: int, now: float,
               worker: str | None = None) -> None:
        """Record a job's final outcome, and the name of the worker that gave it (written with the
        rest of the turn's at commit)."""
        self._begin()
        self._finished.append((state, status, outcome, attempts, now, worker or None, job_id))
        self.counts[state] = self.counts.get(state, 0) + 1
        self.counts[PENDING] -= 1

    def set_attempts(self, job_id: str, attempts: int, due: float | None = None) -> None:
        """Record attempts spent (on a requeue or retry, not on every dispatch); ``due``: when a
        retry waiting out its backoff may run (a restart holds it until then)."""
        self._begin()
        if due is None:
            self._db.execute("UPDATE jobs SET attempts=? WHERE id=?", (attempts, job_id))
        else:
            self._db.execute("UPDATE jobs SET attempts=?, due=? WHERE id=?", (attempts, due, job_id))

    def rewrite(self, job_id: str, payload: bytes, options: dict) -> None:
        """A waiting job's arguments got a dependency's result, and its options the ids it still
        waits for (runner/broker/dependencies.py); in the turn's transaction, with that outcome."""
        self._begin()
        self._db.execute("UPDATE jobs SET payload=?, options=? WHERE id=?",
                         (payload, protocol.pack(options) if options else EMPTY_OPTIONS, job_id))

    def cancel(self, job_id: str, now: float) -> None:
        self.finish(job_id, CANCELLED, CANCELLED, b"", 0, now)

    def requeue(self, job_id: str, client: bytes) -> None:
        """Make a failed or dead job pending again, with fresh attempts, for ``client``."""
        self._begin()
        self._write_finished()
        state = self._db.execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()[0]
        self.counts[state] -= 1
        self.counts[PENDING] = self.counts.get(PENDING, 0) + 1
        self._db.execute(
            "UPDATE jobs SET state=?, client=?, attempts=0, status=NULL, outcome=NULL, finished_at=NULL, worker=NULL "
            "WHERE id=?",
            (PENDING, client, job_id),
        )

    def delivered(self, job_ids: Iterable[str], now: float, client: bytes) -> None:
        """``client`` has these outcomes: from now on only the TTL keeps those it owns (``expire``).

        One row per acknowledgement message, not one write per job: a client acknowledges
        every outcome, so this sits on the hot path.
        """
        self._begin()
        self._db.execute("INSERT INTO deliveries (at, ids, client) VALUES (?, ?, ?)",
                         (now, json.dumps(list(job_ids)), client))

    def expire(self, now: float, result_ttl: float, owns: Callable[[bytes, bytes], bool] = operator.eq,
               limit: int = EXPIRE_BATCH) -> int:
        """Delete outcomes delivered more than ``result_ttl`` ago (at most ``limit``
        acknowledgements' worth a call, so one call never stalls the broker for long).

        An acknowledgement counts only for the jobs its client owns: ``owns(client, owner)``
        (the submitter's routing id); another client's ack leaves an outcome to its owner.
        """
        self._begin()
        self._write_finished()
        acknowledged = self._db.execute(
            "SELECT rowid, ids, client FROM deliveries WHERE at < ? ORDER BY rowid LIMIT ?",
            (now - result_ttl, limit)).fetchall()
        removed = []
        for _, ids, client in acknowledged:
            if client is None:  # journaled before acknowledgers were recorded: it counts for any owner
                removed += self._delete_final(ids)
                continue
            own = self._delete_final(ids, client)  # the usual case, in SQL: its jobs under its routing id
            removed += own
            if len(own) < len(json.loads(ids)):  # others' jobs, or its own under another routing id
                others = self._db.execute(
                    "SELECT id, client FROM jobs WHERE id IN (SELECT value FROM json_each(?)) "
                    "AND state IN (?, ?, ?, ?)", (ids, *FINAL_STATES)).fetchall()
                removed += self._delete_final(json.dumps([job_id for job_id, owner in others if owns(client, owner)]))
        if acknowledged:
            self._db.execute("DELETE FROM deliveries WHERE rowid <= ?", (acknowledged[-1][0],))
        for (state,) in removed:
            self.counts[state] -= 1
        return len(removed)

    def _delete_final(self, ids: str, client: bytes | None = None) -> list[tuple[str]]:
        """Delete the jobs of ``ids`` (a JSON list) that have a final outcome (only ``client``'s, if
        given); the state of each."""
        mine, values = ("", ()) if client is None else (" AND client = ?", (client,))
        return self._db.execute(
            f"DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?)) AND state IN (?, ?, ?, ?){mine} "
            "RETURNING state", (ids, *FINAL_STATES, *values)).fetchall()

    def expire_unclaimed(self, now: float, result_ttl: float) -> int:
        """Delete outcomes nobody acknowledged for UNCLAIMED_KEEP (or the TTL, if longer).

        A scan of the whole table: call it rarely.
        """
        self._begin()
        self._write_finished()
        removed = self._db.execute(
            "DELETE FROM jobs WHERE state IN (?, ?, ?, ?) AND finished_at < ? RETURNING state",
            (*FINAL_STATES, now - max(result_ttl, UNCLAIMED_KEEP)),
        ).fetchall()
        for (state,) in removed:
            self.counts[state] -= 1
        return len(removed)

    def commit(self) -> None:
        """Make this turn's writes durable; the caller acknowledges only after this."""
        if not self._in_transaction:
            return
        self._write_finished()
        self._db.execute("COMMIT")
        self._in_transaction = False
        self.worker_joined_uncommitted = False
        if self._checkpointer is not None:
            self._checkpointer.committed(time.monotonic())

    # --- queue items of the cluster-wide queues -----------------------------------------------

    def queue_put(self, name: str, item: bytes) -> None:
        self._begin()
        self._db.execute("INSERT INTO queue_items (name, item) VALUES (?, ?)", (name, item))

    def queue_take(self, name: str, item: bytes) -> None:
        """Remove the oldest stored copy of ``item`` in queue ``name``."""
        self._begin()
        self._db.execute(
            "DELETE FROM queue_items WHERE seq = (SELECT seq FROM queue_items WHERE name=? AND item=? ORDER BY seq LIMIT 1)",
            (name, item),
        )

    def queue_contents(self) -> dict[str, list[bytes]]:
        contents: dict[str, list[bytes]] = {}
        for name, item in self._db.execute("SELECT name, item FROM queue_items ORDER BY seq"):
            contents.setdefault(name, []).append(item)
        return contents

    # --- the fencing epoch of the cluster-wide locks ---------------------------------------

    def start_epoch(self) -> int:
        """Count one more broker start and commit it at once; returns this run's epoch.

        Called before serving, so every fencing token of this run is above those of every
        earlier run on this journal (runner/broker/sync.py), with no write per token.
        """
        self._begin()
        (epoch,) = self._db.execute(
            "INSERT INTO fencing (id, epoch) VALUES (1, 1) ON CONFLICT (id) DO UPDATE SET epoch = epoch + 1 "
            "RETURNING epoch").fetchone()
        self.commit()
        return epoch

    def save_epoch(self, epoch: int) -> None:
        """This run moved on to ``epoch`` (rare: a name used up its epoch's tokens); at commit."""
        self._begin()
        self._db.execute("UPDATE fencing SET epoch = MAX(epoch, ?) WHERE id = 1", (epoch,))

    # --- periodic schedules (runner/broker/schedules.py) -------------------------------------

    def save_schedule(self, row: tuple) -> None:
        """Write a schedule and where it stands (``Entry.row``); at commit, with the turn's job rows."""
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO schedules (name, definition, done_until, last_tick, fired, skipped, "
                         "unfinished) VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    def delete_schedule(self, name: str) -> None:
        self._begin()
        self._db.execute("DELETE FROM schedules WHERE name=?", (name,))

    def schedules(self) -> list[tuple]:
        """Every journaled schedule row, as ``save_schedule`` took it."""
        return self._db.execute("SELECT name, definition, done_until, last_tick, fired, skipped, unfinished "
                                "FROM schedules ORDER BY name").fetchall()

    # --- the workers connected (the claim window after a restart: runner/broker/jobs_held.py) ---

    def worker_joined(self, worker: bytes, name: str) -> None:
        """A worker said hello (by routing id): listed until it leaves or is lost, so a restart waits
        for its claims. At commit, with the turn; ``worker_joined_uncommitted`` tells the server to
        commit before any lease reaches it (a worker that got leases must be listed)."""
        self._begin()
        self._db.execute("INSERT OR REPLACE INTO workers (id, name) VALUES (?, ?)", (worker, name))
        self.worker_joined_uncommitted = True

    def worker_left(self, worker: bytes) -> None:
        """A worker left, was declared lost, or did not come back within a restart's claim window."""
        self._begin()
        self._db.execute("DELETE FROM workers WHERE id=?", (worker,))

    def workers(self) -> dict[bytes, str] | None:
        """The workers listed as connected (routing id: name); None if this journal was written
        before the broker kept that list (its first open since): who was connected is unknown."""
        if not self._workers_listed:
            return None
        return dict(self._db.execute("SELECT id, name FROM workers ORDER BY rowid"))

    # --- reads ----------------------------------------------------------------------------

    def unfinished(self) -> Iterator[tuple]:
        """Every job without a final outcome, in the order they were accepted.

        Rows of (id, client, task, pool, queue, priority, payload, options blob, attempts, due):
        a restart reads a million of them, so they stay plain tuples.
        """
        return self._db.execute(
            "SELECT id, client, task, pool, queue, priority, payload, options, attempts, due "
            "FROM jobs WHERE state=? ORDER BY rowid",
            (PENDING,),
        )

    def attempts(self, job_id: str) -> int:
        """Attempts journaled as spent on an unfinished job: what a restart would give it."""
        return self._db.execute("SELECT attempts FROM jobs WHERE id=?", (job_id,)).fetchone()[0]

    def get(self, job_id: str) -> StoredJob | None:
        self._write_finished()
        row = self._db.execute(
            "SELECT id, client, task, pool, queue, priority, payload, options, state, attempts, status, outcome, "
            "worker FROM jobs WHERE id=?",
            (job_id,),
        ).fetchone()
        return None if row is None else StoredJob(*row[:7], protocol.unpack(row[7]), *row[8:])

    def dead_letters(self, limit: int = 1000) -> list[StoredJob]:
        self._write_finished()
        cursor = self._db.execute(
            "SELECT id, client, task, pool, queue, priority, payload, options, state, attempts, status, outcome, "
            "worker FROM jobs WHERE state=? ORDER BY finished_at LIMIT ?",
            (DEAD, limit),
        )
        return [StoredJob(*row[:7], protocol.unpack(row[7]), *row[8:]) for row in cursor]

    def newest(self, wanted: tuple[str, ...], queue: str | None, task: str | None, window: int) -> Iterator[tuple]:
        """Jobs in the ``wanted`` states (and queue, task when given) among the newest ``window``, newest first.

        Rows of (id, client, task, queue, state, attempts, worker), read lazily: stop when you have
        enough. The window bounds the scan, as no index on state is kept (it would tax every write).
        """
        self._write_finished()
        marks = ", ".join("?" * len(wanted))
        return self._db.execute(
            "SELECT id, client, task, queue, state, attempts, worker FROM "
            "(SELECT id, client, task, queue, state, attempts, worker FROM jobs ORDER BY rowid DESC LIMIT ?) "
            f"WHERE state IN ({marks}) AND (? IS NULL OR queue = ?) AND (? IS NULL OR task = ?)",
            (window, *wanted, queue, queue, task, task))

    def _write_finished(self) -> None:
        """Write the outcomes buffered this turn (before a commit, or a read that must see them)."""
        if self._finished:
            self._db.executemany(
                "UPDATE jobs SET state=?, status=?, outcome=?, attempts=?, finished_at=?, worker=? WHERE id=?",
                self._finished)
            self._finished.clear()

    def _add_column(self, table: str, name: str, statement: str) -> None:
        """Run ``statement`` (an ALTER TABLE adding column ``name`` to ``table``) unless the file has
        it: journals written before the column existed open (NULL in it)."""
        if name not in {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}:
            self._db.execute(statement)

    def _count_by_state(self) -> dict[str, int]:
        counts = dict.fromkeys((PENDING, *FINAL_STATES), 0)
        counts.update(self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        return counts

    def close(self) -> None:
        """Commit, stop the checkpoint thread, close (SQLite's last close checkpoints what is left)."""
        self.commit()
        if self._checkpointer is not None:
            self._checkpointer.close()
        self._db.close()
