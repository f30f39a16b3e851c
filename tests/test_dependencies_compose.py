"""The client's side of jobs that wait for jobs, without a cluster: what a Future argument and
``after=`` pack (runner/after.py, runner/tasks.py), and GroupFuture, chain and group (runner/compose.py).

With a real cluster: tests/test_dependencies.py.
"""

from __future__ import annotations

from concurrent.futures import CancelledError, Future

import msgpack
import pytest

import runner
from runner import protocol
from runner.after import after_ids, referrer
from runner.client import JobFuture
from runner.compose import GroupFuture, chain
from runner.tasks import NO_WAITS, JobResult, decode_arguments, encode_arguments

ME, OTHER = object(), object()  # stand-ins for two clients: only their identity matters here


def placeholder(job_id: str) -> msgpack.ExtType:
    return msgpack.ExtType(protocol.RESULT_OF_EXT, job_id.encode())


def test_plain_arguments_take_the_usual_path_and_wait_for_nothing():
    payload, waits = encode_arguments((1, "job-id-looking-string"), {"k": [1]}, referrer(ME))
    assert payload == protocol.pack([(1, "job-id-looking-string"), {"k": [1]}]) and waits is NO_WAITS


def test_futures_become_placeholders_at_any_depth_and_a_done_one_its_value():
    waiting, done = JobFuture(ME, "j1"), JobFuture(ME, "j2")
    done.set_result({"v": 1})
    payload, waits = encode_arguments(([waiting, {"d": done}],), {"k": JobResult("j3")}, referrer(ME))
    assert waits == ["j1", "j3"]
    assert protocol.unpack(payload) == [[[placeholder("j1"), {"d": {"v": 1}}]], {"k": placeholder("j3")}]
    assert decode_arguments(payload) == [[[JobResult("j1"), {"d": {"v": 1}}]], {"k": JobResult("j3")}]


def test_a_failed_future_is_still_waited_for_so_the_broker_fails_the_job():
    failed = JobFuture(ME, "j1")
    failed.set_exception(ValueError("x"))
    assert encode_arguments((failed,), {}, referrer(ME))[1] == ["j1"]


def test_a_future_of_another_client_is_refused_naming_what_to_do():
    with pytest.raises(ValueError, match=r"is a job of another client.*runner.JobResult\('j1'\)"):
        encode_arguments((JobFuture(OTHER, "j1"),), {}, referrer(ME))


def test_an_unsendable_argument_is_still_named():
    with pytest.raises(TypeError, match="positional argument 1 is a set"):
        encode_arguments((JobFuture(ME, "j1"), {1, 2}), {}, referrer(ME))
    with pytest.raises(TypeError, match="keyword argument 'k' is a Future"):
        encode_arguments((), {"k": Future()}, referrer(ME))


def test_after_takes_futures_ids_job_results_and_groups():
    refer = referrer(ME)
    done = JobFuture(ME, "done")
    done.set_result(1)
    group = GroupFuture([JobFuture(ME, "g1"), JobFuture(ME, "g2")])
    assert after_ids(refer, [JobFuture(ME, "a"), "b", JobResult("c"), done, group]) == ["a", "b", "c", "g1", "g2"]
    assert after_ids(refer, JobFuture(ME, "alone")) == ["alone"] and after_ids(refer, "x") == ["x"]
    assert after_ids(refer, []) is NO_WAITS
    with pytest.raises(ValueError, match="JobResult takes a job id"):
        after_ids(refer, [""])
    with pytest.raises(TypeError):
        after_ids(refer, [3])


def test_a_group_future_gives_the_results_in_order_or_the_first_error():
    first, second = Future(), Future()
    group = GroupFuture([first, second])
    second.set_result(2)
    assert not group.done()
    first.set_result(1)
    assert group.result(0) == [1, 2] and repr(group) == "<GroupFuture of 2 jobs finished>"
    failing, cancelled = Future(), Future()
    failed = GroupFuture([failing, cancelled])
    failing.set_exception(KeyError("k"))
    cancelled.cancel()
    with pytest.raises(KeyError):
        failed.result(0)
    only_cancelled = Future()
    only_cancelled.cancel()
    with pytest.raises(CancelledError):
        GroupFuture([only_cancelled]).result(0)
    assert GroupFuture([]).result(0) == []


def test_cancelling_a_group_cancels_each_job():
    members = [Future(), Future()]
    assert GroupFuture(members).cancel() and all(member.cancelled() for member in members)


def test_steps_must_be_tuples_and_a_chain_needs_one():
    with pytest.raises(ValueError, match="at least one step"):
        chain(client=ME)
    with pytest.raises(TypeError, match=r"a step is a tuple \(fn, \*args\)"):
        runner.group(["tasks:add", 1, 2], client=ME)
