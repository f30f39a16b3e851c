"""The broker's counters (runner/broker/counters.py), driven directly: no sockets, no clock."""

from __future__ import annotations

from runner.broker.counters import BUCKETS, COMPLETED, FAILED, OTHER, RETRIED, SUBMITTED, Counters, Labels, Rate
from runner.broker.jobs import JobBook
from runner.broker.journal import Journal
from runner.broker.scheduler import Job
from runner import protocol


def test_labels_keep_the_first_names_and_count_the_rest_as_other():
    labels = Labels(limit=2)
    assert [labels(name) for name in ("a", "b", "c", "a", "d", "b")] == ["a", "b", OTHER, "a", OTHER, "b"]


def test_rate_averages_the_last_window_of_seconds_and_forgets_older_ones():
    rate = Rate(window=10)
    for second in range(100, 110):
        rate.add(second + 0.5, count=2)
    assert rate.per_second(109.9) == 2.0
    assert rate.per_second(114.0) == 1.0  # seconds 105..109 still in the window, 110..114 empty
    assert rate.per_second(200.0) == 0.0
    rate.add(200.2)
    assert rate.per_second(200.9) == 0.1


def test_recent_gives_each_second_of_the_window_oldest_first():
    rate = Rate(window=4)
    rate.add(100.1)
    rate.add(102.5, count=3)
    assert rate.recent(102.9) == [0, 1, 0, 3]  # seconds 99..102
    assert rate.recent(104.0) == [0, 3, 0, 0]  # 101..104: the later seconds are empty
    assert rate.recent(300.0) == [0, 0, 0, 0]


def test_a_run_counts_for_its_worker_its_queue_and_task_and_the_histograms():
    counters = Counters()
    counters.worker_joined(b"w1")
    counters.submitted("q", "t")
    counters.submitted("q", "t")
    counters.ran(b"w1", "q", "t", True, now=10.0, accepted=1.0, leased=4.0)
    counters.ran(b"w1", "q", "t", False, now=10.5, accepted=1.0, leased=10.0)
    counters.retried("q", "t")
    counters.ran(b"gone", "q", "t", True, now=10.7, accepted=None, leased=None)  # a worker it never met
    assert counters.by_task[("q", "t")][SUBMITTED] == 2
    assert counters.by_task[("q", "t")][COMPLETED] == 2
    assert counters.by_task[("q", "t")][FAILED] == 1
    assert counters.by_task[("q", "t")][RETRIED] == 1
    assert (counters.workers[b"w1"].done, counters.workers[b"w1"].failed) == (1, 1)
    assert b"gone" not in counters.workers
    assert counters.completed.per_second(10.9) == 0.2 and counters.failed.per_second(10.9) == 0.1
    assert sum(counters.wait["q"].counts) == 2 and counters.wait["q"].total == 3.0 + 9.0
    assert sum(counters.run["q"].counts) == 2 and counters.run["q"].total == 6.5
    assert counters.run["q"].counts[BUCKETS.index(10.0)] == 1  # 6 s falls in the (5, 10] bucket
    counters.worker_left(b"w1")
    assert b"w1" not in counters.workers


def test_a_snapshot_does_not_change_when_counting_goes_on():
    counters = Counters()
    counters.ran(None, "q", "t", True, now=1.0, accepted=0.0, leased=0.5)
    snapshot = counters.snapshot()
    counters.ran(None, "q", "t", True, now=2.0, accepted=0.0, leased=0.5)
    assert snapshot.by_task[("q", "t")][COMPLETED] == 1 and sum(snapshot.run["q"].counts) == 1
    assert counters.by_task[("q", "t")][COMPLETED] == 2


def test_task_names_past_the_cap_share_one_row():
    counters = Counters(max_labels=3)
    for number in range(10):
        counters.submitted("q", f"task{number}")
    assert len(counters.by_task) == 4 and counters.by_task[("q", OTHER)][SUBMITTED] == 7


def test_the_jobbook_feeds_the_counters_once_per_event():
    book = JobBook(Journal(":memory:"))
    book.worker_joined(b"w", ["default"], {"process": 4}, [], now=0.0)
    rows = [[f"job{n}", "mod:task", "process", "default", 0, b"", {}] for n in range(3)]
    book.submit(b"client", rows, False, now=100.0)
    leases = book.take_outbox(now=101.0).leases
    assert [job.id for _worker, jobs in leases for job in jobs] == ["job0", "job1", "job2"]
    book.results(b"w", [["job0", 1, protocol.OK, b""], ["job1", 1, protocol.FAILED, b""]], now=103.0)
    row = book.counters.by_task[("default", "mod:task")]
    assert row[SUBMITTED] == 3 and row[COMPLETED] == 1 and row[FAILED] == 1
    assert (book.counters.workers[b"w"].done, book.counters.workers[b"w"].failed) == (1, 1)
    assert book.counters.wait["default"].total == 2.0 and book.counters.run["default"].total == 4.0


def test_waiting_by_queue_counts_each_priority_and_finds_the_oldest_head():
    book = JobBook(Journal(":memory:"))
    book.submit(b"c", [["a", "t", "process", "q", 0, b"", {}], ["b", "t", "process", "q", 5, b"", {}]], False, 50.0)
    book.submit(b"c", [["c", "t", "thread", "q", 5, b"", {}]], False, 40.0)
    assert book.scheduler.waiting_by_queue() == {"q": {"pending": {0: 1, 5: 2}, "oldest": 40.0}}


def test_a_job_restored_from_the_journal_waits_with_an_unknown_age():
    book = JobBook(Journal(":memory:"))
    restored = Job("r", "t", "process", "q", 0, b"", b"c")  # accepted stays None, as restore() leaves it
    book.scheduler.submit(restored)
    assert book.scheduler.waiting_by_queue() == {"q": {"pending": {0: 1}, "oldest": None}}
    book.submit(b"c", [["a", "t", "process", "q", 0, b"", {}]], False, 50.0)
    assert book.scheduler.waiting_by_queue() == {"q": {"pending": {0: 2}, "oldest": None}}  # the head is the restored one
