"""AsyncClient's query and admin requests against a real broker and workers: Client's results, awaited."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

import runner
from test_async_client import run
from test_security import AUTH_TIMEOUT, key_folder, secure_cluster  # noqa: F401 - fixtures


@pytest.fixture(scope="module")
def cluster(two_workers) -> tuple[str, runner.Client]:
    """The module's broker address and a (blocking) Client on it, to compare answers with."""
    return two_workers.address, two_workers


def errors(letters: list[dict]) -> dict:
    return {job["id"]: (job["attempts"], type(job["error"]), str(job["error"])) for job in letters}


def test_dead_letters_requeue_and_fetch_with_wait_as_client(cluster, tmp_path):
    address, client = cluster
    record = tmp_path / "runs"

    async def body():
        async with runner.AsyncClient(address) as aclient:
            # Attempts 1 and 2 raise; with retries=1 the job is then dead. A third attempt succeeds.
            doomed = aclient.submit("jobs:flaky", str(record), 2, pool="thread", retries=1, retry_backoff=0)
            with pytest.raises(RuntimeError, match="attempt 2 failed on purpose"):
                await doomed
            letters = await aclient.dead_letters()
            assert errors(letters)[doomed.job_id] == (2, RuntimeError, "attempt 2 failed on purpose")
            assert errors(letters) == errors(client.dead_letters())
            assert (await aclient.fetch(doomed.job_id))["state"] == "dead"

            again = await aclient.requeue(doomed.job_id)
            assert isinstance(again, runner.AsyncJobFuture) and again.job_id == doomed.job_id
            assert (await asyncio.wait_for(again, 30))["attempt"] == 3
            assert doomed.job_id not in errors(await aclient.dead_letters())
            with pytest.raises(ValueError, match="is not failed or dead"):
                await aclient.requeue(doomed.job_id)  # done now
            with pytest.raises(ValueError, match="is not failed or dead"):
                await aclient.requeue("no-such-job")
            assert doomed.job_id not in aclient._futures  # noqa: SLF001 - a refused requeue leaves no waiter

            # A job another client submitted: its outcome never comes here, fetch(wait=) asks until it is final.
            theirs = client.submit("tasks:sleep_then", 2.0, "late", pool="thread")
            assert client.fetch(theirs.job_id)["state"] in ("pending", "running")  # known to the broker now
            assert (await aclient.fetch(theirs.job_id, wait=30)) == {"id": theirs.job_id, "state": "done",
                                                                      "result": "late"}

    run(body())


def test_cancel_job_by_id_answers_as_client(cluster):
    address, client = cluster

    async def body():
        async with runner.AsyncClient(address) as aclient:
            waiting = client.submit("tasks:add", 1, 1, queue="nobody-serves-this")  # another client's job
            # Answered on the submitting connection, so after the broker took the job: the cancel,
            # on another connection, cannot overtake the submit.
            assert client.fetch(waiting.job_id)["state"] == "pending"
            assert await aclient.cancel_job(waiting.job_id) == "cancelled"
            assert await aclient.cancel_job(waiting.job_id) == "finished"
            assert await aclient.cancel_job("no-such-job") == "unknown"
            assert (await aclient.fetch(waiting.job_id))["state"] == "cancelled"

    run(body())


