"""When a failed job runs again: retries with exponential backoff and jitter, attempt limits.

Pure functions over a job's rules and its attempt count; the caller passes the
random source, so tests are deterministic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

DEFAULT_MAX_ATTEMPTS = 3  # attempts a job may lose to dying workers before it is dead
MAX_BACKOFF = 3600.0  # no retry waits longer than an hour
RULE_OPTIONS = frozenset(("retries", "backoff", "timeout", "max_attempts"))  # the wire options that make rules


@dataclass(frozen=True)
class RetryRules:
    """How a job is retried and timed; jobs with the defaults share one instance."""

    retries: int = 0  # re-runs after the task raised (or timed out)
    backoff: float = 1.0  # seconds before the first retry; doubles each time
    timeout: float | None = None  # seconds a run may take
    max_attempts: int = DEFAULT_MAX_ATTEMPTS  # attempts in all, counting those lost to dead workers

    @classmethod
    def from_wire(cls, options: dict) -> "RetryRules":
        """Rules from a submit row's options map (already validated by the protocol)."""
        if not options or RULE_OPTIONS.isdisjoint(options):  # e.g. only a delay: the shared defaults
            return DEFAULT_RULES
        return cls(
            retries=options.get("retries", 0),
            backoff=float(options.get("backoff", 1.0)),
            timeout=options.get("timeout"),
            max_attempts=options.get("max_attempts", DEFAULT_MAX_ATTEMPTS),
        )

    @property
    def attempt_limit(self) -> int:
        """Attempts in all: enough for every retry, and at least max_attempts."""
        return max(self.max_attempts, self.retries + 1)


DEFAULT_RULES = RetryRules()


def should_retry(rules: RetryRules, attempt: int) -> bool:
    """After attempt number ``attempt`` raised: run it again?"""
    return attempt <= rules.retries


def retry_delay(rules: RetryRules, attempt: int, rng: random.Random) -> float:
    """Seconds to wait before the retry that follows ``attempt``: doubling, with +-50% jitter."""
    base = min(MAX_BACKOFF, rules.backoff * 2 ** (attempt - 1))
    return base * rng.uniform(0.5, 1.5)


def may_run_again_after_worker_loss(rules: RetryRules, attempt: int) -> bool:
    """After the worker running attempt ``attempt`` died: is there an attempt left?"""
    return attempt < rules.attempt_limit
