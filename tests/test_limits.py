"""The broker's limit decisions (runner/broker/limits.py) and message splitting, without sockets."""

import pytest

from runner import protocol
from runner.broker.limits import ROW_OVERHEAD, ClientQuota, Limits, Offenders, SyncQuota


def test_limits_check_their_values_naming_the_setting():
    assert Limits().wire()["max_pending"] == 1_000_000
    with pytest.raises(ValueError, match="max_message_bytes must be from 65536"):
        Limits(max_message_bytes=1000)
    with pytest.raises(ValueError, match="max_payload_bytes must be from 1 to max_message_bytes"):
        Limits(max_message_bytes=100_000, max_payload_bytes=100_000 - ROW_OVERHEAD + 1)
    with pytest.raises(ValueError, match="max_peers must be an integer >= 1, got 0"):
        Limits(max_peers=0)
    limits = Limits(max_payload_bytes=10)
    assert limits.payload_refusal(10) is None
    assert "--max-payload-bytes" in limits.payload_refusal(11) and "11 bytes" in limits.payload_refusal(11)


def test_client_quota_counts_unfinished_jobs_per_client():
    quota = ClientQuota(2)
    assert quota.room(b"a") == 2
    quota.add(b"a")
    quota.add(b"a")
    quota.add(b"b")
    assert (quota.room(b"a"), quota.room(b"b")) == (0, 1)
    assert "--max-pending" in quota.refusal() and "block=True" in quota.refusal()
    quota.remove(b"a")
    quota.remove(b"b")
    quota.remove(b"b")  # more removals than adds never go negative or keep an entry
    assert quota.room(b"a") == 1 and dict(quota.held) == {b"a": 1}


def test_sync_quota_counts_distinct_names_per_peer_until_it_goes():
    quota = SyncQuota(2)
    assert quota.use(b"p", "a") is None and quota.use(b"p", "b") is None
    assert quota.use(b"p", "a") is None  # a name already used costs nothing more
    refusal = quota.use(b"p", "c")
    assert "--max-sync-objects" in refusal and "'c'" in refusal
    assert quota.use(b"q", "c") is None  # per peer
    quota.forget(b"p")
    assert quota.use(b"p", "c") is None


def test_offenders_cut_a_peer_off_once_at_the_threshold_then_let_it_back():
    offenders = Offenders(3, cut_off=60.0)
    assert not offenders.cut and not offenders.ignored(b"p", 0.0)
    assert [offenders.invalid(b"p", 1.0) for _ in range(2)] == [False, False]
    assert offenders.invalid(b"p", 2.0) is True
    assert offenders.ignored(b"p", 61.9) and not offenders.ignored(b"other", 10.0)
    assert not offenders.ignored(b"p", 62.0)  # the cut-off is over; counting starts again
    assert not offenders.invalid(b"p", 63.0)


def test_offenders_memory_is_bounded_by_the_peers_tracked():
    offenders = Offenders(2, tracked=100)
    for index in range(1000):
        offenders.invalid(b"peer-%d" % index, 0.0)
        offenders.invalid(b"peer-%d" % index, 0.0)
    assert len(offenders.cut) == 100 and len(offenders._counts) == 0


def test_split_by_size_keeps_each_message_under_the_limit_and_the_order():
    rows = [["id-%d" % index, b"x" * size] for index, size in enumerate([10, 400, 400, 10, 900, 5, 5])]
    limit = protocol.ENVELOPE_BYTES + 1000
    batches = list(protocol.split_by_size(rows, 1, 50, limit))
    assert [row for batch in batches for row in batch] == rows
    for batch in batches:
        assert len(batch) == 1 or sum(len(row[1]) + 50 for row in batch) <= 1000
    assert [len(batch) for batch in batches] == [3, 1, 1, 2]
    many = [["i", b""]] * (protocol.MAX_BATCH + 1)
    assert [len(batch) for batch in protocol.split_by_size(many, 1, 0, 10**12)] == [protocol.MAX_BATCH, 1]
    assert list(protocol.split_by_size([], 1, 0, limit)) == []
