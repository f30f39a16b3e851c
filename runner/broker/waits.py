"""Requests waiting in the broker's sync state, and their deadlines (no I/O, no clock).

A ``Wait`` is one blocked request (an acquire, an event wait, a get or a put) in its
name's FIFO ``line``; ``Deadlines`` orders the waits that have one, so the server
knows when to call ``SyncState.expire`` next.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

# The deadline heap is rebuilt when it holds this many more answered waits than live
# ones, so waits answered long before their deadline do not pile up in it.
_HEAP_SLACK = 64


@dataclass(eq=False, slots=True)
class Wait:
    """A request waiting in ``line``, its name's FIFO of waits of one kind."""

    seq: int
    peer: bytes
    request: int
    kind: str  # "acquire", "event", "get" or "put"
    name: str
    deadline: float | None
    line: dict[int, "Wait"]
    owner: str = ""
    item: bytes = b""
    live: bool = True


class Deadlines:
    """Waits by deadline: a heap with lazy removal, rebuilt when mostly stale."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Wait]] = []
        self._live = 0

    def add(self, wait: Wait, deadline: float) -> None:
        heapq.heappush(self.heap, (deadline, wait.seq, wait))
        self._live += 1

    def discard(self) -> None:
        """A wait with a deadline was answered; its entry may linger until a rebuild."""
        self._live -= 1
        if len(self.heap) > 2 * self._live + _HEAP_SLACK:
            self.heap = [entry for entry in self.heap if entry[2].live]
            heapq.heapify(self.heap)

    def due(self, now: float) -> list[Wait]:
        """Live waits whose deadline is ``now`` or earlier, earliest first."""
        due = []
        while self.heap and self.heap[0][0] <= now:
            wait = heapq.heappop(self.heap)[2]
            if wait.live:
                due.append(wait)
        return due

    def earliest(self) -> float | None:
        while self.heap and not self.heap[0][2].live:
            heapq.heappop(self.heap)
        return self.heap[0][0] if self.heap else None


