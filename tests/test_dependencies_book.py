"""Jobs that wait for jobs, without sockets: the dependency book, payload substitution, and the
JobBook's hooks on a real journal file (submit, finish, cancel, requeue, restart after a crash).

Integration with real brokers and workers: tests/test_dependencies.py.
"""

from __future__ import annotations

import msgpack
import pytest
from test_jobbook_edges import Broker

from runner import protocol
from runner.broker import journal as states
from runner.broker.dependencies import WAITING, Dependencies, Ended, Fail, Release, Rewrite
from runner.broker.scheduler import PENDING, SCHEDULED, Job
from runner.broker.substitution import SubstitutionError, placeholders, substitute
from runner.errors import DependencyError, error_blob, exception_from_blob
from runner.tasks import JobResult, encode_arguments

A, B = b"client-a", b"client-b"
ERROR = error_blob(ValueError("boom"))


def payload_of(*args, **kwargs) -> bytes:
    return encode_arguments(args, kwargs)[0]


def arguments(payload: bytes) -> list:
    return protocol.unpack(payload)


def job(job_id: str, payload: bytes) -> Job:
    return Job(job_id, "tasks:add", "thread", "default", 0, payload, A)


# --- substitution -----------------------------------------------------------------------------

def test_placeholders_are_found_at_any_depth_and_replaced_by_the_value():
    payload = payload_of(JobResult("a"), [1, {"x": JobResult("b")}], key=[JobResult("a")])
    assert placeholders(payload) == {"a", "b"}
    once = substitute(payload, {"a": {"sum": 3}})
    assert placeholders(once) == {"b"}
    assert arguments(substitute(once, {"b": [1, 2]})) == [[{"sum": 3}, [1, {"x": [1, 2]}]], {"key": [{"sum": 3}]}]


def test_other_extension_values_go_through_unchanged():
    payload = msgpack.packb([[msgpack.ExtType(7, b"raw"), msgpack.ExtType(protocol.RESULT_OF_EXT, b"a")], {}],
                            use_bin_type=True)
    assert protocol.unpack(substitute(payload, {"a": None})) == [[msgpack.ExtType(7, b"raw"), None], {}]


@pytest.mark.parametrize("payload, words", [
    (b"\xc1", "not valid msgpack"),
    (protocol.pack({"not": "a pair"}), "[args, kwargs] pair"),
    (protocol.pack([1, 2]), "[args, kwargs] pair"),
    (msgpack.packb([[msgpack.ExtType(protocol.RESULT_OF_EXT, b"\xff\xfe")], {}]), "not valid msgpack"),
    (msgpack.packb([[msgpack.ExtType(protocol.RESULT_OF_EXT, b"")], {}]), "no valid job id"),
    (msgpack.packb([[], {1: msgpack.ExtType(protocol.RESULT_OF_EXT, b"a")}]), "not valid msgpack"),
    (b"\x92" + b"\x91" * 100_000 + b"\xc0", "not valid msgpack"),  # nested far deeper than recursion allows
])
def test_a_malformed_payload_is_a_clear_substitution_error(payload, words):
    with pytest.raises(SubstitutionError, match=words.replace("[", r"\[").replace("]", r"\]")):
        placeholders(payload)
    with pytest.raises(SubstitutionError):
        substitute(payload + b"a", {"a": 1})  # "a" occurs in it: it is read


def test_deep_but_valid_nesting_is_walked_without_recursion():
    value: list = [JobResult("a")]
    for _ in range(500):
        value = [value]
    payload = payload_of(value)
    assert placeholders(payload) == {"a"}
    result = arguments(substitute(payload, {"a": "found"}))[0][0]
    for _ in range(500):
        result = result[0]
    assert result == ["found"]


# --- the book -----------------------------------------------------------------------------------

def test_a_job_waits_for_every_dependency_then_is_released_with_their_results():
    book = Dependencies()
    waiting = job("d", payload_of(JobResult("b"), JobResult("c")))
    assert book.wait(waiting, {"after": ["b", "c"], "retries": 2}, {"b": None, "c": None}) == []
    assert waiting.state == WAITING and len(book) == 1
    assert book.ended("b", states.DONE, protocol.pack(10)) == []  # put in at the turn's flush
    [rewrite] = book.flush()
    assert rewrite == Rewrite(waiting, {"retries": 2, "after": ["c"]})
    assert arguments(waiting.payload)[0][0] == 10
    book.ended("c", states.DONE, protocol.pack(20))
    rewrite, release = book.flush()
    assert rewrite == Rewrite(waiting, {"retries": 2}) and release == Release(waiting)
    assert arguments(waiting.payload) == [[10, 20], {}] and len(book) == 0


