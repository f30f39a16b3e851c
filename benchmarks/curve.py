"""Case 8: submit, map and round trip again over CurveZMQ, against the same cases without it.

A cluster of its own (broker and two workers, as the main one) with keys made for
the run; only runner's side of cases 1-3 is measured. The table compares each with
the same metric of this run's cluster without CURVE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.cases import Bench, runner_map, runner_roundtrip, runner_submit, on_runner, start_cluster
from benchmarks.cluster import Cluster
from benchmarks.settings import Sizes, budget
from runner import keys


def case_curve(scratch: Path, sizes: Sizes, clusters: list[Cluster], observed: bool = False) -> dict[str, Any]:
    """One run of case 8: {"submit": ..., "map": ..., "roundtrip": ...} measured over CURVE.
    ``observed``: its broker is watched (benchmarks/observers.py)."""
    folder = scratch / "curve-keys"
    if not folder.exists():
        keys.generate(folder)
    cluster = Cluster(scratch, f"curve{len(clusters)}", curve_keys=str(folder), observed=observed)
    clusters.append(cluster)
    try:
        bench = Bench(cluster, None, sizes, 0)  # type: ignore[arg-type] - no PPE: runner's side only
        start_cluster(cluster)
        jobs = sizes.map_jobs
        return {
            "submit": runner_submit(bench),
            "map": on_runner(bench, budget(jobs), lambda client: runner_map(client, cluster.broker_pid, jobs)),
            "roundtrip": runner_roundtrip(bench),
        }
    finally:
        cluster.stop()
