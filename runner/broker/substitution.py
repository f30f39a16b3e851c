"""Results put into a waiting job's arguments, in the broker, without running any user code.

A client sends a Future (or ``runner.JobResult``) passed as an argument as a placeholder: a
msgpack extension value (``protocol.RESULT_OF_EXT``) holding the job id whose result goes
there. When that job is done, the broker reads the waiting job's packed arguments, puts the
result (decoded from its packed outcome, exactly as the client would decode it) wherever a
placeholder names that job, and packs the arguments again. Only msgpack is read and written.

Payloads come from clients and results from workers, so any of them may be malformed or
hostile: every failure is a :class:`SubstitutionError` saying what is wrong, which fails the
one job concerned; nothing here raises anything else, and nesting is walked without recursion.
"""

from __future__ import annotations

from typing import Any

import msgpack

from runner import protocol


class SubstitutionError(ValueError):
    """A payload or a result that cannot be read or rewritten; the message says which and why."""


class Placeholder:
    """Where the result of job ``job_id`` goes, as read from a packed payload."""

    __slots__ = ("job_id",)

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id


def _ext_hook(code: int, data: bytes) -> Any:
    if code != protocol.RESULT_OF_EXT:
        return msgpack.ExtType(code, data)  # not ours: kept as it is, packed back unchanged
    job_id = data.decode("utf-8")
    if not job_id or len(job_id) > protocol.MAX_NAME:
        raise ValueError(f"a result placeholder names no valid job id ({len(job_id)} characters)")
    return Placeholder(job_id)


def _read_payload(payload: bytes) -> list:
    try:
        arguments = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True, ext_hook=_ext_hook)
    except Exception as exc:  # msgpack raises several unrelated types; a bad placeholder raises ValueError
        raise SubstitutionError(f"the job's arguments are not valid msgpack: {exc}") from None
    if not isinstance(arguments, list) or len(arguments) != 2 or not isinstance(arguments[0], list) \
            or not isinstance(arguments[1], dict):
        raise SubstitutionError("the job's arguments must be a msgpack [args, kwargs] pair")
    return arguments


def _visit(root: Any, replace: Any) -> None:
    """Call ``replace(container, key, placeholder)`` for every placeholder under ``root`` (lists, dicts)."""
    stack = [root]
    while stack:
        container = stack.pop()
        items = enumerate(container) if isinstance(container, list) else container.items()
        for key, item in items:
            if isinstance(item, Placeholder):
                replace(container, key, item)
            elif isinstance(item, (list, dict)):
                stack.append(item)


def placeholders(payload: bytes) -> set[str]:
    """The job ids whose results ``payload`` waits for; SubstitutionError if it is malformed."""
    found: set[str] = set()
    _visit(_read_payload(payload), lambda _container, _key, placeholder: found.add(placeholder.job_id))
    return found


def decode_result(outcome: bytes, job_id: str) -> Any:
    """The value a done job returned, from its packed outcome; SubstitutionError if unreadable."""
    try:
        return protocol.unpack(outcome)
    except Exception as exc:
        raise SubstitutionError(f"the result of job {job_id}, which it waits for, cannot be read: {exc}") from None


def substitute(payload: bytes, results: dict[str, Any]) -> bytes:
    """``payload`` with each value of ``results`` (job id -> value) wherever a placeholder names
    that job; SubstitutionError if it cannot be.

    A payload in which none of the ids' bytes occur holds no placeholder of them (a job waiting
    through ``after=`` only): it is returned as it is, unread.
    """
    if not any(job_id.encode() in payload for job_id in results):
        return payload
    arguments = _read_payload(payload)

    def replace(container: Any, key: Any, placeholder: Placeholder) -> None:
        if placeholder.job_id in results:
            container[key] = results[placeholder.job_id]

    _visit(arguments, replace)
    try:
        return msgpack.packb(arguments, use_bin_type=True, default=_pack_placeholder)
    except Exception as exc:
        raise SubstitutionError(f"the job's arguments cannot be packed again with the results: {exc}") from None


def _pack_placeholder(value: Any) -> Any:
    """Placeholders of other jobs, still to come, go back as they came."""
    if isinstance(value, Placeholder):
        return msgpack.ExtType(protocol.RESULT_OF_EXT, value.job_id.encode())
    raise TypeError(f"cannot pack a {type(value).__name__}")
