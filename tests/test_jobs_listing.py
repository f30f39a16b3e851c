"""`runner jobs` and `runner jobs show` (Client.jobs and Client.job) against a live cluster with known work."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from cluster import wait_until
from runner.broker.journal import Journal
from runner.broker.listing import created_at
from test_cli import run
from test_security import key_folder, keyed_client, secure_cluster  # noqa: F401 - fixtures

WORKER = ("--processes", "0", "--threads", "2")


@pytest.fixture(scope="module")
def known_work(two_workers_with_names):
    """30 done and 5 failed jobs run on two workers, one pending in a queue nobody serves, one running."""
    address, client, gate = two_workers_with_names
    done = [client.submit("tasks:add", n, 1, pool="thread") for n in range(30)]
    failed = [client.submit("tasks:fail", f"bad {n}", pool="thread", queue="q2") for n in range(5)]
    assert [future.result(timeout=60) for future in done] == [n + 1 for n in range(30)]
    for future in failed:
        assert isinstance(future.exception(timeout=60), ValueError)
    pending = client.submit("tasks:add", 0, 0, pool="thread", queue="nobody-serves-this")
    running = client.submit("jobs:wait_for_gate", str(gate), pool="thread")
    wait_until(lambda: client.fetch(running.job_id)["state"] == "running", timeout=30)
    return address, client, done, failed, pending, running


@pytest.fixture(scope="module")
def two_workers_with_names(tmp_path_factory):
    from cluster import Processes
    import runner

    processes = Processes()
    gate = tmp_path_factory.mktemp("gate") / "open"
    try:
        # The default heartbeat (1 s, 3 missed): a worker declared lost under load would start
        # its counts again, and the status test compares them with the journal's worker names.
        _, address = processes.broker()
        for name in ("alpha", "beta"):
            processes.worker(address, *WORKER, "--name", name, "--queue", "default", "--queue", "q2",
                             imports=("tasks", "jobs"))
        with runner.Client(address) as client:
            client.wait_for_workers(2, timeout=60)
            yield address, client, gate
            gate.touch()
    finally:
        gate.touch()
        processes.stop_all()


def listed(address: str, *options: str) -> list[dict]:
    answer = run("jobs", "--json", "--connect", address, *options)
    assert answer.returncode == 0, answer.stderr
    return json.loads(answer.stdout)


def test_counts_by_state_match_the_work_run(known_work):
    address, client, done, failed, pending, running = known_work
    rows = listed(address, "--limit", "1000")
    assert Counter(row["state"] for row in rows) == {"done": 30, "failed": 5, "pending": 1, "running": 1}
    assert {row["id"] for row in rows if row["state"] == "done"} == {future.job_id for future in done}
    assert [row["id"] for row in listed(address, "--state", "failed")] == [f.job_id for f in reversed(failed)]
    assert [row["id"] for row in listed(address, "--state", "pending")] == [pending.job_id]
    [row] = listed(address, "--state", "running")
    assert (row["id"], row["task"], row["attempts"]) == (running.job_id, "jobs:wait_for_gate", 1)
    assert row["worker"] in ("alpha", "beta")


def test_finished_jobs_name_the_worker_that_ran_them(known_work):
    address, client, done, failed, pending, running = known_work
    rows = {row["id"]: row for row in client.jobs(limit=1000)}
    finished = [rows[future.job_id] for future in done + failed]
    assert {row["worker"] for row in finished} <= {"alpha", "beta"}
    by_worker = {worker["id"]: worker for worker in client.status()["workers"]}
    for name in ("alpha", "beta"):  # the journal's names agree with the broker's per-worker counts
        assert sum(row["worker"] == name and row["state"] == "done" for row in finished) == by_worker[name]["done"]
        assert sum(row["worker"] == name and row["state"] == "failed" for row in finished) == by_worker[name]["failed"]
    assert rows[pending.job_id]["worker"] == ""
    shown = json.loads(run("jobs", "show", failed[0].job_id, "--json", "--connect", address).stdout)
    assert shown["worker"] == rows[failed[0].job_id]["worker"]
    plain = run("jobs", "--state", "done", "--limit", "1", "--connect", address).stdout.splitlines()[1].split()
    assert plain[5] in ("alpha", "beta")


def test_filters_limit_and_newest_first(known_work):
    address, client, done, failed, pending, running = known_work
    assert len(listed(address, "--task", "tasks:fail")) == 5
    assert len(listed(address, "--queue", "q2", "--state", "done")) == 0
    assert len(listed(address, "--task", "tasks:add", "--state", "done", "--limit", "7")) == 7
    created = [row["created"] for row in listed(address, "--limit", "1000")]
    assert created == sorted(created, reverse=True)
    assert client.jobs(state="done", limit=1000) == listed(address, "--state", "done", "--limit", "1000")
    with pytest.raises(ValueError, match="state must be one of"):
        client.jobs(state="finished")


def test_plain_listing_without_a_terminal_has_one_line_per_job(known_work):
    address = known_work[0]
    answer = run("jobs", "--state", "failed", "--connect", address)
    lines = answer.stdout.splitlines()
    assert lines[0].split() == ["id", "task", "queue", "state", "attempts", "worker", "age"]
    assert len(lines) == 6 and all("tasks:fail" in line and "failed" in line for line in lines[1:])
    assert "\x1b" not in answer.stdout


def test_show_a_failed_job_gives_every_field_and_the_remote_traceback(known_work):
    address, client, done, failed, pending, running = known_work
    answer = run("jobs", "show", failed[2].job_id, "--connect", address)
    assert answer.returncode == 0, answer.stderr
    assert "ValueError: bad 2" in answer.stdout and "'bad 2'" in answer.stdout
    assert "Traceback" in answer.stdout and 'raise ValueError(message)' in answer.stdout
    shown = json.loads(run("jobs", "show", failed[2].job_id, "--json", "--connect", address).stdout)
    assert (shown["state"], shown["task"], shown["queue"], shown["attempts"]) == ("failed", "tasks:fail", "q2", 1)
    assert shown["arguments"] == "'bad 2'"
    assert client.job(done[3].job_id)["result"] == 4
    answer = run("jobs", "show", "no-such-job", "--connect", address)
    assert answer.returncode == 2


def test_status_table_and_json_count_the_same_work_per_worker_and_per_queue(known_work):
    address, client, done, failed, pending, running = known_work
    rows = {row["id"]: row for row in client.jobs(limit=1000)}
    ran_by = Counter((rows[future.job_id]["worker"], rows[future.job_id]["state"]) for future in done + failed)
    busy = rows[running.job_id]["worker"]
    status = json.loads(run("status", "--json", "--connect", address).stdout)
    workers = {worker["id"]: worker for worker in status["workers"]}
    assert {name: (worker["done"], worker["failed"], worker["running"]) for name, worker in workers.items()} == {
        name: (ran_by[(name, "done")], ran_by[(name, "failed")], int(name == busy)) for name in ("alpha", "beta")}
    assert sum(worker["done"] for worker in workers.values()) == 30
    assert sum(worker["failed"] for worker in workers.values()) == 5
    assert {key: status["jobs"][key] for key in ("done", "failed", "pending", "running")} == {
        "done": 30, "failed": 5, "pending": 1, "running": 1}
    assert status["queue_details"]["nobody-serves-this"]["pending_by_priority"] == {"0": 1}
    assert (status["queue_details"]["default"]["pending"], status["queue_details"]["default"]["running"]) == (0, 1)

    table = run("status", "--connect", address).stdout
    cells = {}
    for line in table.splitlines():
        row = [cell.strip() for cell in line.split("│")[1:-1]]
        if row and row[0] in ("alpha", "beta", "default", "nobody-serves-this"):
            cells[row[0]] = row
    # workers: name, host, pid, queues, slots, running, done, failed, ...; queues: name, pending, by priority, running
    assert {name: tuple(map(int, cells[name][5:8])) for name in ("alpha", "beta")} == {
        name: (workers[name]["running"], workers[name]["done"], workers[name]["failed"]) for name in ("alpha", "beta")}
    assert cells["nobody-serves-this"][1:4] == ["1", "p0:1", "0"] and cells["default"][3] == "1"
    assert "done 30  failed 5" in table and "\x1b" not in table


def test_the_job_verbs_answer_for_the_known_work(known_work):
    """result, cancel, requeue and dead-letters on the same cluster: nothing here changes its work."""
    address, client, done, failed, pending, running = known_work
    for future in done[:3]:
        answer = run("result", future.job_id, "--connect", address)
        assert (answer.returncode, json.loads(answer.stdout)) == (0, future.result())
    for future in failed[:2]:
        answer = run("result", future.job_id, "--wait", "--connect", address)
        assert answer.returncode == 1 and "ValueError: bad" in answer.stderr
    assert run("result", pending.job_id, "--connect", address).returncode == 3  # not finished
    answer = run("cancel", running.job_id, "--connect", address)
    assert answer.returncode == 1 and "--force" in answer.stderr  # running: only with --force
    assert run("requeue", done[0].job_id, "--connect", address).returncode == 1  # done is not failed or dead
    assert json.loads(run("dead-letters", "--json", "--connect", address).stdout) == []  # no retries: failed, not dead
    assert client.fetch(running.job_id)["state"] == "running" and client.fetch(pending.job_id)["state"] == "pending"


def test_show_cuts_long_arguments_at_one_kilobyte(known_work):
    address, client = known_work[:2]
    future = client.submit("tasks:echo", "x" * 5000, pool="thread")
    assert future.result(timeout=30) == "x" * 5000
    shown = json.loads(run("jobs", "show", future.job_id, "--json", "--connect", address).stdout)
    assert len(shown["arguments"]) < 1100 and shown["arguments"].endswith("(5002 characters)")


def test_the_journal_scan_is_bounded_by_its_window(tmp_path):
    journal = Journal(str(tmp_path / "journal.db"))
    rows = [(f"{n:039x}", b"c", "t:f", "process", "default", 0, b"", {}) for n in range(10)]
    journal.add_jobs(rows)
    for n in range(10):
        journal.finish(f"{n:039x}", "done", "ok", b"", 1, 0.0)
    journal.commit()
    newest = [row[0] for row in journal.newest(("done",), None, None, 4)]
    assert newest == [f"{n:039x}" for n in (9, 8, 7, 6)]
    assert list(journal.newest(("done",), "other", None, 100)) == []
    assert created_at("0" * 11 + "1" + "0" * 27) == 0.001 and created_at("short") is None
    journal.close()


def test_with_curve_a_key_lists_its_own_jobs_and_an_admin_all(secure_cluster, client_factory, key_folder):
    _, address = secure_cluster
    alice = keyed_client(client_factory, address, key_folder)
    bob = keyed_client(client_factory, address, key_folder / "bob")
    root = keyed_client(client_factory, address, key_folder / "root")
    alice.wait_for_workers(1, timeout=60)
    done = alice.submit("tasks:add", 20, 22)
    assert done.result(timeout=30) == 42
    pending = alice.submit("tasks:add", 1, 1, queue="nobody")
    mine = bob.submit("tasks:add", 1, 2)
    assert mine.result(timeout=30) == 3

    assert [row["id"] for row in bob.jobs()] == [mine.job_id]
    assert bob.job(done.job_id) is None and bob.job(pending.job_id) is None
    assert {row["id"] for row in root.jobs()} == {done.job_id, pending.job_id, mine.job_id}
    assert root.job(done.job_id)["result"] == 42

    as_bob = ("--connect", address, "--curve-keys", str(key_folder / "bob"))
    assert [row["id"] for row in json.loads(run("jobs", "--json", *as_bob).stdout)] == [mine.job_id]
    assert run("cancel", pending.job_id, *as_bob).returncode == 2
    assert run("jobs", "show", done.job_id, *as_bob).returncode == 2
    as_root = ("--connect", address, "--curve-keys", str(key_folder / "root"))
    assert run("cancel", pending.job_id, *as_root).returncode == 0
    assert alice.fetch(pending.job_id)["state"] == "cancelled"

    with pytest.raises(PermissionError, match="admin key"):  # events name every client's jobs
        bob.events(idle=0)
    answer = run("events", "--idle", "0", *as_bob)
    assert answer.returncode == 1 and "admin key" in answer.stderr
    assert list(root.events(idle=0)) == []
