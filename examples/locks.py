"""A cluster-wide lock: lost updates without it, none with it, and fencing tokens.

    python examples/locks.py

Eight tasks, in the process pools of two workers, each add 1 to a counter kept
in a file, 200 times: read the file, wait a moment, write the value plus one.

1. Without a lock, tasks read the same value and overwrite each other's
   increments: the total ends below 1,600 (the pause between read and write
   makes the race window wide enough to show every time).
2. With ``runner.Lock("counter")`` around each read-modify-write, the total is
   exactly 1,600.
3. Each grant of the lock carries a fencing ``token`` that strictly increases.
   The counter file acts as a fenced store: it keeps the last token written,
   logs every token it accepts, and refuses a token lower than the last. The
   log shows the tokens are unique and increase in the order the writes
   happened; and a writer whose lease has expired (here: one that comes back
   with an old token) is rejected, even though it believes it holds the lock.

Exits 1 if any of these claims does not hold.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

from coordination import (
    StaleTokenError,
    count_locked,
    count_unlocked,
    fenced_increment,
    read_counter,
    write_counter,
)

import runner

TASKS = 8
TIMES = 200
EXPECTED = TASKS * TIMES
PAUSE = 0.002  # seconds between read and write: the race window of the unlocked run
TIMEOUT = 120  # seconds any one run may take


def run(client: runner.Client, task, path: str, *args) -> list:
    """Start TASKS copies of ``task`` on the process pools; return their results."""
    write_counter(path, 0, 0)
    futures = [client.submit(task, path, TIMES, PAUSE, *args, pool="process") for _ in range(TASKS)]
    return [future.result(timeout=TIMEOUT) for future in futures]


def check_tokens(path: str, results: list[list[int]]) -> list[str]:
    """Problems with the tokens the tasks used and the order the store accepted them in."""
    with open(path + ".log") as log:
        accepted = [int(line) for line in log]
    used = [token for tokens in results for token in tokens]
    problems = []
    if len(accepted) != EXPECTED or sorted(used) != sorted(accepted):
        problems.append(f"the store logged {len(accepted)} tokens, the tasks used {len(used)} (or other ones)")
    if len(set(used)) != len(used):
        problems.append("some token was granted twice")
    if any(later <= earlier for earlier, later in itertools.pairwise(accepted)):
        problems.append("the tokens do not strictly increase in the order of the writes")
    return problems


def stale_writer_is_rejected(path: str, old_token: int) -> bool:
    """A writer back from a long pause with an old token: the store must refuse it."""
    before = read_counter(path)
    try:
        fenced_increment(path, old_token, 0.0)
    except StaleTokenError as error:
        print(f"a writer with the expired token {old_token} is rejected: {error}")
        return read_counter(path) == before
    return False


def show_lost_updates(client: runner.Client, scratch: str) -> list[str]:
    """Run without a lock: some increments must be lost."""
    path = os.path.join(scratch, "unlocked.json")
    started = time.perf_counter()
    run(client, count_unlocked, path)
    total = read_counter(path)[0]
    print(f"without a lock: {total:>5} of {EXPECTED} ({EXPECTED - total} updates lost) "
          f"in {time.perf_counter() - started:.2f}s")
    return [] if total < EXPECTED else [f"without a lock no update was lost ({total}); the race did not show"]


def show_locked_updates(client: runner.Client, scratch: str) -> list[str]:
    """Run under runner.Lock: every increment counts, and the tokens fence the writes."""
    path = os.path.join(scratch, "locked.json")
    started = time.perf_counter()
    results = run(client, count_locked, path, "counter")
    total, last_token = read_counter(path)
    print(f"with runner.Lock: {total:>5} of {EXPECTED} in {time.perf_counter() - started:.2f}s")
    failures = [] if total == EXPECTED else [f"with the lock the total is {total}, not {EXPECTED}"]

    problems = check_tokens(path, results)
    first_token = min(token for tokens in results for token in tokens)
    print(f"fencing tokens: {EXPECTED} unique, strictly increasing in write order "
          f"({first_token} .. {last_token}): {'yes' if not problems else 'NO'}")
    if not stale_writer_is_rejected(path, first_token):
        problems.append("the store accepted a writer with an expired token")
    return failures + problems


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="runner-locks-") as scratch, \
            runner.LocalCluster(workers=2, processes=2, threads=8) as cluster, cluster.client() as client:
        print(f"{TASKS} tasks x {TIMES} increments of a counter in a file, on 2 workers' process pools")
        failures = show_lost_updates(client, scratch) + show_locked_updates(client, scratch)
    if failures:
        for failure in failures:
            print(f"CLAIM FAILED: {failure}", file=sys.stderr)
        return 1
    print("CLAIM HOLDS: the lock makes read-modify-write safe across processes, "
          "and its tokens let a resource fence off stale writers.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
