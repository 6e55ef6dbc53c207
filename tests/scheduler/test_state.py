"""The lineage state: round trip, atomic writes, revision conflicts, fencing."""

from __future__ import annotations

import json
import os
import threading

import pytest

from cl_platform.scheduler.state import (
    InFlightRound, LearnedTask, LineageState, QuarantinedTask, StateConflictError, StateStore,
)


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
