"""The scheduler, driven directly: priorities, credit, spreading, queues, leases, retries, cancel."""

from __future__ import annotations

import collections

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from runner.broker.scheduler import (
    DEFERRED,
    PENDING,
    RUNNING,
    Job,
    Scheduler,
    UnknownWorker,
)


def make_job(job_id: str, *, queue: str = "default", pool: str = "thread", priority: int = 0) -> Job:
    return Job(job_id, "tasks:add", pool, queue, priority, b"\x90", b"client-1")


def submit_all(scheduler: Scheduler, *jobs: Job) -> None:
    for job in jobs:
        assert scheduler.submit(job)


def plan_ids(plan: list[tuple[bytes, list[Job]]]) -> dict[bytes, list[str]]:
    """A dispatch plan as {worker: [job ids in the order sent]}."""
    assert len({worker for worker, _ in plan}) == len(plan), "one batch per worker"
    return {worker: [job.id for job in jobs] for worker, jobs in plan}


def dispatched(scheduler: Scheduler) -> dict[bytes, list[str]]:
    return plan_ids(scheduler.dispatch())


def lose_worker(scheduler: Scheduler, worker_id: bytes) -> list[Job]:
    """What the broker does when a worker dies: its jobs go back to the front of their queues."""
    returned = scheduler.worker_left(worker_id)
    for job in returned:
        scheduler.requeue(job, front=True)
    return returned


@pytest.fixture
def scheduler() -> Scheduler:
    return Scheduler()


# --- priorities and credit ---------------------------------------------------------------


def test_higher_priority_first_and_fifo_within_a_priority(scheduler):
    submit_all(scheduler, make_job("low-1", priority=-1), make_job("mid-1"), make_job("high-1", priority=9),
               make_job("mid-2"), make_job("high-2", priority=9), make_job("low-2", priority=-1))
    scheduler.worker_joined(b"w", ["default"], {"thread": 10})
    assert dispatched(scheduler) == {b"w": ["high-1", "high-2", "mid-1", "mid-2", "low-1", "low-2"]}


def test_with_little_credit_the_highest_priorities_go_first(scheduler):
    submit_all(scheduler, *(make_job(f"p{p}", priority=p) for p in (3, 1, 4, 1_000, -5, 2)))
    scheduler.worker_joined(b"w", ["default"], {"thread": 2})
    assert dispatched(scheduler) == {b"w": ["p1000", "p4"]}


def test_credit_is_never_exceeded(scheduler):
    submit_all(scheduler, *(make_job(f"j{i}") for i in range(10)))
    scheduler.worker_joined(b"w", ["default"], {"thread": 3})
    assert dispatched(scheduler) == {b"w": ["j0", "j1", "j2"]}
    submit_all(scheduler, make_job("late"))
    assert scheduler.dispatch() == []
    assert scheduler.workers[b"w"].in_flight["thread"] == 3
    assert scheduler.pending_by_queue() == {"default": 8}


def test_credit_is_counted_per_pool(scheduler):
    submit_all(scheduler, *(make_job(f"p{i}", pool="process") for i in range(3)),
               *(make_job(f"t{i}", pool="thread") for i in range(3)))
    scheduler.worker_joined(b"w", ["default"], {"process": 1, "thread": 2})
    assert sorted(dispatched(scheduler)[b"w"]) == ["p0", "t0", "t1"]
    worker = scheduler.workers[b"w"]
    assert (worker.in_flight["process"], worker.in_flight["thread"]) == (1, 2)


def test_finishing_a_job_returns_one_credit_and_dispatches_the_next(scheduler):
    submit_all(scheduler, *(make_job(f"j{i}") for i in range(5)))
    scheduler.worker_joined(b"w", ["default"], {"thread": 2})
    assert dispatched(scheduler) == {b"w": ["j0", "j1"]}
    finished = scheduler.job_finished(b"w", "j1", 1)
    assert finished is not None and finished.id == "j1"
    assert "j1" not in scheduler.jobs
    assert dispatched(scheduler) == {b"w": ["j2"]}
    assert scheduler.dispatch() == []


def test_a_job_for_a_pool_without_credit_waits(scheduler):
    submit_all(scheduler, make_job("cpu", pool="process"))
    scheduler.worker_joined(b"threads-only", ["default"], {"thread": 4})
    scheduler.worker_joined(b"zero-process", ["default"], {"process": 0, "thread": 4})
    assert scheduler.dispatch() == []
    assert scheduler.jobs["cpu"].state == PENDING
    scheduler.worker_joined(b"processes", ["default"], {"process": 1})
    assert dispatched(scheduler) == {b"processes": ["cpu"]}


