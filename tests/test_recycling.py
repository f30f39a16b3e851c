"""Process-pool children recycled after N jobs or above an RSS limit: the decisions, then real workers."""

from __future__ import annotations

import collections
import os
import subprocess
import sys

import pytest

import runner
from cluster import ROOT, environment, wait_until
from runner import protocol
from workers import execute
from workers.admission import Admission
from workers.backlog import Backlog
from workers.pools import LEAVE_GRACE
from workers.recycling import Recycler

# --- the decisions, without processes ----------------------------------------------------------


def test_a_child_is_retired_once_it_has_run_its_jobs_counting_jobs_not_submissions():
    recycler = Recycler(max_jobs=5)
    assert recycler.room("a") == 5
    assert recycler.finished("a", 3) is None  # one submission of a group of 3
    assert recycler.room("a") == 2
    assert recycler.room("b") == 5  # children are counted apart
    retirement = recycler.finished("a", 2)
    assert retirement is not None and not retirement.memory and "5 jobs" in retirement.reason
    assert recycler.recycled == 1
    assert recycler.room("a") == 5  # a retired child is forgotten: its key starts afresh


def test_a_child_above_the_memory_limit_after_a_job_is_retired_at_once():
    recycler = Recycler(max_memory_mib=100)
    assert recycler.max_memory_kib == 100 * 1024
    assert recycler.room("a") is None  # no job limit: groups are not capped
    assert recycler.finished("a", 1, rss_kib=100 * 1024) is None  # at the limit is not above it
    retirement = recycler.finished("a", 1, rss_kib=100 * 1024 + 1)
    assert retirement is not None and retirement.memory and "100 MiB" in retirement.reason
    assert recycler.recycled == 1


def test_memory_is_named_when_both_limits_are_reached_by_the_same_job():
    recycler = Recycler(max_jobs=1, max_memory_mib=1)
    assert recycler.finished("a", 1, rss_kib=4096).memory
    assert recycler.recycled == 1


def test_a_child_gone_for_another_reason_is_forgotten_and_not_counted():
    recycler = Recycler(max_jobs=3)
    recycler.finished("a", 2)
    recycler.forget("a")
    assert recycler.room("a") == 3 and recycler.recycled == 0


@pytest.mark.parametrize("options, named", [
    ({"max_jobs": 0}, "max_jobs_per_child"), ({"max_jobs": 2.5}, "2.5"), ({"max_jobs": True}, "True"),
    ({"max_memory_mib": 0}, "max_memory_per_child"), ({"max_memory_mib": "1G"}, "'1G'"),
])
def test_bad_limits_are_refused_naming_the_value(options, named):
    with pytest.raises(ValueError, match=named):
        Recycler(**options)


def test_the_backlog_caps_a_group_at_the_room_left_in_the_child():
    backlog = Backlog({"process": 1})
    for n in range(50):
        backlog.add("process", 0, (f"j{n}", 1, "tasks:noop", b"", None))
    short = lambda task: 1e-6  # noqa: E731 - measured short: groups as large as the backlog allows
    assert backlog.take("process", lambda job_id, attempt: True, short, most=0) == []
    group = backlog.take("process", lambda job_id, attempt: True, short, most=3)
    assert [row[0] for row in group] == ["j0", "j1", "j2"]


def test_the_recycled_count_travels_in_heartbeats_and_is_checked():
    assert protocol.decode(protocol.encode(protocol.HEARTBEAT, {"recycled": 3})).body == {"recycled": 3}
    assert protocol.decode(protocol.encode(protocol.HEARTBEAT)).body == {}
    for bad in (-1, "3", 1.5):
        with pytest.raises(protocol.ProtocolError, match="recycled"):
            protocol.decode(protocol.encode(protocol.HEARTBEAT, {"recycled": bad}))


@pytest.fixture
def any_module_allowed():
    """Let this process run any task in-process, as a pool child would; restore the allowlist after."""
    execute.configure(Admission(("recycle_tasks",)))
    yield
    execute.configure(Admission())


def test_a_job_that_grows_a_child_past_the_limit_is_the_last_of_its_group(any_module_allowed):
    payload = protocol.pack([[7], {}])
    jobs = [(f"j{n}", 1, "recycle_tasks:pid", payload) for n in range(3)]
    rows, pid, rss_kib = execute.run_batch_measured(jobs, max_rss_kib=1)  # any process is above 1 KiB
    assert rss_kib > 1 and pid > 0
    statuses = [(row[0], row[2]) for row in rows]
    assert statuses == [("j0", protocol.OK), ("j1", protocol.REQUEUE), ("j2", protocol.REQUEUE)]
    rows, _, rss_kib = execute.run_batch_measured(jobs, max_rss_kib=None)
    assert rss_kib is None and [row[2] for row in rows] == [protocol.OK] * 3


# --- real workers -----------------------------------------------------------------------------


@pytest.mark.parametrize("arguments, named", [
    (["--max-jobs-per-child", "0"], "--max-jobs-per-child"),
    (["--max-memory-per-child", "lots"], "--max-memory-per-child"),
])
def test_bad_recycling_options_exit_non_zero_naming_the_option(arguments, named):
    result = subprocess.run([sys.executable, "-m", "runner", "worker", "--import", "tasks", *arguments],
                            capture_output=True, text=True, timeout=30, env=environment(), cwd=ROOT)
    assert result.returncode != 0
    assert result.stderr.startswith("runner: error:") and named in result.stderr and arguments[1] in result.stderr



