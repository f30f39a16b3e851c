"""The embedded cluster's lifetime, with real processes and real signals.

Its children live as long as the process that owns them (not the thread that
started them), its workers as long as its broker, and Ctrl-C at any moment stops
all of them quietly. Each owner here runs in a session of its own, so the test can
find every process it started, grandchildren included, by its process group.
"""

from __future__ import annotations

import fcntl
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

import runner
import tasks
from cluster import ROOT, environment, read_line, wait_until
from runner.local import STOP_TIMEOUT

STOPPED_WITHIN = 10.0  # seconds for every process of a stopped cluster to be gone


def group_members(group: int) -> dict[int, str]:
    """Live (not zombie) processes in process group ``group``: pid -> command line."""
    members = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    members[int(entry)] = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
    return members


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie is not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_stderr_line(process: subprocess.Popen, timeout: float) -> str:
    """The next line a child writes on stderr, waiting at most ``timeout`` seconds."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stderr, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"pid {process.pid} wrote nothing on stderr within {timeout:g}s")
    return process.stderr.readline().decode()


@pytest.fixture
def sessions():
    """Start processes in sessions of their own; whatever is left of each group is killed after the test."""
    started: list[subprocess.Popen] = []

    def start(*command: str, **options) -> subprocess.Popen:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                   start_new_session=True, **{"env": environment(), **options})
        started.append(process)
        return process

    yield start
    for process in started:
        for pid in group_members(process.pid):
            os.kill(pid, signal.SIGKILL)
        process.kill()
        process.communicate()


def in_a_thread(make):
    """Run ``make()`` in a thread that then ends; return what it made."""
    made = {}
    thread = threading.Thread(target=lambda: made.setdefault("it", make()))
    thread.start()
    thread.join()
    return made["it"]


def test_a_client_made_in_a_thread_that_ended_still_runs_jobs():
    with in_a_thread(runner.Client) as client:
        assert client.submit(tasks.add, 2, 3).result(timeout=30) == 5
        assert client.submit(tasks.whoami, pool="thread").result(timeout=30)["pid"] != os.getpid()


def test_a_local_cluster_made_in_a_thread_that_ended_still_runs_jobs():
    with in_a_thread(lambda: runner.LocalCluster(workers=1, processes=1, threads=1)) as cluster:
        with cluster.client() as client:
            assert list(client.map(tasks.square, range(5), timeout=30)) == [0, 1, 4, 9, 16]


def test_a_killed_embedded_broker_fails_pending_and_new_jobs_at_once_and_takes_its_workers():
    with runner.Client() as client:
        status = client.status()
        broker_pid, worker_pids = status["broker"]["pid"], [worker["pid"] for worker in status["workers"]]
        pending = [client.submit(tasks.sleep_then, 60, "late"), client.submit(tasks.sleep_then, 60, pool="thread")]
        os.kill(broker_pid, signal.SIGKILL)
        for future in pending:
            with pytest.raises(runner.ClusterGone) as caught:
                future.result(timeout=10)
            assert (caught.value.pid, caught.value.exit_status) == (broker_pid, -signal.SIGKILL)
            assert f"broker (pid {broker_pid}) was killed by SIGKILL" in str(caught.value)
        assert isinstance(caught.value, runner.BrokerUnreachable)
        with pytest.raises(runner.ClusterGone, match=f"pid {broker_pid}"):
            client.submit(tasks.add, 2, 3)
        with pytest.raises(runner.ClusterGone):
            client.status()
        wait_until(lambda: not any(running(pid) for pid in worker_pids), timeout=STOPPED_WITHIN,
                   message="the embedded workers ended with their broker")


@pytest.mark.parametrize("moment", ["broker started", "first worker joined", "all joined"])
def test_ctrl_c_stops_runner_local_at_any_moment_of_its_start(sessions, moment):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    local = sessions(sys.executable, "-m", "runner", "local", "--bind", address, "--workers", "3",
                     "--processes", "1", "--threads", "2")
    if moment == "broker started":
        wait_until(lambda: any(" runner broker " in command for command in group_members(local.pid).values()),
                   timeout=30, message="the broker process exists")
    elif moment == "first worker joined":
        with runner.Client(address, timeout=30) as client:
            wait_until(lambda: client.status()["workers"], timeout=30, message="a worker joined")
    else:
        assert read_line(local, 60).startswith("runner local: broker at")
    os.killpg(local.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    wait_until(lambda: not group_members(local.pid), timeout=STOPPED_WITHIN,
               message=f"every process of runner local stopped after Ctrl-C ({moment})")
    out, err = local.communicate(timeout=10)
    assert local.returncode in (0, 130), err.decode()
    output = (out + err).decode()
    for noise in ("Traceback", "KeyboardInterrupt", "Fatal Python error"):
        assert noise not in output, output


def test_runner_local_stops_and_says_so_when_its_broker_dies(sessions):
    local = sessions(sys.executable, "-m", "runner", "local", "--bind", "tcp://127.0.0.1:*", "--workers", "1",
                     "--processes", "1", "--threads", "1")
    assert read_line(local, 60).startswith("runner local: broker at")
    [broker] = [pid for pid, command in group_members(local.pid).items() if " runner broker " in command]
    os.kill(broker, signal.SIGKILL)
    wait_until(lambda: not group_members(local.pid), timeout=STOPPED_WITHIN, message="runner local and its workers ended")
    _, err = local.communicate(timeout=10)
    assert local.returncode == 1
    assert f"the broker (pid {broker}) was killed by SIGKILL; stopped the workers" in err.decode()


@pytest.mark.parametrize("make", ["runner.Client()", "runner.LocalCluster(workers=2, processes=1)"])
def test_an_interrupted_start_leaves_no_child_behind(sessions, make):
    # The SIGINT goes once the broker process exists; a start that ended before it landed (the
    # owner says "started") did not test an interrupted start: try again, a few times at most.
    for _ in range(5):
        owner = sessions(sys.executable, "-c", f"""