# --- spreading over workers ---------------------------------------------------------------


def test_two_workers_with_equal_credit_share_evenly(scheduler):
    scheduler.worker_joined(b"a", ["default"], {"thread": 4})
    scheduler.worker_joined(b"b", ["default"], {"thread": 4})
    submit_all(scheduler, *(make_job(f"j{i}") for i in range(4)))
    plan = dispatched(scheduler)
    assert sorted(plan) == [b"a", b"b"]
    assert len(plan[b"a"]) == len(plan[b"b"]) == 2


def test_one_job_each_when_there_are_as_many_jobs_as_workers(scheduler):
    for worker in (b"a", b"b", b"c"):
        scheduler.worker_joined(worker, ["default"], {"thread": 8})
    submit_all(scheduler, make_job("j0"), make_job("j1"), make_job("j2"))
    assert sorted(len(ids) for ids in dispatched(scheduler).values()) == [1, 1, 1]


def test_jobs_submitted_one_by_one_alternate_between_workers(scheduler):
    scheduler.worker_joined(b"a", ["default"], {"thread": 4})
    scheduler.worker_joined(b"b", ["default"], {"thread": 4})
    owners = collections.Counter()
    for i in range(6):
        submit_all(scheduler, make_job(f"j{i}"))
        [(worker, _)] = scheduler.dispatch()
        owners[worker] += 1
    assert owners == {b"a": 3, b"b": 3}


def test_the_least_loaded_worker_is_served_first(scheduler):
    scheduler.worker_joined(b"busy", ["default"], {"thread": 4})
    submit_all(scheduler, *(make_job(f"j{i}") for i in range(3)))
    assert dispatched(scheduler) == {b"busy": ["j0", "j1", "j2"]}
    scheduler.worker_joined(b"idle", ["default"], {"thread": 4})
    submit_all(scheduler, make_job("next"))
    assert dispatched(scheduler) == {b"idle": ["next"]}


def test_when_one_worker_is_full_the_rest_go_to_the_other(scheduler):
    scheduler.worker_joined(b"small", ["default"], {"thread": 1})
    scheduler.worker_joined(b"large", ["default"], {"thread": 10})
    submit_all(scheduler, *(make_job(f"j{i}") for i in range(6)))
    plan = dispatched(scheduler)
    assert len(plan[b"small"]) == 1 and len(plan[b"large"]) == 5


# --- queues -----------------------------------------------------------------------------------


def test_a_job_goes_only_to_workers_serving_its_queue(scheduler):
    scheduler.worker_joined(b"cpu", ["default"], {"thread": 4})
    scheduler.worker_joined(b"gpu", ["gpu"], {"thread": 4})
    submit_all(scheduler, make_job("train", queue="gpu"), make_job("add"))
    assert dispatched(scheduler) == {b"gpu": ["train"], b"cpu": ["add"]}


def test_a_job_waits_until_a_worker_serves_its_queue(scheduler):
    scheduler.worker_joined(b"cpu", ["default"], {"thread": 4})
    submit_all(scheduler, make_job("train", queue="gpu"))
    assert scheduler.dispatch() == []
    assert scheduler.pending_by_queue() == {"gpu": 1}
    scheduler.worker_joined(b"gpu", ["gpu", "default"], {"thread": 1})
    assert dispatched(scheduler) == {b"gpu": ["train"]}
    assert scheduler.pending_by_queue() == {}


def test_a_worker_serving_several_queues_takes_from_each(scheduler):
    submit_all(scheduler, make_job("a", queue="alpha"), make_job("b", queue="beta"), make_job("c", queue="gamma"))
    scheduler.worker_joined(b"w", ["alpha", "beta"], {"thread": 5})
    assert sorted(dispatched(scheduler)[b"w"]) == ["a", "b"]
    assert scheduler.pending_by_queue() == {"gamma": 1}


def test_pending_by_queue_counts_waiting_jobs_of_every_pool(scheduler):
    submit_all(scheduler, make_job("d1"), make_job("d2", pool="process"), make_job("d3"),
               make_job("g1", queue="gpu"), make_job("g2", queue="gpu", priority=5))
    assert scheduler.pending_by_queue() == {"default": 3, "gpu": 2}
    scheduler.worker_joined(b"w", ["default"], {"thread": 1})
    scheduler.dispatch()
    assert scheduler.pending_by_queue() == {"default": 2, "gpu": 2}  # the leased job is not counted


