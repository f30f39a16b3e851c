"""Schedules across a broker ``kill -9`` and restart on the same journal (catch-up policies), and the
broker's ``--schedules`` file: loaded at start, reloaded on SIGHUP (add, change, remove), a bad one
refused at start and ignored on reload with a clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cluster import ROOT, START_TIMEOUT, environment, read_address, wait_until
from test_schedules import tick_of

HEARTBEAT = "0.2"
DOWNTIME = 5.5  # seconds the broker stays dead: at least five ticks of a 1 s schedule


def ticks(client, queue: str) -> list[float]:
    return sorted(tick_of(job["id"]) for job in client.jobs(queue=queue, limit=1000))


def views(client) -> dict[str, dict]:
    return {view["name"]: view for view in client.schedules()}


def test_catch_up_policies_after_a_broker_kill_9_and_a_downtime(processes, client_factory, tmp_path):
    journal = tmp_path / "journal.db"
    broker, address = processes.broker("--heartbeat", HEARTBEAT, journal=journal)
    client = client_factory(address, timeout=5)
    policies = {"none": {"catch_up": "none"}, "one": {}, "all": {"catch_up": "all", "max_catch_up": 3}}
    for name, policy in policies.items():  # no worker: every run stays pending, overlap allows the next
        client.schedule(name, 1.0, "tasks:add", 1, 2, queue=name, overlap="allow", **policy)
    wait_until(lambda: min(view["fired"] for view in views(client).values()) >= 2, timeout=30,
               message="two ticks fired")
    broker.kill()
    broker.wait(10)
    killed = time.time()
    wait_until(lambda: time.time() >= killed + DOWNTIME, timeout=DOWNTIME + 5, message="the downtime passed")
    _, again = processes.broker("--heartbeat", HEARTBEAT, journal=journal, bind=address)
    wait_until(lambda: min(view["fired"] for view in views(client).values()) >= 4, timeout=30,
               message="ticks fire again after the restart")
    seen = {name: ticks(client, name) for name in policies}
    counts = views(client)
    horizon = min(max(found) for found in seen.values())  # every schedule has decided the ticks up to here
    seen = {name: [tick for tick in found if tick <= horizon] for name, found in seen.items()}
    plain = seen["none"]
    gaps = [(before, after) for before, after in zip(plain, plain[1:]) if after - before > 1]
    assert len(gaps) == 1, f"one gap, the downtime: {plain}"
    last_before, first_after = gaps[0]
    missed = first_after - last_before - 1
    assert missed >= 4, f"the downtime spans at least four ticks: {plain}"
    assert seen["one"] == sorted(plain + [first_after - 1]), "catch_up='one': the latest missed tick, once"
    assert seen["all"] == sorted(plain + [first_after - 3, first_after - 2, first_after - 1]), \
        "catch_up='all' with max_catch_up=3: the latest three missed ticks"
    assert [counts[name]["skipped"] for name in ("none", "one", "all")] == [missed, missed - 1, missed - 3]
    assert len(set(seen["all"])) == len(seen["all"]), "no tick twice"


NIGHTLY = '''
[[schedule]]
name = "hourly"
every = 3600
task = "tasks:add"
args = [1, 2]

[[schedule]]
name = "nightly"
cron = "30 2 * * *"
tz = "Europe/Paris"
task = "tasks:add"
kwargs = { a = 1, b = 2 }
queue = "reports"
catch_up = "none"
'''

CHANGED = '''
[[schedule]]
name = "hourly"
every = 7200
task = "tasks:add"
args = [1, 2]

[[schedule]]
name = "weekly"
cron = "@weekly"
task = "tasks:square"
args = [3]
overlap = "allow"
'''


def test_a_schedule_file_is_loaded_at_start_and_reloaded_on_sighup(processes, client_factory, tmp_path):
    path = tmp_path / "schedules.toml"
    path.write_text(NIGHTLY)
    log = tmp_path / "broker.log"
    with open(log, "w") as stderr:
        broker = processes.runner("broker", "--bind", "tcp://127.0.0.1:*", "--journal", str(tmp_path / "j.db"),
                                  "--heartbeat", HEARTBEAT, "--log-level", "INFO", "--schedules", str(path),
                                  stdout=subprocess.PIPE, stderr=stderr)
    address = read_address(broker, START_TIMEOUT)
    client = client_factory(address)
    found = views(client)
    assert set(found) == {"hourly", "nightly"} and {view["source"] for view in found.values()} == {"file"}
    assert (found["nightly"]["tz"], found["nightly"]["queue"], found["nightly"]["catch_up"]) == (
        "Europe/Paris", "reports", "none")
    assert found["nightly"]["next"].strftime("%H:%M") == "02:30"
    client.schedule("mine", 60.0, "tasks:add", 1, 1)  # the API's: a reload leaves it alone
    path.write_text(CHANGED)
    os.kill(broker.pid, signal.SIGHUP)
    wait_until(lambda: set(views(client)) == {"hourly", "weekly", "mine"}, timeout=15, message="the file reloaded")
    found = views(client)
    assert found["hourly"]["spec"] == 7200.0 and found["weekly"]["task"] == "tasks:square"
    assert found["mine"]["source"] == "api"
    path.write_text(CHANGED.replace("@weekly", "@fortnightly"))
    os.kill(broker.pid, signal.SIGHUP)
    wait_until(lambda: "kept every schedule as it was" in log.read_text(), timeout=15, message="the error logged")
    assert "bad cron expression '@fortnightly'" in log.read_text() and "'weekly'" in log.read_text()
    assert views(client) == found, "a bad file changes nothing"


@pytest.mark.parametrize("content, wanted", [
    ("[[schedule]]\nname = 'x'\ntask = 'tasks:add'\n", "exactly one of cron"),
    ("[[schedule]]\nname = 'x'\nevery = 1\ncron = '@daily'\ntask = 'tasks:add'\n", "exactly one of cron"),
    ("[[schedule]]\nname = 'x'\nevery = 1\ntask = 'tasks:add'\ncolour = 'red'\n", "unknown keys \\['colour'\\]"),
    ("[[schedule]]\nname = 'x'\nevery = 1\ntask = 'tasks:add'\n[[schedule]]\nname = 'x'\nevery = 2\n"
     "task = 'tasks:add'\n", "used twice"),
    ("[[schedule]\n", "not valid TOML"),
])
def test_a_bad_schedule_file_stops_the_broker_at_start_with_a_clear_error(tmp_path, content, wanted):
    from runner.broker.schedule_file import load

    path = tmp_path / "bad.toml"
    path.write_text(content)
    with pytest.raises(ValueError, match=wanted):
        load(str(path))


def test_the_broker_refuses_to_start_on_a_bad_schedule_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[[schedule]]\nname = 'x'\ncron = '0 2 * *'\ntask = 'tasks:add'\n")
    ended = subprocess.run([sys.executable, "-m", "runner", "broker", "--bind", "tcp://127.0.0.1:*", "--journal",
                            ":memory:", "--schedules", str(path)], capture_output=True, text=True, env=environment(),
                           cwd=ROOT, timeout=60)
    assert ended.returncode == 1
    assert "runner: error: schedule file" in ended.stderr and "bad cron expression '0 2 * *'" in ended.stderr
