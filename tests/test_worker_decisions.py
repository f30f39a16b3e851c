"""The worker's decisions without sockets: its backlog of held jobs, its adaptive credit, and its results
kept until the broker confirms them."""

from __future__ import annotations

from workers.backlog import MAX_GROUP, Backlog
from workers.credit import MAX_PREFETCH, PREFETCH_WINDOW, CreditGauge
from workers.reports import Reports


def row(job_id: str, timeout: float | None = None) -> tuple:
    return (job_id, 1, "tasks:noop", b"\x92\x90\x80", timeout)


def everything(job_id: str, attempt: int) -> bool:
    return True


def test_higher_priority_first_and_fifo_within_a_priority():
    backlog = Backlog({"thread": 1})
    for job_id, priority in [("low-1", 0), ("high-1", 5), ("low-2", 0), ("high-2", 5), ("mid", 2)]:
        backlog.add("thread", priority, row(job_id))
    order = []
    while group := backlog.take("thread", everything):
        order += [job[0] for job in group]
        backlog.finished("thread")
    assert order == ["high-1", "high-2", "mid", "low-1", "low-2"]


def test_no_more_submissions_than_two_per_slot():
    backlog = Backlog({"thread": 2})
    for n in range(6):
        backlog.add("thread", 0, row(f"j{n}"))
    for _ in range(2 * 2):
        assert backlog.take("thread", everything)  # two running, two queued in the executor
    assert backlog.take("thread", everything) == []
    backlog.finished("thread")
    assert [job[0] for job in backlog.take("thread", everything)] == ["j4"]


def test_a_timed_job_waits_for_a_free_slot():
    backlog = Backlog({"thread": 1})
    backlog.add("thread", 0, row("plain"))
    backlog.add("thread", 0, row("timed", timeout=1.0))
    assert [job[0] for job in backlog.take("thread", everything)] == ["plain"]
    assert backlog.take("thread", everything) == []  # its timeout must not run while it queues
    backlog.finished("thread")
    assert [job[0] for job in backlog.take("thread", everything)] == ["timed"]


def test_many_small_process_jobs_share_a_submission_but_few_go_alone():
    backlog = Backlog({"process": 1})
    backlog.add("process", 0, row("only"))
    assert len(backlog.take("process", everything)) == 1
    backlog.finished("process")
    for n in range(500):
        backlog.add("process", 0, row(f"j{n}"))
    assert len(backlog.take("process", everything)) == 1  # nothing measured yet
    backlog.finished("process")
    assert len(backlog.take("process", everything, lambda task: 0.00001)) == MAX_GROUP
    backlog.finished("process")
    assert len(backlog.take("process", everything, lambda task: 0.02)) == 1  # long jobs stay apart


def test_thread_jobs_never_share_a_submission():
    backlog = Backlog({"thread": 1})
    for n in range(100):
        backlog.add("thread", 0, row(f"j{n}"))
    assert len(backlog.take("thread", everything)) == 1


def test_a_job_with_a_timeout_goes_alone():
    backlog = Backlog({"process": 1})
    for n in range(10):
        backlog.add("process", 0, row(f"a{n}"))
    backlog.add("process", 9, row("timed", timeout=1.0))
    for n in range(10):
        backlog.add("process", 0, row(f"b{n}"))
    assert [job[0] for job in backlog.take("process", everything)] == ["timed"]
    backlog.finished("process")
    assert all(job[4] is None for job in backlog.take("process", everything, lambda task: 1e-5))


def test_jobs_no_longer_wanted_are_dropped_and_drain_empties():
    backlog = Backlog({"thread": 1})
    for n in range(4):
        backlog.add("thread", n, row(f"j{n}"))
    backlog.add("thread", 9, (*row("j0")[:1], 2, *row("j0")[2:]))  # j0 leased again: attempt 2 supersedes 1
    wanted = {("j0", 1), ("j1", 1)}
    assert [job[0] for job in backlog.take("thread", lambda *held: held in wanted)] == ["j1"]
    assert backlog.waiting("thread") == 1
    assert [job[0] for job in backlog.drain("thread")] == ["j0"]
    assert backlog.waiting("thread") == 0


def test_credit_starts_at_the_slots_and_grows_for_short_jobs():
    gauge = CreditGauge({"process": 2, "thread": 8})
    assert gauge.credit("process") == 2 and gauge.changed() is None
    gauge.observe("process", "tasks:noop", 0.001, 10)  # 0.1 ms a job
    expected = 2 + min(MAX_PREFETCH, int(PREFETCH_WINDOW * 2 / 0.0001))
    assert gauge.credit("process") == expected
    assert gauge.changed() == {"process": expected, "thread": 8}
    assert gauge.changed() is None  # told once
    assert gauge.ceiling["process"] == expected


