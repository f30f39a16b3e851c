"""The worker's results on their way to the broker, kept until the broker confirms them (no sockets).

A result counts once the broker has journaled it; until then the worker must not forget the
run, or a broker that lost the result (it was killed before its commit, or the result went
into a connection the worker then closed, or to a restarted broker that did not know the
worker yet) leases the job again and it runs twice. So:

- While the broker has not welcomed the worker's latest hello, results are held, not sent:
  sent then, they would be dropped with the connection or ignored by a broker that does not
  know the worker.
- Sent results are numbered (one number per ``results`` message, counted from the welcome);
  the broker's heartbeats, sent after its journal commit, say how many of the session's
  messages it has (``confirmed``), and those are forgotten.
- At each hello (``new_session``) every result not confirmed is held again and claimed in the
  hello's ``running`` list, as a run the worker still has: the broker keeps each such job on
  this worker (or tells it to drop the claim: the result had counted, or the job moved on),
  and after the welcome (``welcomed``) the held results go out and count for that lease.

The cost on the hot path is an append per ``results`` message and a pop per confirmed one;
a result is kept about one heartbeat longer than before.
"""

from __future__ import annotations

import collections


class Reports:
    """Results held until a welcome, and results sent but not yet confirmed by the broker."""

    def __init__(self) -> None:
        self._held: dict[str, list] = {}  # job id -> result row, to send after the next welcome
        self._unconfirmed: collections.deque[tuple[int, list[list]]] = collections.deque()  # (number, rows)
        self._sent = 0  # results messages sent in this session

    def __len__(self) -> int:
        """How many results the worker keeps (held or unconfirmed)."""
        return len(self._held) + sum(len(rows) for _, rows in self._unconfirmed)

    def hold(self, rows: list[list]) -> None:
        """Keep ``rows`` until the welcome of the hello under way (the broker does not take them now)."""
        for row in rows:
            self._held[row[0]] = row

    def sent(self, rows: list[list]) -> None:
        """One ``results`` message with ``rows`` went to the broker that welcomed this session."""
        self._sent += 1
        self._unconfirmed.append((self._sent, rows))

    def confirmed(self, count: int) -> None:
        """The broker has journaled the first ``count`` results messages of this session."""
        while self._unconfirmed and self._unconfirmed[0][0] <= count:
            self._unconfirmed.popleft()

    def new_session(self) -> list[list]:
        """A hello is about to go: every result not confirmed is held again; return the
        ``[job id, attempt]`` claims for its ``running`` list. Numbering starts again."""
        while self._unconfirmed:
            self.hold(self._unconfirmed.popleft()[1])
        self._sent = 0
        return [[job_id, row[1]] for job_id, row in self._held.items()]

    def welcomed(self) -> list[list]:
        """The hello was welcomed: the held results, to send now (each then goes through ``sent``)."""
        rows, self._held = list(self._held.values()), {}
        return rows