def test_dependencies_already_done_are_substituted_at_once():
    book = Dependencies()
    waiting = job("d", payload_of(JobResult("b"), JobResult("b")))
    actions = book.wait(waiting, {"after": ["b", "b"]}, {"b": Ended(states.DONE, protocol.pack("x"))})
    assert actions == [Rewrite(waiting, {}), Release(waiting)]
    assert arguments(waiting.payload) == [["x", "x"], {}]


def test_a_failed_dependency_fails_its_dependants_with_a_dependency_error_naming_it():
    book = Dependencies()
    first, second = job("b", payload_of(JobResult("a"))), job("c", payload_of(1))
    book.wait(first, {"after": ["a"]}, {"a": None})
    book.wait(second, {"after": ["a", "z"]}, {"a": None, "z": None})
    actions = book.ended("a", states.FAILED, ERROR)
    assert [type(action) for action in actions] == [Fail, Fail] and len(book) == 0
    error = exception_from_blob(actions[0].error)
    assert isinstance(error, DependencyError)
    assert (error.failed_job, error.dependency) == ("a", "a")
    assert "job b did not run: job a failed: ValueError: boom" in str(error)
    assert isinstance(error.error, ValueError) and str(error.error) == "boom"
    assert book.ended("z", states.DONE, protocol.pack(1)) == [] and book.flush() == []  # c failed already


def test_a_failure_passed_on_names_the_job_that_failed_first():
    book = Dependencies()
    book.wait(job("c", payload_of(JobResult("b"))), {"after": ["b"]}, {"b": None})
    [fail] = book.ended("b", states.FAILED, Dependencies().wait(
        job("b", payload_of(1)), {"after": ["a"]}, {"a": Ended(states.DEAD, ERROR)})[0].error)
    error = exception_from_blob(fail.error)
    assert (error.failed_job, error.dependency) == ("a", "b")
    assert "job c did not run: job a (which it waits for through job b) dead: ValueError: boom" in str(error)
    assert str(error.error) == "boom"


def test_a_cancelled_or_unknown_dependency_fails_the_job_and_says_so():
    book = Dependencies()
    [fail] = book.wait(job("b", payload_of(1)), {"after": ["a"]}, {"a": Ended(states.CANCELLED)})
    error = exception_from_blob(fail.error)
    assert "job a was cancelled" in str(error) and error.error is None
    [fail] = book.wait(job("c", payload_of(1)), {"after": ["gone"]}, {"gone": Ended("unknown")})
    assert "job gone is not known to the broker" in str(exception_from_blob(fail.error))


def test_a_result_that_cannot_be_read_fails_the_dependant_not_the_book():
    book = Dependencies()
    waiting = job("b", payload_of(JobResult("a")))
    book.wait(waiting, {"after": ["a"]}, {"a": None})
    book.ended("a", states.DONE, b"\xc1")
    [fail] = book.flush()
    assert fail.job is waiting
    assert "job b did not run: the result of job a, which it waits for, cannot be read" in str(exception_from_blob(fail.error))


def test_a_cancelled_waiting_job_is_forgotten():
    book = Dependencies()
    book.wait(job("b", payload_of(JobResult("a"))), {"after": ["a"]}, {"a": None})
    book.forget("b")
    assert book.ended("a", states.DONE, protocol.pack(1)) == [] and book.flush() == [] and len(book) == 0


# --- the JobBook's hooks, on a journal file ------------------------------------------------------

@pytest.fixture
def made(tmp_path):
    """Make the one JobBook of a test (``same_owner`` as the server passes it), on a journal file."""
    books = []

    def make(same_owner=None) -> Broker:
        books.append(Broker(str(tmp_path / "journal.db"), same_owner=same_owner))
        return books[-1]

    yield make
    for each in books:
        each.journal._db.close()


def submit(broker: Broker, job_id: str, *args, after=None, client=A, **kwargs) -> None:
    payload, waits = encode_arguments(args, kwargs)
    options = {"after": list(dict.fromkeys([*waits, *(after or [])]))} if waits or after else {}
    broker.book.submit(client, [[job_id, "tasks:add", "thread", "default", 0, payload, options]], False, 1.0)


def stored(broker: Broker, job_id: str):
    return broker.journal.get(job_id)


def test_a_dependant_waits_then_runs_with_the_result_journaled(made):
    broker = made()
    submit(broker, "a", 1, 2)
    submit(broker, "b", JobResult("a"), 10)
    assert broker.book.scheduler.jobs["b"].state == WAITING
    assert broker.turn().accepted == {A: ["a", "b"]}
    broker.run_to_the_end("a", payload=protocol.pack(3))
    assert broker.book.scheduler.jobs["b"].state == WAITING  # until the turn's end
    broker.turn()
    assert broker.book.scheduler.jobs["b"].state == PENDING
    assert arguments(stored(broker, "b").payload) == [[3, 10], {}] and stored(broker, "b").options == {}
    broker.run_to_the_end("b")
    assert stored(broker, "b").state == states.DONE