def test_long_jobs_get_no_prefetch_and_the_ceiling_remembers_the_past():
    gauge = CreditGauge({"thread": 4})
    gauge.observe("thread", "tasks:noop", 0.0001, 1)
    high = gauge.changed()["thread"]
    gauge.observe("thread", "tasks:sleep", 5.0, 1)  # jobs became slow: no waiting for an average
    assert gauge.credit("thread") == 4
    assert gauge.changed() == {"thread": 4}
    assert gauge.ceiling["thread"] == high  # leases sent under the old credit are still accepted


def test_small_changes_are_not_announced():
    gauge = CreditGauge({"thread": 100})
    gauge.observe("thread", "tasks:sleep", 1.0, 1)  # prefetch int(0.02 * 100 / 1.0) = 2: 102 is within 25%
    assert gauge.credit("thread") == 102 and gauge.changed() is None


def test_the_time_jobs_ran_in_a_child_sizes_the_prefetch_and_groups_not_the_trip_there():
    gauge = CreditGauge({"process": 2})
    gauge.observe("process", "tasks:noop", 0.004, 10, ran=0.0001)  # 400 µs a job with the trip, 10 µs in the child
    assert gauge.seconds_per_job("tasks:noop") == 0.0001 / 10
    assert gauge.credit("process") == 2 + min(MAX_PREFETCH, int(PREFETCH_WINDOW * 2 / 0.00001))
    gauge.observe("process", "tasks:slow", 0.5, 1, ran=0.5)  # a long job: its own time says so
    assert gauge.seconds_per_job("tasks:slow") == 0.5
    unmeasured = CreditGauge({"process": 2})  # a recycled pool's child does not time its group
    unmeasured.observe("process", "tasks:noop", 0.004, 10)
    assert unmeasured.seconds_per_job("tasks:noop") == 0.004 / 10


def test_groups_hold_one_task_and_unknown_tasks_go_alone():
    backlog = Backlog({"process": 1})
    for n in range(200):
        backlog.add("process", 0, (f"j{n}", 1, "tasks:noop" if n < 100 else "tasks:other", b"", None))
    measured = {"tasks:noop": 1e-5}
    group = backlog.take("process", everything, measured.get)
    assert {job[2] for job in group} == {"tasks:noop"} and len(group) == MAX_GROUP
    backlog.finished("process")
    assert len(backlog.take("process", everything, measured.get)) == 100 - MAX_GROUP  # the rest of noop
    backlog.finished("process")
    assert len(backlog.take("process", everything, measured.get)) == 1  # tasks:other was never measured


def test_jobs_beyond_a_lowered_credit_are_given_back_lowest_priority_first():
    backlog = Backlog({"process": 1})
    for n, priority in enumerate([5, 0, 9, 0]):
        backlog.add("process", priority, (f"j{n}", 1, "tasks:noop", b"", None))
    returned = backlog.give_back("process", 2, everything)
    assert [job[0] for job in returned] == ["j1", "j3"]
    assert backlog.waiting("process") == 2
    gauge = CreditGauge({"process": 1})
    assert gauge.excess("process", held=5) == 3 and gauge.excess("process", held=2) == 0


# --- results kept until the broker confirms them (workers/reports.py) -----------------------------


def result(job_id: str, attempt: int = 1) -> list:
    return [job_id, attempt, "ok", b"\xc0"]


def test_results_sent_are_kept_until_the_broker_confirms_their_message():
    reports = Reports()
    reports.sent([result("a"), result("b")])
    reports.sent([result("c")])
    assert len(reports) == 3
    reports.confirmed(1)
    assert len(reports) == 1
    reports.confirmed(1)  # a later heartbeat with the same count changes nothing
    assert len(reports) == 1
    reports.confirmed(2)
    assert len(reports) == 0


def test_a_hello_claims_every_result_not_confirmed_and_the_welcome_sends_them_again():
    reports = Reports()
    reports.sent([result("a", 1)])
    reports.sent([result("b", 3)])
    reports.confirmed(1)  # a was journaled; b went down with the broker, or with the connection
    assert reports.new_session() == [["b", 3]]  # claimed in the hello as a run the worker still has
    assert reports.welcomed() == [result("b", 3)]
    assert len(reports) == 0 and reports.welcomed() == []


def test_results_that_finish_while_a_hello_waits_are_held_and_claimed_by_the_next_hello():
    reports = Reports()
    assert reports.new_session() == []  # the hello left before the run finished
    reports.hold([result("c")])  # finished while the hello waits: not sent (it would be lost or ignored)
    assert len(reports) == 1
    assert reports.new_session() == [["c", 1]]  # the broker fell silent again: the next hello claims it
    assert reports.welcomed() == [result("c")]


def test_numbering_starts_again_with_each_session():
    reports = Reports()
    reports.sent([result("a")])
    reports.sent([result("b")])
    reports.new_session()
    reports.welcomed()
    reports.sent([result("a")])  # message 1 of the new session
    reports.sent([result("b")])
    reports.confirmed(1)  # the new broker (or the same, after the hello) counts from the welcome
    assert len(reports) == 1
