"""``runner schedule add|remove|list``: periodic schedules kept and run by the broker.

Each parses its arguments and calls one Client method (runner/client_schedules.py).
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any

import click

from runner.broker.schedules import CATCH_UP, DEFAULT_MAX_CATCH_UP, MAX_CATCH_UP, OVERLAP
from runner.cli import _client, _json_or_text, _keyword_arguments
from runner.cli_jobs import JobError, connect_options, print_table
from runner.client_schedules import later_runs_text
from runner.log import setup_logging

COLUMNS = ("name", "spec", "tz", "task", "queue", "next", "in", "then", "fired", "skipped", "running", "catch_up",
           "overlap", "source")


@click.group()
def schedule() -> None:
    """Periodic schedules: the broker creates one job per tick for the whole cluster."""


@schedule.command("add")
@click.argument("name")
@click.argument("task")
@click.argument("arguments", nargs=-1)
@click.option("--cron", metavar="EXPRESSION",
              help="Five-field cron expression ('0 2 * * *') or alias (@hourly, @daily, @weekly, @monthly, @yearly).")
@click.option("--every", type=float, metavar="SECONDS", help="Run every SECONDS instead of on a cron expression.")
@click.option("--tz", default="UTC", show_default=True, help="IANA time zone the cron expression is read in.")
@click.option("--kwargs", "keyword_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option("--queue", help="Queue of each run [default: default].")
@click.option("--pool", type=click.Choice(["process", "thread", "async"]), help="Pool of each run [default: process].")
@click.option("--priority", type=int, help="Priority of each run [default: 0].")
@click.option("--retries", type=click.IntRange(0, 1000), help="Retries of each run [default: 0].")
@click.option("--timeout", "run_timeout", type=float, help="Seconds each run may take [default: no limit].")
@click.option("--catch-up", default="one", show_default=True, type=click.Choice(CATCH_UP),
              help="Ticks missed while the broker was down: run the latest once, none, or all (--max-catch-up).")
@click.option("--max-catch-up", default=DEFAULT_MAX_CATCH_UP, show_default=True, type=click.IntRange(1, MAX_CATCH_UP),
              help="With --catch-up all: the most missed ticks run.")
@click.option("--overlap", default="skip", show_default=True, type=click.Choice(OVERLAP),
              help="A tick while the previous run is unfinished: skip it (counted) or allow it.")
@connect_options
def add(name: str, task: str, arguments: tuple[str, ...], cron: str | None, every: float | None, tz: str,
        keyword_json: str, queue: str | None, pool: str | None, priority: int | None, retries: int | None,
        run_timeout: float | None, catch_up: str, max_catch_up: int, overlap: str, connect: str,
        curve_keys: str | None, log_level: str, log_json: bool) -> None:
    """Run TASK (module:function) with ARGUMENTS (each JSON, else text) at every tick; replaces schedule NAME.

    Give --cron EXPRESSION or --every SECONDS. Prints when it runs next."""
    setup_logging(log_level, log_json)
    if (cron is None) == (every is None):
        raise click.UsageError("give exactly one of --cron EXPRESSION and --every SECONDS")
    keywords = _keyword_arguments(keyword_json)
    options = {"queue": queue, "pool": pool, "priority": priority, "retries": retries, "timeout": run_timeout}
    with _client(connect, curve_keys) as client:
        try:
            added = client.schedule(name, cron if cron is not None else every, task, *map(_json_or_text, arguments),
                                    tz=tz, catch_up=catch_up, max_catch_up=max_catch_up, overlap=overlap,
                                    **{key: value for key, value in options.items() if value is not None}, **keywords)
        except (TypeError, ValueError, PermissionError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"schedule {name}: next run {added['next'].isoformat()}")


@schedule.command("remove")
@click.argument("name")
@connect_options
def remove(name: str, connect: str, curve_keys: str | None, log_level: str, log_json: bool) -> None:
    """Remove schedule NAME (runs already made go on); exit 2 if there is none."""
    setup_logging(log_level, log_json)
    with _client(connect, curve_keys) as client:
        try:
            removed = client.unschedule(name)
        except PermissionError as exc:
            raise click.ClickException(str(exc)) from None
    if not removed:
        raise JobError(f"the broker has no schedule {name!r} (`runner schedule list` shows them)", 2)
    click.echo(f"removed schedule {name}")


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array; times as ISO 8601 in each one's zone.")
@connect_options
def list_schedules(as_json: bool, connect: str, curve_keys: str | None, log_level: str, log_json: bool) -> None:
    """Every schedule: its spec, zone, task, next run and the two after it, and runs fired and ticks skipped."""
    setup_logging(log_level, log_json)
    with _client(connect, curve_keys) as client:
        try:
            views = client.schedules()
        except PermissionError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(views, indent=2, default=_iso))
        return
    now = time.time()
    print_table(COLUMNS, [[_cell(view, column, now) for column in COLUMNS] for view in views])


def _cell(view: dict[str, Any], column: str, now: float) -> str:
    if column == "spec":
        return view["spec"] if isinstance(view["spec"], str) else f"every {view['spec']:g}s"
    if column == "next":
        return view["next"].strftime("%Y-%m-%d %H:%M:%S %Z")
    if column == "in":
        return f"{max(0.0, view['next'].timestamp() - now):.0f}s"
    if column == "then":  # the runs after the next one
        return later_runs_text(view["upcoming"])
    return str(view[column])


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


COMMANDS = (schedule,)
