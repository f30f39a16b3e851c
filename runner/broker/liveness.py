"""Which peers are alive: heartbeat bookkeeping with the clock passed in (sans-IO).

Every message from a peer counts as a heartbeat. A peer not heard from for
``interval * liveness`` seconds is declared dead (the Paranoid Pirate rule of the
ZeroMQ Guide); the server then forgets it and gives its jobs back.
"""

from __future__ import annotations


class Liveness:
    """Deadlines of every known peer."""

    def __init__(self, interval: float, liveness: int) -> None:
        if not interval > 0 or not liveness >= 1:  # written so that NaN fails too
            raise ValueError(
                f"heartbeat interval must be > 0 and liveness >= 1, got {interval!r} and {liveness!r}"
            )
        self.interval = interval
        self.liveness = liveness
        self._deadlines: dict[bytes, float] = {}

    @property
    def grace(self) -> float:
        """Seconds of silence after which a peer is dead."""
        return self.interval * self.liveness

    def seen(self, peer: bytes, now: float) -> None:
        """The peer just said something."""
        self._deadlines[peer] = now + self.grace

    def forget(self, peer: bytes) -> None:
        """The peer left on its own; stop tracking it."""
        self._deadlines.pop(peer, None)

    def expired(self, now: float) -> list[bytes]:
        """Peers whose deadline passed; they are forgotten as they are returned."""
        dead = [peer for peer, deadline in self._deadlines.items() if deadline < now]
        for peer in dead:
            del self._deadlines[peer]
        return dead

    def silent_for(self, peer: bytes, now: float) -> float | None:
        """Seconds since the peer last said something (None: not tracked)."""
        deadline = self._deadlines.get(peer)
        return None if deadline is None else max(0.0, now - (deadline - self.grace))

    def __contains__(self, peer: bytes) -> bool:
        return peer in self._deadlines
