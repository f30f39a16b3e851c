"""Host-side checks against a running compose cluster (run by tests/compose/run.sh).

    python tests/compose/check_cluster.py --connect tcp://127.0.0.1:5555 \
        --container ID [--container ID ...] [--docker docker]

It talks to the broker through its published port with the public client API only
(``runner.Client``, ``submit``, ``result``, ``wait_for_workers``) and checks:

1. spread: 300 jobs, every result is right, and at least 2 distinct worker containers ran them;
2. kill: while 200 jobs of 100 ms run, one worker container that is running some of them is
   killed with ``docker kill``; every one of the 200 still completes (the broker requeues the
   dead worker's jobs once its heartbeats expire).

The worker containers are given by id (``docker-compose ps -q worker``); the job results name
the container's hostname, which ``docker inspect`` maps back to the container. Exits non-zero
with a one-line reason on the first failed check. Every wait has a deadline.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import time

import runner

SPREAD_JOBS = 300
KILL_JOBS = 200
KILL_JOB_SECONDS = 0.1


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
    args = parser.parse_args(argv)
    try:
        hosts = container_hostnames(args.docker, args.container)
        with runner.Client(args.connect) as client:
            started = time.monotonic()
            client.wait_for_workers(len(hosts), timeout=90)
            log(f"{len(hosts)} workers registered ({time.monotonic() - started:.2f} s)")
            check_spread(client, hosts)
            check_kill(client, hosts, args.docker)
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
