"""When a schedule's ticks fall: a cron expression in a time zone, or a fixed interval.

Pure functions of time (epoch seconds in, epoch seconds out), no clock of their own.
Cron expressions are evaluated by croniter, never parsed here; this module only
checks their shape (five fields, or an ``@hourly``-style alias) and the zone.

Daylight saving time, for a cron expression in a zone that has it:
- a wall time that does not exist (spring forward) fires at the first instant after the
  gap (``30 2 * * *`` in Europe/Paris fires at 03:00 that day), once;
- a wall time that happens twice (fall back) fires once, at its first occurrence, unless
  the expression's hour field is ``*`` (hourly and finer): then it follows real time and
  fires in both hours, as an hourly job should.
Fixed intervals ignore zones: their ticks are the multiples of the interval since the
Unix epoch, so every client that registers the same schedule gets the same ticks.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Union
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

#: The aliases accepted besides five-field expressions, and what each means.
ALIASES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
#: Steps croniter may take looking for one tick (the fall-back rule skips a few at most).
SEARCH_STEPS = 64
#: Shortest and longest fixed interval, in seconds.
MIN_INTERVAL, MAX_INTERVAL = 0.001, 366 * 86400.0


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ValueError naming it and what is accepted."""
    try:
        if not isinstance(name, str) or not name:
            raise ValueError
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}: give an IANA name such as 'UTC' or 'Europe/Paris' "
                         "(a system without a zone database needs `pip install tzdata`)") from None


class CronTicks:
    """The ticks of a five-field cron expression (or alias) in a time zone."""

    def __init__(self, expression: str, tz: str = "UTC") -> None:
        self.expression = expression
        self.tz = tz
        self.zone = zone(tz)
        fields = ALIASES.get(expression.strip().lower(), expression) if isinstance(expression, str) else None
        if fields is None or len(fields.split()) != 5 or not croniter.is_valid(fields):
            raise ValueError(f"bad cron expression {expression!r}: give five fields (minute hour day-of-month month "
                             f"day-of-week, e.g. '0 2 * * *') or one of {', '.join(ALIASES)}")
        self._fields = fields
        self._hourly = fields.split()[1] == "*"

    def next_after(self, moment: float) -> float:
        """The first tick strictly after ``moment``."""
        return self._search(moment, forward=True)

    def latest_at_or_before(self, moment: float) -> float:
        """The last tick at or before ``moment``."""
        return self._search(moment, forward=False)

    def _search(self, moment: float, forward: bool) -> float:
        # croniter starts from a whole second (a datetime would round a moment just before a tick up
        # to it, and the search would skip that tick); ticks are whole minutes, then checked against moment.
        start = math.floor(moment) + (0 if forward else 1)
        steps = croniter(self._fields, datetime.fromtimestamp(start, self.zone))
        for _ in range(SEARCH_STEPS):
            wall = steps.get_next(datetime) if forward else steps.get_prev(datetime)
            tick = wall.timestamp()
            if self._repeated_wall_time(wall) or (tick <= moment if forward else tick > moment):
                continue
            return tick
        raise ValueError(f"cron expression {self.expression!r} has no tick near {moment}")  # pragma: no cover

    def _repeated_wall_time(self, wall: datetime) -> bool:
        """A tick at the second occurrence of a wall time (fall back) that already fired at the first."""
        if self._hourly or not wall.fold:
            return False
        return wall.replace(fold=0).utcoffset() != wall.utcoffset()


class IntervalTicks:
    """Ticks every ``seconds``, at the multiples of it since the Unix epoch."""

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                MIN_INTERVAL <= seconds <= MAX_INTERVAL):
            raise ValueError(f"bad interval {seconds!r}: give a number of seconds from {MIN_INTERVAL:g} to "
                             f"{MAX_INTERVAL:g} (or a cron expression as a string)")
        self.seconds = float(seconds)
        self.tz = "UTC"

    def next_after(self, moment: float) -> float:
        tick = (math.floor(moment / self.seconds) + 1) * self.seconds
        return tick if tick > moment else tick + self.seconds

    def latest_at_or_before(self, moment: float) -> float:
        tick = math.floor(moment / self.seconds) * self.seconds
        return tick if tick <= moment else tick - self.seconds


Ticks = Union[CronTicks, IntervalTicks]


def ticks_of(spec: str | float, tz: str = "UTC") -> Ticks:
    """The ticks of ``spec``: a cron expression (str) in ``tz``, or an interval in seconds (a number)."""
    if isinstance(spec, str):
        return CronTicks(spec, tz)
    zone(tz)  # a bad zone is refused for an interval too, rather than silently ignored
    return IntervalTicks(spec)


def utc_text(moment: float) -> str:
    """A tick as ISO 8601 in UTC, for messages and logs."""
    return datetime.fromtimestamp(moment, timezone.utc).isoformat()
