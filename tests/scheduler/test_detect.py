"""Detection: only tasks with ``_READY`` count, in landing order (marker time, then name)."""

from __future__ import annotations

import os
import time

from tests.support.sched_helpers import small_task, state_json

from cl_platform.scheduler.detect import content_fingerprint, listing_signature, scan_tasks


def _set_ready_time(store, name: str, t: float) -> None:
    os.utime(store.uri(f"tasks/{name}/_READY")[len("file://"):], (t, t))


def test_landing_order_is_marker_time_then_name(tmp_path):
    from cl_platform.store import Store

    store = Store(f"file://{tmp_path}/s")
    for name in ("zeta", "alpha", "mid", "beta"):
        small_task(store, name)
    now = time.time()
    _set_ready_time(store, "zeta", now - 30)
    _set_ready_time(store, "alpha", now - 10)
    _set_ready_time(store, "mid", now - 10)  # same second as alpha: name breaks the tie
    _set_ready_time(store, "beta", now - 5)
    assert [c.name for c in scan_tasks(store)] == ["zeta", "alpha", "mid", "beta"]
    assert [c.name for c in scan_tasks(store, skip=["alpha"])] == ["zeta", "mid", "beta"]


def test_a_task_without_ready_is_ignored_until_the_marker_lands(harness):
    store = harness.store
    small_task(store, "landing")
    store.delete("tasks/landing/_READY")  # still being written
    assert [c.name for c in scan_tasks(store)] == []
    sched = harness.scheduler()
    assert sched.run() == 0
    assert not sched.events.of("detected") and not sched.events.of("submitted")
    store.write_bytes("tasks/landing/_READY", b"done\n")
    sched = harness.scheduler()
    assert sched.run() == 0
    assert [t["task"] for t in state_json(store)["learned"]] == ["landing"]


def test_scheduler_learns_tasks_in_landing_order(file_harness):
    store = file_harness.store
    for name in ("c-task", "a-task", "b-task"):
        small_task(store, name)
    now = time.time()
    for i, name in enumerate(("c-task", "a-task", "b-task")):
        _set_ready_time(store, name, now - 100 + i)
    sched = file_harness.scheduler()
    assert sched.run() == 0
    learned = state_json(store)["learned"]
    assert [t["task"] for t in learned] == ["c-task", "a-task", "b-task"]
    assert [t["from_run"] for t in learned] == [None, "lin-1-c-task", "lin-2-a-task"]


def test_fingerprints_change_with_content_not_with_a_touch(harness):
    store = harness.store
    small_task(store, "t")
    fp, sig = content_fingerprint(store, "t"), listing_signature(store, "t")
    time.sleep(1.1)
    store.write_bytes("tasks/t/_READY", b"again\n")
    assert content_fingerprint(store, "t") == fp and listing_signature(store, "t") != sig
    small_task(store, "t", token=40)
    assert content_fingerprint(store, "t") != fp
