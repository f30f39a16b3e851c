"""Periodic schedules on a real cluster: one job per tick however many clients register it,
overlap skips counted with a slow task, bad specs refused by the client, the broker and the CLI,
the CLI's add, list and remove, and each schedule's upcoming runs through clients, CLI and status."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

import runner
from cluster import ROOT, environment, wait_until

HEARTBEAT = "0.2"


def tick_of(job_id: str) -> float:
    """A schedule job's tick: its id starts with the tick in milliseconds (runner/broker/schedules.py)."""
    return int(job_id[:12], 16) / 1000


def schedule_view(client: runner.Client, name: str) -> dict:
    [view] = [view for view in client.schedules() if view["name"] == name]
    return view


def assert_upcoming(view: dict, spacing: float | None = None) -> None:
    """``upcoming``: three aware datetimes, strictly increasing, the first being ``next``; ``spacing``
    seconds apart when given (compared as epoch seconds: wall times in one zone ignore DST)."""
    runs = view["upcoming"]
    assert len(runs) == 3 and all(run.utcoffset() is not None for run in runs), runs
    moments = [run.timestamp() for run in runs]
    assert moments[0] == view["next"].timestamp() and moments[0] < moments[1] < moments[2], runs
    if spacing is not None:
        assert [later - earlier for earlier, later in zip(moments, moments[1:])] == [spacing, spacing], runs


def utc_view(entry: dict) -> dict:
    """A status entry (epoch seconds) with ``next`` and ``upcoming`` as aware datetimes in UTC."""
    def aware(moment: float) -> datetime:
        return datetime.fromtimestamp(moment, timezone.utc)

    return {**entry, "next": aware(entry["next"]), "upcoming": [aware(moment) for moment in entry["upcoming"]]}


def test_every_second_fires_once_per_tick_with_three_workers_and_two_clients(processes, client_factory, tmp_path):
    _, address = processes.broker("--heartbeat", HEARTBEAT)
    for _ in range(3):
        processes.worker(address, "--processes", "0", "--threads", "2", "--heartbeat", HEARTBEAT, "--queue", "beat",
                         imports=("schedule_tasks",))
    first, second = client_factory(address), client_factory(address)
    first.wait_for_workers(3, timeout=30)
    markers = tmp_path / "markers"
    markers.mkdir()
    started = time.time()
    for client in (first, second):  # both register it: the same name replaces, the ticks stay one schedule's
        added = client.schedule("beat", 1.0, "schedule_tasks:mark", str(markers), queue="beat", pool="thread",
                                overlap="allow")
        assert_upcoming(added, spacing=1.0)
    assert len(first.schedules()) == 1
    assert_upcoming(first.schedules()[0], spacing=1.0)
    assert_upcoming(utc_view(first.status()["schedules"][0]), spacing=1.0)
    wait_until(lambda: schedule_view(second, "beat")["fired"] >= 7, timeout=30, message="seven ticks fired")
    stopping = time.time()
    assert first.unschedule("beat") and not second.unschedule("beat")
    jobs = first.jobs(queue="beat", limit=1000)
    ticks = sorted(tick_of(job["id"]) for job in jobs)
    assert len(set(ticks)) == len(ticks) == len(jobs), "one job per tick"
    assert ticks == [ticks[0] + step for step in range(len(ticks))], f"a tick is missing: {ticks}"
    assert started < ticks[0] <= started + 1.0, "the first tick after registering fired"
    assert ticks[-1] >= stopping - 3.0, "every tick up to the removal fired"
    wait_until(lambda: all(first.fetch(job["id"])["state"] == "done" for job in jobs), timeout=30,
               message="every run finished")
    made = {path.name for path in markers.iterdir()}
    results = {job["id"]: first.fetch(job["id"])["result"] for job in jobs}  # each run names its marker
    assert set(results.values()) == made and len(made) == len(jobs), "each tick's job ran exactly once"


