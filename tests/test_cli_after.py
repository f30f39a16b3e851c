"""`runner submit --after ID`: jobs that wait for other jobs, from the shell, against a live cluster."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

import runner
from cluster import ROOT, Processes, die_with_parent, environment, wait_until
from test_cli import run

IMPORTS = ("dependency_tasks", "jobs")
UNKNOWN_ID = "0" * 39


@pytest.fixture(scope="module")
def cluster():
    """A broker and one thread-pool worker shared by the module's tests; yields a client."""
    started = Processes()
    try:
        _, address = started.broker("--heartbeat", "0.2")
        started.worker(address, "--processes", "0", "--threads", "4", "--heartbeat", "0.2", imports=IMPORTS)
        with runner.Client(address) as client:
            client.wait_for_workers(1, timeout=30)
            yield client
    finally:
        started.stop_all()


def submit(cluster, *arguments: str) -> subprocess.CompletedProcess:
    return run("submit", *arguments, "--pool", "thread", "--connect", cluster.address)


def submitted(cluster, *arguments: str) -> str:
    """The id `runner submit --no-wait` prints."""
    answer = submit(cluster, "--no-wait", *arguments)
    assert answer.returncode == 0, answer.stderr
    return answer.stdout.strip()


def test_a_job_submitted_after_another_waits_for_it_then_runs_with_its_own_arguments(cluster, tmp_path):
    gate = str(tmp_path / f"gate-{uuid.uuid4().hex}")
    first = submitted(cluster, "dependency_tasks:marked", str(tmp_path), "first", "5", gate)
    second = submitted(cluster, "--after", first, "dependency_tasks:marked", str(tmp_path), "second", "7")

    wait_until(lambda: (tmp_path / "first").exists(), 30, message="the first job to start")
    listed = run("jobs", "--state", "waiting", "--json", "--connect", cluster.address)
    assert listed.returncode == 0, listed.stderr
    assert second in {job["id"] for job in json.loads(listed.stdout)}
    shown = run("jobs", "show", second, "--json", "--connect", cluster.address)
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert (view["state"], view["after"]) == ("waiting", [first])
    assert f'after      ["{first}"]' in run("jobs", "show", second, "--connect", cluster.address).stdout
    assert not (tmp_path / "second").exists()  # the first job is still held at its gate

    open(gate, "w").close()
    answer = run("result", second, "--wait", "--timeout", "30", "--connect", cluster.address)
    assert (answer.returncode, json.loads(answer.stdout)) == (0, 7), answer.stderr  # 7: no result passed in
    assert cluster.fetch(first)["state"] == "done" and (tmp_path / "second").exists()
    assert "after" not in json.loads(run("jobs", "show", second, "--json", "--connect", cluster.address).stdout)


def test_after_takes_ids_repeated_or_separated_by_commas_and_waits_for_the_result(cluster):
    one = submitted(cluster, "dependency_tasks:add", "1", "2")
    two = submitted(cluster, "dependency_tasks:add", "3", "4")
    three = submitted(cluster, "dependency_tasks:add", "5", "6")
    answer = submit(cluster, "--after", f"{one}, {two}", "--after", three, "--after", one, "dependency_tasks:echo", "x")
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout) == [["x"], {}]
    assert [cluster.fetch(job)["state"] for job in (one, two, three)] == ["done"] * 3


def test_a_shell_script_chains_jobs_with_no_wait_and_after(cluster, tmp_path):
    """The docs' example, as a shell runs it."""
    script = ('set -e; a=$(python -m runner submit --no-wait --pool thread dependency_tasks:add 1 2); '
              'python -m runner submit --after "$a" --pool thread dependency_tasks:echo done; '
              'python -m runner result "$a"')
    answer = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT,
                            env={**environment(), "RUNNER_BROKER": cluster.address}, preexec_fn=die_with_parent)
    assert answer.returncode == 0, answer.stderr
    assert [json.loads(line) for line in answer.stdout.splitlines()] == [[["done"], {}], 3]


def test_a_failed_dependency_fails_the_job_with_dependency_error(cluster):
    failing = submitted(cluster, "dependency_tasks:fail", "the root broke")
    answer = submit(cluster, "--after", failing, "dependency_tasks:add", "1", "2")
    assert answer.returncode == 1 and answer.stdout == ""
    assert "runner.errors.DependencyError: job " in answer.stderr and "did not run" in answer.stderr
    assert f"job {failing} failed: ValueError: the root broke" in answer.stderr

    dependant = submitted(cluster, "--after", failing, "dependency_tasks:add", "1", "2")
    answer = run("result", dependant, "--wait", "--timeout", "30", "--connect", cluster.address)
    assert answer.returncode == 1 and "DependencyError" in answer.stderr and "the root broke" in answer.stderr
    view = json.loads(run("jobs", "show", dependant, "--json", "--connect", cluster.address).stdout)
    assert (view["state"], view["attempts"]) == ("failed", 0)  # it never ran
    assert view["error"].startswith("runner.errors.DependencyError: ") and failing in view["error"]


def test_a_cancelled_dependency_fails_the_waiting_job(cluster):
    held = submitted(cluster, "--queue", "nobody-serves-this", "dependency_tasks:add", "1", "1")
    dependant = submitted(cluster, "--after", held, "dependency_tasks:add", "1", "2")
    assert run("cancel", held, "--connect", cluster.address).returncode == 0
    answer = run("result", dependant, "--wait", "--timeout", "30", "--connect", cluster.address)
    assert answer.returncode == 1 and f"job {held} was cancelled" in answer.stderr


@pytest.mark.parametrize("wait", ["--wait", "--no-wait"])
def test_an_unknown_id_is_refused_and_nothing_is_submitted(cluster, wait):
    known = submitted(cluster, "dependency_tasks:add", "1", "2")
    answer = submit(cluster, wait, "--after", f"{known},{UNKNOWN_ID}", "dependency_tasks:add", "1", "2")
    assert answer.returncode == 2 and answer.stdout == ""
    [line] = answer.stderr.strip().splitlines()
    assert line.startswith("runner: error: job ") and "nothing was submitted" in line
    assert f"waits for job '{UNKNOWN_ID}', which the broker does not know" in line
    refused = line.split()[3]
    assert cluster.fetch(refused)["state"] == "unknown"
    assert cluster.job(refused) is None


@pytest.mark.parametrize("value, complaint", [
    ("", "an empty job id in ''"),
    ("abc,,def", "an empty job id in 'abc,,def'"),
    ("x" * 300, "is not a job id"),
    ("tab\there", "is not a job id"),
])
def test_a_bad_after_value_is_a_usage_error_before_connecting(value, complaint):
    answer = run("submit", "dependency_tasks:add", "--after", value, "--connect", "tcp://127.0.0.1:9")
    assert answer.returncode == 2, answer.stderr  # a usage error: the unreachable broker was never tried
    [line] = answer.stderr.strip().splitlines()
    assert line.startswith("runner: error: Invalid value for --after: ") and complaint in line

