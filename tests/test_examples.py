"""Every example runs as a user would run it, checks its own claims, and exits 0.

An example whose claim is about speed (cpu_vs_io.py, and io_models.py in
test_io_models.py) retries its measurement on a busy machine and, if the machine
could not have shown the claim at all, exits with NOT_JUDGED: that run is reported
as skipped, with the example's output as the reason, not as a failure.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster import EXAMPLES, ROOT, die_with_parent, environment

EXAMPLE_RUNS = {
    "quickstart.py": [],
    "locks.py": [],
    "semaphore.py": [],
    "events.py": [],
    "producer_consumer.py": ["--quick"],
    "cpu_vs_io.py": ["--quick"],
    "async_service.py": [],
}
NOT_JUDGED = 3  # the exit status of a speed claim the machine was too busy to show


def run_example(name: str, *arguments: str, timeout: float) -> subprocess.CompletedProcess:
    """Run ``examples/NAME`` as a user would; skip the test if it could not judge its claim."""
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *arguments], capture_output=True, text=True,
                            timeout=timeout, cwd=ROOT, env=environment(), preexec_fn=die_with_parent)
    if result.returncode == NOT_JUDGED:
        pytest.skip(f"{name}: {(result.stderr.strip().splitlines() or ['claim not judged'])[-1]}")
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.parametrize("name", sorted(EXAMPLE_RUNS))
def test_example_runs_and_its_claims_hold(name):
    result = run_example(name, *EXAMPLE_RUNS[name], timeout=110)
    assert result.stdout.strip(), f"{name} printed nothing"
