"""The broker's ``--schedules FILE``: periodic schedules written down in TOML.

```toml
[[schedule]]
name = "nightly-report"
cron = "0 2 * * *"            # or every = 30 (seconds)
tz = "Europe/Paris"           # default UTC
task = "reports:nightly"      # module:function, run by a worker that may import it
args = [7]
kwargs = { format = "pdf" }
queue = "reports"             # and pool, priority, retries, retry_backoff, timeout, max_attempts
catch_up = "one"              # "none", "all" (with max_catch_up = N)
overlap = "skip"              # "allow"
```

The file is read whole and checked whole: any error (TOML syntax, an unknown key, a bad
expression, a duplicate name) raises one ValueError naming the entry, and nothing changes.
"""

from __future__ import annotations

import sys
from typing import Any

from runner.broker.schedules import Schedule

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SPEC_KEYS = ("cron", "every")
KEYS = ("name", *SPEC_KEYS, "task", "args", "kwargs", "tz", "catch_up", "max_catch_up", "overlap", "pool", "queue",
        "priority", "retries", "retry_backoff", "timeout", "max_attempts")


def load(path: str) -> list[Schedule]:
    """Every ``[[schedule]]`` of the file at ``path``, checked; ValueError says what and where."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ValueError(f"cannot read the schedule file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"schedule file {path} is not valid TOML: {exc}") from None
    extra = set(document) - {"schedule"}
    entries = document.get("schedule", [])
    if extra or not isinstance(entries, list):
        raise ValueError(f"schedule file {path}: only [[schedule]] tables are accepted, found {sorted(extra)}")
    schedules, names = [], set()
    for number, entry in enumerate(entries, 1):
        where = f"schedule file {path}, [[schedule]] number {number}"
        if "name" in entry:
            where += f" ({entry['name']!r})"
        try:
            schedule = _schedule(entry)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        if schedule.name in names:
            raise ValueError(f"{where}: the name {schedule.name!r} is used twice; names must be unique")
        names.add(schedule.name)
        schedules.append(schedule)
    return schedules


def _schedule(entry: dict[str, Any]) -> Schedule:
    from runner.client_schedules import define  # the client's checks, so the file and the API agree

    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise ValueError(f"unknown keys {unknown}; known: {', '.join(KEYS)}")
    specs = [key for key in SPEC_KEYS if key in entry]
    if len(specs) != 1:
        raise ValueError("give exactly one of cron = \"EXPRESSION\" and every = SECONDS")
    for key in ("name", "task"):
        if key not in entry:
            raise ValueError(f"{key} is missing")
    if "cron" in entry and not isinstance(entry["cron"], str):
        raise ValueError(f"bad cron expression {entry['cron']!r}: give it as a string, e.g. cron = \"0 2 * * *\"")
    if not isinstance(entry["task"], str):
        raise ValueError(f"task must be a 'module:function' string, got {entry['task']!r}")
    args, kwargs = entry.get("args", []), entry.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ValueError("args must be an array and kwargs a table")
    options = {key: entry[key] for key in KEYS[KEYS.index("tz"):] if key in entry}  # policies and job options
    return define(entry["name"], entry[specs[0]], entry["task"], tuple(args), kwargs, source="file", **options)
