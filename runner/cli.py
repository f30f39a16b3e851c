"""The ``runner`` command: parses arguments and calls the library; no logic of its own.

broker, worker and local are here; the other commands live beside, registered at the end:
cli_submit.py (submit), cli_watch.py (status, dashboard), cli_keys.py (keys), cli_jobs.py (result, cancel,
jobs, events...), cli_schedule.py (schedule).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Callable

import click

from runner.broker.server import (DEFAULT_ADDRESS, DEFAULT_HEARTBEAT, DEFAULT_JOURNAL, DEFAULT_LIVENESS,
                                  DEFAULT_RESULT_TTL, DUE_LEAD)
from runner.broker.events import EVENT_BUFFER
from runner.broker.limits import Limits
from runner.cli_keys import keys_group
from runner.log import LEVELS, setup_logging
from runner.protocol import MAX_HOLD

CONNECT_HELP = "Broker address to connect to (env RUNNER_BROKER)."
CURVE_HELP = ("Folder of CurveZMQ keys (`runner keys generate DIR`): encrypt and authenticate every connection "
              "(env RUNNER_CURVE_KEYS).")
REACH_TIMEOUT = 5.0  # seconds the client commands wait for the broker
DEFAULT_ASYNC_TASKS = 1000  # coroutine jobs a worker runs at once (runner worker --async-tasks)
STOP_NOW_TIMEOUT = 5.0  # seconds an embedded worker whose owner or broker ended takes to stop, at most


def logging_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--log-level and --log-json, shared by every command."""
    command = click.option("--log-json", is_flag=True, envvar="RUNNER_LOG_JSON",
                           help="Write logs as one JSON object a line.")(command)
    return click.option("--log-level", default="INFO", envvar="RUNNER_LOG_LEVEL", show_default=True,
                        type=click.Choice(LEVELS, case_sensitive=False), help="Least severe log level shown.")(command)


def curve_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--curve-keys DIR, shared by every command that listens or connects."""
    return click.option("--curve-keys", envvar="RUNNER_CURVE_KEYS", type=click.Path(file_okay=False),
                        help=CURVE_HELP)(command)


def heartbeat_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option("--liveness", default=DEFAULT_LIVENESS, show_default=True, type=click.IntRange(1, 1000),
                           help="Missed heartbeats before the other side is declared dead.")(command)
    return click.option("--heartbeat", default=DEFAULT_HEARTBEAT, show_default=True, type=click.FloatRange(0.01, 3600),
                        help="Seconds between heartbeats.")(command)


def exit_with_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """--exit-with PID (hidden): an embedded cluster's child ends with its owner, and leaves Ctrl-C to it."""
    return click.option("--exit-with", "exit_with", multiple=True, type=int, hidden=True,
                        help="End as soon as the process PID ends; repeat for several.")(command)


def limit_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The broker's limits (runner/broker/limits.py), each a flag and an environment variable."""
    defaults = Limits()
    for name, what in reversed(LIMIT_FLAGS):
        flag = "--" + name.replace("_", "-")
        command = click.option(flag, name, default=getattr(defaults, name), show_default=True,
                               type=click.IntRange(1, None), envvar="RUNNER_" + name.upper(), help=what)(command)
    return command


LIMIT_FLAGS = (
    ("max_message_bytes", "Largest message accepted (ZeroMQ MAXMSGSIZE); a larger one drops its sender's connection."),
    ("max_payload_bytes", "Largest packed arguments of one job; a larger job fails with PayloadTooLargeError."),
    ("max_pending", "Unfinished jobs per client; beyond it submit raises BackpressureError (or waits: block=True)."),
    ("max_peers", "Connected clients and workers; a hello beyond it is refused (the client fails to connect)."),
    ("max_sync_objects", "Lock, semaphore, event and queue names one client may use; beyond it: LimitError."),
    ("max_invalid_frames", "Invalid frames from one peer before it is forgotten and its frames are ignored for 60s."),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="runner")
def cli() -> None:
    """runner: a distributed task runner for Python."""


@cli.command()
@click.option("--bind", default=DEFAULT_ADDRESS, envvar="RUNNER_BIND", show_default=True,
              help="Address the broker listens on; tcp://HOST:* picks a free port (env RUNNER_BIND).")
