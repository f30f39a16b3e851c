"""Smoke test of the benchmark harness: a tiny run end to end, no timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys

from cluster import ROOT, die_with_parent, environment

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # benchmarks/ is a folder of the repository, not an installed package

from benchmarks import report


def test_tiny_run_measures_submit_and_round_trip(tmp_path):
    output = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--cases", "submit,roundtrip", "--runs", "1",
         "--output", str(output), "--no-docs"],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=60, check=False, preexec_fn=die_with_parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert set(results["cases"]) == {"submit", "roundtrip"}
    (submit,) = results["cases"]["submit"]["runs"]
    (roundtrip,) = results["cases"]["roundtrip"]["runs"]
    for side in ("runner", "ppe"):
        assert submit[side]["jobs_per_s"] > 0
    for side in ("runner", "ppe", "floor"):
        assert 0 < roundtrip[side]["p50_us"] <= roundtrip[side]["p99_us"], side
    assert results["machine"]["cores"] >= 1
    labels = [line["label"] for line in results["table"]]
    assert any(label.startswith("1. submit") for label in labels)
    assert "round trip p50" in done.stdout


def test_docs_section_is_replaced_between_markers(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\nHand-written.\n")
    report.write_docs(docs, "first table")
    report.write_docs(docs, "second table")
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nHand-written.\n")
    assert "second table" in text and "first table" not in text
    assert text.count(report.START_MARK) == 1 and text.count(report.END_MARK) == 1


def test_tiny_run_measures_the_async_client_cases(tmp_path):
    output = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--cases", "async_client,loop_lag", "--output", str(output),
         "--no-docs"],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120, check=False, preexec_fn=die_with_parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(output.read_text())
    (both,) = results["cases"]["async_client"]["runs"]
    (lag,) = results["cases"]["loop_lag"]["runs"]
    assert both["async"]["jobs_per_s"] > 0 and both["client"]["jobs_per_s"] > 0
    assert 0 < both["async_roundtrip"]["p50_us"] <= both["async_roundtrip"]["p99_us"]
    assert lag["runner"]["jobs"] == results["sizes"]["lag_jobs"] and lag["runner"]["ticks"] > 0
    assert 0 <= lag["runner"]["lag_own_p99_ms"] and 0 <= lag["runner"]["lag_p99_ms"]
    assert "12c. AsyncClient loop lag p99" in done.stdout


def test_tiny_run_bounds_the_async_pool_by_the_no_op_rate_of_the_same_run(tmp_path):
    output = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--cases", "async_pool", "--output", str(output), "--no-docs"],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120, check=False, preexec_fn=die_with_parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(output.read_text())
    (run,) = results["cases"]["async_pool"]["runs"]
    jobs = results["sizes"]["async_pool_jobs"]
    assert run["runner"]["jobs"] == run["noop"]["jobs"] == jobs and run["sleep_bound"]["jobs_per_s"] == 100_000
    with_last_sleep = jobs / (jobs / run["noop"]["jobs_per_s"] + 0.1)
    assert run["ideal"]["jobs_per_s"] == min(100_000, with_last_sleep)
    assert 0 < run["thread"]["jobs_per_s"] <= run["thread_bound"]["jobs_per_s"] == 640
    labels = [line["label"] for line in results["table"]]
    assert labels[0].startswith("12a. async pool") and "thread pools" in labels[2]
