"""What the benchmark runs: sizes per mode, the cluster's shape, and time budgets."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Sizes:
    """Job counts of each case, and how many times each case runs."""

    runs: int
    submit_jobs: int  # case 1: submit() one by one, then gather
    map_jobs: int  # case 2 (and 7): client.map
    ppe_map_chunksize: int  # PPE.map, reported for information
    roundtrip_jobs: int  # case 3: sequential submit().result()
    roundtrip_warmup: int
    cpu_jobs: int  # case 4: ~20 ms of pure Python each
    io_jobs: int  # case 5: a 10 ms sleep each, on the thread pools
    scale_jobs: int  # case 6: queued with no worker connected
    warmup_jobs: int  # no-op jobs through a fresh client before each timed run
    async_jobs: int = 20_000  # case (b): AsyncClient and Client submit+await no-ops
    lag_jobs: int = 20_000  # case (c): no-ops through 1,000 in flight while the loop's lag is measured
    async_pool_jobs: int = 20_000  # case 12a: a 100 ms asyncio.sleep each, on the async pools
    delay_max: float = 60.0  # delayed_scale: scale_jobs delayed by 1 to this many seconds
    due_jobs: int = 500  # due_precision: delayed jobs whose lateness is measured under the map load ...
    due_spread: float = 3.0  # ... their due times spread over this many seconds


MODES = {
    "full": Sizes(runs=3, submit_jobs=20_000, map_jobs=100_000, ppe_map_chunksize=1_000, roundtrip_jobs=2_000,
                  roundtrip_warmup=200, cpu_jobs=200, io_jobs=2_000, scale_jobs=1_000_000, warmup_jobs=200),
    "quick": Sizes(runs=1, submit_jobs=20_000, map_jobs=50_000, ppe_map_chunksize=1_000, roundtrip_jobs=1_000,
                   roundtrip_warmup=100, cpu_jobs=100, io_jobs=2_000, scale_jobs=50_000, warmup_jobs=200,
                   delay_max=10.0, due_jobs=300),
    "tiny": Sizes(runs=1, submit_jobs=300, map_jobs=1_000, ppe_map_chunksize=100, roundtrip_jobs=50,
                  roundtrip_warmup=10, cpu_jobs=4, io_jobs=64, scale_jobs=1_000, warmup_jobs=20,
                  async_jobs=300, lag_jobs=2_000, async_pool_jobs=200, delay_max=3.0, due_jobs=30, due_spread=1.0),
}

CASES = ("submit", "map", "roundtrip", "cpu", "io", "scale", "curve", "async_pool", "async_client", "loop_lag",
         "delayed_scale", "due_precision")
SOLO_CASES = ("scale", "curve", "delayed_scale")  # each runs on clusters of its own, not the shared one
ALIASES = {"broker_cpu": "map", "broker-cpu": "map"}  # case 7 is measured during case 2

WORKERS = 2  # runner workers, each with ...
PROCESSES_PER_WORKER = 1  # ... one pool process, so the process pools match PPE's 2 processes
THREADS_PER_WORKER = 32
ASYNC_TASKS_PER_WORKER = 5_000  # coroutine jobs at once, case 12a
PPE_WORKERS = 2
HOST = "127.0.0.1"  # nothing listens anywhere else

START_TIMEOUT = 30.0  # seconds for a broker to print its address, or workers to join
STOP_TIMEOUT = 10.0  # seconds a process gets after SIGTERM before SIGKILL
REQUEST_TIMEOUT = 30.0  # seconds a client waits for the broker to answer a request
BROKER_SETTLE = 0.3  # seconds the broker gets to handle the last acknowledgements before its CPU is read

# A run is cut off when it is slower than this: budget = BUDGET_BASE + jobs / rate.
BUDGET_BASE = 30.0
MIN_RATE = 200.0  # jobs/s, throughput and round-trip cases
MIN_QUEUE_RATE = 2_000.0  # jobs/s accepted while queueing the scale case
MIN_RESTORE_RATE = 5_000.0  # jobs/s back in the queue after the restart
MIN_DRAIN_RATE = 1_000.0  # jobs/s drained by the workers
STATUS_POLL = 0.25  # seconds between status requests while waiting for a count


def budget(jobs: int, rate: float = MIN_RATE) -> float:
    """Seconds a run of ``jobs`` may take before it is cut off and recorded as timed out."""
    return BUDGET_BASE + jobs / rate


def sizes_for(mode: str, runs: int | None = None, scale_jobs: int | None = None) -> Sizes:
    """The sizes of ``mode``, with the command line's overrides."""
    sizes = MODES[mode]
    if runs is not None:
        sizes = replace(sizes, runs=runs)
    if scale_jobs is not None:
        sizes = replace(sizes, scale_jobs=scale_jobs)
    return sizes


def parse_cases(text: str | None) -> list[str]:
    """``submit,map`` -> the cases in their standard order; None -> all."""
    if not text:
        return list(CASES)
    wanted = {ALIASES.get(name.strip(), name.strip()) for name in text.split(",") if name.strip()}
    unknown = wanted - set(CASES)
    if unknown:
        raise ValueError(f"unknown cases {sorted(unknown)}; choose from {', '.join(CASES)} (broker_cpu is map)")
    return [case for case in CASES if case in wanted]
