"""Fencing tokens strictly increase per name, across broker restarts too.

A token is ``epoch << TOKEN_BITS`` plus a count of the name's grants in that epoch; the
journal counts broker starts (the epoch), so a restarted broker's tokens are above the
tokens of every earlier run. Checked on the sans-IO state with a journal modelled in the
test, on the SQLite journal, and with real brokers killed with SIGKILL and restarted on
the same journal.
"""

from __future__ import annotations

import sqlite3
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_chaos import free_address

import runner
from runner.broker.journal import Journal
from runner.broker.server import Broker
from runner.broker.sync import EPOCH, TOKEN_BITS, Change, SyncState
from runner.sync import Holdings

HEARTBEAT = "0.2"


def take_and_release(state: SyncState, name: str, request: int = 0) -> int:
    """One grant of lock ``name`` (released at once); its token."""
    [reply] = state.acquire(b"peer", request, name, 1, "owner", 0.0)
    state.release(b"peer", request + 1, name, "owner")
    return reply.body["token"]


# --- the rule, on the sans-IO state ------------------------------------------------------------


def test_a_token_is_the_epoch_in_its_high_bits_and_a_count_below():
    state = SyncState(epoch=3)
    assert [take_and_release(state, "L") for _ in range(3)] == [(3 << TOKEN_BITS) + n for n in (1, 2, 3)]
    assert take_and_release(state, "other") == (3 << TOKEN_BITS) + 1, "each name counts its own grants"
    assert state.drain_changes() == []  # no journal write per token
    assert (2 ** 31 - 1 << TOKEN_BITS) + 2 ** TOKEN_BITS - 1 < 2 ** 63, "the largest token fits in a signed int64"


def test_a_name_that_uses_up_its_epoch_moves_the_state_to_the_next_epoch():
    state = SyncState(epoch=1, token_bits=2)  # 3 tokens a name and epoch: 5, 6, 7
    assert [take_and_release(state, "A") for _ in range(3)] == [5, 6, 7]
    assert state.drain_changes() == []
    assert take_and_release(state, "A") == 9 and state.epoch == 2
    assert state.drain_changes() == [Change(EPOCH, "", b"")], "the new epoch must be journaled before token 9 leaves"
    assert take_and_release(state, "B") == 9, "every name now counts from the new epoch"
    assert [take_and_release(state, "A") for _ in range(2)] == [10, 11]


@pytest.mark.parametrize("epoch", [-1, 2 ** 31, 1.5, True, None])
def test_an_epoch_out_of_range_is_refused_with_what_to_do(epoch):
    with pytest.raises(ValueError, match="fencing epoch.*new journal"):
        SyncState(epoch=epoch)