@click.option("--journal", default=DEFAULT_JOURNAL, envvar="RUNNER_JOURNAL", show_default=True,
              help="SQLite file keeping every accepted job; ':memory:' turns durability off (env RUNNER_JOURNAL).")
@click.option("--result-ttl", default=DEFAULT_RESULT_TTL, show_default=True, type=click.FloatRange(0.1, 10**8),
              envvar="RUNNER_RESULT_TTL", help="Seconds an outcome is kept after its client has it.")
@click.option("--scratch", hidden=True, help="A folder of the embedded cluster's, removed when this broker ends.")
@click.option("--events-buffer", default=EVENT_BUFFER, show_default=True, type=click.IntRange(1, 10**7),
              help="Job events kept for each `runner events` reader; a slower reader loses the rest (counted).")
@click.option("--metrics-port", default=0, show_default=True, type=click.IntRange(0, 65535), envvar="RUNNER_METRICS_PORT",
              help="Serve Prometheus metrics on this port (0: off) (env RUNNER_METRICS_PORT).")
@click.option("--metrics-bind", default="127.0.0.1", show_default=True, envvar="RUNNER_METRICS_BIND",
              help="Address the metrics port listens on; 0.0.0.0 for every interface (env RUNNER_METRICS_BIND).")
@click.option("--schedules", "schedules_file", type=click.Path(dir_okay=False), envvar="RUNNER_SCHEDULES",
              help="TOML file of periodic schedules ([[schedule]] tables), read again on SIGHUP "
                   "(env RUNNER_SCHEDULES).")
@click.option("--due-lead", default=DUE_LEAD, show_default=True, type=click.FloatRange(0.0, MAX_HOLD),
              help="Seconds before its due time a delayed job is leased to a worker, which holds it and starts "
                   "it on time (0: leased once due).")
@limit_options
@click.option("--insecure", is_flag=True, envvar="RUNNER_INSECURE",
              help="Allow listening on a non-loopback address without --curve-keys (a warning at every start).")
@curve_option
@heartbeat_options
@exit_with_option
@logging_options
def broker(bind: str, journal: str, result_ttl: float, scratch: str | None, events_buffer: int,
           metrics_port: int, metrics_bind: str, schedules_file: str | None, due_lead: float, insecure: bool,
           curve_keys: str | None,
           heartbeat: float, liveness: int, exit_with: tuple[int, ...], log_level: str, log_json: bool,
           **limits: int) -> None:
    """Run the broker: queues jobs and hands them to workers. Prints its address when ready.

    With --curve-keys, SIGHUP reads DIR/authorized/ again (it is also re-read when it changes);
    with --schedules, SIGHUP reads FILE again (a bad file is logged and changes nothing).
    """
    import sqlite3

    from runner import lifetime
    from runner.broker.server import Broker
    from runner.scratch import remove_folder

    setup_logging(log_level, log_json)
    if exit_with:
        lifetime.exit_with(exit_with, lambda: _leave(scratch))
    try:
        settings = Limits(**limits)
    except ValueError as exc:
        raise click.UsageError(str(exc).replace("max_", "--max-").replace("_", "-")) from None
    try:
        server = Broker(bind, journal=journal, heartbeat=heartbeat, liveness=liveness, result_ttl=result_ttl,
                        limits=settings, curve_keys=curve_keys, insecure=insecure, events_buffer=events_buffer,
                        schedules=schedules_file, due_lead=due_lead)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot open the journal {journal!r}: {exc}") from None
    if metrics_port:
        try:
            server.serve_metrics(metrics_port, metrics_bind)
        except OSError as exc:
            raise click.ClickException(f"cannot serve metrics on {metrics_bind}:{metrics_port}: {exc}; "
                                       "choose another --metrics-port or --metrics-bind") from None
    _stop_on_signals(server.stop, interrupts=not exit_with)
    signal.signal(signal.SIGHUP, lambda *_: (server.reload_keys(), server.reload_schedules()))
    click.echo(server.address)
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        if scratch:
            remove_folder(scratch)


@cli.command()
@click.option("--connect", default=DEFAULT_ADDRESS, envvar="RUNNER_BROKER", show_default=True, help=CONNECT_HELP)
@click.option("--processes", type=click.IntRange(0, 1024), envvar="RUNNER_PROCESSES",
              help="Process-pool size for CPU-bound jobs [default: number of cores].")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(0, 10_000), envvar="RUNNER_THREADS",
              help="Thread-pool size for I/O-bound jobs.")