def test_pending_by_queue_of_an_empty_scheduler(scheduler):
    assert scheduler.pending_by_queue() == {}


# --- workers leaving, stale reports -------------------------------------------------------------


def test_worker_left_hands_its_leased_jobs_to_the_caller(scheduler):
    submit_all(scheduler, make_job("first"), make_job("second"))
    scheduler.worker_joined(b"a", ["default"], {"thread": 1})
    assert dispatched(scheduler) == {b"a": ["first"]}

    returned = scheduler.worker_left(b"a")

    assert [job.id for job in returned] == ["first"]
    assert returned[0].worker is None
    assert b"a" not in scheduler.workers
    assert "first" not in scheduler.jobs  # held by the caller until it requeues or ends it
    assert scheduler.pending_by_queue() == {"default": 1}


def test_a_job_requeued_at_the_front_goes_before_its_priority_but_after_higher_ones(scheduler):
    submit_all(scheduler, make_job("first"), make_job("second"))
    scheduler.worker_joined(b"a", ["default"], {"thread": 1})
    assert dispatched(scheduler) == {b"a": ["first"]}
    submit_all(scheduler, make_job("urgent", priority=5), make_job("later", priority=-5))

    [job] = lose_worker(scheduler, b"a")

    assert job.state == PENDING and scheduler.jobs["first"] is job
    scheduler.worker_joined(b"b", ["default"], {"thread": 4})
    assert dispatched(scheduler) == {b"b": ["urgent", "first", "second", "later"]}


def test_requeue_without_front_goes_to_the_back_of_its_priority(scheduler):
    submit_all(scheduler, make_job("retried"), make_job("waiting"))
    scheduler.worker_joined(b"w", ["default"], {"thread": 1})
    scheduler.dispatch()
    job = scheduler.job_finished(b"w", "retried", 1)
    scheduler.requeue(job)
    assert dispatched(scheduler) == {b"w": ["waiting"]}
    scheduler.job_finished(b"w", "waiting", 1)
    assert dispatched(scheduler) == {b"w": ["retried"]}
    assert job.attempt == 2


def test_attempts_increase_on_every_lease(scheduler):
    job = make_job("j")
    submit_all(scheduler, job)
    assert job.attempt == 0
    for attempt, worker in enumerate([b"a", b"b", b"c"], start=1):
        scheduler.worker_joined(worker, ["default"], {"thread": 1})
        assert dispatched(scheduler) == {worker: ["j"]}
        assert (job.attempt, job.state, job.worker) == (attempt, RUNNING, worker)
        lose_worker(scheduler, worker)


def test_a_report_for_an_earlier_attempt_is_ignored_and_frees_no_credit(scheduler):
    submit_all(scheduler, make_job("j"), make_job("waiting"))
    scheduler.worker_joined(b"a", ["default"], {"thread": 1})
    scheduler.dispatch()
    scheduler.worker_joined(b"a", ["default"], {"thread": 1})  # re-registered: its lease is given back
    assert dispatched(scheduler) == {b"a": ["j"]}
    assert scheduler.jobs["j"].attempt == 2

    assert scheduler.job_finished(b"a", "j", 1) is None
    assert scheduler.workers[b"a"].in_flight["thread"] == 1
    assert scheduler.dispatch() == []  # no credit came back, so "waiting" still waits
    assert scheduler.job_finished(b"a", "j", 2).id == "j"


def test_started_reports_name_only_jobs_leased_to_that_worker_at_that_attempt(scheduler):
    submit_all(scheduler, make_job("j"), make_job("k"))
    scheduler.worker_joined(b"a", ["default"], {"thread": 2})
    scheduler.dispatch()
    rows = [["j", 1], ["k", 2], ["unknown", 1]]  # k's attempt is stale, "unknown" was never leased
    assert [job.id for job in scheduler.leased_jobs(b"a", rows)] == ["j"]
    assert scheduler.leased_jobs(b"b", rows) == []  # not a worker (a client, or one declared lost)


