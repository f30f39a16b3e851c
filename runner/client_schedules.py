"""Periodic schedules from a client: ``schedule``, ``schedules`` and ``unschedule``.

The broker keeps and runs them (runner/broker/schedules.py): one job per tick for the whole
cluster, however many clients register the same schedule. ``define`` turns what a user
writes (a function or ``module:function``, its arguments, submit's options and the
schedule's policies) into a checked ``Schedule``; Client (a mixin here), AsyncClient, the
CLI and the broker's ``--schedules`` file all use it, so a bad value raises the same
ValueError everywhere, before anything is sent. ``shown`` and ``later_runs_text`` present the
broker's views of schedules (aware datetimes; the runs after the next, compact for a table).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable
from zoneinfo import ZoneInfo

from runner import protocol
from runner.broker.schedules import DEFAULT_MAX_CATCH_UP, Schedule
from runner.tasks import OPTION_NAMES, Task, encode_arguments, resolve_task


def define(name: str, spec: str | float, fn: Callable[..., Any] | str | Task, args: tuple = (),
           kwargs: dict[str, Any] | None = None, *, tz: str = "UTC", catch_up: str = "one",
           max_catch_up: int = DEFAULT_MAX_CATCH_UP, overlap: str = "skip", source: str = "api",
           **options: Any) -> Schedule:
    """A checked Schedule; ``options`` are submit's (pool, queue, priority, retries, retry_backoff,
    timeout, max_attempts). ValueError (or TypeError for an unsendable argument) says what is wrong."""
    unknown = set(options) - OPTION_NAMES
    if unknown:
        raise TypeError(f"unknown job options {sorted(unknown)}; a schedule takes {sorted(OPTION_NAMES)}")
    if options.get("at") is not None:
        raise ValueError(f"a schedule's jobs cannot all run at one moment (at={options['at']!r}); "
                         "the schedule's spec says when each runs (delay= shifts every tick's job)")
    reference, defaults = resolve_task(fn)
    job = defaults.merged(options)
    payload, waits = encode_arguments(tuple(args), kwargs or {})
    if waits:
        raise ValueError(f"a schedule's arguments cannot wait for other jobs (they hold results of {waits}): "
                         "each tick runs with the same arguments; pass plain values")
    return Schedule(name, spec, reference, payload, job.pool, job.queue,
                    job.priority, job.wire_options(), tz, catch_up, max_catch_up, overlap, source)


def schedule_body(schedule: Schedule) -> dict[str, Any]:
    """The ``schedule`` request that adds (or replaces) ``schedule``."""
    record = schedule.record()
    record.pop("source")  # a client's schedules are the API's: only the broker's file owns others
    return {"op": "add", "schedule": record}


def shown(view: dict[str, Any]) -> dict[str, Any]:
    """A broker's view of a schedule with ``next``, ``upcoming`` and ``last`` as aware datetimes in its zone."""
    zone = ZoneInfo(view["tz"])
    upcoming = view.get("upcoming", [view["next"]])  # a broker older than ``upcoming`` knows the next run only
    return {**view, "next": datetime.fromtimestamp(view["next"], zone),
            "upcoming": [datetime.fromtimestamp(moment, zone) for moment in upcoming],
            "last": None if view["last"] is None else datetime.fromtimestamp(view["last"], zone)}


def later_runs_text(runs: list[datetime]) -> str:
    """The runs after the first, compact for a table: hours and minutes (seconds, and their fraction,
    only if a run has some), each one's date, and its zone's name (a daylight saving change), only
    where they differ from the run before it. "-" if there are none."""
    whole_minutes = all(run.second == 0 and run.microsecond == 0 for run in runs)
    parts = []
    for before, run in zip(runs, runs[1:]):
        text = run.strftime("%H:%M" if whole_minutes else "%H:%M:%S")
        if run.microsecond:
            text += f"{run.microsecond / 1e6:.6f}".rstrip("0")[1:]  # ".5" for half a second
        if run.date() != before.date():
            text = run.strftime("%m-%d " if run.year == before.year else "%Y-%m-%d ") + text
        if run.tzname() != before.tzname():
            text += run.strftime(" %Z")
        parts.append(text)
    return ", ".join(parts) or "-"


