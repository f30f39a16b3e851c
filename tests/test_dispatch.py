"""Priorities, named queues, the worker's allowlist and pool rebuilds, with real processes."""

from __future__ import annotations

import pytest

import runner
import tasks
from cluster import environment, wait_until


def test_higher_priority_jobs_run_first_on_a_busy_single_slot_worker(processes, broker_address, client_factory,
                                                                      tmp_path):
    processes.worker(broker_address, "--processes", "1", "--threads", "0", imports=("tasks", "jobs"))
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    gate = tmp_path / "gate"
    blocker = client.submit("jobs:gated", str(gate), str(tmp_path / "blocker-started"), "blocker")
    wait_until(lambda: client.status()["jobs"]["running"] == 1, timeout=10, message="blocker running")
    labels = [("low", 0), ("high", 10), ("low", 0), ("mid", 5), ("high", 10), ("low", 0), ("mid", 5)]
    futures = [client.submit(tasks.record_order, f"{label}-{n}", priority=priority) for n, (label, priority) in enumerate(labels)]
    wait_until(lambda: client.status()["queues"].get("default") == len(labels), timeout=10,
               message=f"{len(labels)} jobs queued behind the blocker")
    gate.touch()
    assert blocker.result(timeout=30)["value"] == "blocker"
    ran = sorted((future.result(timeout=30) for future in futures), key=lambda result: result["started"])
    order = [result["label"] for result in ran]
    assert order == ["high-1", "high-4", "mid-3", "mid-6", "low-0", "low-2", "low-5"]


def test_a_job_on_queue_gpu_runs_only_on_a_worker_serving_gpu(processes, broker_address, client_factory):
    plain = processes.worker(broker_address, "--processes", "0", "--threads", "4")
    gpu = processes.worker(broker_address, "--processes", "0", "--threads", "4", "--queue", "gpu", "--queue", "default")
    client = client_factory(broker_address)
    client.wait_for_workers(2, timeout=30)
    on_gpu = [client.submit(tasks.slow_whoami, 0.01, pool="thread", queue="gpu") for _ in range(40)]
    assert {future.result(timeout=30)["pid"] for future in on_gpu} == {gpu.pid}
    anywhere = [client.submit(tasks.slow_whoami, 0.05, pool="thread") for _ in range(16)]
    assert {future.result(timeout=30)["pid"] for future in anywhere} == {plain.pid, gpu.pid}


def test_a_job_for_a_queue_nobody_serves_waits_until_a_worker_does(processes, broker_address, client_factory):
    processes.worker(broker_address, "--processes", "0", "--threads", "2")
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    future = client.submit(tasks.add, 2, 3, pool="thread", queue="rare")
    wait_until(lambda: client.status()["queues"].get("rare") == 1, timeout=10, message="job waiting in 'rare'")
    assert not future.done()
    processes.worker(broker_address, "--processes", "0", "--threads", "1", "--queue", "rare")
    assert future.result(timeout=30) == 5


def test_a_task_outside_the_imports_fails_clearly_and_is_never_imported(processes, broker_address, client_factory, tmp_path):
    marker = tmp_path / "imported"
    env = environment(RUNNER_TEST_IMPORT_MARKER=str(marker))
    processes.runner("worker", "--connect", broker_address, "--import", "tasks", "--processes", "1",
                     "--threads", "1", "--log-level", "WARNING", env=env)
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    for pool in ("thread", "process"):
        with pytest.raises(runner.TaskNotAllowedError) as caught:
            client.submit("import_marker:hello", pool=pool).result(timeout=30)
        assert isinstance(caught.value, runner.TaskError)  # what handlers caught before
        assert "--import import_marker" in caught.value.message
    assert not marker.exists(), "the worker imported a module it was not allowed to"
    # The same job on a worker that allows the module does import it: the check above can fail.
    processes.runner("worker", "--connect", broker_address, "--import", "import_marker", "--queue", "marked",
                     "--processes", "0", "--threads", "1", "--log-level", "WARNING", env=env)
    assert client.submit("import_marker:hello", pool="thread", queue="marked").result(timeout=30) == "imported"
    assert marker.exists()


def test_unknown_task_in_an_allowed_module_fails_with_task_not_found(two_workers):
    with pytest.raises(runner.TaskError) as caught:
        two_workers.submit("tasks:no_such_function", pool="thread").result(timeout=30)
    assert caught.value.type_name == "TaskNotFound"
    assert "no_such_function" in caught.value.message


def test_a_dying_pool_child_fails_its_job_clearly_and_the_pool_is_rebuilt(processes, broker_address, client_factory):
    worker = processes.worker(broker_address, "--processes", "1", "--threads", "1", imports=("tasks", "jobs"))
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    with pytest.raises(runner.TaskError) as caught:
        client.submit("jobs:crash", 13).result(timeout=30)
    assert caught.value.type_name == "WorkerPoolError"
    assert "died" in caught.value.message
    results = [client.submit(tasks.add, i, 1).result(timeout=30) for i in range(5)]
    assert results == [1, 2, 3, 4, 5]
    assert worker.poll() is None, "the worker itself must keep serving"
    assert client.status()["workers"][0]["pid"] == worker.pid


def test_unsendable_arguments_raise_type_error_at_submit(two_workers):
    with pytest.raises(TypeError, match=r"keyword argument 'value' is a set"):
        two_workers.submit(tasks.echo, value={1, 2})
    with pytest.raises(TypeError, match=r"positional argument 0 is a object"):
        two_workers.submit(tasks.echo, object())
    with pytest.raises(TypeError, match="lambda"):
        two_workers.submit(lambda: 1)
    with pytest.raises(ValueError, match="module:function"):
        two_workers.submit("not a reference")
    with pytest.raises(ValueError, match="pool must be one of"):
        two_workers.submit(tasks.noop, pool="gpu")
    # Nothing was sent, and the client still works.
    assert two_workers.submit(tasks.echo, {"a": [1, 2.5, None, b"x"]}).result(timeout=30) == {"a": [1, 2.5, None, b"x"]}


def test_an_unsendable_result_fails_the_job_with_type_error(two_workers):
    with pytest.raises(TypeError, match="cannot be sent back"):
        two_workers.submit("jobs:unsendable_result", pool="thread").result(timeout=30)