def test_a_report_from_another_worker_is_ignored(scheduler):
    submit_all(scheduler, make_job("j"), make_job("waiting"))
    scheduler.worker_joined(b"owner", ["default"], {"thread": 1})
    scheduler.dispatch()
    scheduler.worker_joined(b"other", ["gpu"], {"thread": 1})
    assert scheduler.job_finished(b"other", "j", 1) is None
    assert scheduler.jobs["j"].worker == b"owner"
    assert "j" in scheduler.workers[b"owner"].leased
    assert scheduler.workers[b"other"].in_flight["thread"] == 0
    assert scheduler.dispatch() == []


def test_a_duplicate_report_is_ignored(scheduler):
    submit_all(scheduler, make_job("j"))
    scheduler.worker_joined(b"w", ["default"], {"thread": 2})
    scheduler.dispatch()
    assert scheduler.job_finished(b"w", "j", 1) is not None
    assert scheduler.job_finished(b"w", "j", 1) is None
    assert scheduler.workers[b"w"].in_flight["thread"] == 0


def test_a_report_after_the_worker_was_declared_dead_is_refused(scheduler):
    submit_all(scheduler, make_job("j"))
    scheduler.worker_joined(b"w", ["default"], {"thread": 1})
    scheduler.dispatch()
    lose_worker(scheduler, b"w")
    with pytest.raises(UnknownWorker):
        scheduler.job_finished(b"w", "j", 1)
    assert scheduler.jobs["j"].state == PENDING


def test_unknown_worker(scheduler):
    with pytest.raises(UnknownWorker) as caught:
        scheduler.job_finished(b"never-joined", "j", 1)
    assert isinstance(caught.value, KeyError)
    assert caught.value.args == (b"never-joined",)


def test_worker_left_for_an_unknown_worker_returns_nothing(scheduler):
    assert scheduler.worker_left(b"ghost") == []


def test_a_worker_that_rejoins_gets_its_jobs_again_with_new_credit(scheduler):
    submit_all(scheduler, make_job("j0"), make_job("j1"))
    scheduler.worker_joined(b"w", ["default"], {"thread": 2})
    scheduler.dispatch()
    scheduler.worker_joined(b"w", ["default"], {"thread": 1})
    [(worker, [job])] = scheduler.dispatch()
    assert worker == b"w" and job.id in ("j0", "j1") and job.attempt == 2
    assert scheduler.workers[b"w"].in_flight["thread"] == 1
    assert scheduler.pending_by_queue() == {"default": 1}


def test_jobs_given_back_keep_their_order(scheduler):
    submit_all(scheduler, make_job("j0"), make_job("j1"), make_job("j2"))
    scheduler.worker_joined(b"a", ["default"], {"thread": 2})
    assert dispatched(scheduler) == {b"a": ["j0", "j1"]}
    scheduler.worker_joined(b"a", ["gpu"], {"thread": 2})  # joined again, serving another queue
    scheduler.worker_joined(b"b", ["default"], {"thread": 3})
    assert dispatched(scheduler) == {b"b": ["j0", "j1", "j2"]}


# --- deferred retries, adoption, forced cancel, draining -----------------------------------------


def test_a_deferred_job_waits_outside_its_queue_until_requeued(scheduler):
    submit_all(scheduler, make_job("flaky"))
    scheduler.worker_joined(b"w", ["default"], {"thread": 2})
    scheduler.dispatch()
    job = scheduler.job_finished(b"w", "flaky", 1)
    scheduler.defer(job)
    assert (job.state, scheduler.jobs["flaky"]) == (DEFERRED, job)
    assert scheduler.dispatch() == []
    assert scheduler.pending_by_queue() == {}
    assert not scheduler.cancel("flaky")  # the broker's job book cancels deferred jobs itself
    assert not scheduler.submit(make_job("flaky"))
    scheduler.requeue(job)
    assert dispatched(scheduler) == {b"w": ["flaky"]}
    assert job.attempt == 2


def test_adopt_leases_a_waiting_job_to_the_worker_that_still_runs_it(scheduler):
    submit_all(scheduler, make_job("kept"), make_job("other"))
    scheduler.worker_joined(b"w", ["default"], {"thread": 1})
    job = scheduler.jobs["kept"]
    assert scheduler.adopt(b"w", job, 1)
    assert (job.state, job.worker) == (RUNNING, b"w")
    assert scheduler.workers[b"w"].in_flight["thread"] == 1
    assert scheduler.dispatch() == []  # the adopted job used the only credit
    assert scheduler.pending_by_queue() == {"default": 1}


