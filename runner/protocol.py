"""The wire protocol: the only module that knows how messages look on the wire.

Every ZeroMQ message between a peer (client or worker, a DEALER socket) and the
broker (one ROUTER socket) is a single frame holding a msgpack array
``[version, type, body]``. ``body`` is a msgpack map whose fields are checked on
receipt by :func:`decode`; anything malformed raises :class:`ProtocolError`, which
the receiving loop logs and drops, so bad input never escapes a loop.

Everything that carries jobs or results carries a list of them: a single job is a
batch of one. Job arguments and results travel as opaque msgpack blobs
(``payload``) that the broker stores and forwards without decoding them.

See docs/protocol.md for the message catalogue.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Callable, Iterator

import msgpack

VERSION = 1

#: Largest frame accepted by anyone (also set as ZeroMQ's MAXMSGSIZE on the broker).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Largest number of items (jobs, results, ids) in one message.
MAX_BATCH = 100_000
#: Longest identifier (job id, queue name, task reference, peer name).
MAX_NAME = 256
#: Longest delay= a job may have, in seconds (10 years); a due time (at=) is an epoch time below MAX_DUE.
MAX_DELAY = 10 * 365 * 86400.0
MAX_DUE = 2.0**34
#: Seconds a worker may be asked to hold a leased job before starting it (leased ahead of its due time).
MAX_HOLD = 60.0

POOLS = ("process", "thread", "async")


class ProtocolError(ValueError):
    """A message that does not follow the protocol: it is dropped, never acted on."""


# Message types. Peers -> broker:
HELLO = "hello"  # a client or worker introduces itself
SUBMIT = "submit"  # client: jobs to run
RESULTS = "results"  # worker: outcomes of jobs it ran
HEARTBEAT = "heartbeat"  # both ways: "I am alive"
STATUS = "status"  # client: ask for a status snapshot
WAIT_WORKERS = "wait_workers"  # client: answer once at least n workers are connected
CANCEL = "cancel"  # client: cancel a job (force: even while it runs)
ACK = "ack"  # client: these outcomes arrived; the broker may forget them after the TTL
FETCH = "fetch"  # client: the state or outcome of a job, by id
REQUEUE_JOB = "requeue"  # client: run a failed or dead job again
DEAD_LETTERS = "dead_letters"  # client: list jobs that exhausted their attempts
LIST_JOBS = "list_jobs"  # client: jobs by state, queue and task, newest first (runner jobs)
SHOW_JOB = "show_job"  # client: every field of one job (runner jobs show)
EVENTS = "events"  # client: subscribe to job events, and take those buffered (waiting up to "wait" s)
DRAIN = "drain"  # worker: shutting down; lease nothing more to me
SYNC = "sync"  # any peer: a cluster-wide lock, semaphore, event or queue operation
CREDIT = "credit"  # worker: how many jobs per pool it can hold now (slots plus prefetch)
STARTED = "started"  # worker: these leased jobs began to run (only for leases marked "report_start")
SCHEDULE = "schedule"  # client: add (or replace), remove or list periodic schedules ("op")
BYE = "bye"  # peer: leaving on purpose
# Broker -> peers:
WELCOME = "welcome"  # answer to hello
ACCEPTED = "accepted"  # jobs the broker took responsibility for
JOBS = "jobs"  # jobs for a worker to run
STOP_JOBS = "stop_jobs"  # a worker must stop (kill or drop) these jobs
OUTCOMES = "outcomes"  # final outcomes for a client
REPLY = "reply"  # answer to a request: any message that carries a "request" number
ERROR = "error"  # the broker rejected a message of the peer

# Status codes carried by results (ok, failed, requeue) and outcomes (ok, failed, cancelled).
OK = "ok"
FAILED = "failed"
REQUEUE = "requeue"  # a worker gives a job back unrun (shutdown, a pool rebuilt under it)
CANCELLED = "cancelled"
RESULT_STATUSES = (OK, FAILED, REQUEUE)
OUTCOME_STATUSES = (OK, FAILED, CANCELLED)

SYNC_OPS = ("acquire", "release", "locked", "event_set", "event_clear", "event_is_set", "event_wait",
            "queue_put", "queue_get", "queue_size")

#: Job priorities, inclusive: a signed 32-bit integer.
PRIORITY_MIN, PRIORITY_MAX = -(2**31), 2**31 - 1

# Per-job options in a submit row; all optional, absent means the default.
JOB_OPTIONS = ("retries", "backoff", "timeout", "max_attempts", "delay", "due", "after")
_JOB_OPTION_NAMES = frozenset(JOB_OPTIONS)

#: msgpack extension type of a placeholder in a job's arguments: the result of the job whose id
#: is its data (UTF-8). The broker puts the result there before the job runs (docs/protocol.md).
RESULT_OF_EXT = 1
#: Jobs one job may wait for (its "after" option).
MAX_AFTER = 10_000

ROLES = ("client", "worker")


@dataclass(frozen=True)
class Message:
    """A decoded, validated message: its type and its checked body."""

    type: str
    body: dict[str, Any]


def pack(value: Any) -> bytes:
    """Encode a value as msgpack (bytes stay bytes, str stays str)."""
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    """Decode msgpack strictly; unpackb bounds every length by the blob's own size."""
    return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)


