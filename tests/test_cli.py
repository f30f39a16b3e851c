"""The runner command: help, errors as one line, submit, status and local, as a user runs them."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

import runner
from cluster import ROOT, die_with_parent, environment, read_line, wait_until


def run(*arguments: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *arguments], capture_output=True, text=True,
                          timeout=timeout, env=environment(), cwd=ROOT, preexec_fn=die_with_parent)


@pytest.mark.parametrize("command", [[], ["broker"], ["worker"], ["submit"], ["status"], ["local"]])
def test_every_command_has_help(command):
    result = run(*command, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout
    assert ("--log-level" in result.stdout) == bool(command)


@pytest.mark.parametrize("arguments, complaint", [
    (["worker", "--processes", "-1"], "--processes"),
    (["worker", "--threads", "many"], "--threads"),
    (["worker", "--processes", "0", "--threads", "0", "--async-tasks", "0"], "at least one"),
    (["broker", "--heartbeat", "0"], "--heartbeat"),
    (["broker", "--log-level", "LOUD"], "--log-level"),
    (["submit"], "TASK"),
    (["submit", "tasks:add", "--kwargs", "[1"], "--kwargs"),
    (["status", "--connect", "nonsense"], "nonsense"),
    (["status", "--json", "--watch"], "--watch"),
    (["broker", "--metrics-port", "70000"], "--metrics-port"),
    (["frobnicate"], "frobnicate"),
])
def test_bad_arguments_exit_non_zero_with_one_line(arguments, complaint):
    result = run(*arguments)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runner: error:") and complaint in lines[0]


def test_unreachable_broker_is_reported_within_a_bounded_time():
    started = time.monotonic()
    result = run("status", "--connect", "tcp://127.0.0.1:9")
    assert result.returncode == 1
    assert "cannot reach the broker at tcp://127.0.0.1:9" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert time.monotonic() - started < 20


def test_a_second_broker_on_a_taken_address_fails_clearly(processes, broker_address, tmp_path):
    result = run("broker", "--bind", broker_address, "--journal", str(tmp_path / "other.db"))
    assert result.returncode == 1
    assert "cannot bind" in result.stderr and broker_address in result.stderr


def test_submit_and_status_against_a_live_cluster(processes, broker_address):
    processes.worker(broker_address, "--processes", "1", "--threads", "2", "--name", "cli-worker")
    result = run("submit", "tasks:add", "2", "40", "--connect", broker_address)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == 42
    result = run("submit", "tasks:echo", "plain words", "--pool", "thread", "--connect", broker_address)
    assert json.loads(result.stdout) == "plain words"
    result = run("submit", "tasks:echo", "--kwargs", '{"value": [1, {"a": null}]}', "--connect", broker_address)
    assert json.loads(result.stdout) == [1, {"a": None}]
    result = run("submit", "tasks:fail", "nope", "--connect", broker_address)
    assert result.returncode == 1 and "ValueError: nope" in result.stderr

    status = json.loads(run("status", "--json", "--connect", broker_address).stdout)
    assert [worker["id"] for worker in status["workers"]] == ["cli-worker"]
    assert status["workers"][0]["slots"] == {"process": 1, "thread": 2, "async": 1000}  # --async-tasks default
    text = run("status", "--connect", broker_address).stdout
    assert "cli-worker" in text and "\x1b" not in text


def test_submit_no_wait_returns_once_the_job_is_journaled(processes, tmp_path):
    journal = tmp_path / "journal.db"
    broker, address = processes.broker(journal=journal)
    result = run("submit", "tasks:add", "1", "2", "--no-wait", "--connect", address)
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    broker.kill()  # SIGKILL at once: nothing the broker had not committed survives
    broker.wait(10)
    _, address = processes.broker(journal=journal)
    processes.worker(address, "--processes", "1", "--threads", "1")
    with runner.Client(address) as client:
        assert client.fetch(job_id)["state"] in ("pending", "running", "done")
        wait_until(lambda: client.fetch(job_id)["state"] == "done", timeout=30, message=f"job {job_id} to run")
        assert client.fetch(job_id)["result"] == 3


def test_runner_local_starts_a_cluster_and_ctrl_c_stops_everything(processes):
    local = processes.runner("local", "--bind", "tcp://127.0.0.1:*", "--workers", "2", "--processes", "1",
                             "--threads", "2", "--log-level", "WARNING", stdout=subprocess.PIPE)
    line = read_line(local, 60)
    address = line.split("broker at ")[1].split()[0]
    status = json.loads(run("status", "--json", "--connect", address).stdout)
    assert len(status["workers"]) == 2
    children = {status["broker"]["pid"], *(worker["pid"] for worker in status["workers"])}
    local.send_signal(signal.SIGINT)
    assert local.wait(timeout=30) == 0
    for pid in children:
        assert not _alive(pid), f"pid {pid} of runner local outlived it"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_log_json_writes_one_json_object_a_line(processes, tmp_path):
    log_file = tmp_path / "broker.log"
    with open(log_file, "w") as stderr:
        broker = processes.runner("broker", "--bind", "tcp://127.0.0.1:*", "--log-json", "--log-level", "INFO",
                                  "--journal", str(tmp_path / "journal.db"), stdout=subprocess.PIPE, stderr=stderr)
    read_line(broker, 30)
    assert processes.stop(broker) == 0  # SIGTERM: a clean exit
    records = [json.loads(line)["record"] for line in log_file.read_text().splitlines() if line.strip()]
    assert any("listening on" in record["message"] for record in records)
    assert any(record["message"] == "broker stopped" for record in records)
    assert all(record["extra"]["component"] == "broker" for record in records)
