"""The I/O models example runs, covers all four models, and its claim holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "examples" / "io_models.py"


def test_io_models_quick_run_shows_busy_polling_waste() -> None:
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output
    for model in ("threads", "busy-poll", "selectors", "asyncio"):
        assert model in completed.stdout, f"{model} missing from:\n{output}"
    assert "CLAIM HOLDS" in completed.stdout, output
