"""Jobs that wait for other jobs, with a real broker and real workers.

Futures (and runner.JobResult) as arguments, nested in lists and dicts; ``after=``; a diamond; a
chain of 100; failures and cancellations passed on as DependencyError, and only to dependants;
unknown ids refused; group and chain; the state ``waiting`` in fetch, listings and status; and a
broker killed with SIGKILL in the middle of a diamond, restarted on its journal: nothing lost,
nothing run twice (each run leaves a marker made with O_EXCL).
"""

from __future__ import annotations

import json
import os
import uuid

import pytest
from cluster import Processes, wait_until
from test_chaos import free_address
from test_cli import run
from test_security import key_folder, keyed_client, secure_cluster  # noqa: F401 - fixtures

import dependency_tasks as tasks
import runner

HEARTBEAT = "0.2"
IMPORTS = ("dependency_tasks", "jobs")


@pytest.fixture(scope="module")
def cluster():
    """A broker and one worker shared by the module's tests; yields a client."""
    started = Processes()
    try:
        _, address = started.broker("--heartbeat", HEARTBEAT)
        started.worker(address, "--processes", "2", "--threads", "6", "--heartbeat", HEARTBEAT, imports=IMPORTS)
        with runner.Client(address) as client:
            client.wait_for_workers(1, timeout=30)
            yield client
    finally:
        started.stop_all()


def gate_path(tmp_path) -> str:
    return str(tmp_path / f"gate-{uuid.uuid4().hex}")


def open_gate(gate: str) -> None:
    open(gate, "w").close()


def test_a_diamond_gives_the_right_answer(cluster):
    a = cluster.submit(tasks.add, 1, 2)
    b = cluster.submit(tasks.add, a, 10)
    c = cluster.submit(tasks.add, a, 100)
    d = cluster.submit(tasks.add, b, c)
    assert d.result(timeout=30) == 116
    assert (a.result(), b.result(), c.result()) == (3, 13, 103)


def test_futures_nested_in_lists_and_dicts_are_replaced_by_their_results(cluster):
    first, second = cluster.submit(tasks.add, 1, 1), cluster.submit(tasks.add, 2, 2)
    echoed = cluster.submit(tasks.echo, [first, {"deep": [second]}], key={"x": first}, pool="thread")
    assert echoed.result(timeout=30) == [[[2, {"deep": [4]}]], {"key": {"x": 2}}]
    by_id = cluster.submit(tasks.echo, runner.JobResult(second.job_id), "a plain string stays a string")
    assert by_id.result(timeout=30) == [[4, "a plain string stays a string"], {}]


def test_a_waiting_job_shows_as_waiting_then_runs_after_its_dependency(cluster, tmp_path):
    gate = gate_path(tmp_path)
    first = cluster.submit(tasks.marked, str(tmp_path), "first", 5, gate, pool="thread")
    after = cluster.submit(tasks.add, 1, 2, after=[first])  # waits, without its result
    passed = cluster.submit(tasks.add, first, 1)
    wait_until(lambda: cluster.fetch(after.job_id)["state"] == "waiting", 30, message="waiting")
    totals = cluster.status()["jobs"]
    assert totals["waiting"] >= 2 and totals["retrying"] == 0  # waiting jobs are not counted as retrying
    listed = {job["id"] for job in cluster.jobs(state="waiting")}
    assert {after.job_id, passed.job_id} <= listed
    command = run("jobs", "--state", "waiting", "--json", "--connect", cluster.address)
    assert command.returncode == 0, command.stderr
    assert {after.job_id, passed.job_id} <= {job["id"] for job in json.loads(command.stdout)}
    assert not after.done()
    assert cluster.job(passed.job_id)["args"] == [runner.JobResult(first.job_id), 1]  # as `runner jobs show` shows it
    open_gate(gate)
    assert (after.result(timeout=30), passed.result(timeout=30), first.result()) == (3, 6, 5)
    assert cluster.fetch(after.job_id)["state"] == "done"


def test_a_failed_root_fails_its_dependants_not_other_jobs(cluster):
    root = cluster.submit(tasks.fail, "the root broke")
    child = cluster.submit(tasks.add, root, 1)
    grandchild = cluster.submit(tasks.add, child, 1)
    waiter = cluster.submit(tasks.add, 2, 2, after=[root])
    other = cluster.submit(tasks.add, 20, 22)
    with pytest.raises(ValueError, match="the root broke"):
        root.result(timeout=30)
    for dependant, through in ((child, root), (grandchild, child), (waiter, root)):
        with pytest.raises(runner.DependencyError) as caught:
            dependant.result(timeout=30)
        error = caught.value
        assert (error.failed_job, error.dependency) == (root.job_id, through.job_id)
        assert isinstance(error.error, ValueError) and str(error.error) == "the root broke"
        assert f"job {root.job_id}" in str(error) and "the root broke" in str(error)
    assert other.result(timeout=30) == 42
    assert cluster.fetch(child.job_id)["state"] == "failed"


def test_a_chain_of_100_jobs_works(cluster):
    steps = [(tasks.add, 0, 1)] + [(tasks.add, 1)] * 99
    assert runner.chain(*steps, client=cluster, pool="thread").result(timeout=60) == 100


def test_group_and_chain_compose(cluster):
    parts = runner.group((tasks.add, 1, 1), (tasks.add, 2, 2), (tasks.add, 3, 3), client=cluster)
    chord = cluster.submit(tasks.total, parts)  # gets the list of the group's results
    assert chord.result(timeout=30) == 12 and parts.result() == [2, 4, 6]
    assert runner.chain((tasks.total, parts), (tasks.add, 100), client=cluster).result(timeout=30) == 112
    assert cluster.submit(tasks.add, 1, 1, after=parts).result(timeout=30) == 2


