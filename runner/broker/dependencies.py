"""Jobs that wait for other jobs: which job waits for which, and what each ending decides.

A plain object (sans-IO, no clock): the JobBook tells it that a job starts waiting (with
what it knows of each dependency then), that a job ended, and, once a turn, to put the
results of the turn into their dependants (``flush``); it answers with actions the JobBook
carries out:

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
    """Every job waiting for others, by its id, and who waits for each dependency.

    Results of dependencies that end done are put into their dependants at ``flush`` (once a
    turn, before the journal commits): a job waiting for many jobs that end in the same turn
    (a group's results) has its arguments read and packed once, not once per result.
    """

    def __init__(self, max_payload: int = protocol.MAX_MESSAGE_BYTES // 2) -> None:
        """``max_payload``: the largest arguments a job may have (the broker's --max-payload-bytes)."""
        self.max_payload = max_payload
        self.waiting: dict[str, Waiter] = {}
        self.dependants: dict[str, list[str]] = {}  # dependency id -> ids of the jobs waiting for it
        self.due: dict[str, dict[str, Any]] = {}  # dependant id -> {dependency id: its result} to put in

    def __len__(self) -> int:
        return len(self.waiting)

    def wait(self, job: Job, options: dict, known: dict[str, Ended | None]) -> list[Action]:
        """``job`` waits for ``options["after"]``; ``known`` says how each of them stands now."""
        remaining = list(dict.fromkeys(options["after"]))  # in order, once each
        waiter = self.waiting[job.id] = Waiter(job, options, remaining)
        job.state = WAITING
        actions: list[Action] = []
        results = {}
        for dependency in remaining:
            ended = known.get(dependency)
            if ended is None:
                self.dependants.setdefault(dependency, []).append(job.id)
            elif ended.state != states.DONE:
                return self._fail(waiter, dependency_error(job.id, dependency, ended), actions)
            else:
                results[dependency] = _read(ended.outcome, dependency)
        if results:
            self._apply(waiter, results, actions)
        return actions

    def ended(self, job_id: str, state: str, outcome: bytes) -> list[Action]:
        """Job ``job_id`` reached a final state: its dependants fail now, or get its result at ``flush``."""
        actions: list[Action] = []
        result = _UNREAD
        for dependant in self.dependants.pop(job_id, ()):
            waiter = self.waiting.get(dependant)
            if waiter is None:
                continue  # failed or cancelled meanwhile
            if state != states.DONE:
                self._fail(waiter, dependency_error(dependant, job_id, Ended(state, outcome)), actions)
                continue
            if result is _UNREAD:  # read once for all its dependants
                result = _read(outcome, job_id)
            self.due.setdefault(dependant, {})[job_id] = result
        return actions

    def flush(self) -> list[Action]:
        """Put the results of this turn's done dependencies into their dependants."""
        actions: list[Action] = []
        due, self.due = self.due, {}
        for dependant, results in due.items():
            waiter = self.waiting.get(dependant)
            if waiter is not None:
                self._apply(waiter, results, actions)
        return actions

    def forget(self, job_id: str) -> None:
        """A waiting job was cancelled: it waits no more (its dependants hear of it through ``ended``)."""
        self.waiting.pop(job_id, None)

    def _apply(self, waiter: Waiter, results: dict[str, Any], actions: list[Action]) -> None:
        """Put ``results`` (dependency id -> value) into the job's arguments; release it when none remain."""
        job = waiter.job
        try:
            for result in results.values():
                if isinstance(result, SubstitutionError):
                    raise result
            payload = substitute(job.payload, results)
            if len(payload) > self.max_payload:
                raise SubstitutionError(f"with the results of jobs {sorted(results)} its arguments would take "
                                        f"{len(payload)} bytes, more than the broker's limit of {self.max_payload} "
                                        "(runner broker --max-payload-bytes)")
        except SubstitutionError as exc:
            error = DependencyError.raised_here(f"job {job.id} did not run: {exc}")
            self._fail(waiter, error_blob(error), actions)
            return
        job.payload = payload
        waiter.remaining = [dependency for dependency in waiter.remaining if dependency not in results]
        options = {key: value for key, value in waiter.options.items() if key != "after"}
        if waiter.remaining:
            options["after"] = list(waiter.remaining)
        actions.append(Rewrite(job, options))
        if not waiter.remaining:
            del self.waiting[job.id]
            actions.append(Release(job))

    def _fail(self, waiter: Waiter, error: bytes, actions: list[Action]) -> list[Action]:
        del self.waiting[waiter.job.id]
        self.due.pop(waiter.job.id, None)
        actions.append(Fail(waiter.job, error))
        return actions


def _read(outcome: bytes, job_id: str) -> Any:
    """A done job's result, or the SubstitutionError saying why it cannot be read."""
    try:
        return decode_result(outcome, job_id)
    except SubstitutionError as exc:
        return exc


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
