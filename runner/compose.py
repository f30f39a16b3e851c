"""``runner.chain`` and ``runner.group``: thin sugar over Futures passed as arguments.

A step is a tuple ``(fn, *args)``. ``chain`` submits each step with the previous step's
Future as its first argument (the broker passes the result on: Celery's convention) and
returns the last step's Future. ``group`` submits its steps side by side and returns one
``GroupFuture`` of the list of their results, which may itself be an argument of a later
job (that job gets the list: a "chord") or named in ``after=``. Both use the current client
(``runner.get_client()``) unless given ``client=``; other keywords (``queue=``,
``retries=``...) are options of every step.
"""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future
from typing import Any, Iterable

from runner.current import get_client


def _split(step: Any) -> tuple[Any, tuple]:
    if not isinstance(step, tuple) or not step:
        raise TypeError(f"a step is a tuple (fn, *args), got {step!r}")
    return step[0], step[1:]


def chain(*steps: tuple, client: Any = None, **options: Any) -> Future:
    """Run ``steps`` one after the other, each given the previous result first; the last step's Future.

    ``chain((fetch, url), (parse,), (store, "table"))`` runs ``store(parse(fetch(url)), "table")``.
    When a step fails, the later ones fail with ``runner.DependencyError`` naming it.
    """
    if not steps:
        raise ValueError("chain() needs at least one step (fn, *args)")
    client = client or get_client()
    fn, args = _split(steps[0])
    future = client.submit(fn, *args, **options)
    for step in steps[1:]:
        fn, args = _split(step)
        future = client.submit(fn, future, *args, **options)
    return future


class GroupFuture(Future):
    """A Future of the results of several jobs, as a list in their order.

    It is done once every job is; it fails with the error of the first job to fail (the
    others' outcomes stay in ``futures``). Passed as an argument, the job gets the list of
    results; ``after=[group]`` waits for every job of it.
    """

    is_group = True  # what runner/after.py looks for

    def __init__(self, futures: Iterable[Future]) -> None:
        super().__init__()
        self.futures = list(futures)
        self._left = len(self.futures)
        self._count_lock = threading.Lock()
        if not self.futures:
            self.set_result([])
        for future in self.futures:
            future.add_done_callback(self._member_done)

    def _member_done(self, future: Future) -> None:
        error = CancelledError(f"{future!r} was cancelled") if future.cancelled() else future.exception()
        with self._count_lock:
            self._left -= 1
            last = self._left == 0
            if self.done():
                return
            if error is not None:
                self.set_exception(error)
            elif last:
                self.set_result([member.result() for member in self.futures])

    def cancel(self) -> bool:
        """Cancel every job of the group that has not started; True if all were."""
        return all([future.cancel() for future in self.futures])

    def __repr__(self) -> str:
        return f"<GroupFuture of {len(self.futures)} jobs {self._state.lower()}>"


def group(*steps: tuple, client: Any = None, **options: Any) -> GroupFuture:
    """Run ``steps`` side by side; one GroupFuture of the list of their results.

    ``client.submit(total, runner.group((count, "a"), (count, "b")))`` runs ``total([n_a, n_b])``
    once both are done, with no round trip through this process.
    """
    client = client or get_client()
    futures = []
    for step in steps:
        fn, args = _split(step)
        futures.append(client.submit(fn, *args, **options))
    return GroupFuture(futures)
