"""Client's requests about the cluster and its jobs: one request, one reply, no future of its own.

Status and waiting for workers; a job by id (fetch, cancel_job, job), listings (jobs,
dead_letters) and the event stream. A mixin of Client (runner/client.py), whose
``_request`` sends and waits; submitting and this client's own futures stay there.
"""

from __future__ import annotations

import time
from typing import Iterator

from runner import protocol
from runner.tasks import decode_arguments
from runner.errors import exception_from_blob

FETCH_PAUSE = 0.05  # first pause of fetch(wait=...) between asks; it doubles up to FETCH_PAUSE_MAX
FETCH_PAUSE_MAX = 1.0
UNFINISHED = ("pending", "running", "scheduled", "waiting")  # states fetch(wait=...) keeps asking about
EVENTS_WAIT = 1.0  # seconds one events poll waits at the broker for events


class ClientRequests:
    """The query and admin requests of Client; they need its ``_request``, ``address`` and ``timeout``."""

    def status(self, timeout: float | None = None) -> dict:
        """Workers (id, host, pid, slots, running), pending jobs per queue, and totals."""
        return self._request(protocol.STATUS, {}, timeout)["status"]

    def wait_for_workers(self, count: int, timeout: float | None = None) -> int:
        """Block until at least ``count`` workers are connected (None: however long); return how many."""
        try:
            return self._request(protocol.WAIT_WORKERS, {"count": count}, timeout, forever=timeout is None)["workers"]
        except TimeoutError:
            connected = len(self.status()["workers"])
            raise TimeoutError(
                f"only {connected} of {count} workers connected to {self.address} within {timeout}s"
            ) from None

    def cancel_job(self, job_id: str, *, force: bool = False, timeout: float | None = None) -> str:
        """Cancel any job by id (with CURVE on: one of this key's, or any with an admin key).

        Returns the broker's answer: ``cancelled``, ``running`` (refused without ``force``),
        ``finished`` (too late) or ``unknown``. A future of this client's stays as it is:
        use ``cancel(future)`` for those.
        """
        return self._request(protocol.CANCEL, {"id": job_id, "force": force}, timeout)["result"]

    def fetch(self, job_id: str, timeout: float | None = None, *, wait: float = 0.0) -> dict:
        """What the broker knows of a job by id: ``state`` and, when final, its outcome.

        ``state`` is pending, running, scheduled (delayed, not yet due: with ``due``, epoch
        seconds), waiting (for other jobs), done, failed, dead, cancelled or unknown; a final state
        comes with ``result`` (done) or ``error`` (the exception). ``wait``: seconds to keep asking
        while the job is not final (for a job another client submitted, whose outcome is not sent here).
        """
        deadline = time.monotonic() + wait
        pause = FETCH_PAUSE
        view = self._fetch_once(job_id, timeout)
        while view["state"] in UNFINISHED and time.monotonic() + pause < deadline:
            time.sleep(pause)
            pause = min(pause * 2, FETCH_PAUSE_MAX)
            view = self._fetch_once(job_id, timeout)
        return view

    def _fetch_once(self, job_id: str, timeout: float | None) -> dict:
        return fetch_view(job_id, self._request(protocol.FETCH, {"id": job_id}, timeout))

    def dead_letters(self, timeout: float | None = None) -> list[dict]:
        """Jobs that exhausted their attempts: id, task, queue, attempts and the last error."""
        return dead_letters_view(self._request(protocol.DEAD_LETTERS, {}, timeout))

    def jobs(self, *, state: str | None = None, queue: str | None = None, task: str | None = None, limit: int = 50,
             timeout: float | None = None) -> list[dict]:
        """Jobs newest first: id, task, queue, state, attempts, worker and ``created`` (epoch s).

        ``state`` is pending, running, scheduled (with ``due``), waiting, done, failed, dead or cancelled; ``limit`` at most
        1000. The broker looks through its newest 50,000 held and 50,000 finished jobs
        at most (runner/broker/listing.py). With CURVE on, a key sees its own jobs; an admin all.
        """
        return self._request(protocol.LIST_JOBS, jobs_query(state, queue, task, limit), timeout)["jobs"]

    def job(self, job_id: str, timeout: float | None = None) -> dict | None:
        """Every field of one job (None: unknown, or not this key's): its ``args`` and ``kwargs``
        decoded, ``after`` (a waiting job: the ids it still waits for), and when final its
        ``result`` or ``error`` (with ``error.remote_traceback``)."""
        return job_view(self._request(protocol.SHOW_JOB, {"id": job_id}, timeout))

    def events(self, *, idle: float | None = None) -> Iterator[dict]:
        """Subscribe to job events now; iterate them as the broker sees them (``runner events``).

        Each is a dict: ``event`` (accepted, leased, started, retried, requeued, finished, failed, dead,
        cancelled), ``job``, ``task``, ``queue``, ``worker``, ``attempt`` and ``at`` (epoch s).
        Events this reader was too slow for come as one ``{"event": "lost", "count": n}``.
        ``idle``: stop once no event came for that many seconds (None: never). With CURVE on,
        only an admin key may subscribe.
        """
        first = subscribed(self._request(protocol.EVENTS, {"wait": 0.0}, None), self.address)
        return self._event_stream(first, EventFeed(idle, time.monotonic()))

    def _event_stream(self, answer: dict, feed: "EventFeed") -> Iterator[dict]:
        while True:
            yield from feed.events(answer)
            wait = feed.next_wait(answer, time.monotonic())
            if wait is None:
                return
            answer = self._request(protocol.EVENTS, {"wait": wait}, wait + self.timeout)


