"""``client.map`` without a Future per job: the outcomes of one call, in input order.

A Future costs a lock and a condition each; for a hundred thousand small jobs that
is most of the client's work. A map call instead keeps its outcomes in one dict
under one condition, and its consumer waits for the next index it needs.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from typing import Any

from runner import protocol
from runner.errors import exception_from_blob


def decode_outcome(job_id: str, status: str, blob: bytes) -> tuple[Any, BaseException | None]:
    """(value, None) for a result, (None, exception) for a failure or a cancellation."""
    if status == protocol.OK:
        try:
            return protocol.unpack(blob), None
        except Exception as exc:
            return None, ValueError(f"job {job_id}: the result could not be decoded: {exc}")
    if status == protocol.CANCELLED:
        return None, CancelledError(f"job {job_id} was cancelled")
    return None, exception_from_blob(blob)


class MapCall:
    """Outcomes of one map call by input index, filled by the I/O thread, taken by the consumer."""

    def __init__(self) -> None:
        self._outcomes: dict[int, tuple[str, str, bytes]] = {}
        self._condition = threading.Condition()  # one for the whole call, not one per job
        self._failure: BaseException | None = None

    def deliver(self, outcomes: list[tuple[int, str, str, bytes]]) -> None:
        """(index, job id, status, blob) of jobs that ended; from the I/O thread."""
        with self._condition:
            for index, job_id, status, blob in outcomes:
                self._outcomes[index] = (job_id, status, blob)
            self._condition.notify_all()

    def fail(self, failure: BaseException) -> None:
        """Every outcome not yet delivered fails with ``failure`` (the client closed)."""
        with self._condition:
            self._failure = failure
            self._condition.notify_all()

    def take(self, index: int, deadline: float | None) -> Any:
        """The value of input ``index``, waiting until ``deadline`` (monotonic) for it."""
        with self._condition:
            while index not in self._outcomes:
                if self._failure is not None:
                    raise self._failure
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"map: the result of input {index} did not come within the timeout")
                self._condition.wait(remaining)
            job_id, status, blob = self._outcomes.pop(index)
        value, error = decode_outcome(job_id, status, blob)
        if error is not None:
            raise error
        return value
