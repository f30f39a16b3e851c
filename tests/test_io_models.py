"""The I/O models example runs, covers all four models and runner's two I/O pools, and its claims hold
(or are not judged)."""

from __future__ import annotations

from test_examples import run_example


def test_io_models_quick_run_shows_busy_polling_waste() -> None:
    completed = run_example("io_models.py", "--quick", timeout=110)
    output = completed.stdout + completed.stderr
    for model in ("threads", "busy-poll", "selectors", "asyncio"):
        assert model in completed.stdout, f"{model} missing from:\n{output}"
    assert "CLAIM HOLDS: busy polling" in completed.stdout, output
    assert "runner's pools: 100 requests" in completed.stdout, output
    assert "CLAIM HOLDS: runner's async pool" in completed.stdout, output
