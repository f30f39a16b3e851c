"""An asyncio service that answers each request by awaiting a job on the cluster.

    python examples/async_service.py           # serve, drive it with concurrent connections, check, exit
    python examples/async_service.py --serve [--connect tcp://127.0.0.1:5555] [--port 8765]

The service is plain stdlib asyncio (``asyncio.start_server``, no web framework): a
client sends an integer per line and gets a line of JSON back, ``{"n": 7, "square": 49,
"pid": ...}``, computed by ``slow_square`` (a 50 ms backend call) on the cluster's
thread pools. Every connection is a coroutine, and every request awaits its job through
one ``runner.AsyncClient`` on the service's own loop: no thread per request or per call.

By default the script checks its own claims: it starts an embedded cluster
(``AsyncClient()`` with no address), opens CONNECTIONS concurrent connections that each
send REQUESTS numbers, and checks that every answer is right, that a bad request gets an
error line, that the service's thread count never rose while it served, and that the
requests overlapped (all of them well within the time of one after another). Exits 1 if
a claim fails, 3 if only the timing claim could not be shown on a busy machine.
With ``--serve`` it prints ``HOST:PORT`` and serves until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import threading
import time

import runner

DELAY = 0.05  # seconds each job waits, as a call to a slow backend would
CONNECTIONS = 40
REQUESTS = 5  # per connection, one after another
HOST = "127.0.0.1"
NOT_JUDGED = 3  # exit status: the timing claim failed on a machine too busy to show it


def slow_square(n: int) -> dict:
    """The cluster job: wait like a backend call, then answer."""
    time.sleep(DELAY)
    return {"square": n * n, "pid": os.getpid()}


class Service:
    """Answers the lines of each connection by awaiting one cluster job per line."""

    def __init__(self, client: runner.AsyncClient) -> None:
        self.client = client
        self.answered = 0
        self.most_threads = threading.active_count()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                writer.write((json.dumps(await self.answer(line)) + "\n").encode())
                await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    async def answer(self, line: bytes) -> dict:
        try:
            n = int(line)
        except ValueError:
            return {"error": f"expected an integer, got {line.strip()!r}"}
        try:
            result = await self.client.submit(slow_square, n, pool="thread")
        except Exception as exc:  # the job failed: the caller gets the reason, the service goes on
            return {"n": n, "error": f"{type(exc).__name__}: {exc}"}
        self.answered += 1
        self.most_threads = max(self.most_threads, threading.active_count())
        return {"n": n, **result}


async def ask(port: int, lines: list[str]) -> list[dict]:
    """One connection: send each line, read its answer, in turn."""
    reader, writer = await asyncio.open_connection(HOST, port)
    answers = []
    try:
        for line in lines:
            writer.write(f"{line}\n".encode())
            await writer.drain()
            answers.append(json.loads(await reader.readline()))
    finally:
        writer.close()
        await writer.wait_closed()
    return answers


async def check() -> int:
    """Serve on an embedded cluster, drive it with CONNECTIONS concurrent connections, judge the claims."""
    async with runner.AsyncClient() as client:
        service = Service(client)
        threads_before = service.most_threads = threading.active_count()
        server = await asyncio.start_server(service.handle, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            started = time.perf_counter()
            numbers = [[connection * REQUESTS + index for index in range(REQUESTS)] for connection in range(CONNECTIONS)]
            answers = await asyncio.gather(*(ask(port, [str(n) for n in batch]) for batch in numbers))
            elapsed = time.perf_counter() - started
            (bad,) = await ask(port, ["hello"])
    total, serial = CONNECTIONS * REQUESTS, CONNECTIONS * REQUESTS * DELAY
    print(f"{CONNECTIONS} connections x {REQUESTS} requests, each awaiting a {DELAY * 1000:.0f} ms job: "
          f"{elapsed:.2f}s (one after another: {serial:.1f}s); service threads {threads_before} before, "
          f"{service.most_threads} at most while serving")
    failures = []
    wrong = [(n, answer) for batch, got in zip(numbers, answers) for n, answer in zip(batch, got)
             if answer.get("square") != n * n or answer.get("n") != n]
    if wrong or service.answered != total:
        failures.append(f"{len(wrong)} wrong answers (first: {wrong[:1]}), {service.answered} of {total} answered")
    if "error" not in bad:
        failures.append(f"a bad request got {bad}, not an error")
    if service.most_threads > threads_before:
        failures.append(f"the service grew from {threads_before} to {service.most_threads} threads while serving")
    for failure in failures:
        print(f"CLAIM FAILED: {failure}", file=sys.stderr)
    if failures:
        return 1
    if elapsed > serial / 4:
        print(f"CLAIM NOT JUDGED: {total} requests took {elapsed:.2f}s, not well under {serial:.1f}s; "
              "the machine is too busy to show the overlap", file=sys.stderr)
        return NOT_JUDGED
    print(f"CLAIM HOLDS: {total} concurrent requests answered right in {elapsed:.2f}s, on one thread's loop.")
    return 0


async def serve(address: str | None, port: int) -> None:
    """Serve until SIGTERM or Ctrl-C; print ``HOST:PORT`` once listening."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with runner.AsyncClient(address) as client:
        server = await asyncio.start_server(Service(client).handle, HOST, port)
        print(f"{HOST}:{server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help="serve until stopped instead of checking the claims")
    parser.add_argument("--connect", help="a broker's address [default: an embedded cluster]")
    parser.add_argument("--port", type=int, default=0, help="the port to serve on [default: any free one]")
    arguments = parser.parse_args(argv)
    if arguments.serve:
        asyncio.run(serve(arguments.connect, arguments.port))
        return 0
    return asyncio.run(check())


if __name__ == "__main__":
    sys.exit(main())
