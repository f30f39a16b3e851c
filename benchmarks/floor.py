"""The round trip's floor on this machine: a runner round trip's hops, with no runner code.

A relay process with one ROUTER stands in for the broker, and a process with a
DEALER and a ``ProcessPoolExecutor(1)`` stands in for a worker. The measuring
thread sends a job to the relay, the relay forwards it to the worker, the worker
runs ``noop`` in its pool child and sends the answer back the same way: the same
four ZeroMQ hops over ``tcp://127.0.0.1`` and the same trip into a pool process as
``client.submit(noop).result()``. Each side is a blocking loop of a few lines: no
journal, no message checks, no event loop, no retries.

What runner spends above this figure is runner's own; a target below it is out of
reach of any design with a broker process between client and worker.

Run ``python -m benchmarks.floor relay ADDRESS`` or ``... worker ADDRESS`` to start
one side by hand; ``round_trips`` starts both and measures.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor

import zmq

from benchmarks import tasks
from benchmarks.cluster import ROOT, child_environment
from benchmarks.measure import round_trips as timed_round_trips
from benchmarks.settings import HOST, REQUEST_TIMEOUT, START_TIMEOUT, STOP_TIMEOUT
from runner import lifetime
from runner.local import read_line, stop_process

READY = b"ready"


def run_relay(bind: str) -> None:
    """Print the bound address, then "ready" once the worker said so; then forward both ways."""
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    router.bind(bind)
    print(router.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    worker, _ = router.recv_multipart()
    print(READY.decode(), flush=True)
    client = b""
    while True:
        sender, frame = router.recv_multipart()
        if sender == worker:
            router.send_multipart([client, frame])
        else:
            client = sender
            router.send_multipart([worker, frame])


def run_worker(connect: str) -> None:
    """Say ready, then run ``noop`` in a one-process pool for every frame, and send the frame back."""
    with ProcessPoolExecutor(max_workers=1) as pool:
        pool.submit(tasks.noop).result()  # the child exists and has imported the tasks
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.connect(connect)
        dealer.send(READY)
        while True:
            frame = dealer.recv()
            pool.submit(tasks.noop).result()
            dealer.send(frame)


def round_trips(count: int, warmup: int, budget: float) -> dict[str, float]:
    """Start a relay and a worker, then time ``count`` round trips through them (after ``warmup``)."""
    started: list[subprocess.Popen] = []
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.RCVTIMEO, int(REQUEST_TIMEOUT * 1000))  # a lost answer raises zmq.Again
    try:
        relay = _spawn("relay", f"tcp://{HOST}:*", started)
        address = read_line(relay, START_TIMEOUT)
        _spawn("worker", address, started)
        if read_line(relay, START_TIMEOUT) != READY.decode():
            raise RuntimeError(f"the floor's relay (pid {relay.pid}) did not hear from its worker")
        dealer.connect(address)

        def call() -> None:
            dealer.send(b"job")
            dealer.recv()

        return timed_round_trips(call, count, warmup, budget)
    finally:
        dealer.close()
        context.term()
        for process in reversed(started):
            stop_process(process, STOP_TIMEOUT)


def _spawn(role: str, address: str, started: list[subprocess.Popen]) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.floor", role, address, str(os.getpid())],
        stdout=subprocess.PIPE, cwd=ROOT, env=child_environment(),
    )
    started.append(process)
    return process


def _exit_on_sigterm() -> None:
    """SIGTERM ends the loop through SystemExit, so the worker's pool is shut down on the way out."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("relay", "worker"):
        sys.exit("usage: python -m benchmarks.floor relay|worker ADDRESS OWNER_PID")
    lifetime.exit_with([int(sys.argv[3])])  # no benchmark process outlives the run that started it
    _exit_on_sigterm()
    (run_relay if sys.argv[1] == "relay" else run_worker)(sys.argv[2])
