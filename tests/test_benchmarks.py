"""Smoke test of the benchmark harness: a tiny run end to end, no timing assertions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from cluster import ROOT, die_with_parent, environment, wait_until

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
    sides = ("own_core", "shared") if len(os.sched_getaffinity(0)) >= 2 else ("shared",)
    for side in sides:
        assert lag[side]["jobs"] == results["sizes"]["lag_jobs"] and lag[side]["ticks"] > 0, side
        assert 0 <= lag[side]["lag_own_p99_ms"] and 0 <= lag[side]["lag_p99_ms"], side
        assert lag[side]["idle_ticks"] > 0 and 0 <= lag[side]["idle_lag_p99_ms"], f"{side}: the idle loop ticked beside"
    assert "12c. AsyncClient loop lag p99" in done.stdout and "client on a core of its own" in done.stdout
    assert "the floor: the same ticker on an idle loop" in done.stdout


def test_tiny_observed_run_reads_the_metrics_and_a_dashboard_and_stops_them(tmp_path):
    output = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--observed", "--cases", "submit", "--output", str(output),
         "--no-docs"],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120, check=False, preexec_fn=die_with_parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(output.read_text())
    assert results["observed"] is True
    watched = results["observers"]["main"]
    for side in ("metrics", "dashboard"):
        assert watched[side]["reads"] >= 1 and watched[side]["failed"] == 0, watched
    assert {"main-broker", "main-dashboard", "main-reader"} <= set(results["logs"])
    assert results["cases"]["submit"]["runs"][0]["runner"]["jobs_per_s"] > 0
    assert "Observed: every broker served `--metrics-port`" in report.docs_section(results, results["table"], "x.json")
    for name in ("main-broker", "main-dashboard", "main-reader"):  # stopped by PID, quietly
        assert not any("Traceback" in line for line in results["logs"][name]["excerpt"]), results["logs"][name]


def test_an_observed_runs_table_has_its_own_section_beside_the_plain_one(tmp_path):
    docs = tmp_path / "benchmarks.md"
    report.write_docs(docs, "plain table")
    report.write_docs(docs, "observed table", observed=True)
    report.write_docs(docs, "plain again")
    text = docs.read_text()
    assert "plain again" in text and "observed table" in text and "plain table" not in text
    assert text.index(report.END_MARK) < text.index(report.OBSERVED_MARKS[0])


def in_session(session: int) -> dict[str, float]:
    """The live processes of ``session`` (from /proc): command line -> seconds since it started."""
    with open("/proc/uptime") as uptime:
        now = float(uptime.read().split()[0])
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found[command] = now - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    return found


def test_ctrl_c_during_an_observed_run_stops_the_dashboard_and_the_reader_too(tmp_path):
    # The scale case queues 300,000 jobs: the dashboard and reader are up well before it ends.
    bench = subprocess.Popen(
        [sys.executable, "-m", "benchmarks", "--tiny", "--observed", "--cases", "scale", "--scale-jobs", "300000",
         "--output", str(tmp_path / "run.json"), "--no-docs"],
        cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        # The reader reads once a second from its start: after 3 s it has read (and set its handlers).
        wait_until(lambda: any("benchmarks.observers" in command and age > 3 for command, age in
                               in_session(bench.pid).items()) or bench.poll() is not None,
                   timeout=60, interval=0.1, message="the reader reading")
        assert bench.poll() is None, bench.stderr.read().decode()[-3000:]
        os.killpg(bench.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
        _, stderr = bench.communicate(timeout=120)
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait()
    assert bench.returncode == 130, stderr.decode()[-3000:]
    assert "interrupted: everything started was stopped" in stderr.decode()
    wait_until(lambda: in_session(bench.pid) == {}, timeout=30, message="every process of the run ended")
    results = json.loads((tmp_path / "run.json").read_text())
    assert results["interrupted"], results
    assert results["observers"]["scale1"]["metrics"]["reads"] >= 1, results["observers"]


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