#: Bytes a message needs beside its rows' payloads: the envelope and the body's keys.
ENVELOPE_BYTES = 1024


def split_by_size(rows: list[list], payload_at: int, row_bytes: int, max_bytes: int) -> Iterator[list[list]]:
    """``rows`` in runs that each fit one message of at most ``max_bytes`` and MAX_BATCH rows.

    A row counts its payload (at ``payload_at``) plus ``row_bytes``, a bound on its
    other fields; a row too large alone still leaves, alone (the receiver refuses it).
    """
    budget = max_bytes - ENVELOPE_BYTES
    if len(rows) <= MAX_BATCH and sum(map(len, map(itemgetter(payload_at), rows))) + len(rows) * row_bytes <= budget:
        if rows:
            yield rows  # the usual case: one message, found at C speed
        return
    start, size = 0, 0
    for index, row in enumerate(rows):
        cost = len(row[payload_at]) + row_bytes
        if index > start and (size + cost > budget or index - start >= MAX_BATCH):
            yield rows[start:index]
            start, size = index, 0
        size += cost
    if start < len(rows):
        yield rows[start:]


def encode(message_type: str, body: dict[str, Any] | None = None) -> bytes:
    """Encode one message frame."""
    return pack([VERSION, message_type, body or {}])


def decode(frame: bytes) -> Message:
    """Decode and validate one frame; raise ProtocolError saying what is wrong."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(frame)} bytes exceeds the {MAX_MESSAGE_BYTES} byte limit")
    try:
        envelope = unpack(frame)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolError(f"not valid msgpack: {exc}") from None
    if not isinstance(envelope, list) or len(envelope) != 3:
        raise ProtocolError("a message must be a msgpack array [version, type, body]")
    version, message_type, body = envelope
    if version != VERSION:
        raise ProtocolError(f"protocol version {_show(version)} is not supported (this side speaks {VERSION})")
    validator = _VALIDATORS.get(message_type) if isinstance(message_type, str) else None
    if validator is None:
        raise ProtocolError(f"unknown message type {_show(message_type)}")
    if not isinstance(body, dict):
        raise ProtocolError(f"{message_type}: body must be a map, got {type(body).__name__}")
    validator(body)
    return Message(message_type, body)


# --- field checks -------------------------------------------------------------------

# Values quoted in errors are shown a few levels deep and cut short: a hostile frame may
# nest arrays deeper than repr() can recurse, or hold megabytes in one field.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 80, 80


def _show(value: Any) -> str:
    """A bounded repr of a received value, for an error message."""
    return _SHORT.repr(value)[:80]



def _need(body: dict, field: str, kind: type | tuple[type, ...], what: str) -> Any:
    if field not in body:
        raise ProtocolError(f"missing field {field!r} ({what})")
    value = body[field]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise ProtocolError(f"field {field!r} must be {what}, got {type(value).__name__}")
    return value


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise ProtocolError(f"{what} must be a non-empty string of at most {MAX_NAME} characters, got {_show(value)}")
    return value


def _integer(value: Any, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"{what} must be an integer from {low} to {high}, got {_show(value)}")
    return value


def _batch(body: dict, field: str, row_length: int, what: str) -> list:
    rows = _need(body, field, list, f"a list of {what}")
    if len(rows) > MAX_BATCH:
        raise ProtocolError(f"{len(rows)} {what} in one message exceeds the limit of {MAX_BATCH}")
    for row in rows:
        if not isinstance(row, list) or len(row) != row_length:
            raise ProtocolError(f"each of {what} must be an array of {row_length} fields, got {_show(row)}")
    return rows


def _pool(value: Any) -> str:
    if value not in POOLS:
        raise ProtocolError(f"pool must be one of {POOLS}, got {_show(value)}")
    return value


def _payload(value: Any) -> bytes:
    if not isinstance(value, bytes):
        raise ProtocolError(f"payload must be bytes, got {type(value).__name__}")
    return value


def _request_id(body: dict) -> None:
    _integer(_need(body, "request", int, "a request number"), "request", 0, 2**63)


def _number(value: Any, what: str, low: float, high: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ProtocolError(f"{what} must be a number from {low:g} to {high:g}, got {_show(value)}")
    return value


def check_job_options(options: Any) -> None:
    """Validate a submit row's options map (retries, backoff, timeout, max_attempts, delay or due)."""
    if not isinstance(options, dict):
        raise ProtocolError(f"job options must be a map, got {type(options).__name__}")
    if not options:  # most jobs: the defaults, nothing more to look at
        return
    unknown = options.keys() - _JOB_OPTION_NAMES
    if unknown:
        raise ProtocolError(f"unknown job options {sorted(map(repr, unknown))}; known: {JOB_OPTIONS}")
    if "retries" in options:
        _integer(options["retries"], "retries", 0, 1000)
    if "backoff" in options:
        _number(options["backoff"], "backoff", 0, 3600)
    if options.get("timeout") is not None:
        _number(options["timeout"], "timeout", 0.001, 10**7)
    if "max_attempts" in options:
        _integer(options["max_attempts"], "max_attempts", 1, 1000)
    if "delay" in options or "due" in options:
        _check_due(options)
    if "after" in options:
        _check_after(options["after"])


