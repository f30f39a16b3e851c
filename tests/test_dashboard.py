"""`runner dashboard` against a live cluster, read by a real headless Chromium.

The page is rendered by the browser (its script polls /api/state and fills the DOM), so these
tests see what a user sees: both workers named, a completed count that rises with the jobs, and
the failed and dead jobs the broker's journal lists, each with its remote traceback.
The browser test is skipped only when no Chromium is installed (Debian: `apt-get install chromium`;
.ci/run does it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import runner
from runner import keys
from cluster import ROOT, environment, read_line, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_TIMEOUT = 90.0  # seconds one headless Chromium run may take on a busy machine
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install chromium)")


def chromium(profile: Path, *arguments: str) -> str:
    """Run headless Chromium to its end (killed with its whole process group after the timeout); its stdout."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
               f"--user-data-dir={profile}", "--virtual-time-budget=3000", *arguments]
    browser = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True,
                               env=environment())
    try:
        output, _ = browser.communicate(timeout=BROWSER_TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(browser.pid, signal.SIGKILL)  # its own group: helpers it left behind, and it on a timeout
        browser.wait()
    assert browser.returncode == 0, f"chromium exited with {browser.returncode}"
    return output.decode()


def shown(dom: str, element_id: str) -> str:
    """The text of the element with this id in a dumped DOM."""
    found = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert found, f"no element #{element_id} in the page"
    return found.group(1)


def served(url: str) -> dict:
    """The dashboard's /api/state document."""
    with urllib.request.urlopen(url + "api/state", timeout=5) as answer:
        return json.load(answer)


def fetched(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return answer.read().decode()


def served_done(url: str) -> int:
    status = served(url)["status"]
    return status["jobs"]["done"] if status else -1


def start_dashboard(processes, address: str, *arguments: str) -> tuple[subprocess.Popen, str]:
    """`runner dashboard` on a free port; the process and its page's URL once it serves."""
    page = processes.runner("dashboard", "--connect", address, "--port", "0", "--log-level", "WARNING", *arguments,
                            stdout=subprocess.PIPE)
    url = read_line(page, 30)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
    return page, url


@pytest.fixture
def cluster(processes):
    """A broker, workers alpha and beta, and a dashboard on a free port: (client, the page's URL)."""
    _, address = processes.broker("--heartbeat", "0.2")
    for name in ("alpha", "beta"):
        processes.worker(address, "--processes", "1", "--threads", "2", "--name", name, "--heartbeat", "0.2")
    _, url = start_dashboard(processes, address)
    with runner.Client(address) as client:
        client.wait_for_workers(2, timeout=30)
        yield client, url


def run_jobs(client: runner.Client, url: str, count: int, expected_done: int) -> None:
    assert [future.result(60) for future in [client.submit("tasks:add", n, 1) for n in range(count)]] == \
        [n + 1 for n in range(count)]
    wait_until(lambda: served_done(url) == expected_done, timeout=30, message=f"the dashboard counting {expected_done}")


def charted(url: str, key: str = "completed") -> int:
    """The jobs the page's chart counts over its history (the broker's per-second counts)."""
    return sum(sample[key] for sample in served(url)["history"])


@needs_chromium
def test_the_page_shows_both_workers_failures_with_tracebacks_and_a_rising_completed_count(cluster, tmp_path):
    client, url = cluster
    run_jobs(client, url, 20, expected_done=20)
    with pytest.raises(ValueError, match="disk full"):
        client.submit("tasks:fail", "disk full", retries=1).result(60)  # dead after its retry
    with pytest.raises(ValueError, match="bad input"):
        client.submit("tasks:fail", "bad input").result(60)  # failed, no retries
    wait_until(lambda: len(served(url)["failures"]) == 2, timeout=30, message="both failures listed")
    first = chromium(tmp_path / "profile", "--dump-dom", url)
    assert re.search(r"<td>alpha</td>", first) and re.search(r"<td>beta</td>", first)
    assert shown(first, "workers-count") == "2"
    assert int(shown(first, "done")) == 20
    assert (int(shown(first, "failed")), int(shown(first, "dead"))) == (1, 1)
    assert first.index("bad input") < first.index("disk full")  # newest first
    assert first.count("Traceback (most recent call last)") == 2  # each failure with its remote traceback
    assert re.search(r"worker (alpha|beta)", first)
    failures = {row["message"]: row for row in served(url)["failures"]}
    assert (failures["disk full"]["state"], failures["disk full"]["attempts"]) == ("dead", 2)
    assert (failures["bad input"]["state"], failures["bad input"]["attempts"]) == ("failed", 1)
    assert {row["worker"] for row in failures.values()} <= {"alpha", "beta"}

    run_jobs(client, url, 30, expected_done=50)
    second = chromium(tmp_path / "profile", "--dump-dom", url)
    assert int(shown(second, "done")) == 50 > int(shown(first, "done"))
    # The chart counts each completed run once, from the broker's own per-second counts.
    wait_until(lambda: charted(url) == 50, timeout=30, message="the chart counting the 50 jobs run")
    # Failed runs: the dead job's two and the failed job's one (a run lost with a worker that
    # missed its heartbeats under load is requeued, not failed: then one fewer).
    assert charted(url, "failed") in (2, 3)

    screenshot = ROOT / "docs" / "dashboard.png" if os.environ.get("RUNNER_SAVE_SCREENSHOT") == "1" \
        else tmp_path / "dashboard.png"
    chromium(tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1280,900", "--hide-scrollbars", url)
    image = screenshot.read_bytes()
    assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 10_000


def test_a_dashboard_started_later_charts_the_last_seconds_and_lists_earlier_failures(processes):
    _, address = processes.broker("--heartbeat", "0.2")
    processes.worker(address, "--processes", "0", "--threads", "2", "--name", "gamma", "--heartbeat", "0.2")
    with runner.Client(address) as client:
        with pytest.raises(ValueError, match="before the dashboard"):
            client.submit("tasks:fail", "before the dashboard", pool="thread").result(60)
        _, url = start_dashboard(processes, address)
        wait_until(lambda: served(url)["failures"], timeout=30, message="the earlier failure listed")
    [failure] = served(url)["failures"]
    assert (failure["worker"], failure["type"], failure["state"]) == ("gamma", "ValueError", "failed")
    assert "Traceback (most recent call last)" in failure["traceback"] and "before the dashboard" in failure["traceback"]
    assert len(served(url)["history"]) >= 10  # the broker's last ten seconds, from the first poll


def test_the_page_works_offline_and_refreshes_at_least_every_two_seconds(cluster):
    _, url = cluster
    page, script, style = (fetched(url + name) for name in ("", "app.js", "style.css"))
    assert re.findall(r'(?:src|href)="([^"]+)"', page) == ["style.css", "app.js"]  # nothing from elsewhere
    assert "http" not in script and "http" not in style and "@import" not in style
    assert int(re.search(r"const POLL_MS = (\d+);", script).group(1)) <= 2000
    from runner.dashboard.server import POLL_INTERVAL
    assert POLL_INTERVAL <= 2.0


def test_the_dashboard_serves_nothing_but_its_page(cluster):
    _, url = cluster
    with urllib.request.urlopen(url + "style.css", timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("text/css")
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(url + "../setup.cfg", timeout=5)
    assert missing.value.code == 404
    with pytest.raises(urllib.error.HTTPError) as posted:
        urllib.request.urlopen(urllib.request.Request(url + "api/state", data=b"{}", method="POST"), timeout=5)
    assert posted.value.code == 501  # read-only: no method but GET


def test_with_curve_an_admin_key_lists_every_failure_and_a_client_key_only_its_own(processes, tmp_path):
    folder = tmp_path / "keys"
    keys.generate(folder)
    keys.add(folder, "client", "bob")
    keys.add(folder, "admin", "ops")
    _, address = processes.broker("--curve-keys", str(folder), "--heartbeat", "0.2")
    processes.worker(address, "--curve-keys", str(folder), "--processes", "1", "--threads", "1")
    as_admin, admin_url = start_dashboard(processes, address, "--curve-keys", str(folder / "ops"))
    _, client_url = start_dashboard(processes, address, "--curve-keys", str(folder))
    with runner.Client(address, curve_keys=str(folder / "bob")) as bob:
        with pytest.raises(ValueError, match="bob's job"):
            bob.submit("tasks:fail", "bob's job", retries=1).result(60)
    wait_until(lambda: [row["message"] for row in served(admin_url)["failures"]] == ["bob's job"], timeout=30,
               message="the admin's dashboard listing bob's failure")
    wait_until(lambda: (served(client_url)["status"] or {}).get("jobs", {}).get("dead") == 1, timeout=30,
               message="the client key's dashboard counting it")
    assert served(client_url)["failures"] == []  # counted, but another key's job is not shown
    assert processes.stop(as_admin) == 0  # SIGTERM ends it cleanly


def test_a_port_in_use_is_a_clear_error(processes, broker_address):
    _, url = start_dashboard(processes, broker_address)
    port = url.rsplit(":", 1)[1].rstrip("/")
    taken = processes.runner("dashboard", "--connect", broker_address, "--port", port, stderr=subprocess.PIPE)
    _, stderr = taken.communicate(timeout=60)
    assert taken.returncode == 1
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in stderr.decode()


def test_a_broker_gone_away_is_shown_and_the_last_figures_kept(processes):
    broker, address = processes.broker("--heartbeat", "0.2")
    _, url = start_dashboard(processes, address)
    wait_until(lambda: served(url)["status"] is not None, timeout=30, message="a first status")
    processes.stop(broker)
    wait_until(lambda: served(url)["error"], timeout=60, message="the dashboard saying the broker is away")
    assert served(url)["status"]["broker"]["address"] == address
