"""``python -m benchmarks [--quick | --tiny] [--observed] [--runs N] [--cases a,b] [--output PATH]``.

Starts its own cluster on 127.0.0.1, runs the cases on runner and on
ProcessPoolExecutor(2), prints the table, saves the JSON, and (a full run of
every case) writes the table into docs/benchmarks.md. Everything it started is
stopped by PID on the way out, also on Ctrl-C or SIGTERM. Exits 0 when every run
completed (missed targets included), 1 when a run failed, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.cases import brief, run_cases, start_bench
from benchmarks.cluster import ROOT, Cluster
from benchmarks.machine import describe
from benchmarks.curve import case_curve
from benchmarks.delayed import case_delayed_scale
from benchmarks.scale import case_scale
from benchmarks.settings import CASES, SOLO_CASES, Sizes, parse_cases, sizes_for

RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[1])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller counts and 1 run a case: about 30 s")
    size.add_argument("--tiny", action="store_true", help="a few seconds: checks the harness, measures little")
    parser.add_argument("--observed", action="store_true",
                        help="each broker serves metrics and has a dashboard; both are read every second")
    parser.add_argument("--runs", type=int, help="runs of each case [full: 3, quick and tiny: 1]")
    parser.add_argument("--cases", help=f"comma-separated cases to run, of {','.join(CASES)} (broker_cpu is map)")
    parser.add_argument("--scale-jobs", type=int, help="jobs queued in the scale case [full: 1,000,000]")
    parser.add_argument("--output", type=Path, help="the JSON file [benchmarks/results/<time>[-mode].json]")
    parser.add_argument("--docs", type=Path, help="write the table into this file [docs/benchmarks.md, full runs]")
    parser.add_argument("--no-docs", action="store_true", help="write no docs, even after a full run")
    parser.add_argument("--keep-logs", action="store_true", help="keep the broker's and workers' logs and journals")
    arguments = parser.parse_args(argv)
    try:
        arguments.cases = parse_cases(arguments.cases)
    except ValueError as exc:
        parser.error(str(exc))
    if arguments.runs is not None and arguments.runs < 1 or arguments.scale_jobs is not None and arguments.scale_jobs < 1:
        parser.error("--runs and --scale-jobs must be at least 1")
    arguments.mode = "tiny" if arguments.tiny else "quick" if arguments.quick else "full"
    return arguments


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    sizes = sizes_for(arguments.mode, arguments.runs, arguments.scale_jobs)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in the background (SIG_IGN)
    signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM unwinds like Ctrl-C, through every finally
    results = new_results(arguments, sizes)
    scratch = Path(tempfile.mkdtemp(prefix="runner-bench-"))
    clusters: list[Cluster] = []
    started = time.perf_counter()
    try:
        run_everything(scratch, sizes, arguments.cases, results, clusters, arguments.observed)
    except KeyboardInterrupt:
        results["interrupted"] = True
        print("interrupted: everything started was stopped; partial results follow", file=sys.stderr)
    finally:
        results["logs"] = report.summarise_logs([path for cluster in clusters for path in cluster.log_files])
        if arguments.observed:
            results["observers"] = {cluster.name: cluster.observed_reads for cluster in clusters}
        if arguments.keep_logs:
            print(f"logs and journals kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    results["seconds"] = time.perf_counter() - started
    results["load_average_end"] = list(os.getloadavg())  # others' work on the machine moves the numbers
    return finish(arguments, sizes, results)


def run_everything(scratch: Path, sizes: Sizes, cases: list[str], results: dict, clusters: list[Cluster],
                   observed: bool = False) -> None:
    """The cluster cases on one cluster and one PPE, then the scale case on clusters of its own.
    ``observed``: every broker is watched (benchmarks/observers.py)."""
    def record(case: str, sample: dict) -> None:
        results["cases"][case]["runs"].append(sample)

    main_cases = [case for case in cases if case not in SOLO_CASES]
    if main_cases:
        cluster = Cluster(scratch, "main", observed=observed)
        clusters.append(cluster)
        bench = None
        print(f"starting a broker and 2 workers; then {', '.join(main_cases)}, {sizes.runs} run(s) each",
              file=sys.stderr, flush=True)
        try:
            bench = start_bench(cluster, sizes)
            results["cpu_iterations"] = bench.cpu_iterations
            run_cases(bench, main_cases, record)
        finally:
            if bench is not None:
                bench.ppe.shutdown(wait=True, cancel_futures=True)
            cluster.stop()
    if "scale" in cases:
        for run in range(1, sizes.runs + 1):
            record("scale", case_scale(scratch, sizes, run, clusters, observed))
    if "delayed_scale" in cases:
        for _ in range(sizes.runs):
            record("delayed_scale", case_delayed_scale(scratch, sizes, clusters, observed))
    if "curve" in cases:
        print(f"starting a CURVE broker and 2 workers; then submit, map and round trip, {sizes.runs} run(s)",
              file=sys.stderr, flush=True)
        for run in range(1, sizes.runs + 1):
            record("curve", case_curve(scratch, sizes, clusters, observed))
            print(f"  curve run {run}/{sizes.runs}: {brief(results['cases']['curve']['runs'][-1])}",
                  file=sys.stderr, flush=True)


def new_results(arguments: argparse.Namespace, sizes: Sizes) -> dict[str, Any]:
    return {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mode": arguments.mode,
        "observed": arguments.observed,
        "sizes": asdict(sizes), "machine": describe(ROOT), "interrupted": False,
        "cases": {case: {"runs": []} for case in arguments.cases},
    }


def finish(arguments: argparse.Namespace, sizes: Sizes, results: dict[str, Any]) -> int:
    """Print the table, save the JSON and the docs; the exit code."""
    lines = report.evaluate(results, sizes)
    results["table"] = lines
    print(report.text_table(lines))
    stamp = results["started"].replace(":", "").replace("-", "").replace("+0000", "Z")
    suffix = ("" if arguments.mode == "full" else f"-{arguments.mode}") + ("-observed" if arguments.observed else "")
    output = arguments.output or RESULTS / f"{stamp}{suffix}.json"
    report.save_json(results, output)
    print(f"saved {output}", file=sys.stderr)
    docs = arguments.docs
    if docs is None and arguments.mode == "full" and arguments.cases == list(CASES) and not results["interrupted"]:
        docs = DOCS
    if docs is not None and not arguments.no_docs:
        report.write_docs(docs, report.docs_section(results, lines, output.name), observed=arguments.observed)
        print(f"wrote the table into {docs}", file=sys.stderr)
    failed = any(line["errors"] for line in lines)
    return 130 if results["interrupted"] else 1 if failed else 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