def answer_of(address: str, answer: dict) -> dict:
    """The broker's answer, or the exception it stands for."""
    if "error" in answer:
        raise ValueError(answer["error"])
    if "refused" in answer:
        raise PermissionError(f"the broker at {address} refused: {answer['refused']} (docs/security.md)")
    return answer


def split_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take submit's options (pool, queue, ...) out of ``kwargs``; the rest are the task's keywords."""
    return {name: kwargs.pop(name) for name in OPTION_NAMES & kwargs.keys()}


class ClientSchedules:
    """The schedule requests of Client; they need its ``_request`` and ``address``."""

    def schedule(self, name: str, spec: str | float, fn: Callable[..., Any] | str | Task, /, *args: Any,
                 tz: str = "UTC", catch_up: str = "one", max_catch_up: int = DEFAULT_MAX_CATCH_UP,
                 overlap: str = "skip", **kwargs: Any) -> dict[str, Any]:
        """Run ``fn(*args, **kwargs)`` at every tick of ``spec``; the same ``name`` again replaces it.

        ``spec``: a five-field cron expression or an alias such as ``"@hourly"``, evaluated in
        ``tz`` (an IANA zone name), or a number of seconds between runs. The keywords of
        ``submit`` (pool, queue, priority, retries, retry_backoff, timeout, max_attempts) set
        each run's options. ``catch_up`` ("one", "none", "all" up to ``max_catch_up``): ticks
        missed while the broker was down; ``overlap`` ("skip", "allow"): a tick while the last
        run is unfinished. Returns the schedule as ``schedules()`` lists it.
        """
        options = split_options(kwargs)
        schedule = define(name, spec, fn, args, kwargs, tz=tz, catch_up=catch_up, max_catch_up=max_catch_up,
                          overlap=overlap, **options)
        answer = answer_of(self.address, self._request(protocol.SCHEDULE, schedule_body(schedule), None))
        return shown(answer["schedule"])

    def schedules(self) -> list[dict[str, Any]]:
        """Every schedule: name, spec, tz, task, queue, pool, priority, catch_up, max_catch_up, overlap,
        source ("api" or "file"), ``next`` run, ``upcoming`` (the next ``UPCOMING_RUNS`` = 3 runs, ``next``
        first) and ``last`` run (aware datetimes in its zone), fired, skipped, and running (its unfinished jobs)."""
        answer = answer_of(self.address, self._request(protocol.SCHEDULE, {"op": "list"}, None))
        return [shown(view) for view in answer["schedules"]]

    def unschedule(self, name: str) -> bool:
        """Remove schedule ``name`` (its unfinished runs go on); True if it existed."""
        answer = self._request(protocol.SCHEDULE, {"op": "remove", "name": name}, None)
        return answer_of(self.address, answer)["removed"]


class AsyncClientSchedules:
    """The same three on AsyncClient, awaited; they need its ``_request`` and ``address``."""

    async def schedule(self, name: str, spec: str | float, fn: Callable[..., Any] | str | Task, /, *args: Any,
                       tz: str = "UTC", catch_up: str = "one", max_catch_up: int = DEFAULT_MAX_CATCH_UP,
                       overlap: str = "skip", **kwargs: Any) -> dict[str, Any]:
        """As ``Client.schedule``."""
        options = split_options(kwargs)
        schedule = define(name, spec, fn, args, kwargs, tz=tz, catch_up=catch_up, max_catch_up=max_catch_up,
                          overlap=overlap, **options)
        answer = answer_of(self.address, await self._request(protocol.SCHEDULE, schedule_body(schedule), None))
        return shown(answer["schedule"])

    async def schedules(self) -> list[dict[str, Any]]:
        """As ``Client.schedules``."""
        answer = answer_of(self.address, await self._request(protocol.SCHEDULE, {"op": "list"}, None))
        return [shown(view) for view in answer["schedules"]]

    async def unschedule(self, name: str) -> bool:
        """As ``Client.unschedule``."""
        answer = await self._request(protocol.SCHEDULE, {"op": "remove", "name": name}, None)
        return answer_of(self.address, answer)["removed"]