def _check_due(options: dict) -> None:
    """A job's earliest start: ``delay`` seconds after acceptance, or ``due`` (epoch seconds); not both."""
    if "delay" in options and "due" in options:
        raise ProtocolError("job options may hold delay or due, not both")
    if "delay" in options:
        _number(options["delay"], "delay", 0, MAX_DELAY)
    else:
        _number(options["due"], "due", 0, MAX_DUE)


def _check_after(after: Any) -> None:
    """The ids of the jobs a job waits for (see runner/broker/dependencies.py)."""
    if not isinstance(after, list) or not after or len(after) > MAX_AFTER:
        raise ProtocolError(f"after must be a list of 1 to {MAX_AFTER} job ids, got {_show(after)}")
    for job_id in after:
        _name(job_id, "job id in after")


# Job rows: [job_id, task, pool, queue, priority, payload, options]
JOB_FIELDS = ("id", "task", "pool", "queue", "priority", "payload", "options")


def check_job_row(row: list) -> None:
    """Validate one submitted job row (see JOB_FIELDS)."""
    job_id, task, pool, queue, priority, payload, options = row
    # Once per job: a plain row with the default options passes in one test, without calls; any
    # other row (options set, or something wrong) gets the checks below, which say what is wrong.
    if (type(options) is dict and not options and type(job_id) is str and 0 < len(job_id) <= MAX_NAME
            and type(task) is str and 0 < len(task) <= MAX_NAME and ":" in task and pool in POOLS
            and type(queue) is str and 0 < len(queue) <= MAX_NAME and type(priority) is int
            and PRIORITY_MIN <= priority <= PRIORITY_MAX and type(payload) is bytes):
        return
    check_job_options(options)
    _name(job_id, "job id")
    _name(task, "task reference")
    if ":" not in task:
        raise ProtocolError(f"task reference must look like 'module:function', got {_show(task)}")
    _pool(pool)
    _name(queue, "queue name")
    _integer(priority, "priority", PRIORITY_MIN, PRIORITY_MAX)
    _payload(payload)


