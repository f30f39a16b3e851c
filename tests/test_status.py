"""``runner status`` and the Prometheus metrics against a live cluster with known work.

Two workers: alpha serves the queues default and picky, beta only default. 30 jobs
succeed on default (each says which worker process ran it), 5 fail on picky (so on
alpha), 5 wait on a queue nobody serves. The status table, its JSON and the metrics
endpoint must count exactly that.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest
from prometheus_client.parser import text_string_to_metric_families

import runner
from cluster import ROOT, Processes, die_with_parent, environment, read_line, wait_until

DONE, FAILED, PARKED = 30, 5, 5


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *arguments], capture_output=True, text=True, timeout=60,
                          env=environment(), cwd=ROOT, preexec_fn=die_with_parent)


@pytest.fixture(scope="module")
def cluster():
    """The cluster after its known work: (address, metrics port, client, done by worker name)."""
    started = Processes()
    try:
        port = free_port()
        _, address = started.broker("--heartbeat", "0.2", "--metrics-port", str(port))
        pids = {}
        for name, queues in (("alpha", ("default", "picky")), ("beta", ("default",))):
            queue_args = [item for queue in queues for item in ("--queue", queue)]
            pids[name] = started.worker(address, "--processes", "1", "--threads", "2", "--name", name,
                                        "--heartbeat", "0.2", *queue_args).pid
        with runner.Client(address) as client:
            client.wait_for_workers(2, timeout=30)
            done = [client.submit("tasks:whoami", pool="thread") for _ in range(DONE)]
            failed = [client.submit("tasks:fail", f"no {n}", queue="picky") for n in range(FAILED)]
            for n in range(PARKED):
                client.submit("tasks:noop", queue="parked", priority=5 if n < 3 else 0)
            ran_in = Counter(future.result(timeout=60)["pid"] for future in done)
            for future in failed:
                with pytest.raises(ValueError):
                    future.result(timeout=60)
            by_name = {name: ran_in.get(pid, 0) for name, pid in pids.items()}
            wait_until(lambda: all(worker["rss"] for worker in client.status()["workers"]), timeout=30,
                       message="both workers reported their memory")
            yield address, port, client, by_name
    finally:
        started.stop_all()


def test_status_json_counts_the_work_exactly(cluster):
    address, _port, _client, by_name = cluster
    result = run("status", "--json", "--connect", address)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    workers = {worker["id"]: worker for worker in status["workers"]}
    assert sorted(workers) == ["alpha", "beta"]
    assert {name: worker["done"] for name, worker in workers.items()} == by_name
    assert sum(by_name.values()) == DONE
    assert {name: worker["failed"] for name, worker in workers.items()} == {"alpha": FAILED, "beta": 0}
    assert [(worker["running"], worker["rss"] > 2**20, 0 <= worker["heartbeat_age"] < 5)
            for worker in workers.values()] == [(0, True, True)] * 2
    assert workers["alpha"]["children_rss"] > 2**20  # its process pool ran the failing jobs
    assert workers["beta"]["children_rss"] >= 0  # a pool starts its children at its first job
    parked = status["queue_details"]["parked"]
    assert parked["pending"] == PARKED and parked["pending_by_priority"] == {"0": 2, "5": 3}
    assert parked["running"] == 0 and parked["oldest_age"] > 0
    assert status["queues"] == {"parked": PARKED}  # the key the compose test reads stays as it was
    jobs = status["jobs"]
    assert (jobs["done"], jobs["failed"], jobs["pending"], jobs["running"]) == (DONE, FAILED, PARKED, 0)
    assert status["rates"]["window"] == 10 and status["rates"]["completed"] >= 0


def test_status_table_through_a_pipe_is_plain_text_with_the_same_counts(cluster):
    address, _port, _client, by_name = cluster
    result = run("status", "--connect", address)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if cells and cells[0] in ("alpha", "beta", "parked"):
            rows[cells[0]] = cells
    # name, host, pid, queues, slots, running, done, failed, RSS, children RSS, heartbeat age
    assert {name: (int(rows[name][6]), int(rows[name][7])) for name in ("alpha", "beta")} == {
        "alpha": (by_name["alpha"], FAILED), "beta": (by_name["beta"], 0)}
    assert rows["alpha"][3] == "default,picky" and rows["alpha"][8].endswith("MiB")
    assert rows["parked"][1:4] == [str(PARKED), "p0:2 p5:3", "0"]
    assert f"done {DONE}  failed {FAILED}" in result.stdout and "completed/s" in result.stdout


def test_metrics_endpoint_counts_the_jobs_run(cluster):
    address, port, client, _by_name = cluster
    # The loop publishes a snapshot every heartbeat: wait for one taken after the work.
    wait_until(lambda: _samples(port).get(("runner_jobs_completed_total", "default", "tasks:whoami")) == DONE,
               timeout=30, message="the metrics caught up with the work")
    samples = _samples(port)
    assert samples[("runner_jobs_failed_total", "picky", "tasks:fail")] == FAILED
    assert samples[("runner_jobs_submitted_total", "parked", "tasks:noop")] == PARKED
    assert sum(value for key, value in samples.items() if key[0] == "runner_jobs_submitted_total") == \
        DONE + FAILED + PARKED
    assert sum(value for key, value in samples.items() if key[0] == "runner_jobs_retried_total") == 0
    assert samples[("runner_queue_depth", "parked")] == PARKED
    assert samples[("runner_workers_connected",)] == 2
    assert samples[("runner_job_run_seconds_count", "default")] == DONE
    assert samples[("runner_job_queue_wait_seconds_count", "picky")] == FAILED
    assert samples[("runner_job_run_seconds_bucket", "default", "+Inf")] == DONE


def test_status_watch_redraws_until_ctrl_c_without_a_traceback(cluster):
    address, _port, _client, _by_name = cluster
    watch = subprocess.Popen([sys.executable, "-m", "runner", "status", "--watch", "--connect", address],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environment(), cwd=ROOT,
                             preexec_fn=die_with_parent)
    try:
        seen = []
        while sum("alpha" in line for line in seen) < 2:  # two snapshots, one after the other
            seen.append(read_line(watch, 30))
        watch.send_signal(signal.SIGINT)
        out, err = (text.decode() for text in watch.communicate(timeout=30))
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode in (0, 130), err
    assert "Traceback" not in err and "\x1b" not in "".join(seen) + out


def test_status_watch_on_a_terminal_redraws_in_place_and_ctrl_c_exits_0(cluster):
    address, _port, _client, _by_name = cluster
    main, side = pty.openpty()
    watch = subprocess.Popen([sys.executable, "-m", "runner", "status", "--watch", "--connect", address],
                             stdin=side, stdout=side, stderr=side, env=environment(COLUMNS="200"), cwd=ROOT,
                             preexec_fn=die_with_parent)
    os.close(side)
    try:
        seen = b""
        deadline = time.monotonic() + 30
        while seen.count(b"jobs: pending") < 2 and time.monotonic() < deadline:  # drawn, then redrawn
            if select.select([main], [], [], 1.0)[0]:
                seen += os.read(main, 65536)
        assert seen.count(b"jobs: pending") >= 2, seen[-2000:]
        watch.send_signal(signal.SIGINT)
        assert watch.wait(timeout=30) == 0
        while select.select([main], [], [], 0.2)[0]:
            try:
                seen += os.read(main, 65536)
            except OSError:  # the terminal's other side closed with the process
                break
    finally:
        os.close(main)
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert b"\x1b[" in seen and b"Traceback" not in seen  # cursor moves: in place, not one after another
    assert b"alpha" in seen and b"beta" in seen


def test_metrics_task_labels_are_capped_and_later_names_count_as_other(processes):
    from runner.broker.counters import MAX_LABELS, OTHER

    port = free_port()
    _, address = processes.broker("--metrics-port", str(port), "--heartbeat", "0.2")
    extra = 5
    with runner.Client(address) as client:  # no worker: the jobs wait, counted as submitted
        for number in range(MAX_LABELS + extra):
            client.submit(f"made_up:task{number}", queue="parked")
        wait_until(lambda: client.status()["jobs"]["pending"] == MAX_LABELS + extra, timeout=30)
    wait_until(lambda: _samples(port).get(("runner_jobs_submitted_total", "parked", OTHER)) == extra, timeout=30,
               message="the names past the cap counted under other")
    tasks = {key[2] for key in _samples(port) if key[0] == "runner_jobs_submitted_total"}
    assert len(tasks) == MAX_LABELS + 1 and OTHER in tasks


def test_metrics_port_stays_on_loopback_unless_asked(processes):
    port = free_port()
    processes.broker("--metrics-port", str(port))
    listening = _listening(port)
    assert listening == {"127.0.0.1"}


def _listening(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp)."""
    addresses = set()
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                addresses.add(socket.inet_ntoa(bytes.fromhex(host)[::-1]))
    return addresses


def _samples(port: int) -> dict[tuple, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, *(sample.labels[name] for name in ("queue", "task", "le") if name in sample.labels))
            samples[key] = sample.value
    return samples


def test_a_taken_metrics_port_stops_the_broker_with_a_clear_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("broker", "--bind", "tcp://127.0.0.1:*", "--journal", ":memory:", "--metrics-port", str(port))
    assert result.returncode == 1 and result.stdout == ""
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr and "--metrics-port" in result.stderr
