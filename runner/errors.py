"""Exceptions users of runner catch, and how a remote failure becomes one."""

from __future__ import annotations

import builtins
import signal

from runner import protocol


class BrokerUnreachable(ConnectionError):
    """The broker did not answer in time."""


class AuthenticationError(BrokerUnreachable):
    """The broker refused this side's CURVE key, or this side has none and the broker wants one.

    The message says which key was used. Raised by ``Client()``, and by every wait of a client
    whose key is revoked while it runs.
    """


class ClientClosed(RuntimeError):
    """The client was closed before this job's outcome arrived."""


class ClusterGone(BrokerUnreachable):
    """The broker of this client's embedded cluster (``Client()`` with no address) has ended.

    It cannot come back, and its jobs went with it: pending futures fail with this
    error and new submissions raise it. ``pid`` and ``exit_status`` (negative: killed
    by that signal) say what ended. Create a new ``runner.Client()`` to go on.
    """

    def __init__(self, pid: int, exit_status: int) -> None:
        super().__init__(f"the embedded cluster's broker (pid {pid}) {describe_exit(exit_status)}; "
                         "its jobs are lost with it (a new runner.Client() starts a new cluster)")
        self.pid = pid
        self.exit_status = exit_status

    def __reduce__(self):  # pickled with what __init__ takes, not the message
        return type(self), (self.pid, self.exit_status)


class TaskError(Exception):
    """A task raised an exception whose type is not a Python builtin.

    ``type_name`` and ``module`` name the remote type, ``message`` is its text and
    ``remote_traceback`` the formatted traceback from the worker.
    """

    def __init__(self, type_name: str, module: str, message: str, remote_traceback: str,
                 attempts: int | None = None) -> None:
        super().__init__(f"{module}.{type_name}: {message}")
        self.type_name = type_name
        self.module = module
        self.message = message
        self.remote_traceback = remote_traceback
        self.attempts = attempts

    @classmethod
    def raised_here(cls, message: str) -> "TaskError":
        """An error that runner itself reports (no remote traceback)."""
        return cls(cls.__name__, cls.__module__, message, "")


class TaskTimeoutError(TaskError, TimeoutError):
    """The job ran past its ``timeout``; a process-pool job was killed, a thread left to finish."""


class WorkerLostError(TaskError):
    """The job's worker died during its last allowed attempt (``max_attempts``, or ``retries + 1`` if more)."""


class WorkerPoolError(TaskError):
    """A process-pool child died while running the job (exit code or signal in the message)."""


class TaskNotAllowedError(TaskError, LookupError):
    """The worker refused the job's function: its module is not admitted (``--import``,
    ``--allow-module``), or it names a private name, a non-callable, or something defined
    elsewhere. The message names the target and what to do; the module was not imported.

    A TaskError (what clients caught before) and a LookupError (the worker-side
    ``workers.execute.TaskNotAllowed`` of old, now this class), so old handlers keep working.
    """


class LimitError(TaskError):
    """The broker refused a job or request beyond one of its limits; the message names the flag."""


class BackpressureError(LimitError):
    """The client has as many unfinished jobs at the broker as ``--max-pending`` allows.

    ``submit`` raises it at once, unless the Client was made with ``block=True`` (it then waits).
    """


class PayloadTooLargeError(LimitError, ValueError):
    """A job's packed arguments exceed the broker's ``--max-payload-bytes`` (a ValueError, as before)."""


class DependencyError(TaskError):
    """A job this job waited for (an argument Future, ``after=``) failed, died or was cancelled.

    ``failed_job`` is the id of the job that failed (the first one, when the failure came
    through a chain of dependencies), ``error`` its exception (None if it was cancelled), and
    ``dependency`` the id of the job this one waited for through which the failure came.
    The job itself never ran.
    """

    failed_job: str = ""
    dependency: str = ""
    _error_blob: bytes = b""

    @property
    def error(self) -> BaseException | None:
        """The failed job's exception, rebuilt as its own future raises it; None if it was cancelled."""
        return exception_from_blob(self._error_blob) if self._error_blob else None

    def _fill(self, fields: dict) -> None:
        self.failed_job = str(fields.get("failed_job", ""))
        self.dependency = str(fields.get("dependency", ""))
        blob = fields.get("error")
        self._error_blob = blob if isinstance(blob, bytes) else b""


_RUNNER_ERRORS = {kind.__name__: kind for kind in (TaskTimeoutError, WorkerLostError, WorkerPoolError,
                                                    TaskNotAllowedError, LimitError, BackpressureError,
                                                    PayloadTooLargeError, DependencyError)}


class RemoteTraceback(Exception):
    """Carries the worker's traceback text; set as ``__cause__`` of a re-raised exception."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text}"""'


def exception_from_blob(blob: bytes) -> BaseException:
    """Rebuild a remote failure: the same builtin type where possible, else TaskError."""
    try:
        error = protocol.unpack(blob)
        type_name, module, message = error["type"], error["module"], error["message"]
        remote_traceback = error.get("traceback", "")
        attempts = error.get("attempts")
    except Exception as exc:
        return TaskError("UnreadableError", "runner", f"the worker sent an unreadable error: {exc}", "")
    exception = _builtin_exception(type_name, message) if error.get("builtin") else None
    if exception is None:
        kind = _RUNNER_ERRORS.get(type_name, TaskError) if module == "runner.errors" else TaskError
        exception = kind(type_name, module, message, remote_traceback, attempts)
    else:
        exception.attempts = attempts  # type: ignore[attr-defined]
    if isinstance(exception, DependencyError):
        exception._fill(error)
    exception.__cause__ = RemoteTraceback(remote_traceback)
    return exception


def error_blob(exception: BaseException, remote_traceback: str = "", attempts: int | None = None) -> bytes:
    """Pack an exception as the wire carries failures: type, module, message, traceback."""
    kind = type(exception)
    error = {
        "type": kind.__qualname__,
        "module": kind.__module__,
        "builtin": getattr(builtins, kind.__name__, None) is kind,
        "message": exception.message if isinstance(exception, TaskError) else str(exception),
        "traceback": remote_traceback,
    }
    if attempts is not None:
        error["attempts"] = attempts
    return protocol.pack(error)


def describe_exit(status: int) -> str:
    """A process's exit status in words: "exited with status 1", "was killed by SIGKILL"."""
    if status >= 0:
        return f"exited with status {status}"
    try:
        return f"was killed by {signal.Signals(-status).name}"
    except ValueError:
        return f"was killed by signal {-status}"


def _builtin_exception(type_name: str, message: str) -> BaseException | None:
    kind = getattr(builtins, type_name, None)
    if not (isinstance(kind, type) and issubclass(kind, BaseException)):
        return None
    try:
        return kind(message)
    except Exception:  # a builtin whose constructor wants other arguments
        return None