def start_worker(processes, address: str, *arguments: str, env: dict | None = None):
    return processes.runner("worker", "--connect", address, "--import", "recycle_tasks", "--import", "jobs",
                            "--threads", "0", "--heartbeat", "0.2", "--log-level", "WARNING", *arguments,
                            env=env or environment())


def recycled(client: runner.Client) -> int:
    return client.status()["workers"][0]["recycled"]


def test_twenty_jobs_with_five_per_child_run_in_at_least_four_children(processes, broker_address, client_factory,
                                                                      tmp_path):
    start_worker(processes, broker_address, "--processes", "1", "--max-jobs-per-child", "5")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    runs = tmp_path / "runs"
    futures = [client.submit("recycle_tasks:record", str(runs), n) for n in range(20)]
    results = [future.result(timeout=60) for future in futures]
    assert [value for value, _ in results] == list(range(20))
    per_child = collections.Counter(pid for _, pid in results)
    assert len(per_child) >= 4 and max(per_child.values()) <= 5, per_child
    wait_until(lambda: sum(os.path.exists(f"/proc/{pid}") for pid in per_child) <= 1, timeout=10,
               message="retired children exited")
    ran = sorted(int(line.split()[0]) for line in runs.read_text().splitlines())
    assert ran == list(range(20)), "every job ran exactly once: none failed, none was run again"
    wait_until(lambda: recycled(client) == 4, timeout=10, message="status shows 4 recycled children")
    jobs = client.status()["jobs"]
    assert (jobs["done"], jobs["failed"], jobs["dead"], jobs["retrying"]) == (20, 0, 0, 0)
    text = subprocess.run([sys.executable, "-m", "runner", "status", "--connect", broker_address],
                          capture_output=True, text=True, timeout=30, env=environment(), cwd=ROOT).stdout
    assert "recycled 4" in text


def test_short_jobs_grouped_in_submissions_still_stop_at_the_limit(processes, broker_address, client_factory):
    env = environment(RUNNER_MAX_JOBS_PER_CHILD="40")  # the environment variable, on a pool of two
    start_worker(processes, broker_address, "--processes", "2", env=env)
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    results = list(client.map("recycle_tasks:pid", range(600), timeout=120))
    assert [value for value, _ in results] == list(range(600))
    per_child = collections.Counter(pid for _, pid in results)
    assert max(per_child.values()) <= 40, per_child
    # Every child but the two still running was retired after exactly 40 jobs, however they were grouped.
    retired = sum(1 for count in per_child.values() if count == 40)
    assert retired >= len(per_child) - 2 and retired >= 600 // 40 - 1, per_child
    wait_until(lambda: recycled(client) == retired, timeout=10, message="status counts every retired child")
    assert client.status()["jobs"]["failed"] == 0


def test_a_child_grown_past_the_memory_limit_returns_its_result_and_runs_no_more(processes, broker_address,
                                                                                 client_factory):
    start_worker(processes, broker_address, "--processes", "1", "--max-memory-per-child", "150")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    _, small = client.submit("recycle_tasks:pid", 0).result(timeout=30)
    _, still_small = client.submit("recycle_tasks:pid", 1).result(timeout=30)
    assert still_small == small, "a child below the limit keeps running jobs"
    growing = client.submit("recycle_tasks:grow", 200)
    assert growing.result(timeout=60) == small, "the job that grew the child returns its result"
    _, after = client.submit("recycle_tasks:pid", 2).result(timeout=30)
    assert after != small, "the grown child ran no more jobs"
    wait_until(lambda: not os.path.exists(f"/proc/{small}"), timeout=10, message="the grown child exited")
    assert client.fetch(growing.job_id)["state"] == "done"
    wait_until(lambda: recycled(client) == 1, timeout=10, message="status shows 1 recycled child")
    jobs = client.status()["jobs"]
    assert (jobs["done"], jobs["failed"], jobs["dead"]) == (4, 0, 0)


def test_timeouts_and_dying_children_still_work_with_recycling(processes, broker_address, client_factory):
    start_worker(processes, broker_address, "--processes", "2", "--max-jobs-per-child", "3")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    with pytest.raises(runner.TaskTimeoutError):
        client.submit("recycle_tasks:sleep_pid", 60, timeout=0.5).result(timeout=30)
    with pytest.raises(runner.TaskError) as caught:
        client.submit("jobs:crash", 13).result(timeout=30)
    assert caught.value.type_name == "WorkerPoolError"
    assert [client.submit("recycle_tasks:pid", n).result(timeout=30)[0] for n in range(10)] == list(range(10))


def test_a_retired_child_that_cannot_exit_is_killed_and_never_holds_up_the_worker(processes, broker_address,
                                                                                  client_factory):
    first = start_worker(processes, broker_address, "--processes", "1", "--max-jobs-per-child", "1")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    stuck = client.submit("recycle_tasks:linger").result(timeout=30)
    assert client.submit("recycle_tasks:pid", 0).result(timeout=30)[1] != stuck
    wait_until(lambda: not os.path.exists(f"/proc/{stuck}"), timeout=LEAVE_GRACE + 20,
               message="the retired child that could not exit was killed")
    # Stopped while a retired child is still on its way out, the worker exits at once, and cleanly.
    stuck = client.submit("recycle_tasks:linger").result(timeout=30)
    assert client.submit("recycle_tasks:pid", 1).result(timeout=30)[1] != stuck
    assert processes.stop(first, timeout=LEAVE_GRACE) == 0
    wait_until(lambda: not os.path.exists(f"/proc/{stuck}"), timeout=10, message="no retired child outlived it")
