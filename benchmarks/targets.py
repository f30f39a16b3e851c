"""The table's rows: which number each shows, against what, and the target issue 5 sets for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from benchmarks.settings import Sizes

Check = Callable[[float, "float | None"], "bool | None"]  # (runner median, reference median) -> met? None: not judged
FULL_SCALE = 1_000_000  # the restart target is set for this many jobs


@dataclass(frozen=True)
class Target:
    text: str
    check: Check


def at_least(value: float, unit: str) -> Target:
    return Target(f">= {value:,g} {unit}", lambda median, reference: median >= value)


def at_most(value: float, unit: str) -> Target:
    return Target(f"<= {value:,g} {unit}", lambda median, reference: median <= value)


def ratio_at_least(times: float, of: str) -> Target:
    return Target(f">= {times:g}x {of}", lambda median, reference: reference is not None and median >= times * reference)


def ratio_at_most(times: float, of: str) -> Target:
    return Target(f"<= {times:g}x {of}", lambda median, reference: reference is not None and median <= times * reference)


def unjudged(text: str) -> Target:
    """A target shown but not checked (it does not apply to this run's sizes)."""
    return Target(text, lambda median, reference: None)


def all_of(*targets: Target) -> Target:
    return Target(" and ".join(target.text for target in targets),
                  lambda median, reference: all(target.check(median, reference) for target in targets))


@dataclass(frozen=True)
class Row:
    """One line of the table: a runner metric, optionally a reference to compare with, a target."""

    label: str
    case: str
    metric: str  # "side.key" within one run of the case, e.g. "runner.jobs_per_s"
    unit: str
    reference: str | None = None  # "side.key" of the same case, or "case/side.key" of another
    reference_name: str = "PPE"
    target: Target | None = None


def rows(sizes: Sizes) -> list[Row]:
    """The table of issue 5, labelled with this run's sizes."""
    s = sizes
    return [
        Row(f"1. submit {s.submit_jobs:,} no-ops, then gather", "submit", "runner.jobs_per_s", "jobs/s",
            "ppe.jobs_per_s", "PPE", ratio_at_least(1.0, "PPE")),
        Row(f"2. map {s.map_jobs:,} no-ops (PPE: submit+result)", "map", "runner.jobs_per_s", "jobs/s",
            "ppe.jobs_per_s", "PPE", all_of(ratio_at_least(3.0, "PPE"), at_least(40_000, "jobs/s"))),
        Row(f"   map vs PPE.map(chunksize={s.ppe_map_chunksize:,}), for information", "map", "runner.jobs_per_s",
            "jobs/s", "ppe_map.jobs_per_s", "PPE.map"),
        Row(f"3. round trip p50 ({s.roundtrip_jobs:,} sequential)", "roundtrip", "runner.p50_us", "µs",
            "ppe.p50_us", "PPE", ratio_at_most(2.0, "PPE")),
        Row("3. round trip p99", "roundtrip", "runner.p99_us", "µs", "ppe.p99_us", "PPE", at_most(3_000, "µs")),
        Row("   round trip p50 floor: the same hops, no runner code (floor.py)", "roundtrip", "floor.p50_us", "µs",
            "ppe.p50_us", "PPE"),
        Row(f"4. CPU-bound {s.cpu_jobs:,} x ~20 ms", "cpu", "runner.jobs_per_s", "jobs/s", "ppe.jobs_per_s", "PPE",
            ratio_at_least(0.95, "PPE")),
        Row(f"5. I/O-bound {s.io_jobs:,} x 10 ms sleep, 64 threads", "io", "runner.jobs_per_s", "jobs/s",
            "ideal.jobs_per_s", "ideal", ratio_at_least(0.90, "ideal")),
        Row(f"6. scale: broker RSS per pending job ({s.scale_jobs:,})", "scale", "runner.rss_bytes_per_job", "B",
            target=at_most(600, "B")),
        Row("6. scale: journal bytes per pending job", "scale", "runner.journal_bytes_per_job", "B"),
        Row(f"6. scale: time to queue {s.scale_jobs:,}", "scale", "runner.queue_s", "s"),
        Row("6. scale: restart until the address is printed", "scale", "runner.restart_address_s", "s"),
        Row("6. scale: restart until all are queued again", "scale", "runner.restart_s", "s",
            target=at_most(15, "s") if s.scale_jobs >= FULL_SCALE else unjudged("<= 15 s for 1,000,000")),
        Row("6. scale: drain with 2 workers (vs case 2)", "scale", "runner.drain_jobs_per_s", "jobs/s",
            "map/runner.jobs_per_s", "map", ratio_at_least(1.0, "map")),
        Row("7. broker CPU per job in case 2", "map", "runner.broker_cpu_us_per_job", "µs", target=at_most(25, "µs")),
        Row("   client CPU per job in case 2, for information", "map", "runner.client_cpu_us_per_job", "µs"),
        Row("8. CURVE: submit (vs case 1 without CURVE)", "curve", "submit.jobs_per_s", "jobs/s",
            "submit/runner.jobs_per_s", "no CURVE"),
        Row("8. CURVE: map (vs case 2 without CURVE)", "curve", "map.jobs_per_s", "jobs/s",
            "map/runner.jobs_per_s", "no CURVE", ratio_at_least(0.8, "no CURVE")),
        Row("8. CURVE: round trip p50 (vs case 3 without CURVE)", "curve", "roundtrip.p50_us", "µs",
            "roundtrip/runner.p50_us", "no CURVE", ratio_at_most(1.2, "no CURVE")),
        Row(f"12a. async pool: {s.async_pool_jobs:,} x 100 ms asyncio.sleep, 2 x 5,000 coroutines", "async_pool",
            "runner.jobs_per_s", "jobs/s", "ideal.jobs_per_s", "ideal", ratio_at_least(0.8, "ideal")),
        Row("    its ideal's bound from the cluster: as many coroutine no-ops (vs slots / sleep)", "async_pool",
            "noop.jobs_per_s", "jobs/s", "sleep_bound.jobs_per_s", "slots / sleep"),
        Row("    the same sleeps on the thread pools (64 threads), for information", "async_pool",
            "thread.jobs_per_s", "jobs/s", "thread_bound.jobs_per_s", "threads / sleep"),
        Row(f"12b. AsyncClient submit+await {s.async_jobs:,} no-ops (vs Client)", "async_client", "async.jobs_per_s",
            "jobs/s", "client.jobs_per_s", "Client", ratio_at_least(0.8, "Client")),
        Row("12b. AsyncClient round trip p50 (vs Client)", "async_client", "async_roundtrip.p50_us", "µs",
            "client_roundtrip.p50_us", "Client", ratio_at_most(1.2, "Client")),
        Row(f"12c. AsyncClient loop lag p99, 1,000 jobs in flight ({s.lag_jobs:,} in all), client on a core of its own",
            "loop_lag", "own_core.lag_p99_ms", "ms", target=Target("< 5 ms", lambda median, reference: median < 5)),
        Row("   the loop's own part (the lag less the OS running others), p99, for information", "loop_lag",
            "own_core.lag_own_p99_ms", "ms"),
        Row("   the floor: the same ticker on an idle loop in a process on the same core, p99, for information",
            "loop_lag", "own_core.idle_lag_p99_ms", "ms"),
        Row("   the same with every process on every core, for information: loop lag p99", "loop_lag",
            "shared.lag_p99_ms", "ms"),
        Row("   its loop's own part, p99", "loop_lag", "shared.lag_own_p99_ms", "ms"),
        Row("   its floor (an idle loop beside it), p99", "loop_lag", "shared.idle_lag_p99_ms", "ms"),
        Row(f"13. delayed: broker RSS per held job ({s.scale_jobs:,}, delays 1-{s.delay_max:g} s; vs case 6)",
            "delayed_scale", "runner.rss_bytes_per_job", "B", "scale/runner.rss_bytes_per_job", "no delay"),
        Row(f"13. delayed: time to hold {s.scale_jobs:,}", "delayed_scale", "runner.queue_s", "s"),
        Row("13. delayed: restart until all are held again (vs case 6)", "delayed_scale", "runner.restart_s", "s",
            "scale/runner.restart_s", "no delay"),
        Row(f"13. due jobs' lateness p50 under the map load ({s.due_jobs:,} over {s.due_spread:g} s)", "due_precision",
            "runner.late_p50_ms", "ms"),
        Row("13. due jobs' lateness p99 under the map load", "due_precision", "runner.late_p99_ms", "ms",
            target=at_most(10, "ms")),
    ]
