"""What a client sends in batches: its submitted jobs, and its acknowledgements of outcomes.

Jobs queue here and leave in as few messages as the load allows. The client's I/O
thread sends whatever queued since its last turn in one message; but a lone job, or
a full batch of SEND_NOW_ROWS, leaves at once from the submitting thread, because
a thread that submits in a loop holds the GIL and the I/O thread could wait for it
for a whole switch interval (5 ms) before sending anything.

Acknowledgements tell the broker that outcomes arrived (from then on only the
result TTL keeps them). Nothing waits on them, so they gather for ACK_DELAY and
leave in one message, off any job's path.
"""

from __future__ import annotations

import threading
from collections import deque

from runner import protocol
from runner.connection import BrokerConnection
from runner.loop import EventLoop, Timer

SEND_NOW_ROWS = 256  # queued jobs a submitting thread sends itself, not waiting for the I/O thread
ACK_DELAY = 0.05  # seconds acknowledgements gather before one message carries them all
ACK_BATCH = 10_000
SUBMIT_PAYLOAD_AT = protocol.JOB_FIELDS.index("payload")
#: Bound on a submit row's packed size beside its payload: task and queue (MAX_NAME each, checked
#: at submit), the client's 32-digit id, pool, priority and options. A full MAX_BATCH fits 64 MiB.
SUBMIT_ROW_BYTES = 2 * protocol.MAX_NAME + 128  # acknowledgements that leave at once, without waiting for ACK_DELAY


class JobSender:
    """Submit rows on their way to the broker, in submission order; ``add`` from any thread."""

    def __init__(self, loop: EventLoop, connection: BrokerConnection) -> None:
        self._loop = loop
        self._connection = connection
        self.max_message_bytes = protocol.MAX_MESSAGE_BYTES  # the broker's, once it welcomes us
        self._rows: deque[list] = deque()
        self._scheduled = False  # the I/O thread will send on its next turn
        self._lock = threading.Lock()  # keeps batches in order when two threads send

    def add(self, row: list, alone: bool, hold: bool = False) -> None:
        """Queue one submit row; ``alone``: no other job of this client is in flight.

        ``hold``: schedule no send; the caller calls ``send_queued`` soon (AsyncClient, while it
        resolves a burst of outcomes: the jobs their waiters submit leave in one message).
        """
        self._rows.append(row)
        if alone or len(self._rows) >= SEND_NOW_ROWS:
            self.send_queued()
        elif not hold and not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self.send_queued)

    def send_queued(self) -> None:
        """Send every queued row now, from whichever thread calls first."""
        with self._lock:
            self._scheduled = False  # before draining, so a later add schedules again
            rows = []
            while self._rows:
                rows.append(self._rows.popleft())
            self.send(rows)

    def send(self, rows: list[list], resend: bool = False) -> None:
        """Send ``rows`` now, in messages the broker accepts (``resend``: after registering again)."""
        for batch in protocol.split_by_size(rows, SUBMIT_PAYLOAD_AT, SUBMIT_ROW_BYTES, self.max_message_bytes):
            body: dict = {"jobs": batch}
            if resend:
                body["resend"] = True
            self._connection.send(protocol.SUBMIT, body)


class Acknowledger:
    """Acknowledgements of received outcomes, gathered; on the I/O thread only."""

    def __init__(self, loop: EventLoop, connection: BrokerConnection) -> None:
        self._loop = loop
        self._connection = connection
        self._ids: list[str] = []
        self._timer: Timer | None = None

    def add(self, job_ids: list[str]) -> None:
        """These outcomes arrived: say so within ACK_DELAY, or now if many wait."""
        self._ids.extend(job_ids)
        if len(self._ids) >= ACK_BATCH:
            self.send()
        elif self._timer is None:
            self._timer = self._loop.call_later(ACK_DELAY, self.send)

    def send(self) -> None:
        """Send every gathered acknowledgement now (also before the client leaves)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for start in range(0, len(self._ids), protocol.MAX_BATCH):
            self._connection.send(protocol.ACK, {"ids": self._ids[start : start + protocol.MAX_BATCH]})
        self._ids = []
