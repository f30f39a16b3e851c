"""Prometheus metrics of a broker (``runner broker --metrics-port``), served by prometheus_client.

The broker's loop publishes a snapshot of its counters once a heartbeat (``publish``,
on the loop's thread); the HTTP server thread of prometheus_client only reads the
latest snapshot, replaced by a single reference assignment, so a scrape never takes
a lock the loop waits on nor reads a dict while the loop changes it.

Metric names (labels; task and queue names capped, see runner/broker/counters.py):
- runner_jobs_submitted_total, runner_jobs_completed_total, runner_jobs_failed_total,
  runner_jobs_retried_total (queue, task): counters since the broker started;
  ``failed`` counts every failed run, ``retried`` those run again after it.
- runner_queue_depth (queue): jobs waiting; runner_jobs_running: jobs leased to workers;
  runner_workers_connected.
- runner_job_queue_wait_seconds, runner_job_run_seconds (queue): histograms, observed
  when a run ends, from its accepted, leased and finished times at the broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from runner.broker.counters import BUCKETS, COMPLETED, FAILED, RETRIED, SUBMITTED, Histogram, Totals

if TYPE_CHECKING:
    from runner.broker.server import Broker

COUNTERS = (("submitted", SUBMITTED, "Jobs accepted"), ("completed", COMPLETED, "Runs that ended done"),
            ("failed", FAILED, "Runs that ended failed (retried or not)"),
            ("retried", RETRIED, "Failed runs whose job runs again"))


@dataclass
class Snapshot:
    """What one scrape reports; built on the loop's thread, read by the HTTP thread."""

    counters: Totals = field(default_factory=Totals)
    depth: dict[str, int] = field(default_factory=dict)
    running: int = 0
    workers: int = 0


class Metrics(Collector):
    """Serves the latest published snapshot to Prometheus."""

    def __init__(self, bind: str, port: int) -> None:
        self.snapshot = Snapshot()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.server, self.thread = start_http_server(port, addr=bind, registry=self.registry)
        self.port = self.server.server_port

    def publish(self, broker: "Broker") -> None:
        """Take a fresh snapshot of the broker's counters (on the broker loop's thread)."""
        scheduler = broker.jobs.scheduler
        self.snapshot = Snapshot(broker.jobs.counters.snapshot(), scheduler.pending_by_queue(),
                                 sum(len(slot.leased) for slot in scheduler.workers.values()),
                                 sum(1 for peer in broker.peers.values() if peer.role == "worker"))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        for name, place, text in COUNTERS:
            family = CounterMetricFamily(f"runner_jobs_{name}", f"{text}, by queue and task.", labels=["queue", "task"])
            for (queue, task), row in snapshot.counters.by_task.items():
                family.add_metric([queue, task], row[place])
            yield family
        depth = GaugeMetricFamily("runner_queue_depth", "Jobs waiting in a queue.", labels=["queue"])
        for queue, count in snapshot.depth.items():
            depth.add_metric([queue], count)
        yield depth
        yield GaugeMetricFamily("runner_jobs_running", "Jobs leased to workers.", value=snapshot.running)
        yield GaugeMetricFamily("runner_workers_connected", "Workers connected.", value=snapshot.workers)
        for name, histograms, text in (("queue_wait", snapshot.counters.wait, "accepted to leased"),
                                       ("run", snapshot.counters.run, "leased to finished")):
            family = HistogramMetricFamily(f"runner_job_{name}_seconds", f"Seconds from {text}, by queue.",
                                           labels=["queue"])
            for queue, histogram in histograms.items():
                family.add_metric([queue], _cumulative(histogram), histogram.total)
            yield family


def _cumulative(histogram: Histogram) -> list[tuple[str, float]]:
    buckets, total = [], 0
    for bound, count in zip((*map(str, BUCKETS), "+Inf"), histogram.counts):
        total += count
        buckets.append((bound, total))
    return buckets