def test_unknown_or_foreign_dependencies_are_refused_and_not_accepted(made):
    broker = made(same_owner=lambda peer, owner: False)
    submit(broker, "a", 1)
    submit(broker, "b", JobResult("nothing"))
    submit(broker, "c", 1, after=["a"], client=B)  # another key's job
    outbox = broker.turn()
    assert outbox.accepted == {A: ["a"]}
    [[job_id, status, blob]] = outbox.outcomes[A]
    assert (job_id, status) == ("b", protocol.FAILED)
    assert "waits for job 'nothing', which the broker does not know" in str(exception_from_blob(blob))
    assert [row[0] for row in outbox.outcomes[B]] == ["c"]
    assert stored(broker, "b") is None and stored(broker, "c") is None


def test_a_placeholder_not_named_in_after_is_refused(made):
    broker = made()
    submit(broker, "a", 1)
    payload = payload_of(JobResult("a"), JobResult("elsewhere"))
    broker.book.submit(A, [["b", "tasks:add", "thread", "default", 0, payload, {"after": ["a"]}]], False, 1.0)
    [[_, _, blob]] = broker.turn().outcomes[A]
    assert "placeholders of jobs ['elsewhere'] that are not in its 'after' option" in str(exception_from_blob(blob))


def test_a_finished_dependency_in_the_journal_is_used_at_once(made):
    broker = made()
    submit(broker, "a", 1)
    broker.turn()
    broker.run_to_the_end("a", payload=protocol.pack(7))
    submit(broker, "b", JobResult("a"))
    broker.turn()
    assert broker.book.scheduler.jobs["b"].state == PENDING and arguments(stored(broker, "b").payload)[0] == [7]


def test_cancelling_a_waiting_job_fails_its_dependants_and_not_others(made):
    broker = made()
    submit(broker, "a", 1)
    submit(broker, "b", JobResult("a"))
    submit(broker, "c", JobResult("b"))
    submit(broker, "other", JobResult("a"))
    assert broker.book.cancel("b", False, 2.0) == "cancelled"
    outcomes = {row[0]: row for row in broker.turn().outcomes[A]}
    assert outcomes["b"][1] == protocol.CANCELLED
    assert "job b was cancelled" in str(exception_from_blob(outcomes["c"][2]))
    assert set(outcomes) == {"b", "c"} and broker.book.scheduler.jobs["other"].state == WAITING


def test_a_long_chain_fails_down_to_its_end_without_recursion(made):
    broker = made()
    submit(broker, "j0", 1)
    for index in range(1, 3000):
        submit(broker, f"j{index}", JobResult(f"j{index - 1}"))
    broker.turn()
    broker.run_to_the_end("j0", protocol.FAILED, ERROR)
    outcomes = broker.turn().outcomes[A]
    assert len(outcomes) == 3000 and len(broker.book.dependencies) == 0
    last = exception_from_blob(outcomes[-1][2])
    assert (last.failed_job, last.dependency) == ("j0", "j2998")


def test_a_restart_resumes_waiting_jobs_from_the_journal(made):
    broker = made()
    submit(broker, "a", 1)
    submit(broker, "b", 2)
    submit(broker, "d", JobResult("a"), JobResult("b"))
    broker.turn()
    broker.run_to_the_end("a", payload=protocol.pack("A"))
    broker.turn()  # a's outcome and d's rewrite are committed together
    broker.book.worker_joined(b"runner", ["default"], {"thread": 1}, [], 3.0)
    assert broker.leases() == {b"runner": [("b", 1)]}
    broker.book.results(b"runner", [["b", 1, protocol.OK, protocol.pack("B")]], 3.0)
    broker.book.take_outbox()
    broker.restart(crashed=True)  # b's outcome was never committed: it runs again, d still waits for it
    assert broker.book.scheduler.jobs["d"].state == WAITING
    assert broker.book.dependencies.waiting["d"].remaining == ["b"]
    assert broker.book.scheduler.jobs["b"].state == PENDING
    broker.run_to_the_end("b", payload=protocol.pack("B"))
    broker.turn()
    broker.restart()
    assert broker.book.scheduler.jobs["d"].state == PENDING
    assert arguments(stored(broker, "d").payload) == [["A", "B"], {}]


