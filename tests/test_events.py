"""The event hub (runner/broker/events.py) without sockets: who wants events, buffers, losses, polls."""

from __future__ import annotations

import pytest
from loguru import logger

from runner.broker.events import BATCH_MAX, EventHub
from runner.broker.scheduler import Job


def job(number: int = 1) -> Job:
    made = Job(f"job-{number}", "tasks:add", "process", "default", 0, b"", b"client")
    made.attempt = 1
    made.worker = b"w-1"
    return made


def test_nobody_subscribed_and_no_logging_wants_nothing():
    hub = EventHub()
    assert hub.wanted is False
    assert EventHub(log_lines=True).wanted is True


def test_a_poll_subscribes_and_an_empty_poll_without_wait_is_answered_at_once():
    hub = EventHub()
    batch = hub.poll(b"reader", 7, 0.0, now=100.0)
    assert (batch.peer, batch.request, batch.events, batch.lost) == (b"reader", 7, [], 0)
    assert hub.wanted is True
    hub.leave(b"reader")
    assert hub.wanted is False and hub.subscribers == {}


def test_a_parked_poll_is_answered_when_events_come_or_when_its_wait_is_over():
    hub = EventHub(worker_name=lambda worker: {b"w-1": "alpha"}[worker])
    hub.poll(b"reader", 1, 0.0, now=100.0)
    assert hub.poll(b"reader", 2, 5.0, now=100.0) is None
    assert hub.ready() == [] and hub.expired(now=104.9) == []
    hub.emit("leased", job(), now=101.0)
    [batch] = hub.ready()
    assert batch.request == 2 and batch.events == [{"event": "leased", "job": "job-1", "task": "tasks:add",
                                                   "queue": "default", "worker": "alpha", "attempt": 1, "at": 101.0}]
    assert hub.ready() == []  # answered: nothing parked
    assert hub.poll(b"reader", 3, 5.0, now=110.0) is None
    [batch] = hub.expired(now=115.0)
    assert (batch.request, batch.events, batch.lost) == (3, [], 0)


def test_a_full_buffer_drops_and_counts_and_the_next_answer_says_so_once():
    hub = EventHub(buffer=3)
    hub.poll(b"slow", 1, 0.0, now=0.0)
    hub.poll(b"fast", 1, 0.0, now=0.0)
    for number in range(5):
        hub.emit("accepted", job(number), now=1.0)
    batch = hub.poll(b"slow", 2, 10.0, now=2.0)
    assert [event["job"] for event in batch.events] == ["job-0", "job-1", "job-2"] and batch.lost == 2
    hub.emit("accepted", job(9), now=3.0)
    batch = hub.poll(b"slow", 3, 10.0, now=3.0)
    assert ([event["job"] for event in batch.events], batch.lost) == (["job-9"], 0)
    assert len(hub.subscribers[b"fast"].buffer) == 3  # each reader has its own buffer


def test_one_answer_carries_at_most_a_batch():
    hub = EventHub(buffer=BATCH_MAX * 2)
    hub.poll(b"reader", 1, 0.0, now=0.0)
    for number in range(BATCH_MAX + 5):
        hub.emit("accepted", job(number), now=1.0)
    assert len(hub.poll(b"reader", 2, 0.0, now=2.0).events) == BATCH_MAX
    assert len(hub.poll(b"reader", 3, 0.0, now=2.0).events) == 5


def test_logged_events_carry_their_fields_as_extra():
    records = []
    sink = logger.add(records.append, level="DEBUG", format="{message}")
    logger.enable("runner")
    try:
        EventHub(log_lines=True).emit("failed", job(), now=5.0)
    finally:
        logger.remove(sink)
    [record] = [message.record for message in records if message.record["extra"].get("component") == "events"]
    extra = record["extra"]
    assert (extra["event"], extra["job"], extra["task"], extra["queue"], extra["attempt"]) == (
        "failed", "job-1", "tasks:add", "default", 1)
    assert record["level"].name == "DEBUG"


# --- the clients' side: EventFeed (runner/client_requests.py), shared by Client and AsyncClient ---------


def test_a_feed_leads_with_what_was_lost_and_follows_for_ever_without_idle():
    from runner.client_requests import EVENTS_WAIT, EventFeed

    feed = EventFeed(None, now=0.0)
    answer = {"events": [{"event": "accepted"}], "lost": 3}
    assert feed.events(answer) == [{"event": "lost", "count": 3}, {"event": "accepted"}]
    assert feed.events({"events": [], "lost": 0}) == []
    assert feed.next_wait({"events": [], "lost": 0}, now=10_000.0) == EVENTS_WAIT


def test_a_feed_with_idle_waits_only_until_the_idle_time_is_up_then_ends():
    from runner.client_requests import EVENTS_WAIT, EventFeed

    feed = EventFeed(2.5, now=100.0)
    assert feed.next_wait({"events": [{"event": "leased"}], "lost": 0}, now=101.0) == EVENTS_WAIT  # quiet since 101
    assert feed.next_wait({"events": [], "lost": 0}, now=102.9) == pytest.approx(0.6)
    assert feed.next_wait({"events": [], "lost": 0}, now=103.5) is None


def test_a_refused_subscription_is_a_permission_error_naming_the_broker():
    from runner.client_requests import subscribed

    with pytest.raises(PermissionError, match="the broker at tcp://127.0.0.1:9 refused: admins only"):
        subscribed({"refused": "admins only"}, "tcp://127.0.0.1:9")
    assert subscribed({"events": [], "lost": 0}, "tcp://127.0.0.1:9") == {"events": [], "lost": 0}
