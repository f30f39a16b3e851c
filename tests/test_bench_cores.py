"""benchmarks/cores.py: the client on one CPU, a process tree on the others, and all CPUs back after."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from cluster import ROOT, die_with_parent, wait_until

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not an installed package

from benchmarks.cores import own_core

USABLE = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
# A parent with a thread of its own and a child process: every thread of the tree must follow.
TREE = """
import subprocess, sys, threading, time
threading.Thread(target=time.sleep, args=(120,), daemon=True).start()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
sys.stdin.read()
child.kill()
child.wait()
"""


def thread_affinities(pid: int) -> dict[int, set[int]]:
    return {int(thread): os.sched_getaffinity(int(thread)) for thread in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(len(USABLE) < 2, reason="needs two usable CPUs and Linux's sched_setaffinity")
def test_own_core_pins_this_process_and_the_whole_tree_apart_then_gives_every_cpu_back():
    tree = subprocess.Popen([sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=die_with_parent)
    child = None
    try:
        child = int(tree.stdout.readline())
        wait_until(lambda: len(os.listdir(f"/proc/{tree.pid}/task")) >= 2, timeout=10, message="the tree's thread")
        client, rest = {min(USABLE)}, USABLE - {min(USABLE)}
        with own_core([tree.pid]):
            assert all(cpus == client for cpus in thread_affinities(os.getpid()).values())
            for pid in (tree.pid, child):
                assert all(cpus == rest for cpus in thread_affinities(pid).values()), pid
        for pid in (os.getpid(), tree.pid, child):
            assert all(cpus == USABLE for cpus in thread_affinities(pid).values()), pid
    finally:
        tree.stdin.close()  # the tree kills its child and exits
        try:
            tree.wait(30)
        except subprocess.TimeoutExpired:
            tree.kill()
            tree.wait(30)
            if child is not None and os.path.exists(f"/proc/{child}"):
                os.kill(child, signal.SIGKILL)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_own_core_refuses_a_single_cpu_and_changes_nothing():
    single = {min(USABLE)}
    os.sched_setaffinity(0, single)
    try:
        with pytest.raises(RuntimeError, match="needs two usable CPUs"):
            with own_core([]):
                pass
        assert os.sched_getaffinity(0) == single
    finally:
        os.sched_setaffinity(0, USABLE)