def _check_slots(body: dict) -> None:
    slots = _need(body, "slots", dict, "a map of pool to job slots")
    if set(slots) - set(POOLS):
        raise ProtocolError(f"slots may only name pools {POOLS}, got {sorted(map(repr, slots))}")
    for pool, count in slots.items():
        _integer(count, f"slots[{pool}]", 0, 1_000_000)


def _check_hello(body: dict) -> None:
    role = _need(body, "role", str, "'client' or 'worker'")
    if role not in ROLES:
        raise ProtocolError(f"role must be one of {ROLES}, got {_show(role)}")
    _name(_need(body, "name", str, "a peer name"), "peer name")
    _integer(_need(body, "pid", int, "a process id"), "pid", 0, 2**31)
    _name(_need(body, "host", str, "a host name"), "host name")
    _session(body)
    if role == "worker":
        _check_slots(body)
        queues = _need(body, "queues", list, "a list of queue names")
        if not queues or len(queues) > 1000:
            raise ProtocolError("a worker must serve from 1 to 1000 queues")
        for queue in queues:
            _name(queue, "queue name")
        if "epoch" in body:
            _integer(body["epoch"], "epoch", 0, 2**62)
        _check_recycled(body)
        running = body.get("running", [])
        if not isinstance(running, list) or len(running) > MAX_BATCH:
            raise ProtocolError(f"running must be a list of at most {MAX_BATCH} [job id, attempt] pairs")
        for pair in running:
            if not isinstance(pair, list) or len(pair) != 2:
                raise ProtocolError(f"running must list [job id, attempt] pairs, got {_show(pair)}")
            _name(pair[0], "job id")
            _integer(pair[1], "attempt", 1, 2**31)


def _check_recycled(body: dict) -> None:
    """A worker's count of pool children replaced so far (optional, in hello and heartbeat)."""
    if "recycled" in body:
        _integer(body["recycled"], "recycled", 0, 2**62)
    for name in ("rss", "children_rss"):  # bytes of resident memory (heartbeat only)
        if name in body:
            _integer(body[name], name, 0, 2**62)


def _check_heartbeat(body: dict) -> None:
    """A worker's memory and recycled count; the broker's to a worker: ``results`` (the worker's
    results messages journaled in its ``session``)."""
    _check_recycled(body)
    _session(body)
    if "results" in body:
        _integer(body["results"], "results", 0, 2**62)


def _check_submit(body: dict) -> None:
    for row in _batch(body, "jobs", len(JOB_FIELDS), "jobs"):
        check_job_row(row)
    if not isinstance(body.get("resend", False), bool):
        raise ProtocolError("field 'resend' must be a boolean")


# Result rows (worker -> broker): [job_id, attempt, status, payload]
def _check_results(body: dict) -> None:
    for job_id, attempt, status, payload in _batch(body, "results", 4, "results"):
        # Once per job: a valid row passes in one test, without calls (as in check_job_row).
        if (type(job_id) is str and 0 < len(job_id) <= MAX_NAME and type(attempt) is int and 1 <= attempt <= 2**31
                and status in RESULT_STATUSES and type(payload) is bytes):
            continue
        _name(job_id, "job id")
        _integer(attempt, "attempt", 1, 2**31)
        if status not in RESULT_STATUSES:
            raise ProtocolError(f"result status must be one of {RESULT_STATUSES}, got {_show(status)}")
        _payload(payload)


