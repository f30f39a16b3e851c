"""``delay=`` and ``at=``: when a job may run at the earliest, checked where the user writes it.

A job submitted with ``delay=seconds`` waits that long after the broker accepts it (the
broker's clock counts, so a client's skewed clock cannot move it); one with ``at=`` waits
until that moment, an aware ``datetime`` (a naive one is refused: whose midnight would it
be?). On the wire they are the options ``"delay"`` and ``"due"`` (epoch seconds); the
broker holds such a job in its timer structure (runner/broker/timers.py) until it is due.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any

from runner.protocol import MAX_DELAY

if TYPE_CHECKING:
    from runner.tasks import JobOptions

AWARE_EXAMPLE = "datetime.now(timezone.utc) + timedelta(minutes=5)"


def check_due(delay: Any, at: Any) -> None:
    """Raise ValueError naming the value unless ``delay`` and ``at`` make one valid due time (or none)."""
    if delay is not None and at is not None:
        raise ValueError(f"pass delay= or at=, not both (got delay={delay!r} and at={at!r})")
    if delay is not None:
        check_delay(delay)
    elif at is not None:
        check_at(at)


def check_delay(delay: Any) -> None:
    """A delay is a finite number of seconds from 0 to MAX_DELAY."""
    if (not isinstance(delay, (int, float)) or isinstance(delay, bool) or not math.isfinite(delay)
            or not 0 <= delay <= MAX_DELAY):
        raise ValueError(f"delay must be a number of seconds from 0 to {MAX_DELAY:,.0f}, got {delay!r}")


def check_at(at: Any) -> None:
    """``at`` is an aware datetime: one with a time zone, so it names one moment."""
    if not isinstance(at, datetime):
        raise ValueError(f"at must be a datetime with a time zone, e.g. {AWARE_EXAMPLE}; got {at!r}")
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"at={at!r} is a naive datetime: pass one with tzinfo, e.g. {AWARE_EXAMPLE}, "
                         "or at.replace(tzinfo=...) / at.astimezone() for local time")


def one_due_time(options: "JobOptions", changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` to ``options`` that set a due time: the one given replaces the other (a task's
    default delay gives way to a submit's ``at=``); both in the same call is refused."""
    check_due(changes.get("delay"), changes.get("at"))
    other = "at" if "delay" in changes else "delay"
    if getattr(options, other) is not None:
        changes = {**changes, other: None}
    return changes


def parse_at(text: str) -> datetime:
    """An ISO 8601 moment with its UTC offset (``2026-12-03T02:00:00+01:00``, or ``...Z``), for the CLI."""
    try:
        moment = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 time; write it like 2026-12-03T02:00:00+01:00") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset; add one, e.g. 2026-12-03T02:00:00+01:00 (or Z for UTC)")
    return moment

