"""A script that submits a function it defines: run as ``__main__``, the task is found by the file's name.

Usage: ``python script_task.py ADDRESS``; prints the reference it sent and the job's
result as one JSON line (a worker's allowlist names ``script_task``, never ``__main__``).
"""

from __future__ import annotations

import json
import os
import sys

import runner


def shout(text: str) -> dict:
    """Upper-case the text and say which process ran it."""
    return {"text": text.upper(), "pid": os.getpid()}


if __name__ == "__main__":
    with runner.Client(sys.argv[1]) as client:
        future = client.submit(shout, "found by file name", pool="thread")
        print(json.dumps({"reference": runner.tasks.reference_of(shout), "result": future.result(timeout=60)}))
