"""The client's batching policy (runner/outgoing.py), on a real event loop, with no sockets.

A recording stand-in takes the place of the broker connection: these tests are about
which messages leave when, not about the wire (tests/test_integration.py covers that).
"""

from __future__ import annotations

import threading
import time

import pytest

from runner import protocol
from runner.loop import EventLoop
from runner.outgoing import ACK_BATCH, ACK_DELAY, SEND_NOW_ROWS, Acknowledger, JobSender


class Recorder:
    """Records what would be sent to the broker, with the thread that sent it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict, str]] = []

    def send(self, message_type: str, body: dict | None = None) -> None:
        self.sent.append((message_type, body or {}, threading.current_thread().name))


@pytest.fixture
def loop():
    loop = EventLoop()
    yield loop
    loop.close()


def row(number: int) -> list:
    return [f"job-{number}", "tasks:noop", "process", "default", 0, b"\x92\x90\x80", {}]


def run_one_turn(loop: EventLoop) -> None:
    loop.call_soon(loop.stop)
    loop.run()


def test_a_lone_job_leaves_at_once_from_the_submitting_thread(loop):
    recorder = Recorder()
    sender = JobSender(loop, recorder)
    sender.add(row(1), alone=True)
    assert recorder.sent == [(protocol.SUBMIT, {"jobs": [row(1)]}, threading.current_thread().name)]


def test_held_jobs_leave_only_when_the_holder_sends_them_or_a_batch_is_full(loop):
    recorder = Recorder()
    sender = JobSender(loop, recorder)
    for number in range(10):
        sender.add(row(number), alone=False, hold=True)
    run_one_turn(loop)
    assert recorder.sent == [], "a held job schedules no send"
    sender.send_queued()
    assert [message[:2] for message in recorder.sent] == [(protocol.SUBMIT, {"jobs": [row(n) for n in range(10)]})]
    for number in range(SEND_NOW_ROWS):
        sender.add(row(number), alone=False, hold=True)
    assert len(recorder.sent) == 2 and len(recorder.sent[1][1]["jobs"]) == SEND_NOW_ROWS
    sender.add(row(0), alone=True, hold=True)
    assert recorder.sent[2][1] == {"jobs": [row(0)]}, "a lone job still leaves at once"


def test_jobs_under_load_wait_for_the_loop_and_leave_in_one_message_in_order(loop):
    recorder = Recorder()
    sender = JobSender(loop, recorder)
    for number in range(10):
        sender.add(row(number), alone=False)
    assert recorder.sent == [], "nothing leaves before the loop's turn"
    run_one_turn(loop)
    assert [message[:2] for message in recorder.sent] == [(protocol.SUBMIT, {"jobs": [row(n) for n in range(10)]})]


def test_a_full_batch_leaves_from_the_submitting_thread_without_the_loop(loop):
    recorder = Recorder()
    sender = JobSender(loop, recorder)
    for number in range(SEND_NOW_ROWS + 3):
        sender.add(row(number), alone=False)
    assert [len(body["jobs"]) for _, body, _ in recorder.sent] == [SEND_NOW_ROWS]
    run_one_turn(loop)
    jobs = [job for _, body, _ in recorder.sent for job in body["jobs"]]
    assert jobs == [row(n) for n in range(SEND_NOW_ROWS + 3)], "every job once, in submission order"


def test_a_resend_is_marked_and_split_at_the_batch_limit(loop):
    recorder = Recorder()
    JobSender(loop, recorder).send([row(n) for n in range(protocol.MAX_BATCH + 1)], resend=True)
    assert [(len(body["jobs"]), body["resend"]) for _, body, _ in recorder.sent] == [(protocol.MAX_BATCH, True), (1, True)]


def test_acknowledgements_gather_for_the_delay_then_leave_in_one_message(loop):
    recorder = Recorder()
    acknowledger = Acknowledger(loop, recorder)
    acknowledger.add(["a", "b"])
    acknowledger.add(["c"])
    assert recorder.sent == []
    started = time.monotonic()
    sent = threading.Event()
    recorder.send = lambda *message: (Recorder.send(recorder, *message), sent.set())  # type: ignore[method-assign]
    thread = threading.Thread(target=loop.run)  # the timer set above fires on the loop's thread
    thread.start()
    try:
        assert sent.wait(10), "the acknowledgements never left"
    finally:
        loop.stop()
        thread.join(10)
    assert [message[:2] for message in recorder.sent] == [(protocol.ACK, {"ids": ["a", "b", "c"]})]
    assert time.monotonic() - started >= ACK_DELAY * 0.9, "not before the delay"


def test_many_acknowledgements_leave_at_once_and_leaving_sends_the_rest(loop):
    recorder = Recorder()
    acknowledger = Acknowledger(loop, recorder)
    acknowledger.add([f"id-{n}" for n in range(ACK_BATCH)])
    assert [len(body["ids"]) for _, body, _ in recorder.sent] == [ACK_BATCH]
    acknowledger.add(["last"])
    acknowledger.send()
    assert recorder.sent[-1][1] == {"ids": ["last"]}
    acknowledger.send()
    assert len(recorder.sent) == 2, "nothing left to send"
