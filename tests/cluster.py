"""Real runner processes for tests: brokers and workers as subprocesses on 127.0.0.1.

Every process started here is recorded and ended by ``Processes.stop_all`` (the
fixture calls it even when a test fails), by its PID, never by name. Each also gets
SIGTERM from the kernel if the pytest process dies (``die_with_parent``), and carries
``RUNNER_TEST_SESSION=<pytest pid>`` in its environment, which is how conftest's leak
check tells this run's processes from those of other runs on the same machine.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.local import read_address, read_line, stop_process  # noqa: F401 - read_line: tests

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
START_TIMEOUT = 30.0
#: Marks every process this test session starts (the value is the pytest process's id).
SESSION_VARIABLE = "RUNNER_TEST_SESSION"

_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded now, not in a forked child, where another thread may hold a lock


def die_with_parent() -> None:
    """A ``preexec_fn``: the child gets SIGTERM when pytest dies, even by SIGKILL (PR_SET_PDEATHSIG).

    The signal follows the thread that forked the child; pytest starts every test process
    from its main thread, which lives as long as the run. (The embedded cluster cannot
    rely on that, and uses runner/lifetime.py instead.)
    """
    _LIBC.prctl(1, signal.SIGTERM)


def environment(**extra: str) -> dict[str, str]:
    """The test process's environment with examples/ and tests/ importable by children."""
    env = dict(os.environ)
    paths = [str(EXAMPLES), str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
    env[SESSION_VARIABLE] = str(os.getpid())
    env.update(extra)
    return env


class Processes:
    """Starts runner commands and remembers them so that every one gets stopped."""

    #: Every Processes not yet stopped: the leak check allows their processes (and descendants).
    live: "set[Processes]" = set()

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []
        Processes.live.add(self)
        self.scratch = Path(tempfile.mkdtemp(prefix="runner-test-"))  # journals live here
        self._brokers = 0

    def runner(self, *arguments: str, stdout=None, stderr=None, env: dict | None = None) -> subprocess.Popen:
        """Start ``python -m runner ARGUMENTS``."""
        command = [sys.executable, "-m", "runner", *arguments]
        process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env or environment(), cwd=ROOT,
                                   preexec_fn=die_with_parent)
        self.started.append(process)
        return process

    def broker(self, *arguments: str, bind: str = "tcp://127.0.0.1:*", journal: str | Path | None = None,
               log_level: str = "WARNING") -> tuple[subprocess.Popen, str]:
        """Start a broker on an ephemeral port (its own journal unless given); return it and its address."""
        if journal is None:
            self._brokers += 1
            journal = self.scratch / f"journal-{self._brokers}.db"
        process = self.runner("broker", "--bind", bind, "--journal", str(journal), "--log-level", log_level,
                              *arguments, stdout=subprocess.PIPE)
        return process, read_address(process, START_TIMEOUT)

    def worker(self, address: str, *arguments: str, imports: tuple[str, ...] = ("tasks",)) -> subprocess.Popen:
        """Start a worker allowed to run the given modules."""
        import_args = [item for module in imports for item in ("--import", module)]
        return self.runner("worker", "--connect", address, "--log-level", "WARNING", *import_args, *arguments)

    def stop(self, process: subprocess.Popen, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; return the exit code."""
        return stop_process(process, timeout)

    def stop_all(self) -> None:
        for process in reversed(self.started):
            self.stop(process)
        self.started.clear()
        Processes.live.discard(self)
        shutil.rmtree(self.scratch, ignore_errors=True)

    @classmethod
    def running_pids(cls) -> set[int]:
        """Process ids started by every Processes not yet stopped (a module's shared cluster)."""
        return {process.pid for started in cls.live for process in started.started if process.poll() is None}


def wait_until(condition, timeout: float, interval: float = 0.02, message: str = "condition") -> None:
    """Re-check ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} did not hold within {timeout}s")
        time.sleep(interval)
