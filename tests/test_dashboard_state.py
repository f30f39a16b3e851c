"""DashboardState: rates from successive status totals, a bounded history, failures fetched on change."""

from __future__ import annotations

import pytest

from runner.dashboard.state import FAILURES_SHOWN, DashboardState, failure_row
from runner.errors import error_blob, exception_from_blob


def status(done: int = 0, failed: int = 0, dead: int = 0) -> dict:
    return {"jobs": {"done": done, "failed": failed, "dead": dead}, "workers": [], "queues": {}}


def test_rates_are_the_differences_of_totals_over_the_elapsed_time():
    state = DashboardState()
    state.observe(10.0, status(done=100, failed=1))
    assert state.view(10.0)["history"] == []  # one snapshot gives no rate yet
    state.observe(12.0, status(done=130, failed=2, dead=3))
    state.observe(13.0, status(done=130, failed=2, dead=3))
    assert state.view(13.0)["history"] == [{"age": 1.0, "completed": 15.0, "failed": 2.0},
                                           {"age": 0.0, "completed": 0.0, "failed": 0.0}]


def test_the_history_keeps_only_its_span():
    state = DashboardState(history_seconds=5)
    for second in range(20):
        state.observe(float(second), status(done=second * 2))
    history = state.view(19.0)["history"]
    assert [sample["age"] for sample in history] == [4.0, 3.0, 2.0, 1.0, 0.0]
    assert {sample["completed"] for sample in history} == {2.0}
    assert state.view(19.0)["history_seconds"] == 5


def test_lower_totals_start_counting_again_without_a_negative_rate():
    state = DashboardState()
    state.observe(0.0, status(done=50))
    state.observe(1.0, status(done=3))  # a restarted broker with a fresh journal
    state.observe(2.0, status(done=7))
    assert [sample["completed"] for sample in state.view(2.0)["history"]] == [4.0]


def test_an_unreachable_broker_is_reported_and_the_last_status_kept():
    state = DashboardState()
    state.observe(0.0, status(done=1))
    state.unreachable("TimeoutError: no answer")
    view = state.view(1.0)
    assert view["error"] == "TimeoutError: no answer" and view["status"]["jobs"]["done"] == 1
    state.observe(2.0, status(done=1))
    assert state.view(2.0)["error"] is None


def test_failures_are_wanted_only_when_the_failed_count_moved():
    state = DashboardState()
    assert state.failures_changed(status())  # never fetched
    state.set_failures(status(), [])
    assert not state.failures_changed(status(done=9))
    assert state.failures_changed(status(failed=1))
    state.set_failures(status(dead=1), [{"id": "a"}])
    assert not state.failures_changed(status(failed=1))  # failed and dead together are what counts
    assert state.view(0.0)["failures"] == [{"id": "a"}]


def test_the_failures_list_is_bounded():
    state = DashboardState()
    state.set_failures(status(dead=50), [{"id": str(n)} for n in range(50)])
    assert len(state.view(0.0)["failures"]) == FAILURES_SHOWN


@pytest.mark.parametrize("blob, kind", [
    (error_blob(ValueError("bad input 7"), "Traceback...\nValueError: bad input 7\n", attempts=3), "ValueError"),
    (error_blob(type("CustomError", (Exception,), {})("odd"), "Traceback...\nCustomError: odd\n"), "CustomError"),
])
def test_a_failure_row_carries_the_remote_traceback(blob, kind):
    row = failure_row({"id": "j1", "task": "tasks:fail", "queue": "q", "attempts": 3,
                       "error": exception_from_blob(blob)})
    assert row["type"] == kind and row["id"] == "j1" and row["task"] == "tasks:fail"
    assert row["message"] in ("bad input 7", "odd")
    assert row["traceback"].startswith("Traceback...") and row["message"] in row["traceback"]


def test_a_failure_without_an_error_is_shown_empty():
    assert failure_row({"id": "j2", "error": None})["traceback"] == ""