import sys, runner
try:
    {make}
    print("started", flush=True)
except KeyboardInterrupt:
    print("interrupted while starting", flush=True)
sys.stdin.read()  # the owner lives on: only its cluster must be gone
""", stdin=subprocess.PIPE)
        wait_until(lambda: any(" runner broker " in command for command in group_members(owner.pid).values()),
                   timeout=30, message="the broker process exists")
        owner.send_signal(signal.SIGINT)
        line = read_line(owner, 30)
        if line == "started":
            continue
        assert line == "interrupted while starting"
        wait_until(lambda: list(group_members(owner.pid)) == [owner.pid], timeout=STOPPED_WITHIN,
                   message="no child of the interrupted start left")
        return
    pytest.fail("every start ended before its SIGINT landed: no interrupted start was tested")


def test_a_killed_owner_leaves_no_child_and_no_scratch_folder(sessions, tmp_path):
    owner = sessions(sys.executable, "-c", """
import sys, runner
client = runner.Client()
print(client.status()["broker"]["journal"], flush=True)
sys.stdin.read()
""", stdin=subprocess.PIPE, env=environment(TMPDIR=str(tmp_path)))
    scratch = Path(read_line(owner, 60)).parent
    assert scratch.name.startswith("runner-local-") and scratch.parent == tmp_path
    assert len(group_members(owner.pid)) >= 3  # the owner, its broker and worker, the worker's pool
    owner.kill()
    wait_until(lambda: not group_members(owner.pid), timeout=STOPPED_WITHIN,
               message="every child of the SIGKILLed owner ended")
    wait_until(lambda: not list(tmp_path.glob("runner-local-*")), timeout=STOPPED_WITHIN,
               message="the scratch folder went with the cluster")


def test_close_gives_running_jobs_a_short_grace_and_says_it_stopped_them(sessions):
    owner = sessions(sys.executable, "-c", """
import time, runner, tasks
from cluster import wait_until
client = runner.Client()
futures = [client.submit(tasks.sleep_then, 120, pool="process"), client.submit(tasks.sleep_then, 120, pool="thread")]
wait_until(lambda: client.status()["jobs"]["running"] == 2, timeout=30)
started = time.monotonic()
client.close()
print(time.monotonic() - started, type(futures[0].exception()).__name__, flush=True)
""")
    out, err = owner.communicate(timeout=60)
    assert owner.returncode == 0, err.decode()
    seconds, error = out.decode().split()
    assert float(seconds) < STOP_TIMEOUT  # the workers stopped by themselves: none had to be killed
    assert error == "ClientClosed"
    assert "grace of 2.0s is over; stopping 2 running jobs" in err.decode()


def test_a_worker_with_no_broker_says_it_is_waiting(processes):
    address = f"tcp://127.0.0.1:{free_port()}"
    worker = processes.runner("worker", "--connect", address, "--import", "tasks", "--processes", "0",
                              "--threads", "1", "--log-level", "INFO", stderr=subprocess.PIPE)
    said = []
    deadline = time.monotonic() + 60
    while len(said) < 2:
        line = read_stderr_line(worker, max(0.1, deadline - time.monotonic()))
        if f"waiting for the broker at {address}" in line:
            said.append(line)
    assert "is the address right?" in said[0]


def test_a_starting_cluster_removes_only_abandoned_scratch_folders(tmp_path, monkeypatch):
    long_ago = time.time() - 3600

    def folder(name: str) -> Path:
        path = tmp_path / f"runner-local-{name}"
        path.mkdir()
        (path / "lock").touch()
        os.utime(path, (long_ago, long_ago))
        return path

    abandoned, held, young = folder("abandoned"), folder("held"), tmp_path / "runner-local-young"
    young.mkdir()
    (young / "lock").touch()
    holder = os.open(held / "lock", os.O_RDWR)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # as a live cluster's owner or broker holds it
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        with runner.LocalCluster(workers=0) as cluster:
            assert Path(cluster.journal).parent.parent == tmp_path
            assert not abandoned.exists() and held.exists() and young.exists()
        assert not Path(cluster.journal).parent.exists()
    finally:
        os.close(holder)
