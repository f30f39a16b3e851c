"""The client's side of jobs that wait for other jobs: what a Future argument and ``after=`` send.

A Future of this client passed as an argument (at any depth in lists and dicts) travels as a
placeholder naming its job (runner/tasks.py packs it), and the job waits for that job; the
broker puts the result in its place (runner/broker/dependencies.py). A Future already done
with a result is sent as that result: nothing to wait for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any, Callable, Iterable

from runner.tasks import NO_WAITS, OPTION_NAMES, JobOptions, JobResult


def referrer(client: Any) -> Callable[[Any], Any]:
    """What a non-msgpack argument of ``client``'s jobs stands for (see ``runner.tasks.Referrer``)."""

    def refer(value: Any) -> Any:
        futures = getattr(value, "futures", None)
        if futures is not None and getattr(value, "is_group", False):
            return list(futures)  # a group: the list of its results (each a Future again)
        job_id = getattr(value, "job_id", None)
        if job_id is None or not isinstance(value, (concurrent.futures.Future, asyncio.Future)):
            raise TypeError(f"cannot serialize {type(value).__name__!r} object")
        if getattr(value, "_client", None) is not client:
            raise ValueError(f"{value!r} is a job of another client; a job can wait only for jobs of the client "
                             f"that submits it: submit it with that client, or pass runner.JobResult({job_id!r})")
        if value.done() and not value.cancelled() and value.exception() is None:
            return value.result()
        return JobResult(job_id)

    return refer


def after_ids(refer: Callable[[Any], Any], after: Any) -> list[str]:
    """The job ids ``after=`` names: Futures of this client, groups, JobResults or job id strings."""
    single = (str, JobResult, concurrent.futures.Future, asyncio.Future)
    if isinstance(after, single) or not isinstance(after, Iterable):
        after = [after]
    ids: list[str] = []
    for item in after:
        if isinstance(item, (str, JobResult)):
            ids.append(JobResult(item).job_id if isinstance(item, str) else item.job_id)  # a str is checked
            continue
        meant = refer(item)
        if isinstance(meant, JobResult):
            ids.append(meant.job_id)
        elif isinstance(meant, list):  # a group's Futures
            ids += after_ids(refer, meant)
        # else a Future already done with a result: nothing to wait for
    return ids or NO_WAITS


def job_options(defaults: JobOptions, kwargs: dict[str, Any],
                refer: Callable[[Any], Any]) -> tuple[JobOptions, list[str]]:
    """A submit's options and the ids it waits for, taken out of its keywords (the rest go to the task)."""
    overrides = {name: kwargs.pop(name) for name in OPTION_NAMES & kwargs.keys()}
    after = kwargs.pop("after", None)
    return defaults.merged(overrides), NO_WAITS if after is None else after_ids(refer, after)


def with_after(wire: dict[str, Any], waits: list[str], after: list[str]) -> dict[str, Any]:
    """A submit row's options map with the ids to wait for (``waits`` from the arguments, then ``after``)."""
    wire["after"] = list(dict.fromkeys([*waits, *after]))
    return wire