def _check_wait_workers(body: dict) -> None:
    _request_id(body)
    _integer(_need(body, "count", int, "a number of workers"), "count", 0, 1_000_000)


def _check_welcome(body: dict) -> None:
    _number(_need(body, "heartbeat", (int, float), "the heartbeat interval in seconds"), "heartbeat", 0.001, 3600)
    _integer(_need(body, "liveness", int, "a number of missed heartbeats"), "liveness", 1, 1000)
    limits = body.get("limits", {})  # the broker's limits (runner/broker/limits.py); absent from older brokers
    if not isinstance(limits, dict):
        raise ProtocolError(f"limits must be a map of name to integer, got {type(limits).__name__}")
    for name, value in limits.items():
        _integer(value, f"limits[{name!r:.40}]", 1, 2**62)
    _session(body)


def _session(body: dict) -> None:
    """The optional count of hellos a peer has sent (hello, welcome, sync)."""
    if "session" in body:
        _integer(body["session"], "session", 0, 2**62)


# Job rows sent to a worker: [job_id, attempt, task, pool, payload, timeout, priority]; with
# "report_start" true (someone watches job events) the worker says when each one starts; "hold"
# maps the ids of delayed jobs leased ahead of their due time to the seconds each waits first.
def _check_jobs(body: dict) -> None:
    if not isinstance(body.get("report_start", False), bool):
        raise ProtocolError("field 'report_start' must be a boolean")
    hold = body.get("hold", {})
    if not isinstance(hold, dict):
        raise ProtocolError(f"field 'hold' must be a map of job ids to seconds, not {type(hold).__name__}")
    for job_id, seconds in hold.items():
        _name(job_id, "job id")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds <= MAX_HOLD:
            raise ProtocolError(f"a job's hold must be seconds from 0 to {MAX_HOLD}, got {_show(seconds)}")
    for job_id, attempt, task, pool, payload, timeout, priority in _batch(body, "jobs", 7, "jobs"):
        _integer(priority, "priority", PRIORITY_MIN, PRIORITY_MAX)
        _name(job_id, "job id")
        _integer(attempt, "attempt", 1, 2**31)
        _name(task, "task reference")
        _pool(pool)
        _payload(payload)
        if timeout is not None:
            _number(timeout, "timeout", 0.001, 10**7)


# Started rows (worker -> broker): [job_id, attempt]
def _check_started(body: dict) -> None:
    for job_id, attempt in _batch(body, "started", 2, "started"):
        _name(job_id, "job id")
        _integer(attempt, "attempt", 1, 2**31)


def _job_ids(body: dict) -> None:
    for job_id in _need(body, "ids", list, "a list of job ids")[:MAX_BATCH + 1]:
        if type(job_id) is not str or not 0 < len(job_id) <= MAX_NAME:  # a valid id passes without a call
            _name(job_id, "job id")
    if len(body["ids"]) > MAX_BATCH:
        raise ProtocolError(f"more than {MAX_BATCH} job ids in one message")


def _request_for_job(body: dict) -> None:
    _request_id(body)
    _name(_need(body, "id", str, "a job id"), "job id")


#: States a job listing may ask for, and how many jobs it may ask for at most.
LISTED_STATES = ("pending", "running", "scheduled", "waiting", "done", "failed", "dead", "cancelled")
LIST_MAX = 1000


def _check_list_jobs(body: dict) -> None:
    _request_id(body)
    state = body.get("state")
    if state is not None and state not in LISTED_STATES:
        raise ProtocolError(f"state must be one of {LISTED_STATES}, got {_show(state)}")
    for field_name in ("queue", "task"):
        if body.get(field_name) is not None:
            _name(body[field_name], field_name)
    _integer(body.get("limit", 50), "limit", 1, LIST_MAX)


def _check_events(body: dict) -> None:
    _request_id(body)
    _number(body.get("wait", 0.0), "wait", 0, 3600)


