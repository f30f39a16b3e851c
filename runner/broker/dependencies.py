"""Jobs that wait for other jobs: which job waits for which, and what each ending decides.

A plain object (sans-IO, no clock): the JobBook tells it that a job starts waiting (with
what it knows of each dependency then) and that a job ended; it answers with actions the
JobBook carries out:

- ``Rewrite(job, options)``: the job's payload (a result substituted into it) and its
  options (the ids still awaited, in ``after``) changed: journal both, in this turn's
  transaction, with the outcome that caused it, so a restart resumes from there.
- ``Release(job)``: nothing more to wait for: the job goes on to its queue.
- ``Fail(job, error)``: a dependency failed, died or was cancelled (or cannot be passed on):
  the job ends failed with ``error``, a packed ``runner.DependencyError``, and its own
  dependants in turn (the JobBook reports that ending like any other).

A dependency is known when a job starts waiting (the JobBook refuses unknown ids, so a
cycle cannot be built): either held by the broker (``None``: it ends later), or final,
given as ``Ended(state, outcome)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from runner import protocol
from runner.broker import journal as states
from runner.broker.scheduler import Job
from runner.broker.substitution import SubstitutionError, decode_result, substitute
from runner.errors import DependencyError, error_blob

WAITING = "waiting"  # the state of a held job waiting for other jobs (Job.state)
UNKNOWN = "unknown"  # a dependency the broker no longer knows (its outcome expired)
_UNREAD = object()  # a done dependency's result not decoded yet


@dataclass(frozen=True)
class Ended:
    """How a dependency ended: its journal state and its packed outcome (result or error)."""

    state: str
    outcome: bytes = b""


@dataclass(frozen=True)
class Rewrite:
    job: Job
    options: dict


@dataclass(frozen=True)
class Release:
    job: Job


@dataclass(frozen=True)
class Fail:
    job: Job
    error: bytes


Action = Union[Rewrite, Release, Fail]


class Waiter:
    """A waiting job, its submit options, and the ids it still waits for."""

    __slots__ = ("job", "options", "remaining")

    def __init__(self, job: Job, options: dict, remaining: list[str]) -> None:
        self.job = job
        self.options = options
        self.remaining = remaining


class Dependencies:
    """Every job waiting for others, by its id, and who waits for each dependency."""

    def __init__(self, max_payload: int = protocol.MAX_MESSAGE_BYTES // 2) -> None:
        """``max_payload``: the largest arguments a job may have (the broker's --max-payload-bytes)."""
        self.max_payload = max_payload
        self.waiting: dict[str, Waiter] = {}
        self.dependants: dict[str, list[str]] = {}  # dependency id -> ids of the jobs waiting for it

    def __len__(self) -> int:
        return len(self.waiting)

    def wait(self, job: Job, options: dict, known: dict[str, Ended | None]) -> list[Action]:
        """``job`` waits for ``options["after"]``; ``known`` says how each of them stands now."""
        remaining = list(dict.fromkeys(options["after"]))  # in order, once each
        waiter = self.waiting[job.id] = Waiter(job, options, remaining)
        job.state = WAITING
        actions: list[Action] = []
        for dependency in remaining:
            if known.get(dependency) is None:
                self.dependants.setdefault(dependency, []).append(job.id)
        resolved = False
        for dependency in list(remaining):
            ended = known.get(dependency)
            if ended is not None:
                if self._resolve(waiter, dependency, ended, actions) is None:
                    return actions
                resolved = True
        if resolved:
            self._progress(waiter, actions)
        return actions

    def ended(self, job_id: str, state: str, outcome: bytes) -> list[Action]:
        """Job ``job_id`` reached a final state: what its dependants do now."""
        actions: list[Action] = []
        ended, result = Ended(state, outcome), _UNREAD
        for dependant in self.dependants.pop(job_id, ()):
            waiter = self.waiting.get(dependant)
            if waiter is None or job_id not in waiter.remaining:
                continue  # failed or cancelled meanwhile
            if state == states.DONE and result is _UNREAD:  # read once for all its dependants
                try:
                    result = decode_result(outcome, job_id)
                except SubstitutionError as exc:
                    result = exc
            if self._resolve(waiter, job_id, ended, actions, result) is not None:
                self._progress(waiter, actions)
        return actions

    def forget(self, job_id: str) -> None:
        """A waiting job was cancelled: it waits no more (its dependants hear of it through ``ended``)."""
        self.waiting.pop(job_id, None)

    def _resolve(self, waiter: Waiter, dependency: str, ended: Ended, actions: list[Action],
                 result: Any = _UNREAD) -> "Waiter | None":
        """Take one ended dependency into ``waiter``; None when that failed the job (a Fail is in ``actions``)."""
        job = waiter.job
        if ended.state != states.DONE:
            return self._fail(waiter, dependency_error(job.id, dependency, ended), actions)
        try:
            if result is _UNREAD:
                result = decode_result(ended.outcome, dependency)
            if isinstance(result, SubstitutionError):
                raise result
            payload = substitute(job.payload, dependency, result)
            if len(payload) > self.max_payload:
                raise SubstitutionError(f"with it the job's arguments would take {len(payload)} bytes, more than "
                                        f"the broker's limit of {self.max_payload} (runner broker --max-payload-bytes)")
            job.payload = payload
        except SubstitutionError as exc:
            error = DependencyError.raised_here(f"job {job.id} did not run: the result of job {dependency}, "
                                                f"which it waits for, cannot be passed to it: {exc}")
            return self._fail(waiter, error_blob(error), actions)
        waiter.remaining.remove(dependency)
        return waiter

    def _progress(self, waiter: Waiter, actions: list[Action]) -> None:
        """Some dependencies were resolved: journal that, and release the job once none remain."""
        options = {key: value for key, value in waiter.options.items() if key != "after"}
        if waiter.remaining:
            options["after"] = list(waiter.remaining)
        actions.append(Rewrite(waiter.job, options))
        if not waiter.remaining:
            del self.waiting[waiter.job.id]
            actions.append(Release(waiter.job))

    def _fail(self, waiter: Waiter, error: bytes, actions: list[Action]) -> None:
        del self.waiting[waiter.job.id]
        actions.append(Fail(waiter.job, error))
        return None


def dependency_error(job_id: str, dependency: str, ended: Ended) -> bytes:
    """The packed DependencyError of ``job_id``, whose dependency ended as ``ended`` (not done).

    A dependency that failed for its own dependency passes on the job that failed first,
    so every job downstream names the root and its error.
    """
    details = _error_details(ended.outcome) if ended.state in (states.FAILED, states.DEAD) else None
    failed_job, failed_state, error, traceback = dependency, ended.state, ended.outcome, ""
    if details is not None:
        traceback = details.get("traceback", "")
        if details.get("type") == "DependencyError" and details.get("module") == DependencyError.__module__:
            failed_job, error = str(details.get("failed_job", dependency)), details.get("error", b"")
            failed_state = str(details.get("failed_state", failed_state))
    message = f"job {job_id} did not run: job {failed_job}"
    if failed_job != dependency:
        message += f" (which it waits for through job {dependency})"
    message += f" {_how(failed_state, error)}"
    blob = protocol.unpack(error_blob(DependencyError.raised_here(message),
                                      traceback if isinstance(traceback, str) else ""))
    blob.update(failed_job=failed_job, failed_state=failed_state, dependency=dependency,
                error=error if isinstance(error, bytes) else b"")
    return protocol.pack(blob)


def _how(state: str, error: Any) -> str:
    if state == UNKNOWN:
        return "is not known to the broker (its outcome expired, or it was never accepted)"
    if state == states.CANCELLED or error == b"":
        return "was cancelled"
    details = _error_details(error) if isinstance(error, bytes) else None
    if details is None:
        return f"ended {state} with an unreadable error"
    return f"{state}: {details.get('type', '?')}: {details.get('message', '')}"


def _error_details(blob: bytes) -> dict | None:
    try:
        details = protocol.unpack(blob)
    except Exception:
        return None
    return details if isinstance(details, dict) else None
