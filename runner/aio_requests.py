"""AsyncClient's requests about the cluster and its jobs, awaited: Client's (runner/client_requests.py) on a loop.

Status and waiting for workers; a job by id (fetch, cancel_job, job), listings (jobs,
dead_letters) and the event stream. Each takes the arguments of ``Client``'s method of
the same name and gives the same result or error: the request bodies and the answers'
shaping are client_requests.py's own functions, only the waiting differs. A mixin of
AsyncClient (runner/aio.py), whose ``_request`` sends and awaits.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

from runner import protocol
from runner.client_requests import (FETCH_PAUSE, FETCH_PAUSE_MAX, EventFeed, dead_letters_view, fetch_view,
                                    job_view, jobs_query, subscribed)


class AsyncClientRequests:
    """The query and admin requests of AsyncClient; they need its ``_request``, ``address`` and ``timeout``."""

    async def status(self, timeout: float | None = None) -> dict:
        """Workers (id, host, pid, slots, running), pending jobs per queue, and totals."""
        return (await self._request(protocol.STATUS, {}, timeout))["status"]

    async def wait_for_workers(self, count: int, timeout: float | None = None) -> int:
        """Wait until at least ``count`` workers are connected (None: however long); return how many."""
        try:
            answer = await self._request(protocol.WAIT_WORKERS, {"count": count}, timeout, forever=timeout is None)
        except TimeoutError:
            connected = len((await self.status())["workers"])
            raise TimeoutError(
                f"only {connected} of {count} workers connected to {self.address} within {timeout}s") from None
        return answer["workers"]

    async def cancel_job(self, job_id: str, *, force: bool = False, timeout: float | None = None) -> str:
        """Cancel any job by id, as ``Client.cancel_job``: the broker's answer, ``cancelled``, ``running``,
        ``finished`` or ``unknown``. A future of this client's stays as it is: use ``cancel(future)``."""
        return (await self._request(protocol.CANCEL, {"id": job_id, "force": force}, timeout))["result"]

    async def fetch(self, job_id: str, timeout: float | None = None, *, wait: float = 0.0) -> dict:
        """What the broker knows of a job by id, as ``Client.fetch``: ``state`` and, when final, its outcome.

        ``wait``: seconds to keep asking while the job is pending or running.
        """
        deadline = time.monotonic() + wait
        pause = FETCH_PAUSE
        view = fetch_view(job_id, await self._request(protocol.FETCH, {"id": job_id}, timeout))
        while view["state"] in ("pending", "running") and time.monotonic() + pause < deadline:
            await asyncio.sleep(pause)
            pause = min(pause * 2, FETCH_PAUSE_MAX)
            view = fetch_view(job_id, await self._request(protocol.FETCH, {"id": job_id}, timeout))
        return view

    async def dead_letters(self, timeout: float | None = None) -> list[dict]:
        """Jobs that exhausted their attempts: id, task, queue, attempts and the last error."""
        return dead_letters_view(await self._request(protocol.DEAD_LETTERS, {}, timeout))

    async def jobs(self, *, state: str | None = None, queue: str | None = None, task: str | None = None,
                   limit: int = 50, timeout: float | None = None) -> list[dict]:
        """Jobs newest first, as ``Client.jobs``: id, task, queue, state, attempts, worker and ``created``.

        A bad ``state`` or ``limit`` raises ValueError before anything is sent.
        """
        body = jobs_query(state, queue, task, limit)
        return (await self._request(protocol.LIST_JOBS, body, timeout))["jobs"]

    async def job(self, job_id: str, timeout: float | None = None) -> dict | None:
        """Every field of one job, as ``Client.job`` (None: unknown, or not this key's)."""
        return job_view(await self._request(protocol.SHOW_JOB, {"id": job_id}, timeout))

    async def events(self, *, idle: float | None = None) -> AsyncIterator[dict]:
        """Subscribe to job events now; ``async for`` over them as the broker sees them.

        ``async for event in await client.events():`` follows the cluster until the loop is
        left (``idle``: the iteration ends once no event came for that many seconds). The
        events and the PermissionError of a refused subscription are ``Client.events``'s.
        """
        first = subscribed(await self._request(protocol.EVENTS, {"wait": 0.0}, None), self.address)
        return self._event_stream(first, EventFeed(idle, time.monotonic()))

    async def _event_stream(self, answer: dict, feed: EventFeed) -> AsyncIterator[dict]:
        while True:
            for event in feed.events(answer):
                yield event
            wait = feed.next_wait(answer, time.monotonic())
            if wait is None:
                return
            answer = await self._request(protocol.EVENTS, {"wait": wait}, wait + self.timeout)
