"""examples/async_service.py as a server: concurrent connections to it, each request answered by a cluster job."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from cluster import EXAMPLES, ROOT, START_TIMEOUT, die_with_parent, environment, read_line, stop_process

CONNECTIONS = 25
REQUESTS = 4


async def converse(port: int, numbers: list[int]) -> list[dict]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        answers = []
        for n in numbers:
            writer.write(f"{n}\n".encode())
            await writer.drain()
            answers.append(json.loads(await asyncio.wait_for(reader.readline(), 60)))
        return answers
    finally:
        writer.close()
        await writer.wait_closed()


def test_the_service_answers_concurrent_connections_through_the_cluster(processes):
    _, address = processes.broker("--heartbeat", "0.2")
    processes.worker(address, "--threads", "16", "--name", "service-worker", imports=("tasks", "async_service"))
    service = subprocess.Popen([sys.executable, str(EXAMPLES / "async_service.py"), "--serve", "--connect", address],
                               stdout=subprocess.PIPE, cwd=ROOT, env=environment(), preexec_fn=die_with_parent)
    try:
        host, port = read_line(service, START_TIMEOUT).rsplit(":", 1)
        assert host == "127.0.0.1"
        batches = [[connection * 100 + index for index in range(REQUESTS)] for connection in range(CONNECTIONS)]

        async def drive() -> list[list[dict]]:
            return await asyncio.gather(*(converse(int(port), batch) for batch in batches))

        answers = asyncio.run(drive())
        for batch, got in zip(batches, answers):
            assert [answer["n"] for answer in got] == batch
            assert [answer["square"] for answer in got] == [n * n for n in batch]
        assert len({answer["pid"] for got in answers for answer in got}) == 1  # the one worker's process
        (bad,) = asyncio.run(converse(int(port), ["seven"]))  # type: ignore[list-item]
        assert "expected an integer" in bad["error"]
    finally:
        assert stop_process(service) == 0  # SIGTERM: it stops serving and closes its client cleanly
