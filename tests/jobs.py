"""Task functions only the tests use: a pool child that dies, and where a job ran."""

import builtins
import os
import time


def crash(code: int = 13) -> None:
    """End the pool process at once, as a segfault or os._exit in user code would."""
    os._exit(code)


def pid_after(seconds: float) -> int:
    """Sleep, then return the process id that ran the job."""
    time.sleep(seconds)
    return os.getpid()


def unsendable_result() -> set:
    """Return a set, which msgpack cannot carry back."""
    return {1, 2}


def note_pid_after(seconds: float, path: str) -> int:
    """Sleep, then append this process's id to the file at ``path``, and return it."""
    time.sleep(seconds)
    with open(path, "a") as marker:
        marker.write(f"{os.getpid()}\n")
    return os.getpid()


# --- gates: a job that runs exactly as long as the test needs ------------------------------------
#: A gated job that the test never opens fails after this long instead of holding its slot forever.
GATE_TIMEOUT = 90.0


def wait_for_gate(gate: str) -> None:
    """Return once the file ``gate`` exists (the test creates it: "open the gate")."""
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gate {gate} was not opened within {GATE_TIMEOUT:g}s")
        time.sleep(0.01)


def gated(gate: str, record: str, value=None, finished: str | None = None) -> dict:
    """Append this process's id to ``record`` (the job has started), wait for the gate, append
    it to ``finished`` if given, then return the value with where and when the job started."""
    started = time.time()
    _append_line(record, str(os.getpid()))
    wait_for_gate(gate)
    if finished:
        _append_line(finished, str(os.getpid()))
    return {"value": value, "pid": os.getpid(), "started": started}


def ancestry() -> list[int]:
    """This process's id and its ancestors' (parent first): who a pool child belongs to."""
    chain = [os.getpid()]
    while chain[-1] > 1:
        with open(f"/proc/{chain[-1]}/stat") as stat:
            chain.append(int(stat.read().rsplit(")", 1)[1].split()[1]))
    return chain


def slow_ancestry(seconds: float) -> list[int]:
    """Sleep, then return :func:`ancestry`: a long job that says which worker's pool ran it."""
    time.sleep(seconds)
    return ancestry()


# --- used by tests/test_reliability_rules.py --------------------------------------------------
# Each run appends one line to a file the test names, so the test sees every attempt, where it
# ran and when it started, even across processes and workers.


def _append_line(path: str, text: str) -> int:
    """Append one line (a single write, so lines never interleave); return the lines now there."""
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (text + "\n").encode())
    finally:
        os.close(descriptor)
    with open(path) as recorded:
        return sum(1 for _ in recorded)


def flaky(path: str, failures: int, kinds: list | None = None) -> dict:
    """Record this attempt's start time; the first ``failures`` attempts raise, later ones succeed.

    Attempt n raises the builtin exception named ``kinds[(n - 1) % len(kinds)]``.
    """
    started = time.time()
    attempt = _append_line(path, repr(started))
    if attempt <= failures:
        kinds = kinds or ["RuntimeError"]
        kind = getattr(builtins, kinds[(attempt - 1) % len(kinds)])
        raise kind(f"attempt {attempt} failed on purpose")
    return {"attempt": attempt, "started": started}


def lingering(path: str, long_runs: int, seconds: float, value=None) -> dict:
    """Record this run's process id; the first ``long_runs`` runs sleep ``seconds``, later ones return at once."""
    run = _append_line(path, str(os.getpid()))
    if run <= long_runs:
        time.sleep(seconds)
    return {"run": run, "pid": os.getpid(), "value": value}


def touch(path: str) -> str:
    """Create the file: proof that the job ran."""
    with open(path, "a"):
        pass
    return path


def segfault() -> None:
    """Kill the pool process with SIGSEGV, as a crash in native code would (no core file)."""
    import resource
    import signal

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)  # not reached: the signal ends the process


def crash_after(seconds: float, code: int = 13) -> None:
    """Live a while (long enough for the worker to sample memory), then end the process."""
    time.sleep(seconds)
    os._exit(code)
