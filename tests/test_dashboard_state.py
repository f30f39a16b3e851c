"""DashboardState: the broker's per-second counts merged into a bounded history, failures fetched on change."""

from __future__ import annotations

import pytest

from runner.dashboard.state import FAILURES_SHOWN, DashboardState, failure_row
from runner.errors import error_blob, exception_from_blob


def status(done: int = 0, failed: int = 0, dead: int = 0, *, second: int | None = None,
           completed_by_second: tuple = (), failed_by_second: tuple = ()) -> dict:
    rates = {} if second is None else {"second": second, "completed_by_second": list(completed_by_second),
                                       "failed_by_second": list(failed_by_second or [0] * len(completed_by_second))}
    return {"jobs": {"done": done, "failed": failed, "dead": dead}, "workers": [], "queues": {}, "rates": rates}


def test_the_first_snapshot_already_charts_the_brokers_last_seconds():
    state = DashboardState()
    state.observe(status(second=1000, completed_by_second=(0, 4, 7), failed_by_second=(1, 0, 2)))
    assert state.view()["history"] == [{"age": 2, "completed": 0, "failed": 1}, {"age": 1, "completed": 4, "failed": 0},
                                       {"age": 0, "completed": 7, "failed": 2}]


def test_later_snapshots_replace_the_seconds_they_count_again_and_add_new_ones():
    state = DashboardState()
    state.observe(status(second=1000, completed_by_second=(3, 5)))  # 1000 was still counting
    state.observe(status(second=1003, completed_by_second=(6, 1, 0, 2)))  # 1000..1003
    assert [(sample["age"], sample["completed"]) for sample in state.view()["history"]] == [
        (4, 3), (3, 6), (2, 1), (1, 0), (0, 2)]
    assert sum(sample["completed"] for sample in state.view()["history"]) == 12  # each second counted once


def test_the_history_keeps_only_its_span():
    state = DashboardState(history_seconds=5)
    for second in range(20):
        state.observe(status(second=second, completed_by_second=(2,)))
    history = state.view()["history"]
    assert [sample["age"] for sample in history] == [4, 3, 2, 1, 0]
    assert {sample["completed"] for sample in history} == {2}
    assert state.view()["history_seconds"] == 5


def test_a_status_without_per_second_counts_leaves_the_chart_empty():
    state = DashboardState()
    state.observe(status(done=5))
    assert state.view()["history"] == [] and state.view()["status"]["jobs"]["done"] == 5


def test_an_unreachable_broker_is_reported_and_the_last_status_kept():
    state = DashboardState()
    state.observe(status(done=1))
    state.unreachable("TimeoutError: no answer")
    view = state.view()
    assert view["error"] == "TimeoutError: no answer" and view["status"]["jobs"]["done"] == 1
    state.observe(status(done=1))
    assert state.view()["error"] is None


def test_failures_are_wanted_only_when_the_failed_count_moved():
    state = DashboardState()
    assert state.failures_changed(status())  # never fetched
    state.set_failures(status(), [])
    assert not state.failures_changed(status(done=9))
    assert state.failures_changed(status(failed=1))
    state.set_failures(status(dead=1), [{"id": "a"}])
    assert not state.failures_changed(status(failed=1))  # failed and dead together are what counts
    assert state.view()["failures"] == [{"id": "a"}]


def test_shown_failures_are_reused_unless_the_count_went_down():
    state = DashboardState()
    state.set_failures(status(failed=2), [{"id": "a"}, {"id": "b"}])
    assert set(state.reusable_failures(status(failed=3))) == {"a", "b"}
    assert state.reusable_failures(status(failed=1)) == {}  # one was requeued: its next error may differ


def test_the_failures_list_is_bounded():
    state = DashboardState()
    state.set_failures(status(dead=50), [{"id": str(n)} for n in range(50)])
    assert len(state.view()["failures"]) == FAILURES_SHOWN


@pytest.mark.parametrize("blob, kind", [
    (error_blob(ValueError("bad input 7"), "Traceback...\nValueError: bad input 7\n", attempts=3), "ValueError"),
    (error_blob(type("CustomError", (Exception,), {})("odd"), "Traceback...\nCustomError: odd\n"), "CustomError"),
])
def test_a_failure_row_carries_the_remote_traceback(blob, kind):
    row = failure_row({"id": "j1", "task": "tasks:fail", "queue": "q", "state": "dead", "attempts": 3,
                       "worker": "alpha", "error": exception_from_blob(blob)})
    assert row["type"] == kind and row["id"] == "j1" and row["task"] == "tasks:fail"
    assert (row["state"], row["worker"]) == ("dead", "alpha")
    assert row["message"] in ("bad input 7", "odd")
    assert row["traceback"].startswith("Traceback...") and row["message"] in row["traceback"]


def test_a_failure_without_an_error_is_shown_empty():
    assert failure_row({"id": "j2", "error": None})["traceback"] == ""