@click.option("--async-tasks", default=DEFAULT_ASYNC_TASKS, show_default=True, type=click.IntRange(0, 1_000_000),
              envvar="RUNNER_ASYNC_TASKS", help="Coroutine jobs (async def tasks) run at once on the worker's event "
              "loop; 0 turns the async pool off.")
@click.option("--queue", "queues", multiple=True, envvar="RUNNER_QUEUES",
              help="Queue to serve; repeat for several [default: default].")
@click.option("--import", "imports", multiple=True, envvar="RUNNER_IMPORTS",
              help="Module whose functions this worker may run; repeat for several.")
@click.option("--allow-module", "allow_modules", multiple=True, envvar="RUNNER_ALLOW_MODULES", metavar="GLOB",
              help="Also run functions of modules matching GLOB (e.g. 'myapp.*'); repeat for several. Never admits "
                   "the standard library, dangerous packages or private modules: name those with --import.")
@click.option("--allow-any-module", is_flag=True,
              help="Same as --allow-module '*' (for the embedded cluster, which runs its user's own code).")
@click.option("--name", help="Name shown in status [default: HOST-PID].")
@click.option("--grace", default=30.0, show_default=True, type=click.FloatRange(0, 86400), envvar="RUNNER_GRACE",
              help="Seconds running jobs get to finish after SIGTERM before they are given back.")
@click.option("--max-jobs-per-child", type=click.IntRange(1, 2**31), envvar="RUNNER_MAX_JOBS_PER_CHILD",
              help="Replace a process-pool child by a fresh one after this many jobs [default: never].")
@click.option("--max-memory-per-child", type=click.FloatRange(1, 2**31), envvar="RUNNER_MAX_MEMORY_PER_CHILD",
              help="Replace a process-pool child whose RSS is above this many MiB after a job [default: never].")