def test_jobs_and_job_give_what_client_gives(cluster):
    address, client = cluster

    async def body():
        async with runner.AsyncClient(address) as aclient:
            done = [aclient.submit("tasks:add", index, 1, pool="thread", queue="aio-list") for index in range(5)]
            failed = aclient.submit("tasks:fail", "bad 7", pool="thread", queue="aio-list")
            workers = (await aclient.status())["workers"]
            assert all("aio-list" not in worker["queues"] for worker in workers)  # nobody serves it: all pending
            listed = await aclient.jobs(queue="aio-list")
            assert [row["id"] for row in listed] == [failed.job_id, *[f.job_id for f in reversed(done)]]
            assert {row["state"] for row in listed} == {"pending"}
            assert listed == client.jobs(queue="aio-list")
            assert len(await aclient.jobs(queue="aio-list", limit=2)) == 2
            with pytest.raises(ValueError, match="state must be one of"):
                await aclient.jobs(state="finished")
            with pytest.raises(ValueError, match="limit must be an integer from 1 to 1000"):
                await aclient.jobs(limit=0)

            shown = await aclient.job(failed.job_id)
            assert (shown["state"], shown["task"], shown["queue"]) == ("pending", "tasks:fail", "aio-list")
            assert (shown["args"], shown["kwargs"]) == (["bad 7"], {})
            assert await aclient.job("no-such-job") is None
            for future in (*done, failed):
                await aclient.cancel(future)

            finished = aclient.submit("tasks:add", 40, 2, pool="thread")
            broken = aclient.submit("tasks:fail", "bad 8", pool="thread")
            assert await finished == 42
            with pytest.raises(ValueError):
                await broken
            assert (await aclient.job(finished.job_id))["result"] == 42
            error = (await aclient.job(broken.job_id))["error"]
            assert isinstance(error, ValueError) and "raise ValueError(message)" in error.__cause__.text
            assert (await aclient.job(finished.job_id)).keys() == client.job(finished.job_id).keys()

    run(body())


def test_events_follow_and_idle(cluster):
    address, _ = cluster

    async def body():
        async with runner.AsyncClient(address) as aclient:
            stream = await aclient.events()  # subscribed now: the jobs below are all seen
            futures = [aclient.submit("tasks:add", index, 1, pool="thread") for index in range(10)]
            futures += [aclient.submit("tasks:fail", "bad", pool="thread") for _ in range(2)]
            await asyncio.gather(*futures, return_exceptions=True)
            mine, seen = {future.job_id for future in futures}, []
            async for event in stream:  # follows (no idle): left once every job's end was seen
                if event.get("job") in mine:
                    seen.append(event)
                counted = Counter(event["event"] for event in seen)
                if counted["finished"] + counted["failed"] == 12:
                    break
            await stream.aclose()
            assert counted["accepted"] == 12 and counted["finished"] == 10 and counted["failed"] == 2
            assert counted["leased"] == 12 + counted["requeued"]  # a job given back by a lost worker is leased again
            assert {event["task"] for event in seen if event["event"] == "failed"} == {"tasks:fail"}
            assert not aclient._requests  # noqa: SLF001 - leaving the stream leaves no request waiting

        async with runner.AsyncClient(address) as other:
            started = time.monotonic()
            quiet = [event async for event in await other.events(idle=0.5)]  # ends by itself once quiet
            assert time.monotonic() - started < 20, f"the idle stream did not end ({len(quiet)} events)"

    run(body())


def test_with_curve_a_key_sees_its_own_jobs_and_only_an_admin_may_follow_events(secure_cluster, key_folder):
    _, address = secure_cluster

    async def body():
        keyed = {name: runner.AsyncClient(address, curve_keys=str(folder), timeout=AUTH_TIMEOUT)
                 for name, folder in (("alice", key_folder), ("bob", key_folder / "bob"), ("root", key_folder / "root"))}
        try:
            alice, bob, root = keyed["alice"], keyed["bob"], keyed["root"]
            for client in keyed.values():
                await client.start()
            await alice.wait_for_workers(1, timeout=60)
            done = alice.submit("tasks:add", 20, 22, pool="thread")
            assert await done == 42
            mine = bob.submit("tasks:add", 1, 2, pool="thread")
            assert await mine == 3
            assert [row["id"] for row in await bob.jobs()] == [mine.job_id]
            assert await bob.job(done.job_id) is None
            assert (await root.job(done.job_id))["result"] == 42
            with pytest.raises(PermissionError, match="admin key"):  # events name every client's jobs
                await bob.events(idle=0)
            assert [event async for event in await root.events(idle=0)] == []
        finally:
            for client in keyed.values():
                await client.close()

    run(body())
