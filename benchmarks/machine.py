"""What the benchmark ran on: CPU, cores, memory, versions, the git commit, the load."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import msgpack
import zmq


def describe(root: Path) -> dict[str, Any]:
    """The machine and software of this run, for the JSON file and the docs."""
    return {
        "cpu": _cpuinfo("model name"), "cores": os.cpu_count(), "memory_bytes": _meminfo("MemTotal"),
        "os": platform.platform(), "python": f"{platform.python_implementation()} {platform.python_version()}",
        "pyzmq": zmq.__version__, "libzmq": zmq.zmq_version(), "msgpack": ".".join(map(str, msgpack.version)),
        "sqlite": sqlite3.sqlite_version, "git_commit": _git(root, "rev-parse", "HEAD"),
        "git_changed": _changed_files(root), "load_average": list(os.getloadavg()),
    }


def one_line(machine: dict[str, Any]) -> str:
    """``AMD EPYC, 2 cores, 23.4 GiB, Python 3.11.7, ...`` for the table's heading."""
    memory = f"{machine['memory_bytes'] / 2**30:.1f} GiB" if machine.get("memory_bytes") else "memory unknown"
    return (f"{machine['cpu']}, {machine['cores']} cores, {memory}, {machine['os']}, {machine['python']}, "
            f"pyzmq {machine['pyzmq']} (libzmq {machine['libzmq']}), msgpack {machine['msgpack']}, "
            f"SQLite {machine['sqlite']}")


def _cpuinfo(key: str) -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _git(root: Path, *arguments: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *arguments], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _changed_files(root: Path) -> list[str]:
    """Uncommitted changes to the code measured (runner/, workers/): the commit alone does not describe it."""
    status = _git(root, "status", "--porcelain", "--", "runner", "workers")
    return [line[3:] for line in status.splitlines()] if status else []
