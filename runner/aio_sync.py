"""The cluster-wide Lock, Semaphore, Event and Queue of runner.sync, awaited: an ``AsyncClient``'s.

Each object is runner.sync's (the same names, values and checks, the same broker
requests and errors) with its calls made coroutines, in the shape of asyncio's:
``async with client.Lock(name)``, ``await sem.acquire()``, ``await event.wait()``,
``await queue.get()``. The ``with`` statement is refused: it cannot await.

A waiting ``acquire`` that is cancelled (its task, or ``asyncio.wait_for``) still has
its request at the broker; should the broker grant the slot after all, it is given back
at once, so a cancelled waiter never holds a slot. A cancelled waiting ``get`` cannot
be undone the same way: an item the broker hands out after the cancellation is lost.
Give ``get`` a ``timeout`` instead of cancelling it.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from runner import protocol, sync
from runner.sync import _raise_for, _wait_for

if TYPE_CHECKING:
    from runner.aio import AsyncClient


class AsyncSemaphore(sync.Semaphore):
    """At most ``value`` holders across the cluster, first come first served; awaited."""

    _client: "AsyncClient"

    def __init__(self, name: str, value: int = 1, *, client: "AsyncClient") -> None:
        super().__init__(name, value, client=client)  # type: ignore[arg-type]

    async def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Take a slot; False if ``blocking`` is False or ``timeout`` passed first."""
        wait = _wait_for(blocking, timeout)
        request = asyncio.ensure_future(self._client._sync("acquire", self.name, wait, limit=self.value,
                                                           owner=self._owner, timeout=wait, blocking=blocking))
        try:
            answer = await asyncio.shield(request)
        except asyncio.CancelledError:
            request.add_done_callback(self._give_back_late_grant)
            raise
        return _raise_for(answer)["acquired"]

    async def release(self) -> None:  # type: ignore[override]
        """Give a slot back; RuntimeError if this object holds none, as asyncio.Lock raises."""
        _raise_for(await self._client._sync("release", self.name, owner=self._owner))

    async def locked(self) -> bool:  # type: ignore[override]
        """True when no slot is free."""
        return _raise_for(await self._client._sync("locked", self.name))["locked"]

    def _give_back_late_grant(self, request: "asyncio.Future[dict]") -> None:
        if not request.cancelled() and request.exception() is None and request.result().get("acquired"):
            asyncio.ensure_future(self.release())

    async def __aenter__(self) -> "AsyncSemaphore":
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.release()

    def __enter__(self) -> Any:
        raise TypeError(f"use `async with` with a {type(self).__name__}")

    def __exit__(self, *exc_info: Any) -> None:  # pragma: no cover - __enter__ refused
        pass


class AsyncLock(AsyncSemaphore):
    """A cluster-wide mutex: a semaphore of one."""

    def __init__(self, name: str, *, client: "AsyncClient") -> None:
        super().__init__(name, 1, client=client)


class AsyncEvent(sync.Event):
    """A flag every process of the cluster can set, clear and wait for; awaited."""

    _client: "AsyncClient"

    def __init__(self, name: str, *, client: "AsyncClient") -> None:
        super().__init__(name, client=client)  # type: ignore[arg-type]

    async def set(self) -> None:  # type: ignore[override]
        _raise_for(await self._client._sync("event_set", self.name))

    async def clear(self) -> None:  # type: ignore[override]
        _raise_for(await self._client._sync("event_clear", self.name))

    async def is_set(self) -> bool:  # type: ignore[override]
        return _raise_for(await self._client._sync("event_is_set", self.name))["set"]

    async def wait(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        """Wait until the event is set (True) or ``timeout`` passes (False)."""
        wait = _wait_for(True, timeout)
        return _raise_for(await self._client._sync("event_wait", self.name, wait, timeout=wait))["set"]


class AsyncQueue(sync.Queue):
    """The cluster's FIFO of msgpack values, awaited; ``maxsize`` > 0 makes producers wait."""

    _client: "AsyncClient"

    def __init__(self, name: str, maxsize: int = 0, *, client: "AsyncClient") -> None:
        super().__init__(name, maxsize, client=client)  # type: ignore[arg-type]

    async def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:  # type: ignore[override]
        """Add an item, waiting for room if the queue is full; queue.Full if none came in time."""
        blob = sync.pack_item(item)
        wait = _wait_for(block, timeout)
        _raise_for(await self._client._sync("queue_put", self.name, wait, item=blob, maxsize=self.maxsize,
                                            timeout=wait, blocking=block))

    async def get(self, block: bool = True, timeout: float | None = None) -> Any:  # type: ignore[override]
        """Remove and return the oldest item, waiting for one; queue.Empty if none came in time."""
        wait = _wait_for(block, timeout)
        answer = _raise_for(await self._client._sync("queue_get", self.name, wait, timeout=wait, blocking=block))
        return protocol.unpack(answer["item"])

    async def put_nowait(self, item: Any) -> None:  # type: ignore[override]
        await self.put(item, block=False)

    async def get_nowait(self) -> Any:  # type: ignore[override]
        return await self.get(block=False)

    async def qsize(self) -> int:  # type: ignore[override]
        return _raise_for(await self._client._sync("queue_size", self.name))["size"]

    async def empty(self) -> bool:  # type: ignore[override]
        return await self.qsize() == 0

    async def full(self) -> bool:  # type: ignore[override]
        return 0 < self.maxsize <= await self.qsize()
