"""A client in a process of its own, which a test can stop and resume (tests/test_promises.py).

Usage: ``python away_client.py ADDRESS FOLDER``. Submits three jobs (gates.py) whose
records and gates live in FOLDER: ``finishes`` and ``running``, gated, on the default
queue; ``waiting``, not gated, on the queue ``later``. Prints their ids as one JSON line, then
each outcome as a JSON line as it arrives, and exits 0 once all three are in.
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import as_completed

import runner

NAMES = ("finishes", "running", "waiting")
OUTCOME_TIMEOUT = 90.0  # seconds the whole run may take


def main(address: str, folder: str) -> None:
    with runner.Client(address) as client:
        futures = {}
        for name in NAMES:
            record, gate = os.path.join(folder, name), os.path.join(folder, f"{name}.gate")
            queue, gated_runs = ("later", 0) if name == "waiting" else ("default", 1)
            futures[client.submit("gates:gated", record, gate, gated_runs, name, pool="thread", queue=queue)] = name
        print(json.dumps({name: future.job_id for future, name in futures.items()}), flush=True)
        for future in as_completed(futures, timeout=OUTCOME_TIMEOUT):
            print(json.dumps({"name": futures[future], "result": future.result()}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