def test_a_tick_while_the_last_run_is_unfinished_is_skipped_and_counted(processes, client_factory, tmp_path):
    _, address = processes.broker("--heartbeat", HEARTBEAT)
    processes.worker(address, "--processes", "0", "--threads", "2", "--heartbeat", HEARTBEAT, imports=("jobs",))
    client = client_factory(address)
    client.wait_for_workers(1, timeout=30)
    gate, record = tmp_path / "gate", tmp_path / "started"
    client.schedule("slow", 1.0, "jobs:gated", str(gate), str(record), pool="thread")
    wait_until(lambda: schedule_view(client, "slow")["skipped"] >= 2, timeout=30, message="two ticks skipped")
    view = schedule_view(client, "slow")
    assert (view["fired"], view["running"]) == (1, 1), "no second run while the first is unfinished"
    assert client.status()["schedules"][0]["skipped"] >= 2
    gate.touch()
    wait_until(lambda: schedule_view(client, "slow")["fired"] >= 2, timeout=30, message="runs resumed")
    client.unschedule("slow")


@pytest.mark.parametrize("spec, options, wanted", [
    ("0 2 * *", {}, "bad cron expression '0 2 \\* \\*'"),
    ("@reboot", {}, "bad cron expression '@reboot'"),
    ("0 2 * * *", {"tz": "Europe/Pariss"}, "unknown time zone 'Europe/Pariss'"),
    (0, {}, "bad interval 0"),
    (1.0, {"catch_up": "most"}, "bad catch_up 'most'"),
    (1.0, {"overlap": "queue"}, "bad overlap 'queue'"),
])
def test_bad_specs_raise_value_error_from_the_client_and_from_the_broker(broker_address, client_factory, spec,
                                                                         options, wanted):
    client = client_factory(broker_address)
    with pytest.raises(ValueError, match=wanted):
        client.schedule("bad", spec, "tasks:add", 1, 2, **options)
    body = {"op": "add", "schedule": {"name": "bad", "spec": spec, "task": "tasks:add", **options}}
    answer = client._request(runner.protocol.SCHEDULE, body, None)  # past the client's own checks
    assert answer["error"].startswith("bad") or answer["error"].startswith("unknown time zone")
    assert client.schedules() == []


def cli(*arguments: str, address: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *arguments, "--connect", address], capture_output=True,
                          text=True, env=environment(), cwd=ROOT, timeout=60)


def test_the_cli_adds_lists_and_removes_schedules_and_refuses_bad_ones(broker_address):
    added = cli("schedule", "add", "nightly", "tasks:add", "1", "2", "--cron", "30 2 * * *", "--tz", "Europe/Paris",
                "--queue", "reports", "--catch-up", "all", "--max-catch-up", "3", address=broker_address)
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith("schedule nightly: next run ") and "T02:30:00+0" in added.stdout
    assert cli("schedule", "add", "beat", "tasks:add", "--every", "60", address=broker_address).returncode == 0
    listed = cli("schedule", "list", "--json", address=broker_address)
    views = {view["name"]: view for view in json.loads(listed.stdout)}
    assert set(views) == {"nightly", "beat"}
    assert (views["nightly"]["tz"], views["nightly"]["catch_up"], views["nightly"]["max_catch_up"]) == (
        "Europe/Paris", "all", 3)
    assert views["beat"]["spec"] == 60.0 and views["beat"]["next"].endswith("+00:00")
    nightly, beat = ({**view, "next": datetime.fromisoformat(view["next"]),
                      "upcoming": [datetime.fromisoformat(run) for run in view["upcoming"]]}
                     for view in (views["nightly"], views["beat"]))
    assert_upcoming(beat, spacing=60.0)
    assert_upcoming(nightly)
    assert all(run.strftime("%H:%M%z") in ("02:30+0100", "02:30+0200", "03:00+0200")  # 03:00: spring forward
               for run in nightly["upcoming"]), nightly["upcoming"]
    assert len({run.date() for run in nightly["upcoming"]}) == 3, "one a night"
    table = cli("schedule", "list", address=broker_address).stdout
    assert "nightly" in table and "every 60s" in table and "CE" in table  # CET or CEST
    [header] = [line for line in table.splitlines() if line.startswith("name")]
    assert re.search(r"\bnext\s+in\s+then\s+fired\b", header), header
    [nightly_line] = [line for line in table.splitlines() if line.startswith("nightly")]
    assert views["nightly"]["next"][:19].replace("T", " ") in nightly_line  # in its own zone
    later = [run.strftime("%m-%d %H:%M") for run in nightly["upcoming"][1:]]  # each with its date (and a new zone)
    assert re.search(r"\s" + "( CES?T)?, ".join(later) + r"( CES?T)?\s", nightly_line), (later, nightly_line)
    [beat_line] = [line for line in table.splitlines() if line.startswith("beat")]
    assert re.search(r"\d\d:\d\d:00 UTC\s+\d+s\s+(\d\d-\d\d )?\d\d:\d\d, (\d\d-\d\d )?\d\d:\d\d\s",
                     beat_line), beat_line
    status = cli("status", address=broker_address).stdout
    assert "schedules" in status and "nightly" in status and "30 2 * * * (Europe/Paris)" in status
    assert "then" in status
    [nightly_status] = [line for line in status.splitlines() if "nightly" in line]
    next_run, *later = (run.astimezone(timezone.utc) for run in nightly["upcoming"])
    assert next_run.strftime("%Y-%m-%d %H:%M:%S") in nightly_status  # its next run, in UTC
    assert ", ".join(run.strftime("%m-%d %H:%M") for run in later) in nightly_status  # then the two after it
    bad = cli("schedule", "add", "x", "tasks:add", "--cron", "0 2 * *", address=broker_address)
    assert bad.returncode == 1 and "runner: error: bad cron expression '0 2 * *'" in bad.stderr
    neither = cli("schedule", "add", "x", "tasks:add", address=broker_address)
    assert neither.returncode == 2 and "exactly one of --cron" in neither.stderr
    assert cli("schedule", "remove", "nightly", address=broker_address).returncode == 0
    gone = cli("schedule", "remove", "nightly", address=broker_address)
    assert gone.returncode == 2 and "no schedule 'nightly'" in gone.stderr
    assert [view["name"] for view in json.loads(cli("schedule", "list", "--json", address=broker_address).stdout)] == [
        "beat"]