def _check_cancel(body: dict) -> None:
    _request_for_job(body)
    if not isinstance(body.get("force", False), bool):
        raise ProtocolError("field 'force' must be a boolean")


# Outcome rows sent to a client: [job_id, status, payload]
def _check_outcomes(body: dict) -> None:
    for job_id, status, payload in _batch(body, "outcomes", 3, "outcomes"):
        # Once per job: a valid row passes in one test, without calls (as in _check_results).
        if type(job_id) is str and 0 < len(job_id) <= MAX_NAME and status in OUTCOME_STATUSES and type(payload) is bytes:
            continue
        _name(job_id, "job id")
        if status not in OUTCOME_STATUSES:
            raise ProtocolError(f"outcome status must be one of {OUTCOME_STATUSES}, got {_show(status)}")
        _payload(payload)


def _check_sync(body: dict) -> None:
    _request_id(body)
    op = _need(body, "op", str, "a sync operation")
    if op not in SYNC_OPS:
        raise ProtocolError(f"unknown sync operation {_show(op)}; known: {SYNC_OPS}")
    _name(_need(body, "name", str, "the name of a lock, semaphore, event or queue"), "sync name")
    _session(body)


SCHEDULE_OPS = ("add", "remove", "list")
#: The fields of a schedule in a schedule "add" (runner/broker/schedules.py checks their values).
SCHEDULE_FIELDS = ("name", "spec", "task", "payload", "pool", "queue", "priority", "options", "tz", "catch_up",
                   "max_catch_up", "overlap")


def _check_schedule(body: dict) -> None:
    _request_id(body)
    op = _need(body, "op", str, "a schedule operation")
    if op not in SCHEDULE_OPS:
        raise ProtocolError(f"unknown schedule operation {_show(op)}; known: {SCHEDULE_OPS}")
    if op == "remove":
        _name(_need(body, "name", str, "a schedule name"), "schedule name")
    if op != "add":
        return
    schedule = _need(body, "schedule", dict, "a map of schedule fields")
    unknown = set(schedule) - set(SCHEDULE_FIELDS)
    if unknown:
        raise ProtocolError(f"unknown schedule fields {sorted(map(_show, unknown))}; known: {SCHEDULE_FIELDS}")
    for required in ("name", "spec", "task"):
        _need(schedule, required, (str, int, float) if required == "spec" else str, f"the schedule's {required}")
    if isinstance(schedule["spec"], str):
        _name(schedule["spec"], "schedule spec")
    for text in ("tz", "catch_up", "overlap"):
        if text in schedule:
            _name(schedule[text], text)


def _check_reply(body: dict) -> None:
    _request_id(body)


def _check_error(body: dict) -> None:
    _need(body, "message", str, "an error message")


def _nothing(body: dict) -> None:
    """Messages whose body carries no required field."""


_VALIDATORS: dict[str, Callable[[dict], None]] = {
    HELLO: _check_hello,
    SUBMIT: _check_submit,
    RESULTS: _check_results,
    HEARTBEAT: _check_heartbeat,
    STATUS: _request_id,
    WAIT_WORKERS: _check_wait_workers,
    CANCEL: _check_cancel,
    ACK: _job_ids,
    FETCH: _request_for_job,
    REQUEUE_JOB: _request_for_job,
    DEAD_LETTERS: _request_id,
    LIST_JOBS: _check_list_jobs,
    SHOW_JOB: _request_for_job,
    EVENTS: _check_events,
    DRAIN: _nothing,
    SYNC: _check_sync,
    CREDIT: _check_slots,
    STARTED: _check_started,
    SCHEDULE: _check_schedule,
    BYE: _nothing,
    WELCOME: _check_welcome,
    ACCEPTED: _job_ids,
    JOBS: _check_jobs,
    STOP_JOBS: _job_ids,
    OUTCOMES: _check_outcomes,
    REPLY: _check_reply,
    ERROR: _check_error,
}
