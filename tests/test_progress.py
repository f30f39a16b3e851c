"""Progress bars: nothing extra without a terminal, a bar with rate and time left on one."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

from cluster import ROOT, die_with_parent, environment
from test_cli import run

MAP_SCRIPT = """
import sys, runner
with runner.Client(sys.argv[1]) as client:
    client.wait_for_workers(1, timeout=60)
    print(list(client.map("tasks:square", range(40), pool="thread", progress=True, timeout=60)))
"""


def test_map_and_submit_with_progress_print_nothing_extra_without_a_terminal(processes, broker_address):
    processes.worker(broker_address, "--processes", "0", "--threads", "2")
    mapped = subprocess.run([sys.executable, "-c", MAP_SCRIPT, broker_address], capture_output=True, text=True,
                            timeout=120, env=environment(), cwd=ROOT, preexec_fn=die_with_parent)
    assert mapped.returncode == 0, mapped.stderr
    assert mapped.stdout == f"{[n * n for n in range(40)]}\n" and mapped.stderr == ""
    submitted = run("submit", "tasks:add", "2", "3", "--pool", "thread", "--progress", "--connect", broker_address)
    assert (submitted.returncode, submitted.stdout, submitted.stderr) == (0, "5\n", "")


def on_a_terminal(command: list[str]) -> tuple[str, str]:
    """Run ``command`` with stderr on a pseudo-terminal: (its stdout, what it drew on the terminal)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=follower, env=environment(COLUMNS="120"),
                               cwd=ROOT, preexec_fn=die_with_parent)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal: it has ended
            break
        if not chunk:
            break
        drawn += chunk
    stdout, _ = process.communicate(timeout=120)
    os.close(leader)
    assert process.returncode == 0, drawn.decode(errors="replace")
    return stdout.decode(), drawn.decode(errors="replace")


def test_map_with_progress_draws_a_bar_on_a_terminal(processes, broker_address):
    processes.worker(broker_address, "--processes", "0", "--threads", "2")
    stdout, text = on_a_terminal([sys.executable, "-c", MAP_SCRIPT, broker_address])
    assert json.loads(stdout) == [n * n for n in range(40)]  # results on stdout, untouched
    assert "40/40" in text and "jobs/s" in text and "eta" in text


def test_submit_with_progress_draws_a_one_job_bar_on_a_terminal(processes, broker_address):
    processes.worker(broker_address, "--processes", "0", "--threads", "2")
    stdout, text = on_a_terminal([sys.executable, "-m", "runner", "submit", "tasks:add", "2", "3", "--pool", "thread",
                                  "--progress", "--connect", broker_address])
    assert stdout == "5\n"  # the result on stdout, the bar on the terminal
    assert "1/1" in text and "jobs/s" in text and "Traceback" not in text
