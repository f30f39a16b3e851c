"""How many jobs a worker asks the broker for, per pool: its slots plus an adaptive prefetch.

A pool with free slots and nothing queued locally waits a broker round trip for
work; with short jobs that round trip dominates. So the worker holds, beyond its
slots, as many jobs as its pool finishes in about PREFETCH_WINDOW seconds. Long
jobs get no prefetch (another worker may be idle), no-op jobs get hundreds.
Decisions only: the worker reports finished submissions and sends the credit
this returns (sans-IO, clock passed in by the caller's measurements).
"""

from __future__ import annotations

PREFETCH_WINDOW = 0.02  # seconds of work a worker keeps queued beyond its running jobs
MAX_PREFETCH = 512  # jobs a worker keeps queued at most, per pool
SMOOTHING = 0.2  # weight of the newest measurement in the moving average
CHANGE_THRESHOLD = 0.25  # tell the broker only about changes larger than this fraction
SLOWER_JUMP = 4.0  # a task's job this many times slower than its average replaces it at once
GIVE_BACK_ABOVE = 2  # jobs held beyond this many times the credit go back to the broker


class CreditGauge:
    """The credit of each pool: slots plus a prefetch sized by how fast jobs finish."""

    def __init__(self, slots: dict[str, int]) -> None:
        self.slots = dict(slots)
        self._seconds_per_job: dict[str, float] = {}  # by pool: sizes the prefetch
        self._seconds_per_task: dict[str, float] = {}  # by task: decides what may be grouped
        self.announced = dict(slots)  # what the broker was last told
        # The most ever announced: leases sent before a lowered credit arrived may reach it.
        self.ceiling = dict(slots)

    def observe(self, pool: str, task: str, seconds: float, jobs: int, ran: float | None = None) -> None:
        """A submission of ``jobs`` jobs of ``task`` took ``seconds`` in ``pool``; its jobs ran ``ran`` of them.

        Where the pool measured it (a process-pool child), the jobs' own time counts, not
        the submission's trip there and back: that fixed cost made a small group of no-ops
        look slow, which shrank the prefetch, so fewer jobs waited, the next groups were
        smaller still, and the credit swung back and forth (hundreds of credit messages,
        jobs given back and leased again, in the 20,000 no-ops of benchmark case 12c).
        """
        if jobs <= 0 or pool not in self.slots:
            return
        sample = max(seconds if ran is None else ran, 1e-6) / jobs
        previous = self._seconds_per_job.get(pool)
        # A plain moving average: one very slow sample still moves it far (from 5 µs to 20 ms
        # jobs, a single sample cuts the prefetch a hundredfold), noise only a little.
        self._seconds_per_job[pool] = sample if previous is None else previous + SMOOTHING * (sample - previous)
        _update(self._seconds_per_task, task, sample)

    def seconds_per_job(self, task: str) -> float | None:
        """How long a job of ``task`` takes, as measured so far (None: never seen)."""
        return self._seconds_per_task.get(task)

    def credit(self, pool: str) -> int:
        """Slots plus prefetch for ``pool`` as of the measurements so far."""
        per_job = self._seconds_per_job.get(pool)
        prefetch = 0 if per_job is None else min(MAX_PREFETCH, int(PREFETCH_WINDOW * self.slots[pool] / per_job))
        return self.slots[pool] + prefetch

    def excess(self, pool: str, held: int) -> int:
        """Jobs held far beyond the current credit (jobs became slow): others should run them.

        Only beyond twice the credit, so that noise in the measurements does not send jobs
        back and forth.
        """
        return max(0, held - GIVE_BACK_ABOVE * self.announced[pool])

    def changed(self) -> dict[str, int] | None:
        """The new credit of every pool if any changed enough to tell the broker, else None."""
        wanted = {pool: self.credit(pool) for pool in self.slots}
        for pool, credit in wanted.items():
            old = self.announced[pool]
            if abs(credit - old) > CHANGE_THRESHOLD * old:
                self.announced = wanted
                self.ceiling = {name: max(self.ceiling[name], wanted[name]) for name in wanted}
                return wanted
        return None


def _update(averages: dict[str, float], key: str, sample: float) -> None:
    """A moving average that jumps when a task turns much slower (its jobs must stop being
    grouped at once), but not for the noise of a single slow sample."""
    previous = averages.get(key)
    jumped = previous is None or sample > SLOWER_JUMP * previous
    averages[key] = sample if jumped else previous + SMOOTHING * (sample - previous)
