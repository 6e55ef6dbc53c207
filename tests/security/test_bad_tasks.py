"""Bad tasks dropped into the store from the outside: every one is quarantined with a reason that
says what is wrong, and a good task landing after all of them is still learned.

The store is shared, so a task's files are untrusted input: a manifest nested 100,000 deep, a
300-character file name, a directory where a part belongs, a key with a backslash, a Parquet part
that decodes to 80 MB, a 200,000-token row, an extra 10 MB column, image tokens in a text answer,
prompts of padding only, eval rows copied from train rows, sizes that do not match, too many
files or rows ... (``tests/support/bad_tasks.py``). Each runs on a local and an S3 (moto) store
with the real scheduler loop and the stand-in round job.
"""

from __future__ import annotations

import time

import pytest
from tests.support.bad_tasks import KINDS, BadKind, kinds_for
from tests.support.sched_helpers import Harness, small_task, state_json

from cl_platform.data.limits import TaskLimits
from cl_platform.scheduler.detect import content_fingerprint, listing_signature, scan_tasks
from cl_platform.scheduler.validate import validate_task
from cl_platform.store import Store
from cl_platform.suites.digits.vocab import DIGITS_SPEC


def test_there_are_at_least_twenty_kinds_on_each_backend():
    assert len({k.name for k in KINDS}) == len(KINDS)
    assert len(kinds_for("file")) >= 20 and len(kinds_for("s3")) >= 20


@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_each_kind_alone_gets_a_reason_naming_it(store: Store, kind: BadKind):
    if store.protocol not in kind.backends:
        pytest.skip(f"{kind.name} cannot be built on {store.protocol}: {kind.why_not}")
    if kind.name == "too-many-files" and store.protocol == "s3":
        pytest.skip("1,000 objects take seconds on the moto server; the scheduler test below builds this kind on S3")
    kind.build(store)
    v = validate_task(store, kind.name, DIGITS_SPEC)
    assert not v.ok and v.reason.startswith(f"task {kind.name!r}"), v
    for w in kind.words:
        assert w in v.reason, (w, v.reason)
    # the fingerprints the loop takes of a quarantined task never fail either
    assert listing_signature(store, kind.name) and content_fingerprint(store, kind.name)


def test_bad_tasks_are_quarantined_and_a_good_one_landing_after_them_is_learned(store: Store, tmp_path):
    kinds = kinds_for(store.protocol)
    for kind in kinds:
        kind.build(store)
    store.write_bytes("tasks/plain-object", b"an object where a task folder belongs")
    time.sleep(1.1)  # S3 mtimes have 1 s resolution: the good task lands strictly after the bad ones
    small_task(store, "good")
    harness = Harness(store, tmp_path)
    sched = harness.scheduler()
    assert sched.run() == 0
    st = state_json(store)
    assert [t["task"] for t in st["learned"]] == ["good"]
    assert harness.trained("lin-1-good") == ["1"]
    q = st["quarantined"]
    assert set(q) == {k.name for k in kinds}, set(q) ^ {k.name for k in kinds}
    for kind in kinds:
        reason = q[kind.name]["reason"]
        assert reason.startswith(f"task {kind.name!r}") and all(w in reason for w in kind.words), (kind.name, reason)
        assert q[kind.name]["fingerprint"] and q[kind.name]["signature"]
    assert not sched.events.of("error")

    # a second pass looks at nothing again (fingerprints of odd tasks are stable)
    again = harness.scheduler()
    assert again.run() == 0
    assert not again.events.of("detected") and not again.events.of("submitted")


def test_fingerprints_survive_odd_entries(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    small_task(store, "t")
    store.fs.pipe_file(store._full("tasks/t/train") + "/ev\\il.parquet", b"x")
    store.delete("tasks/t/eval/part-00000.parquet")
    store.write_bytes("tasks/t/eval/part-00000.parquet/inner", b"x")  # a directory where a part belongs
    sig, fp = listing_signature(store, "t"), content_fingerprint(store, "t")
    assert sig and fp and content_fingerprint(store, "t") == fp and listing_signature(store, "t") == sig
    store.write_bytes("tasks/t/train/part-00000.parquet", b"changed")
    assert content_fingerprint(store, "t") != fp


def test_a_task_over_max_files_is_fingerprinted_by_its_listing_alone(tmp_path, monkeypatch):
    store = Store(f"file://{tmp_path}/store")
    small_task(store, "t")
    limits = TaskLimits(max_files=3)  # small_task has four files
    monkeypatch.setattr(Store, "open_read", lambda *a, **k: pytest.fail("a file was read"))
    monkeypatch.setattr(Store, "info", lambda *a, **k: pytest.fail("a file was looked at"))
    sig, fp = listing_signature(store, "t", limits=limits), content_fingerprint(store, "t", limits=limits)
    monkeypatch.undo()
    store.write_bytes("tasks/t/zzz/late.txt", b"x")
    monkeypatch.setattr(Store, "open_read", lambda *a, **k: pytest.fail("a file was read"))
    assert content_fingerprint(store, "t", limits=limits) != fp
    assert listing_signature(store, "t", limits=limits) != sig


def test_scan_skips_an_object_where_a_task_folder_belongs(tmp_path):
    store = Store(f"file://{tmp_path}/store")
    store.write_bytes("tasks/plain-object", b"x")
    small_task(store, "good")
    assert [c.name for c in scan_tasks(store)] == ["good"]
