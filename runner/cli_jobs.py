"""The job verbs of the ``runner`` command: result, cancel, requeue, dead-letters (and jobs).

Each parses its arguments and calls one Client method; the exit code says what happened:
0 as asked, 1 the job failed or the broker refused, 2 no such job (or, with CURVE on, not
one this key may see), 3 not finished yet.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import click

from runner import protocol
from runner.client_requests import UNFINISHED
from runner.broker.server import DEFAULT_ADDRESS
from runner.cli import CONNECT_HELP, _client, curve_option, logging_options
from runner.log import setup_logging

UNKNOWN_EXIT = 2
UNFINISHED_EXIT = 3
ARGUMENTS_SHOWN = 1024  # characters of a job's arguments `jobs show` prints
COLUMNS = ("id", "task", "queue", "state", "attempts", "worker", "age")


class JobError(click.ClickException):
    """A job verb's answer that is not success, with its own exit code."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def connect_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--connect, --curve-keys and the logging flags, as every client command takes them."""
    command = logging_options(curve_option(command))
    return click.option("--connect", default=DEFAULT_ADDRESS, envvar="RUNNER_BROKER", show_default=True,
                        help=CONNECT_HELP)(command)


def unknown(job_id: str) -> JobError:
    return JobError(f"the broker knows no job {job_id} (or, with CURVE on, it is not one your key may see)",
                    UNKNOWN_EXIT)


def describe_error(error: BaseException) -> str:
    """``Type: message``; a TaskError's text already names the remote type (``module.Type: message``)."""
    from runner.errors import TaskError

    return str(error) if isinstance(error, TaskError) else f"{type(error).__name__}: {error}"


@click.command()
@click.argument("job_id", metavar="ID")
@click.option("--wait", is_flag=True, help="Wait for a pending or running job to finish (up to --timeout).")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(0, None),
              help="Seconds --wait waits.")
@connect_options
def result(job_id: str, wait: bool, timeout: float, connect: str, curve_keys: str | None, log_level: str,
           log_json: bool) -> None:
    """Print the result of job ID as JSON (exit 1 if it failed, 3 if it has not finished)."""
    setup_logging(log_level, log_json)
    with _client(connect, curve_keys) as client:
        view = client.fetch(job_id, wait=timeout if wait else 0.0)
    state = view["state"]
    if state == "unknown":
        raise unknown(job_id)
    if state in UNFINISHED:
        raise JobError(f"job {job_id} is {state}" + (f" after {timeout:g}s" if wait else "; --wait waits for it"),
                       UNFINISHED_EXIT)
    if state == "cancelled":
        raise JobError(f"job {job_id} was cancelled")
    if "error" in view:
        raise JobError(f"job {job_id} {state}: {describe_error(view['error'])}")
    click.echo(json.dumps(view["result"], default=repr))


@click.command()
@click.argument("job_id", metavar="ID")
@click.option("--force", is_flag=True, help="Also stop a running job (a thread-pool job is abandoned).")
@connect_options
def cancel(job_id: str, force: bool, connect: str, curve_keys: str | None, log_level: str, log_json: bool) -> None:
    """Cancel job ID: a waiting job never runs; a running one only with --force."""
    setup_logging(log_level, log_json)
    with _client(connect, curve_keys) as client:
        answer = client.cancel_job(job_id, force=force)
    if answer == "unknown":
        raise unknown(job_id)
    if answer == "running":
        raise JobError(f"job {job_id} is running; --force stops it")
    if answer == "finished":
        raise JobError(f"job {job_id} has already finished (`runner result {job_id}` shows how)")
    click.echo(f"cancelled {job_id}")


@click.command()
@click.argument("job_id", metavar="ID")
@connect_options
def requeue(job_id: str, connect: str, curve_keys: str | None, log_level: str, log_json: bool) -> None:
    """Run the failed or dead job ID again with fresh attempts; prints its id (see `runner result`)."""
    setup_logging(log_level, log_json)
    with _client(connect, curve_keys) as client:
        try:
            client.requeue(job_id)
        except ValueError:
            state = client.fetch(job_id)["state"]
            if state == "unknown":
                raise unknown(job_id) from None
            raise JobError(f"job {job_id} is {state}, not failed or dead: only those are requeued") from None
    click.echo(job_id)


@click.command("dead-letters")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of {id, task, queue, attempts, error}.")
@connect_options
def dead_letters(as_json: bool, connect: str, curve_keys: str | None, log_level: str, log_json: bool) -> None:
    """List the jobs that used up their attempts (with CURVE on: your key's, or all with an admin key)."""
    setup_logging(log_level, log_json)
    with _client(connect, curve_keys) as client:
        jobs = client.dead_letters()
    if as_json:
        click.echo(json.dumps([{**job, "error": describe_error(job["error"]) if job["error"] else None}
                               for job in jobs], indent=2))
        return
    for job in jobs:
        error = describe_error(job["error"]) if job["error"] else "-"
        click.echo(f"{job['id']}  {job['task']}  queue {job['queue']}  attempts {job['attempts']}  {error}")


@click.group(invoke_without_command=True)
@click.option("--state", type=click.Choice(protocol.LISTED_STATES), help="Only jobs in this state.")
@click.option("--queue", help="Only jobs of this queue.")
@click.option("--task", help="Only jobs of this task (module:function).")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, protocol.LIST_MAX),
              help="Jobs shown at most.")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of jobs.")