@curve_option
@heartbeat_options
@exit_with_option
@logging_options
def worker(connect: str, processes: int | None, threads: int, async_tasks: int, queues: tuple[str, ...], imports: tuple[str, ...],
           allow_modules: tuple[str, ...], allow_any_module: bool, name: str | None, grace: float,
           max_jobs_per_child: int | None, max_memory_per_child: float | None, curve_keys: str | None,
           heartbeat: float, liveness: int, exit_with: tuple[int, ...], log_level: str, log_json: bool) -> None:
    """Run a worker: takes jobs from the broker and runs them in its pools."""
    from runner import lifetime
    from workers.worker import Worker

    setup_logging(log_level, log_json)
    if processes is None:
        processes = os.cpu_count() or 1
    if processes == 0 and threads == 0 and async_tasks == 0:
        raise click.BadParameter("a worker needs at least one of --processes, --threads and --async-tasks above 0")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` would: modules beside the worker import
    globs = list(allow_modules) + (["*"] if allow_any_module else [])
    if not imports and not globs:
        click.echo("runner worker: warning: no --import given; this worker can run no task", err=True)
    try:
        instance = Worker(connect, processes=processes, threads=threads, async_tasks=async_tasks, queues=list(queues),
                          imports=list(imports), allow_modules=globs, heartbeat=heartbeat,
                          liveness=liveness, grace=grace, name=name, max_jobs_per_child=max_jobs_per_child,
                          max_memory_per_child=max_memory_per_child, curve_keys=curve_keys)
    except ImportError as exc:
        raise click.ClickException(f"cannot import a module given with --import: {exc}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if exit_with:  # an embedded cluster's worker: its jobs cannot outlive the owner or the broker anyway
        lifetime.exit_with(exit_with, lambda: _stop_now(instance))
        _stop_on_signals(instance.stop, interrupts=False)
    else:
        instance.install_signal_handlers()
    instance.run()
    if instance.connection.failure:
        raise click.ClickException(instance.connection.failure)
    if instance.abandoned_threads:
        # A thread-pool job abandoned at its timeout or the end of grace cannot be stopped;
        # leave without waiting for it, as the interpreter's exit would.
        sys.stderr.flush()
        os._exit(0)


@cli.command()
@click.option("--bind", help="Broker address [default: a private ipc:// socket in a 0700 temporary folder].")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(0, 64), help="Workers to start.")
@click.option("--processes", type=click.IntRange(0, 1024), help="Process-pool size per worker [default: cores].")
@click.option("--threads", type=click.IntRange(0, 10_000), help="Thread-pool size per worker [default: 8].")
@click.option("--async-tasks", type=click.IntRange(0, 1_000_000),
              help=f"Coroutine jobs at once per worker [default: {DEFAULT_ASYNC_TASKS}].")
@click.option("--journal", help="The broker's journal file [default: a temporary file, removed at exit].")
@curve_option
@logging_options
def local(bind: str | None, workers: int, processes: int | None, threads: int | None, async_tasks: int | None,
          journal: str | None, curve_keys: str | None, log_level: str, log_json: bool) -> None:
    """Run a broker and WORKERS workers in one command; Ctrl-C stops them all."""
    import threading

    from runner.errors import describe_exit
    from runner.local import LocalCluster

    setup_logging(log_level, log_json)
    # Ctrl-C (or SIGTERM) while starting raises KeyboardInterrupt: LocalCluster stops what it
    # started, and main() exits with 130. Once started, they end the wait below.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ended: list[str] = []
    with LocalCluster(workers, processes=processes, threads=threads, async_tasks=async_tasks, bind=bind,
                      journal=journal, log_level=log_level, curve_keys=curve_keys) as cluster:
        click.echo(f"runner local: broker at {cluster.address} with {workers} workers; Ctrl-C stops")
        sys.stdout.flush()
        stop = threading.Event()

        def broker_ended(pid: int, status: int) -> None:
            ended.append(f"the broker (pid {pid}) {describe_exit(status)}")
            stop.set()

        _stop_on_signals(stop.set)
        cluster.on_broker_exit(broker_ended)
        stop.wait()
    if ended:
        raise click.ClickException(f"{ended[0]}; stopped the workers")
    click.echo("runner local: stopped")


def _client(address: str, curve_keys: str | None):
    from runner.client import BrokerUnreachable, Client
    from runner.keys import KeyFileError

    try:
        return Client(address, timeout=REACH_TIMEOUT, curve_keys=curve_keys)
    except BrokerUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    except KeyFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--curve-keys") from None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--connect") from None


def _keyword_arguments(keyword_json: str) -> dict[str, Any]:
    """The task's keyword arguments from --kwargs: a JSON object, else a usage error naming it."""
    try:
        keywords = json.loads(keyword_json)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--kwargs") from None
    if not isinstance(keywords, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--kwargs")
    return keywords


def _json_or_text(argument: str) -> Any:
    try:
        return json.loads(argument)
    except json.JSONDecodeError:
        return argument


def _stop_on_signals(stop: Callable[[], None], interrupts: bool = True) -> None:
    """SIGTERM, and SIGINT if ``interrupts`` (else it stays ignored: the owner's), call ``stop``."""
    for signum in (signal.SIGTERM, signal.SIGINT) if interrupts else (signal.SIGTERM,):
        signal.signal(signum, lambda *_: stop())


def _stop_now(instance: Any) -> None:
    """Stop a worker with no grace (ending its pools cleanly); leave anyway if that takes too long.

    Quietly: the owner's client reports what ended, and nobody else is listening.
    """
    import threading

    from loguru import logger

    logger.remove()
    instance.grace = 0.0
    instance.stop()
    deadline = threading.Timer(STOP_NOW_TIMEOUT, os._exit, args=(1,))
    deadline.daemon = True
    deadline.start()


def _leave(scratch: str | None) -> None:
    """An embedded broker whose owner is gone: nothing in it can be asked for again."""
    from runner.scratch import remove_folder

    if scratch:
        remove_folder(scratch)
    os._exit(0)


from runner.cli_jobs import COMMANDS as _JOB_COMMANDS  # noqa: E402 - they use the helpers above
from runner.cli_watch import COMMANDS as _WATCH_COMMANDS  # noqa: E402 - they use the helpers above
from runner.cli_schedule import COMMANDS as _SCHEDULE_COMMANDS  # noqa: E402 - they use the helpers above
from runner.cli_submit import COMMANDS as _SUBMIT_COMMANDS  # noqa: E402 - they use the helpers above

for _command in (*_SUBMIT_COMMANDS, *_WATCH_COMMANDS, keys_group, *_JOB_COMMANDS, *_SCHEDULE_COMMANDS):
    cli.add_command(_command)


def main() -> None:
    """Entry point: click errors become one line on stderr and a non-zero exit."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"runner: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