def test_unknown_job_ids_are_refused_with_a_clear_error(cluster):
    unknown = "0" * 39
    with pytest.raises(ValueError, match=f"waits for job '{unknown}', which the broker does not know"):
        cluster.submit(tasks.add, runner.JobResult(unknown), 1).result(timeout=30)
    with pytest.raises(ValueError, match="which the broker does not know"):
        cluster.submit(tasks.add, 1, 1, after=["not-a-job"]).result(timeout=30)


def test_a_future_of_another_client_is_refused_at_submit(cluster):
    with runner.Client(cluster.address) as other:
        foreign = other.submit(tasks.add, 1, 1)
        with pytest.raises(ValueError, match="is a job of another client"):
            cluster.submit(tasks.add, foreign, 1)
        with pytest.raises(ValueError, match="is a job of another client"):
            cluster.submit(tasks.add, 1, 1, after=[foreign])
        foreign.result(timeout=30)


def test_cancelling_a_dependency_fails_its_dependants(cluster):
    nobody_serves = cluster.submit(tasks.add, 1, 1, queue="nobody-serves-this")
    dependant = cluster.submit(tasks.add, nobody_serves, 1)
    waiting = cluster.submit(tasks.add, dependant, 1)
    wait_until(lambda: cluster.fetch(waiting.job_id)["state"] == "waiting", 30, message="waiting")
    assert nobody_serves.cancel()
    for future in (dependant, waiting):
        with pytest.raises(runner.DependencyError, match="was cancelled") as caught:
            future.result(timeout=30)
        assert caught.value.failed_job == nobody_serves.job_id and caught.value.error is None
    # A waiting job cancelled itself: its own dependants fail, it never runs.
    gated = cluster.submit(tasks.add, 1, 1, queue="nobody-serves-this")
    middle = cluster.submit(tasks.add, gated, 1)
    last = cluster.submit(tasks.add, middle, 1)
    wait_until(lambda: cluster.fetch(last.job_id)["state"] == "waiting", 30, message="waiting")
    assert middle.cancel()
    with pytest.raises(runner.DependencyError, match=f"job {middle.job_id} was cancelled"):
        last.result(timeout=30)
    assert gated.cancel()


def test_an_async_client_passes_its_futures_too(cluster):
    import asyncio

    async def main():
        async with runner.AsyncClient(cluster.address) as client:
            first = client.submit(tasks.add, 1, 2)
            second = client.submit(tasks.add, first, 3, pool="thread")
            return await second

    assert asyncio.run(main()) == 6


def test_a_broker_killed_in_the_middle_of_a_diamond_loses_nothing_and_runs_nothing_twice(processes, tmp_path):
    address, journal, markers = free_address(), tmp_path / "journal.db", tmp_path / "markers"
    markers.mkdir()
    broker, _ = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
    processes.worker(address, "--processes", "2", "--threads", "6", "--heartbeat", HEARTBEAT, imports=IMPORTS)
    gate, folder = gate_path(tmp_path), str(markers)
    with runner.Client(address) as client:
        client.wait_for_workers(1, timeout=30)
        a = client.submit(tasks.marked, folder, "a", 1)
        b = client.submit(tasks.marked, folder, "b", a, plus=10, pool="thread")
        c = client.submit(tasks.marked, folder, "c", a, gate, plus=100, pool="thread")
        d = client.submit(tasks.marked, folder, "d", b, plus=1000, after=[c])
        e = client.submit(tasks.add, d, c)
        wait_until(lambda: client.fetch(b.job_id)["state"] == "done" and os.path.exists(markers / "c"), 30,
                   message="b done and c running")
        assert client.fetch(d.job_id)["state"] == "waiting"
        broker.kill()  # SIGKILL: d holds b's result and waits for c; c runs on the worker
        broker.wait(timeout=10)
        broker, _ = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
        wait_until(lambda: client.fetch(d.job_id)["state"] == "waiting", 30, message="d waiting after the restart")
        open_gate(gate)
        assert e.result(timeout=60) == (1 + 10 + 1000) + (1 + 100)
        assert (a.result(), b.result(), c.result(), d.result()) == (1, 11, 101, 1011)
    assert sorted(os.listdir(markers)) == ["a", "b", "c", "d"]  # each ran once: a second run would have failed


def test_with_curve_a_job_waits_only_for_jobs_of_its_own_key(secure_cluster, client_factory, key_folder):
    _, address = secure_cluster
    alice = keyed_client(client_factory, address, key_folder)
    alice_again = keyed_client(client_factory, address, key_folder)  # another client, the same key
    bob = keyed_client(client_factory, address, key_folder / "bob")
    alice.wait_for_workers(1, timeout=30)
    first = alice.submit("tasks:add", 1, 2)
    # Another connection's submit may overtake this one: ask on alice's own, answered once it is held.
    assert alice.fetch(first.job_id)["state"] != "unknown"
    assert alice_again.submit("tasks:add", runner.JobResult(first.job_id), 1).result(timeout=30) == 4
    with pytest.raises(ValueError, match="which the broker does not know"):
        bob.submit("tasks:add", runner.JobResult(first.job_id), 1).result(timeout=30)
    with pytest.raises(ValueError, match="which the broker does not know"):
        bob.submit("tasks:add", 1, 1, after=[first.job_id]).result(timeout=30)
