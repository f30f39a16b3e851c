"""The ``runner`` commands that watch a cluster: ``status`` (once, as JSON, or redrawn) and ``dashboard``."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from runner.broker.server import DEFAULT_ADDRESS
from runner.cli import CONNECT_HELP, _client, _stop_on_signals, curve_option, exit_with_option, logging_options
from runner.log import setup_logging

STATUS_EVERY = 1.0  # seconds between redraws of runner status --watch
PLAIN_WIDTH = 160  # columns of runner status through a pipe (its tables are wider than 80)


@click.command()
@click.option("--connect", default=DEFAULT_ADDRESS, envvar="RUNNER_BROKER", show_default=True, help=CONNECT_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the status as one JSON document.")
@click.option("--watch", is_flag=True, help="Redraw the status in place every second until Ctrl-C.")
@curve_option
@logging_options
def status(connect: str, as_json: bool, watch: bool, curve_keys: str | None, log_level: str, log_json: bool) -> None:
    """Show the broker's workers, queues and totals; exits non-zero if the broker does not answer.

    Workers: slots, running, done and failed runs, resident memory of the worker and of its
    pool children, seconds since its last heartbeat. Queues: pending jobs by priority, running
    jobs, the oldest waiting job's age. Then totals and completed jobs per second over 10 s.
    """
    from rich.console import Console

    from runner.status_view import render

    setup_logging(log_level, log_json)
    if as_json and watch:
        raise click.UsageError("--json and --watch do not go together: --json prints one document")
    console = Console()  # colour on a terminal; plain text, no escape codes, through a pipe
    if not console.is_terminal:
        console = Console(width=max(console.width, PLAIN_WIDTH))  # whole names, not cells cut to 80 columns
    with _client(connect, curve_keys) as client:
        if not watch:
            snapshot = client.status()
            if as_json:
                click.echo(json.dumps(snapshot, indent=2))
            else:
                console.print(render(snapshot))
            return
        _watch_status(client, console)


def _watch_status(client: Any, console: Any) -> None:
    """Redraw the status every second until Ctrl-C (exit 0); a broker that stops answering ends it.

    Without a terminal each snapshot is printed after the last, as plain text."""
    from rich.live import Live

    from runner.status_view import render

    try:
        if not console.is_terminal:
            while True:
                console.print(render(client.status()))
                console.print()
                sys.stdout.flush()
                time.sleep(STATUS_EVERY)
        with Live(render(client.status()), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(STATUS_EVERY)
                live.update(render(client.status()), refresh=True)
    except KeyboardInterrupt:
        return
    except TimeoutError as exc:
        raise click.ClickException(f"the broker stopped answering: {exc}") from None


@click.command()
@click.option("--connect", default=DEFAULT_ADDRESS, envvar="RUNNER_BROKER", show_default=True, help=CONNECT_HELP)
@click.option("--port", default=8787, show_default=True, type=click.IntRange(0, 65535),
              help="HTTP port of the page; 0 picks a free one.")
@click.option("--bind", "http_bind", default="127.0.0.1", show_default=True,
              help="Address the page listens on; anyone who reaches it sees every job's errors.")
@curve_option
@exit_with_option
@logging_options
def dashboard(connect: str, port: int, http_bind: str, curve_keys: str | None, exit_with: tuple[int, ...],
              log_level: str, log_json: bool) -> None:
    """Serve a read-only web page of the cluster: workers, queues, jobs per second, latest failures.

    Prints the page's URL when ready; SIGTERM or Ctrl-C stops it.
    """
    from runner.dashboard.server import Dashboard

    setup_logging(log_level, log_json)
    with _client(connect, curve_keys) as client:
        try:
            server = Dashboard(client, http_bind, port)
        except OSError as exc:
            raise click.ClickException(f"cannot serve the dashboard on {http_bind}:{port}: {exc}") from None
        _stop_on_signals(server.stop)
        if exit_with:  # started by a harness (benchmarks --observed): ends with it
            from runner import lifetime

            lifetime.exit_with(exit_with, server.stop)
        click.echo(server.url)
        sys.stdout.flush()
        server.serve_forever()


COMMANDS = (status, dashboard)
