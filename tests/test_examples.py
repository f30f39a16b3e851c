"""Every example runs as a user would run it, checks its own claims, and exits 0."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cluster import EXAMPLES, ROOT

EXAMPLE_RUNS = {
    "quickstart.py": [],
    "locks.py": [],
    "semaphore.py": [],
    "events.py": [],
    "producer_consumer.py": ["--quick"],
    "cpu_vs_io.py": ["--quick"],
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_RUNS))
def test_example_runs_and_its_claims_hold(name):
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *EXAMPLE_RUNS[name]], capture_output=True,
                            text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip(), f"{name} printed nothing"
