"""The lineage state: round trip, atomic writes, conditional writes, fencing by lease generation."""

from __future__ import annotations

import json
import os
import threading

import pytest

from cl_platform.scheduler.state import (
    InFlightRound, LearnedTask, LineageState, QuarantinedTask, StaleWriteError, StateConflictError, StateStore,
)
from cl_platform.store import ConflictError


def _state(states: StateStore) -> LineageState:
    st = states.load()
    st.learned.append(LearnedTask(task="a", n=1, run="lin-1-a", from_run=None, checkpoint="file:///x", metrics={"accuracy": 0.5}))
    st.quarantined["b"] = QuarantinedTask(task="b", reason="task 'b' file 'manifest.json': not valid JSON", file="manifest.json")
    st.in_flight = InFlightRound(task="c", n=2, run="lin-2-c", from_run="lin-1-a", attempt=1, runner="embedded",
                                 submission_id="lin-2-c-a1")
    return st


def test_round_trip_and_revision_conflict(store):
    states = StateStore(store, "lin")
    st = _state(states)
    assert st.revision == 0
    states.save(st)
    assert st.revision == 1
    loaded = states.load()
    assert loaded.to_dict() == st.to_dict()
    # another writer saves first: this one's save is refused, nothing is overwritten
    other = states.load()
    other.learned.clear()
    states.save(other)
    st.failed.clear()
    with pytest.raises(StateConflictError, match="revision 2"):
        states.save(st)
    assert states.load().learned == []


def test_fence_blocks_writes(store):
    def fence():
        raise RuntimeError("not the lease holder")

    states = StateStore(store, "lin", fence=fence)
    with pytest.raises(RuntimeError, match="lease holder"):
        states.save(_state(states))
    assert not store.exists("lineages/lin/state.json")


def test_failed_write_leaves_the_old_state_and_no_temp_file(tmp_path, monkeypatch):
    from cl_platform.store import Store

    store = Store(f"file://{tmp_path}/s")
    states = StateStore(store, "lin")
    st = states.save(_state(states))
    before = store.read_bytes(states.path)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    st.learned.clear()
    with pytest.raises(OSError, match="disk full"):
        states.save(st)
    monkeypatch.undo()
    assert store.read_bytes(states.path) == before
    assert sorted(os.listdir(tmp_path / "s" / "lineages" / "lin")) == ["state.json"]
    assert st.revision == 1  # the in-memory revision did not move


def test_readers_never_see_a_partial_state(store):
    states = StateStore(store, "lin")
    st = states.save(_state(states))
    stop = threading.Event()
    seen, bad = [], []

    def reader():
        while not stop.is_set():
            try:
                doc = json.loads(store.read_bytes(states.path))
                seen.append(doc["revision"])
            except Exception as exc:  # noqa: BLE001
                bad.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for i in range(15):
            st.learned.append(LearnedTask(task=f"t{i}", n=i + 2, run=f"lin-{i + 2}-t{i}", from_run=None,
                                          checkpoint="x" * 5000))
            states.save(st)
    finally:
        stop.set()
        t.join()
    assert not bad and seen and seen == sorted(seen)


def test_a_write_names_the_version_it_read_not_just_the_revision(store):
    """A foreign rewrite that keeps the revision number still makes the write fail."""
    states = StateStore(store, "lin")
    st = states.save(_state(states))
    doc = json.loads(store.read_bytes(states.path))
    doc["learned"] = []  # same revision, other content
    store.write_json(states.path, doc)
    st.quarantined.clear()
    with pytest.raises(StateConflictError) as err:
        states.save(st)
    assert isinstance(err.value, ConflictError) and "nothing was written" in str(err.value)
    assert json.loads(store.read_bytes(states.path)) == doc
    assert st.revision == 1 and st.version is not None


def test_two_writers_of_one_version_one_wins(store):
    states = StateStore(store, "lin")
    states.save(_state(states))
    a, b = states.load(), states.load()
    barrier = threading.Barrier(2)
    outcome = {}

    def write(name, st):
        st.hooks.append({"n": 1, "id": name})
        barrier.wait()
        try:
            states.save(st)
            outcome[name] = "won"
        except StateConflictError:
            outcome[name] = "lost"

    threads = [threading.Thread(target=write, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome.values()) == ["lost", "won"]
    winner = next(n for n, o in outcome.items() if o == "won")
    assert states.load().hooks == [{"n": 1, "id": winner}] and states.load().revision == 2


def test_a_write_of_an_older_lease_generation_is_refused(store):
    generation = {"a": 1}
    a = StateStore(store, "lin", fence=lambda: generation["a"])
    st = a.save(_state(a))
    assert (st.lease_generation, json.loads(store.read_bytes(a.path))["lease_generation"]) == (1, 1)
    before = a.load()
    # a successor fences the lineage for generation 2 (what Lease.try_acquire does before creating its lease)
    assert StateStore(store, "lin").take_over("b", 2)
    fenced = store.read_bytes(a.path)
    # a's write of the version it read before the takeover: the conditional write fails
    before.learned.clear()
    with pytest.raises(StaleWriteError, match="generation 2 .*holds generation 1"):
        a.save(before)
    # a's write of the version after the takeover: refused by the generation that version names
    after = a.load()
    after.learned.clear()
    with pytest.raises(StaleWriteError):
        a.save(after)
    assert store.read_bytes(a.path) == fenced
    loaded = a.load()
    assert (loaded.lease_generation, loaded.lease_holder, len(loaded.learned)) == (2, "b", 1)
    # the successor writes on
    generation["a"] = 2
    after.learned.clear()
    assert a.save(after).revision == loaded.revision + 1


def test_take_over_is_decided_per_generation(store):
    states = StateStore(store, "lin")
    assert states.take_over("c1", 1)  # no state yet: created, fenced at 1
    assert states.take_over("c2", 1)  # the same generation: fenced already (the lease record decides)
    assert not states.take_over("c3", 0)  # older than what is fenced
    assert states.take_over("c4", 3) and states.load().lease_generation == 3
    assert not states.take_over("c5", 2)
    assert states.load().revision == 2  # only the raises wrote
