"""Job ids nobody can guess that still arrive in order: 96 random bits each behind a time stamp.

A job id is the handle for fetching, cancelling and requeueing a job, so it must not be
predictable from another one (a shared prefix plus a counter would be): each id carries
96 bits from ``os.urandom``. It starts with the time its batch was drawn and its place in
that batch, so one client's ids increase and the journal's index on ``id`` grows at its
right edge; wholly random ids land all over that B-tree, which made each insert cost
about five times as much at a few hundred thousand rows. ``submit`` is a hot path: one
``os.urandom`` call per ID_BATCH ids keeps an id about as cheap as a counter.

An id is 39 hex digits: 12 of milliseconds since the epoch, 3 of the place in the batch,
24 random.
"""

from __future__ import annotations

import os
import time

RANDOM_BYTES = 12  # 96 random bits per id
ID_BATCH = 4096  # ids drawn from one os.urandom call (3 hex digits of place)


class JobIds:
    """An endless supply of job ids, increasing within each source; safe to share between threads."""

    def __init__(self) -> None:
        self._ids = iter(())

    def next(self) -> str:
        """A fresh id: a time stamp, a place, and 96 random bits, in 39 hex digits."""
        try:
            return next(self._ids)
        except StopIteration:
            # Two threads may refill at once: each takes ids from its own fresh batch, all random.
            self._ids = ids = iter(_batch())
            return next(ids)


_PLACES = [f"{place:03x}" for place in range(ID_BATCH)]
_WIDTH = 2 * RANDOM_BYTES


def _batch() -> list[str]:
    stamp = f"{int(time.time() * 1000) & 0xFFFF_FFFF_FFFF:012x}"
    digits = os.urandom(RANDOM_BYTES * ID_BATCH).hex()
    starts = range(0, len(digits), _WIDTH)
    return [stamp + place + digits[start:start + _WIDTH] for place, start in zip(_PLACES, starts)]