# Each run: grants of names "a".."c", then the broker dies.
RUNS = st.lists(st.lists(st.sampled_from("abc"), max_size=20), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(runs=RUNS)
def test_tokens_increase_per_name_over_any_runs_and_restarts(runs):
    journal_epoch = 0  # the journal modelled as the server drives it
    last: dict[str, int] = {}
    for grants in runs:
        journal_epoch += 1  # start_epoch(), committed before serving
        state = SyncState(epoch=journal_epoch, token_bits=2)
        for request, name in enumerate(grants):
            token = take_and_release(state, name, 2 * request)
            for change in state.drain_changes():  # journaled before the reply leaves
                assert change.op == EPOCH
                journal_epoch = max(journal_epoch, state.epoch)
            assert token > last.get(name, 0), f"token {token} of {name!r} is not above {last.get(name)}"
            last[name] = token


# --- the client's record of the tokens its objects hold ------------------------------------------


def test_a_client_records_tokens_per_holder_and_forgets_them_when_it_registers_again():
    holdings = Holdings()
    first, second = {"owner": "first"}, {"owner": "second"}
    holdings.answered(first, {"acquired": True, "token": 11})
    holdings.answered(first, {"acquired": True, "token": 12})
    holdings.answered(second, {"acquired": False})
    holdings.answered(second, {"error": "bad", "kind": "ValueError"})
    assert (holdings.token("first"), holdings.token("second")) == (12, None)
    holdings.answered(first, {"released": True})  # gives back the oldest slot: 12 is still held
    assert holdings.token("first") == 12
    holdings.answered(first, {"released": True})
    assert holdings.token("first") is None
    holdings.answered(second, {"acquired": True, "token": 13})
    holdings.forget()
    assert holdings.token("second") is None


# --- the journal counts broker starts -----------------------------------------------------------


def test_the_journal_counts_starts_and_commits_each_at_once(tmp_path):
    path = str(tmp_path / "journal.db")
    first = Journal(path)
    assert first.start_epoch() == 1
    with sqlite3.connect(path) as other:  # another connection sees it: committed before serving
        assert other.execute("SELECT epoch FROM fencing").fetchall() == [(1,)]
    first.close()
    second = Journal(path)
    assert second.start_epoch() == 2
    second.save_epoch(7)
    second.save_epoch(5)  # never back
    second.close()
    assert Journal(path).start_epoch() == 8


def test_a_journal_in_memory_starts_at_epoch_one_every_time():
    assert [Journal(":memory:").start_epoch() for _ in range(2)] == [1, 1]


def test_the_broker_journals_the_epoch_a_busy_name_moves_to(tmp_path):
    """A real broker and client, with tokens 2 bits wide so that a name uses up its epoch."""
    path = str(tmp_path / "journal.db")
    broker = Broker("tcp://127.0.0.1:*", journal=path, heartbeat=0.2)
    assert broker.sync.epoch == 1
    broker.sync = SyncState(epoch=1, token_bits=2)
    serving = threading.Thread(target=broker.serve_forever, daemon=True)
    serving.start()
    try:
        with runner.Client(broker.address) as client:
            lock = client.Lock("busy")
            tokens = []
            for _ in range(5):
                with lock:
                    tokens.append(lock.token)
    finally:
        broker.stop()
        serving.join(timeout=30)
    assert not serving.is_alive()
    assert tokens == [5, 6, 7, 9, 10]
    assert Journal(path).start_epoch() == 3, "the epoch moved to 2 was journaled; the next start is above it"


# --- real brokers killed with SIGKILL -------------------------------------------------------------


def restart(processes, broker, address: str, journal) -> object:
    """Kill the broker with SIGKILL and start a new one on the same address and journal."""
    broker.kill()
    broker.wait(timeout=10)
    broker, bound = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
    assert bound == address
    return broker


def test_lock_tokens_increase_across_kill_9_of_the_broker(processes, client_factory, tmp_path):
    address, journal = free_address(), tmp_path / "journal.db"
    broker, _ = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
    client = client_factory(address)  # stays across both crashes and registers again each time
    handed_out: list[int] = []
    for crash in range(2):
        lock = client.Lock("inventory")
        for _ in range(3):
            with lock:
                handed_out.append(lock.token)
        holder = client_factory(address).Lock("inventory")
        assert holder.acquire(timeout=10)
        handed_out.append(holder.token)  # this holder believes it holds the lock through the crash
        client.Event("before-the-crash").set()
        broker = restart(processes, broker, address, journal)
        assert not client.Event("before-the-crash").is_set(), "a restarted broker's events start cleared"
        new_holder = client_factory(address).Lock("inventory")
        assert new_holder.acquire(blocking=False), "a restarted broker's locks start free"
        assert new_holder.token > max(handed_out), (
            f"after crash {crash + 1} the new holder's token {new_holder.token} is not above {max(handed_out)}: "
            "the old holder would win at a fenced resource")
        handed_out.append(new_holder.token)
        new_holder.release()
    with client.Lock("inventory") as last:
        handed_out.append(last.token)
    assert handed_out == sorted(set(handed_out)), "tokens strictly increase over every grant"


def test_semaphore_tokens_increase_across_kill_9_of_the_broker(processes, client_factory, tmp_path):
    address, journal = free_address(), tmp_path / "journal.db"
    broker, _ = processes.broker("--heartbeat", HEARTBEAT, bind=address, journal=journal)
    client = client_factory(address)
    handed_out: list[int] = []
    for _ in range(3):
        with client.Semaphore("gpu", 2) as slot:
            handed_out.append(slot.token)
    holders = [client_factory(address).Semaphore("gpu", 2) for _ in range(2)]
    for holder in holders:
        assert holder.acquire(timeout=10)
        handed_out.append(holder.token)
    restart(processes, broker, address, journal)
    new_holders = [client_factory(address).Semaphore("gpu", 2) for _ in range(2)]
    for new_holder in new_holders:
        assert new_holder.acquire(timeout=30)
        assert new_holder.token > max(handed_out), f"slot token {new_holder.token} not above {max(handed_out)}"
        handed_out.append(new_holder.token)
    assert handed_out == sorted(set(handed_out))
