"""The sans-IO schedule core: ticks (cron in a zone, aliases, intervals, DST) and the ScheduleBook's
decisions (firing, overlap, catch-up after a downtime, replacing, restoring), driven by a fake clock."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from runner import protocol
from runner.broker.schedules import (MAX_DUE_AT_ONCE, Delete, Fire, Save, Schedule, ScheduleBook, Skip,
                                     tick_job_id)
from runner.broker.ticks import CronTicks, IntervalTicks, ticks_of

PARIS = ZoneInfo("Europe/Paris")


def paris(*fields: int, fold: int = 0) -> float:
    return datetime(*fields, tzinfo=PARIS, fold=fold).timestamp()


def walk(ticks, start: float, count: int) -> list[str]:
    """The next ``count`` ticks after ``start`` as Paris wall times with their offset."""
    shown = []
    for _ in range(count):
        start = ticks.next_after(start)
        shown.append(datetime.fromtimestamp(start, PARIS).strftime("%m-%d %H:%M%z"))
    return shown


# --- ticks -----------------------------------------------------------------------------------------


def test_a_daily_time_in_paris_follows_the_zone_across_both_dst_changes():
    nightly = CronTicks("30 2 * * *", "Europe/Paris")
    # Spring forward: 02:30 does not exist on 03-29; it fires once, at 03:00 CEST.
    assert walk(nightly, paris(2026, 3, 28, 0, 0), 3) == ["03-28 02:30+0100", "03-29 03:00+0200",
                                                          "03-30 02:30+0200"]
    # Fall back: 02:30 happens twice on 10-25; it fires once, at the first.
    assert walk(nightly, paris(2026, 10, 24, 0, 0), 3) == ["10-24 02:30+0200", "10-25 02:30+0200",
                                                           "10-26 02:30+0100"]


def test_an_hourly_expression_follows_real_time_through_the_repeated_hour():
    hourly = CronTicks("@hourly", "Europe/Paris")
    assert walk(hourly, paris(2026, 10, 25, 1, 30), 3) == ["10-25 02:00+0200", "10-25 02:00+0100",
                                                           "10-25 03:00+0100"]
    assert walk(hourly, paris(2026, 3, 29, 1, 30), 2) == ["03-29 03:00+0200", "03-29 04:00+0200"]


def test_the_latest_tick_at_or_before_a_moment_includes_the_moment_and_knows_dst():
    every_minute = CronTicks("* * * * *")
    assert every_minute.latest_at_or_before(120.0) == 120.0
    assert every_minute.latest_at_or_before(119.9) == 60.0
    nightly = CronTicks("30 2 * * *", "Europe/Paris")
    assert nightly.latest_at_or_before(paris(2026, 10, 26, 0, 0)) == paris(2026, 10, 25, 2, 30)
    assert nightly.latest_at_or_before(paris(2026, 3, 29, 12, 0)) == paris(2026, 3, 29, 3, 0)


@pytest.mark.parametrize("alias, fields", [("@daily", "0 0 * * *"), ("@midnight", "0 0 * * *"),
                                           ("@weekly", "0 0 * * 0"), ("@monthly", "0 0 1 * *"),
                                           ("@yearly", "0 0 1 1 *"), ("@annually", "0 0 1 1 *"),
                                           ("@HOURLY", "0 * * * *")])
def test_aliases_mean_their_five_fields(alias, fields):
    start = datetime(2026, 5, 17, 13, 7, tzinfo=timezone.utc).timestamp()
    assert CronTicks(alias).next_after(start) == CronTicks(fields).next_after(start)


def test_a_cron_expression_is_evaluated_in_its_zone_and_utc_by_default():
    start = datetime(2026, 1, 10, 12, 0, tzinfo=timezone.utc).timestamp()
    assert CronTicks("0 2 * * *").next_after(start) == datetime(2026, 1, 11, 2, 0, tzinfo=timezone.utc).timestamp()
    assert CronTicks("0 2 * * *", "Europe/Paris").next_after(start) == paris(2026, 1, 11, 2, 0)


def test_intervals_tick_at_multiples_of_the_interval_since_the_epoch():
    every = IntervalTicks(2.5)
    assert every.next_after(10.0) == 12.5 and every.next_after(11.0) == 12.5
    assert every.latest_at_or_before(12.5) == 12.5 and every.latest_at_or_before(12.4) == 10.0
    tenth = IntervalTicks(0.1)
    moment = 1_700_000_000.05
    assert moment < tenth.next_after(moment) <= moment + 0.1 + 1e-6


@pytest.mark.parametrize("spec, tz, wanted", [
    ("0 2 * *", "UTC", "bad cron expression '0 2 \\* \\*'.*five fields"),
    ("* * * * * *", "UTC", "bad cron expression.*five fields"),
    ("61 * * * *", "UTC", "bad cron expression '61"),
    ("@reboot", "UTC", "bad cron expression '@reboot'.*@hourly"),
    ("", "UTC", "bad cron expression ''"),
    ("0 2 * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'.*IANA"),
    ("0 2 * * *", "", "unknown time zone ''"),
    (0, "UTC", "bad interval 0.*seconds"),
    (-5, "UTC", "bad interval -5"),
    (True, "UTC", "bad interval True"),
    (float("nan"), "UTC", "bad interval nan"),
    (1.0, "Nowhere/Else", "unknown time zone"),
])
def test_bad_specs_and_zones_raise_value_error_naming_the_value_and_what_is_accepted(spec, tz, wanted):
    with pytest.raises(ValueError, match=wanted):
        ticks_of(spec, tz)


@pytest.mark.parametrize("change, wanted", [
    ({"catch_up": "some"}, "bad catch_up 'some'.*'one', 'none', 'all'"),
    ({"overlap": "queue"}, "bad overlap 'queue'.*'skip', 'allow'"),
    ({"max_catch_up": 0}, "bad max_catch_up 0"),
    ({"name": ""}, "bad schedule name ''"),
    ({"task": "nocolon"}, "module:function"),
    ({"pool": "gpu"}, "pool must be one of"),
    ({"options": {"retries": -1}}, "retries"),
])
def test_bad_schedule_fields_raise_value_error(change, wanted):
    with pytest.raises(ValueError, match=wanted):
        make(**change)


# --- the book -----------------------------------------------------------------------------------------


def make(**fields) -> Schedule:
    return Schedule(**{"name": "beat", "spec": 1.0, "task": "tasks:add", **fields})


def fired(actions) -> list[float]:
    return [action.tick for action in actions if isinstance(action, Fire)]


def skipped(actions) -> list[float]:
    return [action.tick for action in actions if isinstance(action, Skip)]


def test_a_tick_job_id_is_39_hex_digits_stable_per_name_and_tick_and_sorted_by_time():
    job_id = tick_job_id("beat", 1_700_000_000.0)
    assert re.fullmatch(r"[0-9a-f]{39}", job_id)
    assert job_id == tick_job_id("beat", 1_700_000_000.0)
    assert job_id != tick_job_id("other", 1_700_000_000.0)
    assert job_id < tick_job_id("beat", 1_700_000_001.0)
    protocol.check_job_row([job_id, "tasks:add", "process", "default", 0, b"", {}])


def test_each_tick_fires_once_with_its_own_job_and_is_journaled():
    book = ScheduleBook()
    assert [type(action) for action in book.add(make(overlap="allow"), 100.2)] == [Save]
    assert book.next_due() == 101.0
    assert book.due(100.9) == []
    actions = book.due(101.0)
    assert fired(actions) == [101.0]
    [fire] = [action for action in actions if isinstance(action, Fire)]
    assert fire.job_id == tick_job_id("beat", 101.0)
    assert isinstance(actions[-1], Save) and actions[-1].row[2] == 101.0  # done_until journaled with the job
    assert fired(book.due(101.5)) == [] and book.next_due() == 102.0
    assert fired(book.due(103.0)) == [102.0, 103.0], "a late loop still fires every tick while up"
    assert book.views()[0]["fired"] == 3


def test_overlap_skip_counts_ticks_while_the_previous_run_is_unfinished():
    book = ScheduleBook()
    book.add(make(), 100.0)
    [first] = fired(book.due(101.0))
    assert skipped(book.due(102.0)) == [102.0]
    assert skipped(book.due(103.0)) == [103.0]
    book.finished(tick_job_id("beat", first))
    assert fired(book.due(104.0)) == [104.0]
    view = book.views()[0]
    assert (view["fired"], view["skipped"], view["running"]) == (2, 2, 1)
    assert book.finished("someone-elses-job") == []


def test_overlap_allow_runs_every_tick():
    book = ScheduleBook()
    book.add(make(overlap="allow"), 100.0)
    assert fired(book.due(103.0)) == [101.0, 102.0, 103.0]
    assert book.views()[0]["running"] == 3


def test_replacing_with_the_same_timing_keeps_place_and_counts_a_new_timing_starts_now():
    book = ScheduleBook()
    book.add(make(), 100.0)
    book.due(101.0)
    book.add(make(task="tasks:square"), 101.4)  # a second client registering the same schedule
    assert fired(book.due(101.9)) == [] and book.views()[0]["fired"] == 1
    book.add(make(spec=10.0), 101.5)
    assert book.next_due() == 110.0
    assert book.views()[0]["fired"] == 1 and book.views()[0]["running"] == 1


def test_remove_forgets_the_schedule_and_says_whether_it_existed():
    book = ScheduleBook()
    book.add(make(), 100.0)
    [first] = fired(book.due(101.0))
    assert book.remove("beat") == [Delete("beat")]
    assert book.remove("beat") == [] and book.due(200.0) == [] and book.next_due() is None
    assert book.finished(tick_job_id("beat", first)) == [], "a removed schedule's run finishing changes nothing"
    book.add(make(), 300.0)
    assert book.views()[0]["running"] == 0 and fired(book.due(301.0)) == [301.0]


def test_more_ticks_due_at_once_than_the_bound_are_skipped_and_counted():
    book = ScheduleBook()
    book.add(make(overlap="allow"), 0.0)
    actions = book.due(MAX_DUE_AT_ONCE + 5.0)
    assert len(fired(actions)) == MAX_DUE_AT_ONCE and len(skipped(actions)) == 5


def restored(schedule: Schedule, down_at: float, up_at: float, held=lambda job_id: False, running=(), added=0.0):
    """A book that journaled ``schedule`` from ``added`` up to ``down_at``, then a fresh book restored at ``up_at``."""
    book = ScheduleBook()
    rows = {}
    for action in book.add(schedule, added) + book.due(down_at):
        if isinstance(action, Save):
            rows[action.row[0]] = action.row
    for job_id in list(book.entries[schedule.name].unfinished):
        if job_id not in running:
            rows.update({a.row[0]: a.row for a in book.finished(job_id) if isinstance(a, Save)})
    fresh = ScheduleBook()
    actions, problems = fresh.restore(rows.values(), up_at, held)
    assert problems == []
    return fresh, actions


def test_catch_up_one_runs_the_latest_missed_tick_once():
    book, actions = restored(make(overlap="allow"), 10.0, 15.5)
    assert fired(actions) == [15.0] and skipped(actions) == [14.0]
    assert book.views()[0]["skipped"] == 4, "ticks 11 to 14 were missed and not run"
    assert book.next_due() == 16.0


def test_catch_up_none_runs_nothing_missed_and_resumes_at_the_next_tick():
    book, actions = restored(make(catch_up="none", overlap="allow"), 10.0, 15.5)
    assert fired(actions) == [] and book.views()[0]["skipped"] == 5
    assert fired(book.due(16.0)) == [16.0]


def test_catch_up_all_runs_each_missed_tick_up_to_the_cap_the_latest_ones():
    book, actions = restored(make(catch_up="all", max_catch_up=3, overlap="allow"), 10.0, 15.5)
    assert fired(actions) == [13.0, 14.0, 15.0]
    assert book.views()[0]["skipped"] == 2
    book, actions = restored(make(catch_up="all", max_catch_up=10, overlap="allow"), 10.0, 15.5)
    assert fired(actions) == [11.0, 12.0, 13.0, 14.0, 15.0] and book.views()[0]["skipped"] == 0


def test_catch_up_gives_each_missed_tick_the_job_id_it_would_have_had():
    _, actions = restored(make(catch_up="all"), 10.0, 12.0)
    assert [action.job_id for action in actions if isinstance(action, Fire)] == [
        tick_job_id("beat", 11.0), tick_job_id("beat", 12.0)]


def test_a_restart_within_a_tick_misses_nothing_and_fires_nothing():
    book, actions = restored(make(catch_up="all"), 10.0, 10.7)
    assert fired(actions) == [] and skipped(actions) == [] and book.next_due() == 11.0


def test_catch_up_respects_overlap_when_a_run_from_before_the_downtime_is_unfinished():
    running = {tick_job_id("beat", 1.0)}  # ticks 2 to 10 were skipped already: it was still running
    book, actions = restored(make(catch_up="all"), 10.0, 12.5, held=running.__contains__, running=running)
    assert fired(actions) == [] and skipped(actions) == [11.0, 12.0]
    book.finished(tick_job_id("beat", 1.0))
    assert fired(book.due(13.0)) == [13.0]


def test_a_finished_run_is_not_restored_as_unfinished():
    running = {tick_job_id("beat", 10.0)}
    book, _ = restored(make(catch_up="none"), 10.0, 10.5, held=lambda job_id: False, running=running)
    assert book.views()[0]["running"] == 0
    assert fired(book.due(11.0)) == [11.0]


def test_catch_up_of_a_cron_schedule_counts_missed_days():
    nightly = make(spec="30 2 * * *", tz="Europe/Paris", catch_up="one")
    book, actions = restored(nightly, paris(2026, 3, 20, 12, 0), paris(2026, 3, 30, 12, 0),
                             added=paris(2026, 3, 20, 11, 0))
    assert fired(actions) == [paris(2026, 3, 30, 2, 30)]
    assert book.views()[0]["skipped"] == 9


def test_missed_cron_ticks_beyond_the_policy_are_counted():
    every_minute = make(spec="* * * * *", catch_up="none")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc).timestamp()
    book, _ = restored(every_minute, start + 60, start + 60 + 300 * 60, added=start)
    assert book.views()[0]["skipped"] == 300 and book.views()[0]["fired"] == 1


def test_a_journal_row_that_is_no_longer_valid_is_reported_and_left_out():
    row = ("old", protocol.pack({**make().record(), "name": "old", "tz": "Gone/Zone"}), 0.0, None, 0, 0, "[]")
    book = ScheduleBook()
    actions, problems = book.restore([row], 5.0, lambda job_id: False)
    assert actions == [] and problems[0][0] == "old" and "Gone/Zone" in problems[0][1]


def test_views_say_next_run_spec_zone_task_policies_and_counts():
    book = ScheduleBook()
    book.add(make(name="nightly", spec="0 2 * * *", tz="Europe/Paris", queue="reports"), paris(2026, 1, 1, 12, 0))
    [view] = book.views()
    assert view["next"] == paris(2026, 1, 2, 2, 0)
    assert {key: view[key] for key in ("name", "spec", "tz", "task", "queue", "catch_up", "overlap", "fired",
                                       "skipped", "source")} == {
        "name": "nightly", "spec": "0 2 * * *", "tz": "Europe/Paris", "task": "tasks:add", "queue": "reports",
        "catch_up": "one", "overlap": "skip", "fired": 0, "skipped": 0, "source": "api"}


def test_ticks_show_as_iso_8601_in_utc():
    from runner.broker.ticks import utc_text

    assert utc_text(paris(2026, 7, 1, 2, 0)) == "2026-07-01T00:00:00+00:00"


# --- properties ---------------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

EXPRESSIONS = ["* * * * *", "*/15 * * * *", "0 * * * *", "30 2 * * *", "0 0 * * 0", "0 9-17 * * 1-5", "@monthly"]
# Moments from 2025 to 2027, DST changes of Europe/Paris and America/New_York included.
MOMENTS = st.floats(min_value=1_735_689_600.0, max_value=1_798_761_600.0)


@settings(max_examples=300, deadline=None)
@given(expression=st.sampled_from(EXPRESSIONS), tz=st.sampled_from(["UTC", "Europe/Paris", "America/New_York"]),
       moment=MOMENTS)
def test_cron_ticks_move_forward_and_no_tick_hides_between_a_moment_and_the_next(expression, tz, moment):
    ticks = CronTicks(expression, tz)
    following = ticks.next_after(moment)
    assert following > moment
    assert ticks.latest_at_or_before(following) == following
    assert ticks.latest_at_or_before(following - 0.5) <= moment, "a tick was skipped over"
    assert ticks.latest_at_or_before(moment) <= moment


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(st.tuples(st.floats(min_value=0.0, max_value=4.0), st.booleans(), st.booleans()),
                      min_size=1, max_size=40),
       overlap=st.sampled_from(["skip", "allow"]), catch_up=st.sampled_from(["one", "none", "all"]))
def test_no_tick_fires_twice_through_any_run_of_events_and_restarts(steps, overlap, catch_up):
    """Time moves on; runs finish; the broker restarts on its journal (the last saved rows)."""
    schedule = make(overlap=overlap, catch_up=catch_up, max_catch_up=3)
    book, rows, now, fired_ticks = ScheduleBook(), {}, 100.0, []

    def apply(actions):
        for action in actions:
            if isinstance(action, Save):
                rows[action.row[0]] = action.row
            elif isinstance(action, Fire):
                fired_ticks.append(action.tick)

    apply(book.add(schedule, now))
    for pause, finish, restart in steps:
        now += pause
        if restart:
            book = ScheduleBook()
            actions, _ = book.restore(rows.values(), now, lambda job_id: True)
            apply(actions)
        apply(book.due(now))
        if finish:
            for job_id in list(book.entries["beat"].unfinished):
                apply(book.finished(job_id))
        entry = book.entries["beat"]
        assert entry.fired == len(fired_ticks) and entry.next_tick > now
    assert fired_ticks == sorted(set(fired_ticks)), "a tick fired twice or out of order"
    decided = sum(1 for tick in range(101, int(now) + 1))
    assert book.entries["beat"].fired + book.entries["beat"].skipped == decided, "every tick fired or counted"


def test_a_moment_a_hair_before_a_tick_still_finds_that_tick():
    """A datetime rounds 599.9999998 up to 600: the search must not start there and skip the tick at 600."""
    every_minute = CronTicks("* * * * *")
    assert every_minute.next_after(1798761599.9999998) == 1798761600.0
    assert every_minute.latest_at_or_before(1798761599.9999998) == 1798761540.0


def test_a_schedule_refuses_a_fixed_moment_and_arguments_that_wait_for_jobs():
    from runner.client_schedules import define
    from runner.tasks import JobResult

    with pytest.raises(ValueError, match="cannot all run at one moment"):
        define("x", 1.0, "tasks:add", (1, 2), {}, at=datetime.now(timezone.utc))
    with pytest.raises(ValueError, match="cannot wait for other jobs"):
        define("x", 1.0, "tasks:add", (JobResult("a" * 39), 2), {})
    assert define("x", 1.0, "tasks:add", (1, 2), {}, delay=5).options == {"delay": 5}
