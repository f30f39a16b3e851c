"""The futures an ``AsyncClient`` hands out, and how an outcome settles one."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from runner import protocol
from runner.mapping import decode_outcome

if TYPE_CHECKING:
    from runner.aio import AsyncClient


class AsyncJobFuture(asyncio.Future):
    """An asyncio future of one job's result; cancelling it also asks the broker to cancel the job.

    So ``asyncio.wait_for`` running out, or the cancellation of the task that awaits it,
    withdraws a job that has not started (a running one goes on; ``client.cancel(future,
    force=True)`` stops it). A job cancelled at the broker leaves this future cancelled.
    """

    def __init__(self, client: "AsyncClient", job_id: str) -> None:
        super().__init__(loop=client._loop)
        self.job_id = job_id
        self._client = client

    def cancel(self, msg: Any = None) -> bool:
        if self.done():
            return False
        self._client._abandon([self.job_id])
        return super().cancel(msg)

    def __repr__(self) -> str:
        state = "cancelled" if self.cancelled() else "finished" if self.done() else "pending"
        return f"<AsyncJobFuture {self.job_id} {state}>"


def settle(future: asyncio.Future, job_id: str, status: str, blob: bytes) -> None:
    """Resolve a job's future with its outcome (a map's future gets CancelledError as Client.map raises it)."""
    value, error = decode_outcome(job_id, status, blob)
    if status == protocol.CANCELLED and isinstance(future, AsyncJobFuture):
        asyncio.Future.cancel(future)  # cancelled at the broker already: no message back
    elif error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def expire(future: asyncio.Future, message_type: str, address: str) -> None:
    """A request's time is up: its waiter gets the TimeoutError Client raises."""
    if not future.done():
        future.set_exception(TimeoutError(f"the broker at {address} did not answer {message_type} in time"))