def test_a_requeued_dependant_waits_again_and_fails_again_while_its_dependency_is_failed(made):
    broker = made()
    submit(broker, "a", 1)
    submit(broker, "b", JobResult("a"))
    broker.turn()
    broker.run_to_the_end("a", protocol.FAILED, ERROR)
    broker.turn()
    assert broker.book.requeue("b", A, 5.0)
    [[job_id, status, blob]] = broker.turn().outcomes[A]
    assert (job_id, status) == ("b", protocol.FAILED) and isinstance(exception_from_blob(blob), DependencyError)
    assert broker.book.requeue("a", A, 6.0) and broker.book.requeue("b", A, 6.0)
    broker.run_to_the_end("a", payload=protocol.pack(5))
    broker.turn()
    assert broker.book.scheduler.jobs["b"].state == PENDING and arguments(stored(broker, "b").payload)[0] == [5]


def test_a_result_that_would_make_the_arguments_too_large_fails_the_dependant():
    book = Dependencies(max_payload=100)
    waiting = job("b", payload_of(JobResult("a")))
    book.wait(waiting, {"after": ["a"]}, {"a": None})
    book.ended("a", states.DONE, protocol.pack("x" * 200))
    [fail] = book.flush()
    assert "more than the broker's limit of 100 (runner broker --max-payload-bytes)" in str(
        exception_from_blob(fail.error))


def test_a_finished_id_reused_by_a_waiting_job_is_answered_with_its_stored_outcome(made):
    broker = made()
    submit(broker, "a", 1)
    submit(broker, "b", 2)
    broker.turn()
    broker.run_to_the_end("a", payload=protocol.pack("first run"))
    broker.turn()
    submit(broker, "a", JobResult("b"))  # the id again, without resend: it must not run over its outcome
    [[job_id, status, blob]] = broker.turn().outcomes[A]
    assert (job_id, status, protocol.unpack(blob)) == ("a", protocol.OK, "first run")
    assert "a" not in broker.book.scheduler.jobs and len(broker.book.dependencies) == 0
    assert stored(broker, "a").state == states.DONE


def test_a_payload_without_the_id_is_left_as_it_is():
    payload = payload_of(1.5, {"k": JobResult("other")})
    assert substitute(payload, {"absent": 99}) is payload


def test_results_of_one_turn_go_into_a_dependant_in_one_rewrite():
    book = Dependencies()
    ids = [f"g{n}" for n in range(50)]
    waiting = job("chord", payload_of([JobResult(job_id) for job_id in ids]))
    book.wait(waiting, {"after": ids}, dict.fromkeys(ids))
    for number, job_id in enumerate(ids):
        assert book.ended(job_id, states.DONE, protocol.pack(number)) == []
    assert book.flush() == [Rewrite(waiting, {}), Release(waiting)]
    assert arguments(waiting.payload) == [[list(range(50))], {}]


def test_a_malformed_payload_of_a_waiting_job_is_refused_at_submit(made):
    broker = made()
    submit(broker, "a", 1)
    broker.book.submit(A, [["b", "tasks:add", "thread", "default", 0, b"\xc1", {"after": ["a"]}]], False, 1.0)
    outbox = broker.turn()
    assert outbox.accepted == {A: ["a"]}
    [[_, status, blob]] = outbox.outcomes[A]
    error = exception_from_blob(blob)
    assert status == protocol.FAILED and isinstance(error, ValueError)
    assert "job b waits for other jobs, but the job's arguments are not valid msgpack" in str(error)


@pytest.mark.parametrize("restarted", [False, True])
def test_a_delayed_dependant_waits_for_its_dependency_then_for_its_due_time(made, restarted):
    broker = made()
    submit(broker, "a", 1, 2)
    payload, waits = encode_arguments((JobResult("a"), 10), {})
    broker.book.submit(A, [["b", "tasks:add", "thread", "default", 0, payload, {"after": waits, "delay": 50.0}]],
                       False, 1.0)  # due at 51.0, the broker's clock at acceptance plus the delay
    assert broker.book.scheduler.jobs["b"].state == WAITING
    broker.turn()
    if restarted:  # the due time and the wait list are journaled: a restart finds both
        broker.restart(crashed=True)
        assert broker.book.scheduler.jobs["b"].state == WAITING
    broker.run_to_the_end("a", payload=protocol.pack(3))
    broker.book.take_outbox(10.0)
    held = broker.book.scheduler.jobs["b"]
    assert held.state == SCHEDULED and broker.book.next_due() == 51.0  # done waiting; not yet due
    broker.book.release_due(50.9)
    assert held.state == SCHEDULED
    broker.book.release_due(51.0)
    assert held.state == PENDING
    broker.run_to_the_end("b")
    assert stored(broker, "b").state == states.DONE and arguments(stored(broker, "b").payload) == [[3, 10], {}]
