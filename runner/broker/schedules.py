"""Periodic schedules: which job to create at which tick (sans-IO: no sockets, no clock).

The broker is the cluster's one scheduler. ``ScheduleBook`` takes events (a schedule
added or replaced by name, removed, restored from the journal, a job of a schedule
finished, time passing) and returns actions: ``Fire`` (create this job for this tick),
``Skip`` (a tick not run, counted), ``Save`` and ``Delete`` (journal writes). The broker
shell (runner/broker/schedule_shell.py) carries them out in the turn's transaction,
the job row and the schedule row together.

A tick's job id is derived from (schedule name, tick), so a crash between deciding and
committing cannot make two jobs of one tick: the tick is decided again after a restart
and yields the same id, which the journal already has or takes once.

Policies, per schedule:
- ``catch_up``, for ticks missed while the broker was down: ``"one"`` (default) runs the
  latest of them once; ``"none"`` runs none; ``"all"`` runs each of them, the latest
  ``max_catch_up`` at most (older ones are dropped). Dropped ticks are counted as skipped.
- ``overlap``: ``"skip"`` (default) skips a tick, and counts it, while a job of the
  schedule is still unfinished (pending, retrying or running); ``"allow"`` runs it anyway.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Union

from runner import protocol
from runner.broker.ticks import IntervalTicks, Ticks, ticks_of

#: The client that owns the jobs the broker creates: their outcomes are journaled, never sent.
SCHEDULER_CLIENT = b"runner:scheduler"
CATCH_UP = ("one", "none", "all")
OVERLAP = ("skip", "allow")
DEFAULT_MAX_CATCH_UP = 10
MAX_CATCH_UP = 10_000
#: Ticks one schedule may have due at once while the broker is up (its loop stalled, the clock
#: jumped); beyond them, the rest are skipped and counted, as a downtime would be.
MAX_DUE_AT_ONCE = 100
#: Runs each view lists ahead (``upcoming``, the first being ``next``): computed when a view is
#: asked for, kept in memory until the schedule's next tick moves, never journaled.
UPCOMING_RUNS = 3
SOURCES = ("api", "file")


@dataclass(frozen=True)
class Schedule:
    """What a schedule runs and when; every field is checked at construction (ValueError)."""

    name: str
    spec: str | float  # a cron expression or alias (str), or an interval in seconds (a number)
    task: str  # module:function
    payload: bytes = protocol.pack([[], {}])  # packed [args, kwargs]
    pool: str = "process"
    queue: str = "default"
    priority: int = 0
    options: dict = field(default_factory=dict)  # the job options on the wire (JobOptions.wire_options)
    tz: str = "UTC"
    catch_up: str = "one"
    max_catch_up: int = DEFAULT_MAX_CATCH_UP
    overlap: str = "skip"
    source: str = "api"  # "file": owned by the broker's --schedules file, removed when it is gone from it

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or len(self.name) > protocol.MAX_NAME:
            raise ValueError(f"bad schedule name {self.name!r}: give a non-empty string of at most "
                             f"{protocol.MAX_NAME} characters")
        _choice("catch_up", self.catch_up, CATCH_UP)
        _choice("overlap", self.overlap, OVERLAP)
        _choice("source", self.source, SOURCES)
        if isinstance(self.max_catch_up, bool) or not isinstance(self.max_catch_up, int) or not (
                1 <= self.max_catch_up <= MAX_CATCH_UP):
            raise ValueError(f"bad max_catch_up {self.max_catch_up!r}: give an integer from 1 to {MAX_CATCH_UP}")
        try:
            protocol.check_job_row(["0", self.task, self.pool, self.queue, self.priority, self.payload, self.options])
        except protocol.ProtocolError as exc:
            raise ValueError(f"schedule {self.name!r}: {exc}") from None
        object.__setattr__(self, "ticks", ticks_of(self.spec, self.tz))

    @property
    def timing(self) -> tuple:
        """What decides the ticks: a replacement with the same timing keeps the schedule's place."""
        return (self.spec, self.tz)

    def record(self) -> dict[str, Any]:
        """The fields as the journal keeps them (msgpack-able)."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "Schedule":
        return cls(**record)


def _choice(what: str, value: Any, accepted: tuple[str, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"bad {what} {value!r}: give one of {', '.join(map(repr, accepted))}")


def tick_job_id(name: str, tick: float) -> str:
    """The job id of a schedule's tick: 39 lowercase hex digits, the same for the same (name, tick).

    Shaped as runner/ids.py ids are (12 digits of milliseconds first), so it sorts by time."""
    digest = hashlib.sha256(f"{name}\0{tick!r}".encode()).hexdigest()
    return f"{int(tick * 1000) & 0xFFFF_FFFF_FFFF:012x}{digest[:27]}"


@dataclass(frozen=True)
class Fire:
    """Create this job for this tick."""

    schedule: Schedule
    tick: float
    job_id: str


@dataclass(frozen=True)
class Skip:
    """A tick not run (overlap, or beyond the catch-up policy); already counted."""

    name: str
    tick: float
    reason: str


@dataclass(frozen=True)
class Save:
    """Write this schedule row to the journal (see ``Entry.row``)."""

    row: tuple


@dataclass(frozen=True)
class Delete:
    name: str


Action = Union[Fire, Skip, Save, Delete]


@dataclass
class Entry:
    """A schedule and where it stands: every tick up to ``done_until`` is decided."""

    schedule: Schedule
    done_until: float
    last_tick: float | None = None  # the latest tick that fired
    fired: int = 0
    skipped: int = 0
    unfinished: set[str] = field(default_factory=set)  # its jobs not finished yet
    next_tick: float = 0.0
    definition: bytes = b""  # the schedule packed once, not at every tick's journal write
    _upcoming: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.next_tick = self.ticks.next_after(self.done_until)
        self.definition = protocol.pack(self.schedule.record())

    @property
    def ticks(self) -> Ticks:
        return self.schedule.ticks  # type: ignore[attr-defined]

    def row(self) -> tuple:
        """(name, definition, done_until, last_tick, fired, skipped, unfinished ids as JSON)."""
        return (self.schedule.name, self.definition, self.done_until, self.last_tick,
                self.fired, self.skipped, json.dumps(sorted(self.unfinished)))

    def upcoming(self) -> list[float]:
        """The next ``UPCOMING_RUNS`` ticks, ``next_tick`` first (epoch seconds).

        Kept between views, and only the missing ones computed when ``next_tick`` moves on: a
        cron tick costs croniter about 0.1 ms, and status may be asked for every second."""
        runs = self._upcoming
        runs = runs[runs.index(self.next_tick):] if self.next_tick in runs else (self.next_tick,)
        while len(runs) < UPCOMING_RUNS:
            runs += (self.ticks.next_after(runs[-1]),)
        self._upcoming = runs
        return list(runs)

    def view(self) -> dict[str, Any]:
        """What ``client.schedules()`` and status show (``next``, ``upcoming``, ``last``: epoch seconds)."""
        schedule = self.schedule
        return {"name": schedule.name, "spec": schedule.spec, "tz": schedule.tz, "task": schedule.task,
                "queue": schedule.queue, "pool": schedule.pool, "priority": schedule.priority,
                "catch_up": schedule.catch_up, "max_catch_up": schedule.max_catch_up, "overlap": schedule.overlap,
                "source": schedule.source, "next": self.next_tick, "upcoming": self.upcoming(),
                "last": self.last_tick, "fired": self.fired, "skipped": self.skipped, "running": len(self.unfinished)}


class ScheduleBook:
    """Every schedule of the cluster and every decision about its ticks."""

    def __init__(self) -> None:
        self.entries: dict[str, Entry] = {}
        self._by_job: dict[str, str] = {}  # unfinished job id -> schedule name

    # --- events -----------------------------------------------------------------------------

    def add(self, schedule: Schedule, now: float) -> list[Action]:
        """Add ``schedule``, or replace the one of its name (same timing: it keeps its place and counts)."""
        old = self.entries.get(schedule.name)
        same = old is not None and old.schedule.timing == schedule.timing
        entry = Entry(schedule, old.done_until if same else now)
        if old is not None:
            entry.last_tick, entry.fired, entry.skipped, entry.unfinished = (
                old.last_tick, old.fired, old.skipped, old.unfinished)
        self.entries[schedule.name] = entry
        return [Save(entry.row())]

    def remove(self, name: str) -> list[Action]:
        """Forget schedule ``name`` (its unfinished jobs run on); no action if unknown."""
        entry = self.entries.pop(name, None)
        if entry is None:
            return []
        for job_id in entry.unfinished:
            self._by_job.pop(job_id, None)
        return [Delete(name)]

    def restore(self, rows: Iterable[tuple], now: float,
                held: Callable[[str], bool]) -> tuple[list[Action], list[tuple[str, str]]]:
        """Take the journal's rows back after a restart, at ``now``.

        The ticks since each one's ``done_until`` were missed while the broker was down: the
        returned actions apply its catch-up policy to them. ``held(job_id)``: is that job still
        unfinished? Also returns (name, problem) for rows that are no longer valid (left out)."""
        actions: list[Action] = []
        problems = []
        for name, definition, done_until, last_tick, fired, skipped, unfinished in rows:
            try:
                schedule = Schedule.from_record(protocol.unpack(definition))
            except (ValueError, TypeError) as exc:
                problems.append((name, str(exc)))
                continue
            entry = Entry(schedule, done_until, last_tick, fired, skipped,
                          {job_id for job_id in json.loads(unfinished) if held(job_id)})
            self.entries[name] = entry
            self._by_job.update(dict.fromkeys(entry.unfinished, name))
            if entry.next_tick <= now:
                self._catch_up(entry, now, actions)
            self._decided(entry, now, actions)
        return actions, problems

    def finished(self, job_id: str) -> list[Action]:
        """A job finished (done, failed, dead or cancelled); its schedule may run the next tick."""
        name = self._by_job.pop(job_id, None)
        entry = self.entries.get(name) if name is not None else None
        if entry is None:
            return []
        entry.unfinished.discard(job_id)
        return [Save(entry.row())]

    def due(self, now: float) -> list[Action]:
        """The ticks at or before ``now`` not yet decided: fired, or skipped and counted."""
        actions: list[Action] = []
        for entry in self.entries.values():
            if entry.next_tick <= now:
                self._on_time(entry, now, actions)
                self._decided(entry, now, actions)
        return actions

    # --- queries ----------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """The earliest undecided tick of any schedule (when to call ``due`` next)."""
        return min((entry.next_tick for entry in self.entries.values()), default=None)

    def views(self) -> list[dict[str, Any]]:
        return [entry.view() for _, entry in sorted(self.entries.items())]

    # --- decisions ----------------------------------------------------------------------------

    @staticmethod
    def _decided(entry: Entry, now: float, actions: list[Action]) -> None:
        """Every tick up to ``now`` is decided: journal where the schedule stands."""
        entry.done_until = max(entry.done_until, now)
        entry.next_tick = entry.ticks.next_after(entry.done_until)
        actions.append(Save(entry.row()))

    def _on_time(self, entry: Entry, now: float, actions: list[Action]) -> None:
        tick, count = entry.next_tick, 0
        while tick <= now:
            count += 1
            if count > MAX_DUE_AT_ONCE:
                self._skip(entry, tick, "more ticks were due at once than the broker runs late", actions)
            else:
                self._tick(entry, tick, actions)
            tick = entry.ticks.next_after(tick)

    def _catch_up(self, entry: Entry, now: float, actions: list[Action]) -> None:
        """The ticks in (done_until, now], missed while the broker was down, by the catch-up policy."""
        schedule = entry.schedule
        keep = {"none": 0, "one": 1, "all": schedule.max_catch_up}[schedule.catch_up]
        missed, tick = [], entry.ticks.latest_at_or_before(now)
        while tick > entry.done_until and len(missed) <= keep:  # the latest first, one beyond the policy
            missed.append(tick)
            tick = entry.ticks.latest_at_or_before(tick - 1e-6)
        if len(missed) > keep:  # that one stands for itself and every older missed tick
            self._skip(entry, missed[keep], f"missed while the broker was down (catch_up={schedule.catch_up!r})",
                       actions)
            entry.skipped += self._uncounted(entry, missed[keep])
        runs = sorted(missed[:keep])
        if schedule.overlap == "skip" and entry.unfinished:
            for tick in runs:
                self._skip(entry, tick, "its previous run is not finished (overlap='skip')", actions)
            return
        for tick in runs:
            self._fire(entry, tick, actions)

    def _uncounted(self, entry: Entry, oldest_listed: float) -> int:
        """Missed ticks older than those listed, counted without listing them (bounded for cron)."""
        ticks, count, tick = entry.ticks, 0, oldest_listed
        if isinstance(ticks, IntervalTicks):  # counted by arithmetic
            return max(0, round((oldest_listed - ticks.next_after(entry.done_until)) / ticks.seconds))
        while count < MAX_CATCH_UP:
            tick = ticks.latest_at_or_before(tick - 1e-6)
            if tick <= entry.done_until:
                break
            count += 1
        return count

    def _tick(self, entry: Entry, tick: float, actions: list[Action]) -> None:
        if entry.schedule.overlap == "skip" and entry.unfinished:
            self._skip(entry, tick, "its previous run is not finished (overlap='skip')", actions)
        else:
            self._fire(entry, tick, actions)

    def _fire(self, entry: Entry, tick: float, actions: list[Action]) -> None:
        job_id = tick_job_id(entry.schedule.name, tick)
        entry.fired += 1
        entry.last_tick = tick
        entry.unfinished.add(job_id)
        self._by_job[job_id] = entry.schedule.name
        actions.append(Fire(entry.schedule, tick, job_id))

    @staticmethod
    def _skip(entry: Entry, tick: float, reason: str, actions: list[Action]) -> None:
        entry.skipped += 1
        actions.append(Skip(entry.schedule.name, tick, reason))
