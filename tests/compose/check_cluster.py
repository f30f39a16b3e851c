"""Host-side checks against a running compose cluster (run by tests/compose/run.sh).

    python tests/compose/check_cluster.py --connect tcp://127.0.0.1:5555 \
        --container ID [--container ID ...] [--docker docker] [--compose "docker-compose -p P -f FILE"]

It talks to the broker through its published port with the public client API only
(``runner.Client``, ``submit``, ``result``, ``wait_for_workers``) and checks:

1. spread: 300 jobs, every result is right, and at least 2 distinct worker containers ran them;
2. kill: while 200 jobs of 100 ms run, one worker container that is running some of them is
   killed with ``docker kill``; every one of the 200 still completes (the broker requeues the
   dead worker's jobs once its heartbeats expire);
3. restart (with ``--compose``): the broker says its journal is /data/journal.db (the named
   volume); 20 jobs are submitted on a queue no worker serves, and 5 more by a second client that
   then leaves; ``compose restart broker``; the second client's jobs are still known to the new
   broker process (only the journal can tell it: nobody resends them); a worker for that queue
   is started with ``compose run -d -e RUNNER_QUEUES=...``, and the first client's 20 futures,
   pending all along, resolve with the right values, as do the other 5 jobs.

The worker containers are given by id (``docker-compose ps -q worker``); the job results name
the container's hostname, which ``docker inspect`` maps back to the container. Exits non-zero
with a one-line reason on the first failed check. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import collections
import shlex
import subprocess
import sys
import time

import runner

SPREAD_JOBS = 300
KILL_JOBS = 200
KILL_JOB_SECONDS = 0.1
RESTART_QUEUE = "restartq"
RESTART_JOBS = 20
ORPHAN_JOBS = 5
JOURNAL = "/data/journal.db"


class CheckFailed(Exception):
    pass


def log(message: str) -> None:
    print(f"check_cluster: {message}", flush=True)


def container_hostnames(docker: str, containers: list[str]) -> dict[str, str]:
    """Map each worker container's hostname to its id."""
    out = subprocess.run(
        [docker, "inspect", "--format", "{{.Config.Hostname}} {{.Id}}", *containers],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    hosts = dict(line.split() for line in out.splitlines() if line.strip())
    if len(hosts) != len(containers):
        raise CheckFailed(
            f"expected {len(containers)} distinct container hostnames, docker inspect gave {out!r}"
        )
    return hosts


def collect(
    futures: list, deadline: float, what: str, first: int = 0, total: int | None = None
) -> list:
    """Every future's result, in order, all before the deadline (job numbers start at first)."""
    total = len(futures) if total is None else total
    results = []
    for i, future in enumerate(futures, start=first):
        try:
            results.append(
                future.result(timeout=max(0.001, deadline - time.monotonic()))
            )
        except Exception as exc:  # a timeout or a remote error: both fail the check
            missing = sum(1 for f in futures[i - first :] if not _done(f))
            raise CheckFailed(
                f"{what}: job {i} of {total} failed: {type(exc).__name__}: {str(exc) or 'no result before the deadline'} "
                f"({missing} of {total} jobs without a result)"
            ) from exc
    return results


def _done(future) -> bool:
    try:
        future.result(timeout=0.001)
        return True
    except Exception:  # noqa: BLE001 - a remote error counts as no result too
        return False


def check_where(result, hosts: dict[str, str], what: str, i: int) -> str:
    """A whoami result names a known worker container; return its hostname."""
    if not (
        isinstance(result, dict)
        and isinstance(result.get("pid"), int)
        and "thread" in result
    ):
        raise CheckFailed(
            f"{what}: job {i} returned {result!r}, not a whoami dict with host, pid, thread"
        )
    host = result.get("host")
    if host not in hosts:
        raise CheckFailed(
            f"{what}: job {i} ran on host {host!r}, which is none of the worker containers {sorted(hosts)}"
        )
    return host


def check_spread(client, hosts: dict[str, str]) -> None:
    what = f"spread ({SPREAD_JOBS} jobs)"
    started = time.monotonic()
    # A few ms each, so that no single worker can drain the whole batch before the others ask.
    futures = [
        client.submit("tasks:slow_whoami", 0.005, pool="thread")
        for _ in range(SPREAD_JOBS)
    ]
    results = collect(futures, started + 60, what)
    per_host = collections.Counter(
        check_where(r, hosts, what, i) for i, r in enumerate(results)
    )
    log(
        f"{what}: all {len(results)} results right in {time.monotonic() - started:.2f} s; "
        f"per container: {dict(sorted(per_host.items()))}"
    )
    if len(per_host) < 2:
        raise CheckFailed(
            f"{what}: only {len(per_host)} worker container ran jobs, expected at least 2"
        )
    # And a value that is checked exactly, not only its shape.
    sums = collect(
        [client.submit("tasks:add", i, 1000) for i in range(20)],
        time.monotonic() + 30,
        "add",
    )
    if sums != [i + 1000 for i in range(20)]:
        raise CheckFailed(f"add: wrong results {sums}")


def check_kill(client, hosts: dict[str, str], docker: str) -> None:
    what = f"kill ({KILL_JOBS} jobs of {KILL_JOB_SECONDS} s)"
    started = time.monotonic()
    futures = [
        client.submit("tasks:slow_whoami", KILL_JOB_SECONDS, pool="thread")
        for _ in range(KILL_JOBS)
    ]
    # The first results come back within a few tenths of a second; the worker that ran the very
    # first job has more of the batch in hand by then: kill that one.
    first = collect(futures[:5], started + 30, what)
    victim_host = check_where(first[0], hosts, what, 0)
    victim = hosts[victim_host]
    subprocess.run(
        [docker, "kill", victim], check=True, capture_output=True, timeout=30
    )
    killed_at = time.monotonic()
    log(
        f"{what}: killed worker container {victim[:12]} (host {victim_host}) "
        f"{killed_at - started:.2f} s after submitting"
    )
    results = first + collect(
        futures[5:], killed_at + 60, what, first=5, total=KILL_JOBS
    )
    per_host = collections.Counter(
        check_where(r, hosts, what, i) for i, r in enumerate(results)
    )
    done = time.monotonic()
    log(
        f"{what}: all {len(results)} completed, the last {done - killed_at:.2f} s after the kill; "
        f"per container: {dict(sorted(per_host.items()))}"
    )
    survivors = {h for h in per_host if h != victim_host}
    if not survivors:
        raise CheckFailed(f"{what}: no job ran on a surviving worker")


def wait_until(condition, deadline: float, what: str, interval: float = 0.2):
    """Poll ``condition()`` until it returns something true; its last error is the reason."""
    reason = "never checked"
    while True:
        try:
            value = condition()
            if value:
                return value
            reason = f"got {value!r}"
        except Exception as exc:  # noqa: BLE001 - the broker may be away for a moment
            reason = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise CheckFailed(f"{what}: not within the deadline ({reason})")
        time.sleep(interval)


def compose_run(compose: list[str], *args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        [*compose, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if done.returncode != 0:
        raise CheckFailed(
            f"{shlex.join(args)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-500:]}"
        )
    return done.stdout


def check_restart(client, address: str, compose: list[str]) -> None:
    what = f"restart ({RESTART_JOBS} + {ORPHAN_JOBS} jobs on queue {RESTART_QUEUE!r})"
    started = time.monotonic()
    journal = client.status()["broker"].get("journal")
    if journal != JOURNAL:
        raise CheckFailed(f"{what}: the broker's journal is {journal!r}, expected {JOURNAL!r} (the named volume)")
    futures = [
        client.submit("tasks:add", i, 2000, queue=RESTART_QUEUE, pool="thread")
        for i in range(RESTART_JOBS)
    ]
    # Jobs of a client that is gone: after the restart only the journal knows them.
    with runner.Client(address) as other:
        orphans = [
            other.submit("tasks:add", i, 3000, queue=RESTART_QUEUE, pool="thread").job_id
            for i in range(ORPHAN_JOBS)
        ]
    wait_until(
        lambda: client.status()["queues"].get(RESTART_QUEUE) == RESTART_JOBS + ORPHAN_JOBS,
        time.monotonic() + 20,
        f"{what}: {RESTART_JOBS + ORPHAN_JOBS} jobs pending before the restart",
    )
    old = client.status()["broker"]
    compose_run(compose, "restart", "-t", "10", "broker")
    restarted_at = time.monotonic()
    log(f"{what}: jobs pending, broker restarted in {restarted_at - started:.2f} s")
    def new_broker():
        broker = client.status(timeout=2)["broker"]
        return broker if broker["id"] != old["id"] else None

    new = wait_until(
        new_broker,
        restarted_at + 30,
        f"{what}: a new broker process answers",
    )
    if new.get("journal") != JOURNAL:
        raise CheckFailed(f"{what}: after the restart the journal is {new.get('journal')!r}")
    if any(f.done() for f in futures):
        raise CheckFailed(f"{what}: a future resolved although no worker serves {RESTART_QUEUE!r}")
    with runner.Client(address) as fresh:
        states = [fresh.fetch(job_id, timeout=10)["state"] for job_id in orphans]
    if states != ["pending"] * ORPHAN_JOBS:
        raise CheckFailed(
            f"{what}: after the restart the leaving client's jobs are {states}, expected all pending "
            "(were they restored from the journal?)"
        )
    log(f"{what}: new broker answers {time.monotonic() - restarted_at:.2f} s after the restart; "
        f"the {ORPHAN_JOBS} jobs of the client that left are still pending")
    container = compose_run(
        compose, "run", "-d", "-e", f"RUNNER_QUEUES={RESTART_QUEUE}", "worker"
    ).strip().splitlines()
    log(f"{what}: started a worker for {RESTART_QUEUE!r}: {container[-1] if container else '?'}")
    sums = collect(futures, time.monotonic() + 60, what, total=RESTART_JOBS)
    if sums != [i + 2000 for i in range(RESTART_JOBS)]:
        raise CheckFailed(f"{what}: wrong results {sums}")

    def orphans_done():
        views = [client.fetch(job_id, timeout=5) for job_id in orphans]
        return views if all(v["state"] == "done" for v in views) else None
    views = wait_until(orphans_done, time.monotonic() + 30, f"{what}: the left client's jobs done")
    if [v.get("result") for v in views] != [i + 3000 for i in range(ORPHAN_JOBS)]:
        raise CheckFailed(f"{what}: wrong results for the left client's jobs: {views}")
    log(f"{what}: all {RESTART_JOBS} futures and {ORPHAN_JOBS} journaled jobs done "
        f"{time.monotonic() - restarted_at:.2f} s after the restart ({time.monotonic() - started:.2f} s in all)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--connect",
        required=True,
        help="the broker's published address, tcp://127.0.0.1:PORT",
    )
    parser.add_argument(
        "--container",
        action="append",
        required=True,
        help="a worker container id (repeat)",
    )
    parser.add_argument("--docker", default="docker", help="the docker command")
    parser.add_argument(
        "--compose",
        help="the compose command of the cluster, one string (\"docker-compose -p P -f FILE\"); "
        "with it, the broker-restart check runs too",
    )
    args = parser.parse_args(argv)
    try:
        hosts = container_hostnames(args.docker, args.container)
        with runner.Client(args.connect) as client:
            started = time.monotonic()
            client.wait_for_workers(len(hosts), timeout=90)
            log(f"{len(hosts)} workers registered ({time.monotonic() - started:.2f} s)")
            check_spread(client, hosts)
            check_kill(client, hosts, args.docker)
            if args.compose:
                check_restart(client, args.connect, shlex.split(args.compose))
    except CheckFailed as exc:
        print(f"check_cluster: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except Exception as exc:  # noqa: BLE001 - the client itself failed: say what, in one line
        print(
            f"check_cluster: FAILED: {type(exc).__name__}: {exc}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    log("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
