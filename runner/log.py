"""Logging set-up shared by every runner process: loguru, readable or JSON lines.

Every line carries ``component`` (broker, worker, client, ...) and, for lines about
a job's life, ``job`` (its id); loggers get them with ``logger.bind``.
"""

from __future__ import annotations

import sys
from typing import Any

from loguru import logger

LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")

#: Whether per-job DEBUG lines are shown; checked first, since they sit on the hot path.
_job_lines = False


def debug_job(log: Any, job_id: str, message: str, *args: Any) -> None:
    """A DEBUG line about one job's life, built only when DEBUG is on."""
    if _job_lines:
        log.bind(job=job_id).debug(message, *args)


def job_lines_on() -> bool:
    """Whether per-job DEBUG lines (and so job events, runner/broker/events.py) are logged."""
    return _job_lines


_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[component]}</cyan>{extra[job_label]} {message}"
)


def _add_labels(record: dict) -> None:
    extra = record["extra"]
    extra.setdefault("component", "runner")
    job = extra.get("job")
    extra["job_label"] = f" job={job}" if job else ""


def setup_logging(level: str = "INFO", json: bool = False) -> None:
    """Send logs to stderr at ``level``; ``json`` writes one JSON object a line."""
    level = level.upper()
    if level not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    global _job_lines
    _job_lines = LEVELS.index(level) <= LEVELS.index("DEBUG")
    logger.remove()
    logger.configure(patcher=_add_labels)
    logger.enable("runner")
    logger.enable("workers")
    if json:
        logger.add(sys.stderr, level=level, serialize=True)
    else:
        logger.add(sys.stderr, level=level, format=_FORMAT, colorize=None)
