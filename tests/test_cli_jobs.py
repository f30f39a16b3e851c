"""The job verbs on the command line (result, cancel, requeue, dead-letters) against a live cluster."""

from __future__ import annotations

import json

import pytest

from cluster import wait_until
from test_cli import run

WORKER = ("--processes", "0", "--threads", "2")
IMPORTS = ("tasks", "jobs")


@pytest.fixture
def cluster(processes, broker_address, client_factory):
    """A broker, one thread-pool worker and a client that waits for it."""
    processes.worker(broker_address, *WORKER, imports=IMPORTS)
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=60)
    return broker_address, client


def test_result_prints_a_result_fails_on_an_error_and_knows_no_stranger(cluster):
    address, client = cluster
    done = client.submit("tasks:add", 2, 3, pool="thread")
    failed = client.submit("tasks:fail", "nope", pool="thread")
    assert done.result(timeout=30) == 5
    with pytest.raises(ValueError):
        failed.result(timeout=30)

    answer = run("result", done.job_id, "--connect", address)
    assert (answer.returncode, json.loads(answer.stdout)) == (0, 5)
    answer = run("result", failed.job_id, "--connect", address)
    assert answer.returncode == 1 and "ValueError: nope" in answer.stderr and answer.stdout == ""
    answer = run("result", "no-such-job", "--connect", address)
    assert answer.returncode == 2 and "no job no-such-job" in answer.stderr


def test_result_waits_for_a_job_another_client_submitted(cluster):
    address, client = cluster
    future = client.submit("tasks:sleep_then", 0.5, "late", pool="thread")
    answer = run("result", future.job_id, "--wait", "--timeout", "30", "--connect", address)
    assert (answer.returncode, json.loads(answer.stdout)) == (0, "late")


def test_cancel_a_waiting_job_then_result_and_cancel_again_say_so(cluster):
    address, client = cluster
    future = client.submit("tasks:add", 1, 1, pool="thread", queue="nobody-serves-this")
    answer = run("result", future.job_id, "--connect", address)
    assert answer.returncode == 3 and "pending" in answer.stderr

    answer = run("cancel", future.job_id, "--connect", address)
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.strip() == f"cancelled {future.job_id}"
    wait_until(future.done, timeout=30, message="the submitter hears of the cancel")
    assert future.cancelled()
    assert client.fetch(future.job_id)["state"] == "cancelled"

    answer = run("cancel", future.job_id, "--connect", address)
    assert answer.returncode == 1 and "already finished" in answer.stderr
    answer = run("result", future.job_id, "--connect", address)
    assert answer.returncode == 1 and "cancelled" in answer.stderr
    answer = run("cancel", "no-such-job", "--connect", address)
    assert answer.returncode == 2


def test_a_running_job_is_cancelled_only_with_force(cluster, tmp_path):
    address, client = cluster
    future = client.submit("tasks:sleep_then", 60, pool="thread")
    wait_until(lambda: client.fetch(future.job_id)["state"] == "running", timeout=30)
    answer = run("cancel", future.job_id, "--connect", address)
    assert answer.returncode == 1 and "--force" in answer.stderr
    answer = run("cancel", future.job_id, "--force", "--connect", address)
    assert answer.returncode == 0, answer.stderr
    assert client.fetch(future.job_id)["state"] == "cancelled"


def test_dead_letters_lists_a_dead_job_and_requeue_runs_it_again(cluster, tmp_path):
    address, client = cluster
    record = tmp_path / "attempts"
    future = client.submit("jobs:flaky", str(record), 2, pool="thread", retries=1, retry_backoff=0.01)
    with pytest.raises(RuntimeError):
        future.result(timeout=30)

    listed = json.loads(run("dead-letters", "--json", "--connect", address).stdout)
    assert [(job["id"], job["task"], job["attempts"]) for job in listed] == [(future.job_id, "jobs:flaky", 2)]
    assert "attempt 2 failed on purpose" in listed[0]["error"]
    text = run("dead-letters", "--connect", address).stdout
    assert future.job_id in text and "attempts 2" in text

    answer = run("requeue", future.job_id, "--connect", address)
    assert (answer.returncode, answer.stdout.strip()) == (0, future.job_id), answer.stderr
    answer = run("result", future.job_id, "--wait", "--timeout", "30", "--connect", address)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["attempt"] == 3
    assert json.loads(run("dead-letters", "--json", "--connect", address).stdout) == []

    answer = run("requeue", future.job_id, "--connect", address)
    assert answer.returncode == 1 and "is done, not failed or dead" in answer.stderr
    answer = run("requeue", "no-such-job", "--connect", address)
    assert answer.returncode == 2


@pytest.mark.parametrize("command", [["result"], ["cancel"], ["requeue"], ["dead-letters"], ["jobs"], ["jobs", "show"]])
def test_every_job_verb_has_help_with_connect_and_curve_keys(command):
    answer = run(*command, "--help")
    assert answer.returncode == 0 and "--connect" in answer.stdout and "--curve-keys" in answer.stdout


def test_docs_usage_documents_every_command():
    import click

    from cluster import ROOT
    from runner.cli import cli

    def names(group: click.Group, prefix: str) -> list[str]:
        found = []
        for name, command in group.commands.items():
            found.append(f"{prefix} {name}")
            if isinstance(command, click.Group):
                found += names(command, f"{prefix} {name}")
        return found

    def documented(command: str, lines: list[str]) -> bool:
        """`runner a b` in a line, or `runner a x|b|y` as the keys commands are listed together."""
        parent, name = command.rsplit(" ", 1)
        return any(f"`{command}" in line or (parent != "runner" and f"`{parent} " in line and f"|{name}" in line)
                   for line in lines)

    lines = (ROOT / "docs" / "usage.md").read_text().splitlines()
    commands = names(cli, "runner")
    assert len(commands) > 15 and {"runner status", "runner jobs show", "runner dashboard"} <= set(commands)
    assert [command for command in commands if not documented(command, lines)] == []
