"""``client.executor()``: a concurrent.futures.Executor whose work runs on the cluster.

Code written for ProcessPoolExecutor (submit, map, shutdown, context manager) runs
unchanged; every job takes the executor's job options (``client.executor(delay=60)``: each
job runs a minute after it is submitted).
"""

from __future__ import annotations

import threading
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from runner.tasks import JobOptions, Task, resolve_task

if TYPE_CHECKING:
    from runner.client import Client


class ClusterExecutor(Executor):
    """Runs code written for ProcessPoolExecutor on the cluster, unchanged."""

    def __init__(self, client: Client, options: JobOptions) -> None:
        self._client = client
        self._options = options
        self._futures: set[Future] = set()
        self._lock = threading.Lock()  # submit may come from several user threads
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            reference, defaults = resolve_task(fn)
            options = self._options if not isinstance(fn, Task) else defaults
            future = self._client._submit(reference, options, args, kwargs)
            self._futures.add(future)
        future.add_done_callback(self._forget)
        return future

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        options = {"pool": self._options.pool, "queue": self._options.queue, "priority": self._options.priority,
                   "delay": self._options.delay, "at": self._options.at}
        return self._client.map(fn, *iterables, timeout=timeout, **options)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            for future in pending:
                try:
                    future.exception()
                except Exception:
                    pass  # a cancelled or failed job: shutdown only waits for it to end

    def _forget(self, future: Future) -> None:
        with self._lock:
            self._futures.discard(future)