def test_adopt_refuses_an_unknown_worker_or_a_job_that_is_not_waiting(scheduler):
    submit_all(scheduler, make_job("j"))
    assert not scheduler.adopt(b"ghost", scheduler.jobs["j"], 1)
    scheduler.worker_joined(b"a", ["default"], {"thread": 1})
    scheduler.worker_joined(b"b", ["default"], {"thread": 1})
    [(holder, [job])] = scheduler.dispatch()
    other = b"b" if holder == b"a" else b"a"
    assert not scheduler.adopt(other, job, 1)
    assert job.worker == holder


def test_an_adopted_job_can_be_finished_by_the_attempt_its_worker_runs(scheduler):
    submit_all(scheduler, make_job("j"))
    scheduler.worker_joined(b"w", ["default"], {"thread": 1})
    assert dispatched(scheduler) == {b"w": ["j"]}  # attempt 1
    lose_worker(scheduler, b"w")  # declared dead, though it still runs attempt 1
    scheduler.worker_joined(b"w", ["default"], {"thread": 1})  # it registers again: running [["j", 1]]
    assert scheduler.adopt(b"w", scheduler.jobs["j"], 1)
    assert scheduler.job_finished(b"w", "j", 1) is not None


def test_drop_lease_returns_the_credit(scheduler):
    submit_all(scheduler, make_job("cancelled"), make_job("next"))
    scheduler.worker_joined(b"w", ["default"], {"thread": 1})
    assert dispatched(scheduler) == {b"w": ["cancelled"]}
    job = scheduler.jobs["cancelled"]
    scheduler.drop_lease(job)
    assert "cancelled" not in scheduler.jobs and job.worker is None
    assert scheduler.workers[b"w"].in_flight["thread"] == 0
    assert dispatched(scheduler) == {b"w": ["next"]}
    assert scheduler.job_finished(b"w", "cancelled", 1) is None  # its late result is stale


def test_set_credit_to_nothing_stops_new_leases_but_keeps_running_ones(scheduler):
    submit_all(scheduler, *(make_job(f"j{i}") for i in range(4)))
    scheduler.worker_joined(b"w", ["default"], {"thread": 2})
    assert dispatched(scheduler) == {b"w": ["j0", "j1"]}
    scheduler.set_credit(b"w", {})  # draining
    assert scheduler.job_finished(b"w", "j0", 1) is not None
    assert scheduler.dispatch() == []
    assert scheduler.jobs["j1"].worker == b"w"
    scheduler.set_credit(b"w", {"thread": 3})
    assert dispatched(scheduler) == {b"w": ["j2", "j3"]}
    scheduler.set_credit(b"ghost", {"thread": 1})  # unknown worker: nothing happens


# --- submit, cancel, dispatch -------------------------------------------------------------------


def test_a_duplicate_submit_returns_false_and_queues_nothing(scheduler):
    original = make_job("j")
    assert scheduler.submit(original)
    assert not scheduler.submit(make_job("j", priority=9))
    assert scheduler.jobs["j"] is original
    assert scheduler.pending_by_queue() == {"default": 1}
    scheduler.worker_joined(b"w", ["default"], {"thread": 1})
    scheduler.dispatch()
    assert not scheduler.submit(make_job("j"))  # also while it runs
    assert scheduler.pending_by_queue() == {}


def test_cancel_of_a_pending_job(scheduler):
    submit_all(scheduler, make_job("keep"), make_job("drop"), make_job("keep-too"))
    assert scheduler.cancel("drop")
    assert "drop" not in scheduler.jobs
    assert scheduler.pending_by_queue() == {"default": 2}
    scheduler.worker_joined(b"w", ["default"], {"thread": 5})
    assert dispatched(scheduler) == {b"w": ["keep", "keep-too"]}


def test_cancel_of_the_only_job_after_a_dispatch_found_no_worker(scheduler):
    submit_all(scheduler, make_job("j", queue="gpu"))
    assert scheduler.dispatch() == []
    assert scheduler.cancel("j")
    scheduler.worker_joined(b"w", ["gpu"], {"thread": 1})
    assert scheduler.dispatch() == []


def test_cancel_of_a_running_job_returns_false(scheduler):
    submit_all(scheduler, make_job("j"))
    scheduler.worker_joined(b"w", ["default"], {"thread": 1})
    scheduler.dispatch()
    assert not scheduler.cancel("j")
    assert scheduler.jobs["j"].state == RUNNING
    assert scheduler.job_finished(b"w", "j", 1) is not None


