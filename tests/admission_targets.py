"""Task targets a worker's admission rules refuse even though this module is imported, and one it runs."""

import os  # noqa: F401 - reachable as admission_targets:os.system, which must be refused
from subprocess import run  # noqa: F401 - defined in subprocess, not here: refused

CONSTANT = 42  # not callable: refused


def _helper() -> str:  # private: refused
    return "private"


def public() -> str:
    return "ran"


class Tools:
    @staticmethod
    def double(value: int) -> int:
        return 2 * value
