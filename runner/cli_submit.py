"""``runner submit``: one job from the shell, now, later (--delay, --at) or after other jobs (--after).

It parses its options and calls ``Client.submit``; what a job waits for, and what a failed
dependency does to it, is the library's (runner/after.py, runner/broker/dependencies.py).
"""

from __future__ import annotations

import json
from typing import Any

import click

from runner import protocol
from runner.broker.server import DEFAULT_ADDRESS
from runner.cli import (CONNECT_HELP, REACH_TIMEOUT, _client, _json_or_text, _keyword_arguments, curve_option,
                        logging_options)
from runner.cli_jobs import UNKNOWN_EXIT, JobError, describe_error
from runner.log import setup_logging


@click.command()
@click.argument("task")
@click.argument("arguments", nargs=-1)
@click.option("--connect", default=DEFAULT_ADDRESS, envvar="RUNNER_BROKER", show_default=True, help=CONNECT_HELP)
@click.option("--kwargs", "keyword_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option("--pool", type=click.Choice(["process", "thread", "async"]),
              help="Pool to run in [default: process; an async def task needs async].")
@click.option("--queue", help="Queue to submit to [default: default].")
@click.option("--priority", type=int, help="Higher runs first [default: 0].")
@click.option("--delay", type=float, callback=lambda context, param, value: _due_flag(value, "--delay"),
              metavar="SECONDS", help="Run no earlier than SECONDS after the broker accepts the job.")
@click.option("--at", "at", callback=lambda context, param, value: _due_flag(value, "--at"), metavar="ISO8601",
              help="Run no earlier than this time, with its UTC offset: 2026-12-03T02:00:00+01:00 (or ...Z).")
@click.option("--after", "after", multiple=True, callback=lambda context, param, value: _after_ids(value),
              metavar="ID[,ID...]", help="Run only once job ID is done (repeat, or separate ids with commas); "
              "if it fails, dies or is cancelled, this job fails with DependencyError.")
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Wait and print the result as JSON; --no-wait prints the job id once the broker has journaled it.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for the result.")
@click.option("--progress", is_flag=True, help="While waiting, show a progress bar on stderr (only on a terminal).")
@curve_option
@logging_options
def submit(task: str, arguments: tuple[str, ...], connect: str, keyword_json: str, pool: str | None,
           queue: str | None, priority: int | None, delay: float | None, at: Any, after: list[str], wait: bool,
           timeout: float, progress: bool, curve_keys: str | None, log_level: str, log_json: bool) -> None:
    """Submit TASK (module:function) with ARGUMENTS, each parsed as JSON (else taken as a string).

    Exit 1 if the job failed, 2 if --after names a job the broker does not know (nothing is submitted).
    """
    setup_logging(log_level, log_json)
    if delay is not None and at is not None:
        raise click.UsageError(f"give --delay or --at, not both (got --delay {delay:g} and --at {at.isoformat()})")
    keywords = _keyword_arguments(keyword_json)
    options = {"pool": pool, "queue": queue, "priority": priority, "delay": delay, "at": at, "after": after or None}
    with _client(connect, curve_keys) as client:
        try:
            future = client.submit(task, *map(_json_or_text, arguments), **keywords,
                                   **{key: value for key, value in options.items() if value is not None})
        except (TypeError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        if not wait or after:
            _check_accepted(client, future, connect)
        if not wait:
            click.echo(future.job_id)
            return
        try:
            result = _wait_for(future, timeout, progress)
        except TimeoutError:
            raise click.ClickException(f"job {future.job_id} did not finish within {timeout}s") from None
        except Exception as exc:
            raise click.ClickException(f"job {future.job_id} failed: {describe_error(exc)}") from None
    click.echo(json.dumps(result, default=repr))


def _check_accepted(client: Any, future: Any, connect: str) -> None:
    """Return once the broker has journaled the job; else say why it did not (a refused --after).

    The broker answers a request only after committing everything that came before it on this
    connection: once the fetch's answer is in, the job is in its journal, or it was refused.
    """
    if client.fetch(future.job_id)["state"] != "unknown":
        return
    try:
        refusal = future.exception(REACH_TIMEOUT)  # a refused job's outcome comes with the same flush
    except Exception:  # not ended (TimeoutError), or cancelled: the broker kept nothing of it
        refusal = None
    if isinstance(refusal, ValueError):
        raise JobError(f"{refusal}; nothing was submitted (`runner jobs show ID` shows what the broker knows of a job)",
                       UNKNOWN_EXIT)
    raise click.ClickException(f"the broker at {connect} did not keep job {future.job_id}; submit it again")


def _after_ids(values: tuple[str, ...]) -> list[str]:
    """The job ids of every --after (each one id or several separated by commas), checked."""
    ids = []
    for value in values:
        for part in value.split(","):
            job_id = part.strip()
            if not job_id:
                raise click.BadParameter(f"an empty job id in {value!r}: give the ids `runner submit --no-wait` "
                                         "printed, as --after ID (repeated) or --after ID1,ID2", param_hint="--after")
            if len(job_id) > protocol.MAX_NAME or not job_id.isprintable():
                raise click.BadParameter(f"{job_id[:80]!r} is not a job id (at most {protocol.MAX_NAME} printable "
                                         "characters, as `runner submit --no-wait` prints them)", param_hint="--after")
            ids.append(job_id)
    return ids


def _wait_for(future: Any, timeout: float, progress: bool) -> Any:
    """The job's result; with ``progress``, under a one-job bar (drawn only on a terminal)."""
    from runner.progress import track

    if not progress:
        return future.result(timeout)
    [result] = track((future.result(timeout) for _ in (1,)), 1, future.job_id)  # unpacking ends the bar
    return result


def _due_flag(value: Any, flag: str) -> Any:
    """--delay (seconds from 0) as given, or --at (ISO 8601 with its offset) as an aware datetime;
    a bad value is a usage error that names it."""
    from runner.due import check_delay, parse_at

    if value is None:
        return None
    try:
        if flag == "--at":
            return parse_at(value)
        check_delay(value)
        return value
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=flag) from None


COMMANDS = (submit,)