@connect_options
@click.pass_context
def jobs(context: click.Context, state: str | None, queue: str | None, task: str | None, limit: int, as_json: bool,
         connect: str, curve_keys: str | None, log_level: str, log_json: bool) -> None:
    """List jobs newest first: id, task, queue, state, attempts, worker, age. `jobs show ID`: one job."""
    if context.invoked_subcommand is not None:
        return
    setup_logging(log_level, log_json)
    with _client(connect, curve_keys) as client:
        rows = client.jobs(state=state, queue=queue, task=task, limit=limit)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    now = time.time()
    lines = [[str(row[column]) or "-" for column in COLUMNS[:-1]] + [age(row["created"], now)] for row in rows]
    if any(row.get("due") for row in rows):  # scheduled jobs listed: when each is due
        lines = [line + [due_text(row.get("due"), now)] for line, row in zip(lines, rows)]
        print_table((*COLUMNS, "due"), lines)
        return
    print_table(COLUMNS, lines)


@jobs.command("show")
@click.argument("job_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The job as one JSON object.")
@connect_options
def jobs_show(job_id: str, as_json: bool, connect: str, curve_keys: str | None, log_level: str,
              log_json: bool) -> None:
    """Every field of job ID: its arguments (cut at 1 kB) and, if it failed, the error and remote traceback."""
    setup_logging(log_level, log_json)
    with _client(connect, curve_keys) as client:
        job = client.job(job_id)
    if job is None:
        raise unknown(job_id)
    arguments = ", ".join([*map(repr, job.pop("args")), *(f"{k}={v!r}" for k, v in job.pop("kwargs").items())])
    if len(arguments) > ARGUMENTS_SHOWN:
        arguments = arguments[:ARGUMENTS_SHOWN] + f"... ({len(arguments)} characters)"
    error = job.pop("error", None)
    if job.get("due") is None:  # only a scheduled job has a due time
        job.pop("due", None)
    fields = {**job, "arguments": arguments}
    if error is not None:
        fields["error"] = describe_error(error)
        fields["traceback"] = getattr(error.__cause__, "text", "")  # the worker's (exception_from_blob)
    if as_json:
        click.echo(json.dumps(fields, indent=2, default=repr))
        return
    if fields["created"]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(fields["created"]))
        fields["created"] = f"{stamp} ({age(fields['created'], time.time())} ago)"
    if "due" in fields:
        fields["due"] = due_text(fields["due"], time.time())
    width = max(map(len, fields))
    for name, value in fields.items():
        if name == "traceback":
            click.echo(f"{name}:\n{value.rstrip()}" if value else f"{name.ljust(width)}  -")
        else:
            click.echo(f"{name.ljust(width)}  {_shown(value)}")


@click.command()
@click.option("--follow", is_flag=True, help="Keep streaming until Ctrl-C [default: stop after --idle quiet seconds].")
@click.option("--idle", default=2.0, show_default=True, type=click.FloatRange(0, None),
              help="Without --follow: stop once no event came for this long.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line.")
@connect_options
def events(follow: bool, idle: float, as_json: bool, connect: str, curve_keys: str | None, log_level: str,
           log_json: bool) -> None:
    """Stream job events as the broker sees them: accepted, leased, started, retried, requeued, finished, failed, dead,
    cancelled. A reader too slow for them loses some, and is told how many."""
    setup_logging(log_level, log_json)
    with _client(connect, curve_keys) as client:
        try:
            stream = client.events(idle=None if follow else idle)
        except PermissionError as exc:
            raise click.ClickException(str(exc)) from None
        for event in stream:
            if as_json:
                click.echo(json.dumps(event))
            elif event["event"] == "lost":
                click.echo(f"runner events: lost {event['count']} events: this reader was too slow "
                           "(runner broker --events-buffer)", err=True)
            else:
                click.echo(describe_event(event))


def describe_event(event: dict) -> str:
    """One event as a line: time, step, job, task, queue, worker, attempt."""
    stamp = time.strftime("%H:%M:%S", time.localtime(event["at"])) + f".{int(event['at'] * 1000) % 1000:03d}"
    return (f"{stamp} {event['event']:<9} {event['job']} {event['task']} queue={event['queue']} "
            f"worker={event['worker'] or '-'} attempt={event['attempt']}")


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value or "-"
    return "-" if value is None else json.dumps(value, default=repr)


def age(created: float | None, now: float) -> str:
    """A job's age, short: 45s, 12m, 3h, 2d ("-" when its id carries no time)."""
    if created is None:
        return "-"
    seconds = max(0.0, now - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{seconds:.0f}s"


def due_text(due: float | None, now: float) -> str:
    """A due time as UTC, and how far off it is: ``2026-12-03 02:00:00 UTC (in 45s)``."""
    if due is None:
        return "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(due))
    return f"{stamp} (in {age(now, due)})" if due > now else f"{stamp} (due)"


def print_table(columns: tuple[str, ...], lines: list[list[str]]) -> None:
    """A rich table on a terminal; plain aligned text, no escape codes, otherwise."""
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns, box=None, header_style="bold")
        for line in lines:
            table.add_row(*line)
        Console().print(table)
        return
    widths = [max([len(column), *(len(line[index]) for line in lines)]) for index, column in enumerate(columns)]
    for line in [list(columns), *lines]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip())


COMMANDS = (result, cancel, requeue, dead_letters, jobs, events)