def test_the_async_client_schedules_lists_and_unschedules(broker_address):
    import asyncio

    async def use() -> tuple:
        async with runner.AsyncClient(broker_address) as client:
            added = await client.schedule("nightly", "@daily", "tasks:add", 1, 2, tz="Europe/Paris", priority=3)
            listed = await client.schedules()
            with pytest.raises(ValueError, match="bad cron expression"):
                await client.schedule("bad", "0 0 0", "tasks:add")
            return added, listed, await client.unschedule("nightly"), await client.unschedule("nightly")

    added, listed, removed, again = asyncio.run(use())
    assert added["next"].strftime("%H:%M") == "00:00" and str(added["next"].tzinfo) == "Europe/Paris"
    assert_upcoming(added)
    assert [run.strftime("%H:%M") for run in added["upcoming"]] == ["00:00"] * 3
    assert [str(run.tzinfo) for run in listed[0]["upcoming"]] == ["Europe/Paris"] * 3
    assert [(view["name"], view["priority"]) for view in listed] == [("nightly", 3)]
    assert (removed, again) == (True, False)


def test_with_curve_client_and_admin_keys_schedule_worker_keys_may_not_and_only_admins_see_the_jobs(
        processes, client_factory, tmp_path):
    from runner import keys

    folder = tmp_path / "keys"
    keys.generate(folder)
    keys.add(folder, "worker", "w2")
    keys.add(folder, "admin", "root")
    _, address = processes.broker("--curve-keys", str(folder), "--heartbeat", HEARTBEAT)
    alice, root, worker_key = (client_factory(address, curve_keys=str(path), timeout=20)
                               for path in (folder, folder / "root", folder / "w2"))
    alice.schedule("beat", 1.0, "tasks:add", 1, 2, queue="nobody")
    with pytest.raises(PermissionError, match="client or admin key"):
        worker_key.schedule("mine", 1.0, "tasks:add", 1, 2)
    with pytest.raises(PermissionError):
        worker_key.unschedule("beat")
    wait_until(lambda: schedule_view(root, "beat")["fired"] >= 1, timeout=30, message="a tick fired")
    [job] = root.jobs(queue="nobody")[:1]
    assert root.fetch(job["id"])["state"] == "pending"
    assert alice.fetch(job["id"])["state"] == "unknown", "the scheduler's jobs are the broker's: admins see them"
    assert root.unschedule("beat")