def fetch_view(job_id: str, answer: dict) -> dict:
    """The broker's answer to a fetch as users see it: ``state`` and, when final, ``result`` or ``error``."""
    view = {"id": job_id, "state": answer["state"]}
    if "due" in answer:
        view["due"] = answer["due"]
    if answer.get("status") == protocol.OK:
        view["result"] = protocol.unpack(answer["outcome"])
    elif answer.get("status") == protocol.FAILED:
        view["error"] = exception_from_blob(answer["outcome"])
    return view


# --- the shaping of requests and answers, shared with AsyncClient (runner/aio.py) ---------------


def not_requeued(job_id: str) -> ValueError:
    """The error of ``requeue`` when the broker did not requeue ``job_id``."""
    return ValueError(f"job {job_id!r} is not failed or dead (see client.dead_letters()); it was not requeued")


def dead_letters_view(answer: dict) -> list[dict]:
    """The broker's dead letters with each last error as its exception (None if it had none)."""
    jobs = answer["jobs"]
    for job in jobs:
        job["error"] = exception_from_blob(job["error"]) if job["error"] else None
    return jobs


def jobs_query(state: str | None, queue: str | None, task: str | None, limit: int) -> dict:
    """The body of a job listing request; ValueError for a state or limit the broker would refuse."""
    if state is not None and state not in protocol.LISTED_STATES:
        raise ValueError(f"state must be one of {protocol.LISTED_STATES}, got {state!r}")
    if not isinstance(limit, int) or not 1 <= limit <= protocol.LIST_MAX:
        raise ValueError(f"limit must be an integer from 1 to {protocol.LIST_MAX}, got {limit!r}")
    body = {"state": state, "queue": queue, "task": task, "limit": limit}
    return {key: value for key, value in body.items() if value is not None}


def job_view(answer: dict) -> dict | None:
    """One job as ``job()`` returns it: arguments decoded, ``result`` or ``error`` when final; None if unknown."""
    job = answer["job"]
    if job is None:
        return None
    job["args"], job["kwargs"] = decode_arguments(job.pop("payload"))  # a waiting job's placeholders too
    status, outcome = job.pop("status"), job.pop("outcome")
    if status == protocol.OK:
        job["result"] = protocol.unpack(outcome)
    elif status == protocol.FAILED:
        job["error"] = exception_from_blob(outcome)
    return job


def subscribed(answer: dict, address: str) -> dict:
    """The answer to the first events poll; PermissionError if the broker refused the subscription."""
    if "refused" in answer:
        raise PermissionError(f"the broker at {address} refused: {answer['refused']} "
                              "(runner keys add-admin; docs/security.md)")
    return answer


class EventFeed:
    """The events in the broker's poll answers, and how long the next poll may wait (sans-IO).

    ``idle``: the stream ends once no event came for that many seconds (None: never).
    """

    def __init__(self, idle: float | None, now: float) -> None:
        self.idle = idle
        self.last = now  # when the last event came (or the stream began)

    @staticmethod
    def events(answer: dict) -> list[dict]:
        """The events of one answer, led by ``{"event": "lost", "count": n}`` if some were lost."""
        if answer["lost"]:
            return [{"event": "lost", "count": answer["lost"]}, *answer["events"]]
        return answer["events"]

    def next_wait(self, answer: dict, now: float) -> float | None:
        """Seconds the next poll may wait at the broker, after ``answer`` was read; None: the stream ends."""
        if answer["events"]:
            self.last = now
        elif self.idle is not None and now - self.last >= self.idle:
            return None
        return EVENTS_WAIT if self.idle is None else max(0.0, min(EVENTS_WAIT, self.last + self.idle - now))
