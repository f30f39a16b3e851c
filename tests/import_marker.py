"""A module whose import leaves a mark: proves whether a worker imported it."""

import os
from pathlib import Path

marker = os.environ.get("RUNNER_TEST_IMPORT_MARKER")
if marker:
    Path(marker).write_text(str(os.getpid()))


def hello() -> str:
    return "imported"
