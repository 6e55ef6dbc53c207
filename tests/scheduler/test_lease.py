"""The lineage lease: one holder at a time, conditional-create takeover after expiry, on file:// and S3."""

from __future__ import annotations

import threading

import pytest

from cl_platform.scheduler.lease import Lease, LeaseKeeper, LeaseLost


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_two_holders_and_takeover_after_expiry(store):
    clock = Clock()
    a = Lease(store, "lin", "a", ttl=10, clock=clock)
    b = Lease(store, "lin", "b", ttl=10, clock=clock)
    assert a.try_acquire() and a.generation == 1
    assert not b.try_acquire()
    assert b.current().holder == "a"
    clock.t += 5
    a.renew()  # renewed: expires at 1015
    clock.t += 9
    assert not b.try_acquire()  # still a's
    clock.t += 2  # a missed its renewal: expired
    assert b.try_acquire() and b.generation == 2
    b.check()
    with pytest.raises(LeaseLost, match="taken over"):
        a.renew()
    with pytest.raises(LeaseLost):
        a.check()
    assert not a.try_acquire()
    # clean release: the other takes over at once
    assert b.release()
    assert a.try_acquire() and a.generation == 3
    assert store.list("lineages/lin/lease") == ["000000000002.json", "000000000003.json"]  # older ones tidied


def test_only_one_of_many_takes_over_an_expired_lease(store):
    clock = Clock()
    old = Lease(store, "lin", "old", ttl=1, clock=clock)
    assert old.try_acquire()
    clock.t += 5
    contenders = [Lease(store, "lin", f"c{i}", ttl=30, clock=clock) for i in range(6)]
    wins: list[str] = []
    barrier = threading.Barrier(len(contenders))

    def go(lease: Lease) -> None:
        barrier.wait()
        if lease.try_acquire():
            wins.append(lease.holder)

    threads = [threading.Thread(target=go, args=(c,)) for c in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert Lease(store, "lin", "x").current().holder == wins[0]


def test_keeper_renews_and_notices_a_takeover(tmp_path):
    from cl_platform.store import Store

    store = Store(f"file://{tmp_path}/s")
    a = Lease(store, "lin", "a", ttl=0.6)
    assert a.try_acquire()
    keeper = LeaseKeeper(a).start()
    try:
        threading.Event().wait(1.5)  # longer than the ttl: only renewals keep it
        assert not keeper.lost.is_set()
        assert not Lease(store, "lin", "b", ttl=5).try_acquire()
        # simulate a takeover: someone creates the next generation
        rec = a.current()
        store.write_bytes_if_absent(f"lineages/lin/lease/{rec.generation + 1:012d}.json",
                                    rec.to_bytes().replace(b'"a"', b'"b"'))
        assert keeper.lost.wait(3)
        assert isinstance(keeper.error, LeaseLost)
    finally:
        keeper.stop()


def test_a_takeover_fences_the_state_before_its_lease_exists(store):
    from cl_platform.scheduler.state import StaleWriteError, StateStore

    clock = Clock()
    a = Lease(store, "lin", "a", ttl=10, clock=clock)
    assert a.try_acquire()
    states = StateStore(store, "lin")
    assert (states.load().lease_generation, states.load().lease_holder) == (1, "a")
    read_by_a = states.load()
    clock.t += 11  # a is paused past its expiry
    b = Lease(store, "lin", "b", ttl=10, clock=clock)
    assert b.try_acquire() and b.generation == 2
    assert (states.load().lease_generation, states.load().lease_holder) == (2, "b")
    # a's late write carries generation 1: refused at the write, whatever a's own lease check said
    late = StateStore(store, "lin", fence=lambda: 1)
    with pytest.raises(StaleWriteError):
        late.save(read_by_a)
    # a renews too late: it finds the takeover
    with pytest.raises(LeaseLost):
        a.renew()


def test_a_contender_that_fenced_and_died_does_not_block_the_lineage(store):
    from cl_platform.scheduler.state import StateStore

    clock = Clock()
    a = Lease(store, "lin", "a", ttl=10, clock=clock)
    assert a.try_acquire()
    assert StateStore(store, "lin").take_over("ghost", 2)  # fenced generation 2, died before its lease record
    # a still holds generation 1 by its record, but the state no longer accepts it: a lets go
    assert not a.try_acquire() and not a.held
    b = Lease(store, "lin", "b", ttl=10, clock=clock)
    assert not b.try_acquire()  # a's record has not expired yet
    clock.t += 11
    assert b.try_acquire() and b.generation == 2  # the fenced generation's record: created by b
    assert StateStore(store, "lin").load().lease_generation == 2
