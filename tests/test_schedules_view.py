"""A schedule's view as the broker builds it (``upcoming``: the next runs, from its ticks) and as
clients and tables show it (aware datetimes in its zone; the runs after the next, compact)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from runner.broker.schedules import UPCOMING_RUNS, Schedule, ScheduleBook
from runner.client_schedules import later_runs_text, shown

PARIS = ZoneInfo("Europe/Paris")


def paris(*fields: int) -> float:
    return datetime(*fields, tzinfo=PARIS).timestamp()


def view_of(now: float, **fields) -> tuple[ScheduleBook, dict]:
    book = ScheduleBook()
    book.add(Schedule(**{"name": "beat", "task": "tasks:add", **fields}), now)
    [view] = book.views()
    return book, view


def test_a_nightly_cron_in_paris_lists_its_next_three_runs_across_the_spring_dst_change():
    _, view = view_of(paris(2027, 3, 26, 12, 0), spec="0 2 * * *", tz="Europe/Paris")
    # 02:00 does not exist on 2027-03-28 (clocks go from 02:00 to 03:00): that night runs at 03:00 CEST.
    assert UPCOMING_RUNS == 3
    assert view["upcoming"] == [paris(2027, 3, 27, 2, 0), paris(2027, 3, 28, 3, 0), paris(2027, 3, 29, 2, 0)]
    assert view["upcoming"][0] == view["next"]
    runs = shown(view)["upcoming"]
    assert [run.strftime("%m-%d %H:%M %Z") for run in runs] == ["03-27 02:00 CET", "03-28 03:00 CEST",
                                                                 "03-29 02:00 CEST"]
    assert all(run.tzinfo == PARIS for run in runs) and shown(view)["next"] == runs[0]
    assert later_runs_text(runs) == "03-28 03:00 CEST, 03-29 02:00"


def test_an_interval_schedule_lists_runs_spaced_by_its_interval():
    _, view = view_of(1_000.0, spec=90.0)
    assert view["upcoming"] == [1_080.0, 1_170.0, 1_260.0] and view["next"] == 1_080.0
    runs = shown(view)["upcoming"]
    assert [str(run.tzinfo) for run in runs] == ["UTC"] * 3
    assert later_runs_text(runs) == "00:19:30, 00:21:00"


def test_the_upcoming_runs_move_on_as_ticks_are_decided():
    book, view = view_of(1_000.0, spec=90.0, overlap="allow")
    assert view["upcoming"][0] == 1_080.0
    book.due(1_100.0)  # the 1080 tick fires
    [view] = book.views()
    assert view["upcoming"] == [1_170.0, 1_260.0, 1_350.0] == [view["next"], 1_260.0, 1_350.0]
    book.due(1_400.0)  # two more
    [view] = book.views()
    assert view["upcoming"] == [1_440.0, 1_530.0, 1_620.0]


def test_a_cron_schedule_keeps_its_runs_ahead_and_adds_the_next_as_ticks_fire():
    book, view = view_of(paris(2027, 3, 26, 12, 0), spec="0 2 * * *", tz="Europe/Paris")
    book.due(paris(2027, 3, 27, 2, 30))
    [view] = book.views()
    assert view["upcoming"] == [paris(2027, 3, 28, 3, 0), paris(2027, 3, 29, 2, 0), paris(2027, 3, 30, 2, 0)]
    assert view["next"] == view["upcoming"][0]


def test_the_runs_after_the_next_show_seconds_and_a_new_date_or_year_only_where_needed():
    def utc(*fields: int) -> datetime:
        return datetime(*fields, tzinfo=timezone.utc)

    assert later_runs_text([utc(2026, 12, 30, 23, 0), utc(2026, 12, 31, 0, 0), utc(2027, 1, 1, 0, 0)]) == (
        "12-31 00:00, 2027-01-01 00:00")
    assert later_runs_text([utc(2026, 12, 30, 23, 59), utc(2026, 12, 30, 23, 59, 30), utc(2026, 12, 31)]) == (
        "23:59:30, 12-31 00:00:00"), "seconds for every run when one has some"
    half = [datetime.fromtimestamp(moment, timezone.utc) for moment in (1_000.0, 1_000.5, 1_001.0)]
    assert later_runs_text(half) == "00:16:40.5, 00:16:41"
    assert later_runs_text([utc(2026, 12, 30, 23, 0)]) == "-"
    assert later_runs_text([]) == "-"


def test_a_view_from_a_broker_without_upcoming_shows_its_next_run_only():
    view = {"name": "beat", "tz": "UTC", "next": 1_080.0, "last": None}
    assert shown(view)["upcoming"] == [datetime.fromtimestamp(1_080.0, timezone.utc)]