def test_cancel_of_an_unknown_or_finished_job_returns_false(scheduler):
    assert not scheduler.cancel("nope")
    submit_all(scheduler, make_job("j"))
    assert scheduler.cancel("j")
    assert not scheduler.cancel("j")


def test_dispatch_returns_nothing_when_nothing_changed(scheduler):
    assert scheduler.dispatch() == []
    scheduler.worker_joined(b"w", ["default"], {"thread": 1})
    assert scheduler.dispatch() == []  # a worker but no jobs
    submit_all(scheduler, make_job("j0"), make_job("j1"))
    assert dispatched(scheduler) == {b"w": ["j0"]}
    assert scheduler.dispatch() == []
    assert scheduler.dispatch() == []


# --- invariants under random event sequences -----------------------------------------------------

QUEUES = ("default", "gpu")
POOLS = ("process", "thread")
WORKERS = (b"w1", b"w2", b"w3")


class SchedulerMachine(RuleBasedStateMachine):
    """Random events, as the broker's job book sends them; the invariants hold after each.

    The model is the set of job ids the scheduler must hold (``live``) and the highest
    attempt seen per job; everything else is checked against the scheduler's own state.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scheduler = Scheduler()
        self.live: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.in_flight_before: dict[tuple[bytes, str], int] = {}
        self.next_id = 0

    def leases(self) -> list[tuple[bytes, str, int]]:
        return sorted((w.id, job.id, job.attempt) for w in self.scheduler.workers.values() for job in w.leased.values())

    def jobs_in(self, state: str) -> list[str]:
        return sorted(job_id for job_id, job in self.scheduler.jobs.items() if job.state == state)

    # --- jobs --------------------------------------------------------------------------------------

    @rule(queue=st.sampled_from(QUEUES), pool=st.sampled_from(POOLS), priority=st.integers(-2, 2))
    def submit(self, queue, pool, priority):
        job_id = f"j{self.next_id}"
        self.next_id += 1
        assert self.scheduler.submit(make_job(job_id, queue=queue, pool=pool, priority=priority))
        self.live.add(job_id)
        self.attempts[job_id] = 0

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def resubmit(self, data):
        assert not self.scheduler.submit(make_job(data.draw(st.sampled_from(sorted(self.live)))))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def cancel(self, data):
        job_id = data.draw(st.sampled_from(sorted(self.live)))
        was_pending = self.scheduler.jobs[job_id].state == PENDING
        assert self.scheduler.cancel(job_id) == was_pending
        if was_pending:
            self.live.discard(job_id)

    @precondition(lambda self: self.leases())
    @rule(data=st.data(), retry=st.booleans())
    def finish(self, data, retry):
        worker, job_id, attempt = data.draw(st.sampled_from(self.leases()))
        job = self.scheduler.job_finished(worker, job_id, attempt)
        assert job is not None and job.id == job_id and job_id not in self.scheduler.jobs
        if retry:  # the task raised and may run again after a backoff
            self.scheduler.defer(job)
        else:
            self.live.discard(job_id)

    @precondition(lambda self: self.scheduler.workers and self.live)
    @rule(data=st.data())
    def stale_finish(self, data):
        worker = data.draw(st.sampled_from(sorted(self.scheduler.workers)))
        job = self.scheduler.jobs[data.draw(st.sampled_from(sorted(self.live)))]
        attempt = data.draw(st.integers(1, 5).filter(lambda a: job.worker != worker or a != job.attempt))
        assert self.scheduler.job_finished(worker, job.id, attempt) is None

    @precondition(lambda self: self.jobs_in(DEFERRED))
    @rule(data=st.data())
    def backoff_passed(self, data):
        self.scheduler.requeue(self.scheduler.jobs[data.draw(st.sampled_from(self.jobs_in(DEFERRED)))])

    @precondition(lambda self: self.leases())
    @rule(data=st.data())
    def cancel_by_force(self, data):
        _, job_id, _ = data.draw(st.sampled_from(self.leases()))
        self.scheduler.drop_lease(self.scheduler.jobs[job_id])
        self.live.discard(job_id)

    # --- workers -----------------------------------------------------------------------------------

    @rule(worker=st.sampled_from(WORKERS), queues=st.sets(st.sampled_from(QUEUES), min_size=1),
          credit=st.dictionaries(st.sampled_from(POOLS), st.integers(0, 3)))
    def join(self, worker, queues, credit):
        self.scheduler.worker_joined(worker, sorted(queues), credit)
        for pool in POOLS:
            self.in_flight_before.pop((worker, pool), None)

    @rule(worker=st.sampled_from(WORKERS), data=st.data())
    def leave(self, worker, data):
        slot = self.scheduler.workers.get(worker)
        expected = set(slot.leased) if slot else set()
        returned = self.scheduler.worker_left(worker)
        assert {job.id for job in returned} == expected
        assert not expected & set(self.scheduler.jobs)  # the caller holds them now
        for job in returned:
            if data.draw(st.booleans(), label=f"requeue {job.id}"):
                self.scheduler.requeue(job, front=True)
            else:  # lost too often: dead
                self.live.discard(job.id)

    @precondition(lambda self: self.scheduler.workers)
    @rule(data=st.data(), credit=st.dictionaries(st.sampled_from(POOLS), st.integers(0, 3)))
    def set_credit(self, data, credit):
        self.scheduler.set_credit(data.draw(st.sampled_from(sorted(self.scheduler.workers))), credit)

    @precondition(lambda self: self.scheduler.workers and self.jobs_in(PENDING))
    @rule(data=st.data())
    def adopt(self, data):
        worker = self.scheduler.workers[data.draw(st.sampled_from(sorted(self.scheduler.workers)))]
        job = self.scheduler.jobs[data.draw(st.sampled_from(self.jobs_in(PENDING)))]
        if worker.free(job.pool) > 0:  # a worker re-registering never runs more than its slots
            assert self.scheduler.adopt(worker.id, job, max(job.attempt, 1))
            assert job.worker == worker.id

    # --- decisions ---------------------------------------------------------------------------------

    @rule()
    def dispatch(self):
        before = {job_id: job.attempt for job_id, job in self.scheduler.jobs.items()}
        for worker_id, jobs in self.scheduler.dispatch():
            worker = self.scheduler.workers[worker_id]
            for job in jobs:
                assert job.queue in worker.queues
                assert job.worker == worker_id and job.state == RUNNING
                assert job.attempt == before[job.id] + 1
                assert worker.in_flight[job.pool] <= worker.credit.get(job.pool, 0)
        self.check_no_idle_credit()

    def check_no_idle_credit(self) -> None:
        """Right after dispatch, no waiting job could have gone to a worker with credit."""
        for job in self.scheduler.jobs.values():
            if job.state == PENDING:
                for worker in self.scheduler.workers.values():
                    assert not (job.queue in worker.queues and worker.free(job.pool) > 0), (job, worker)

    # --- invariants --------------------------------------------------------------------------------

    @invariant()
    def each_job_is_in_exactly_one_place(self):
        assert set(self.scheduler.jobs) == self.live
        holders = collections.Counter(job_id for w in self.scheduler.workers.values() for job_id in w.leased)
        for job_id, job in self.scheduler.jobs.items():
            if job.state == RUNNING:
                assert holders[job_id] == 1
                assert self.scheduler.workers[job.worker].leased[job_id] is job
            else:
                assert job.state in (PENDING, DEFERRED) and job.worker is None and holders[job_id] == 0
        assert set(holders) <= self.live
        assert sum(self.scheduler.pending_by_queue().values()) == len(self.jobs_in(PENDING))

    @invariant()
    def in_flight_matches_leases_and_never_grows_past_credit(self):
        for worker in self.scheduler.workers.values():
            for pool in POOLS:
                in_flight = worker.in_flight[pool]
                assert in_flight == sum(1 for job in worker.leased.values() if job.pool == pool) >= 0
                # Above credit only after set_credit lowered it, and then it may only shrink.
                before = self.in_flight_before.get((worker.id, pool), 0)
                assert in_flight <= worker.credit.get(pool, 0) or in_flight <= before
                self.in_flight_before[(worker.id, pool)] = in_flight

    @invariant()
    def attempts_only_increase(self):
        for job_id, job in self.scheduler.jobs.items():
            assert job.attempt >= self.attempts[job_id]
            assert job.attempt >= (1 if job.state in (RUNNING, DEFERRED) else 0)
            self.attempts[job_id] = job.attempt


TestSchedulerMachine = SchedulerMachine.TestCase
TestSchedulerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
