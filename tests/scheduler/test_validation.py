"""Validation before training: bad tasks are quarantined with a reason naming what is wrong, never
block the tasks behind them, and are looked at again only when their files change."""

from __future__ import annotations

import time

import pytest
from tests.support.sched_helpers import BAD_KINDS, small_task, state_json, write_bad_task

from cl_platform.scheduler.config import LineageSettings
from cl_platform.scheduler.validate import validate_task
from cl_platform.suites.digits.vocab import DIGITS_SPEC


@pytest.mark.parametrize("kind,breaker,words", BAD_KINDS, ids=[k[0] for k in BAD_KINDS])
def test_each_kind_of_bad_task_has_a_reason_naming_it(tmp_path, kind, breaker, words):
    from cl_platform.store import Store

    store = Store(f"file://{tmp_path}/s")
    write_bad_task(store, kind, breaker)
    v = validate_task(store, kind, DIGITS_SPEC)
    assert not v.ok
    assert f"task {kind!r}" in v.reason
    for w in words:
        assert w in v.reason, (w, v.reason)


def test_bad_tasks_are_quarantined_and_a_good_one_after_them_is_learned(harness):
    store = harness.store
    for name, breaker, _ in BAD_KINDS:
        write_bad_task(store, name, breaker)
    store.write_bytes("tasks/Not A Name/manifest.json", b"{}")  # a name that is not allowed
    time.sleep(1.1)  # S3 mtimes have 1 s resolution: the good task lands strictly after the bad ones
    small_task(store, "good")
    sched = harness.scheduler()
    assert sched.run() == 0
    st = state_json(store)
    assert [t["task"] for t in st["learned"]] == ["good"]
    assert st["learned"][0]["run"] == "lin-1-good" and st["learned"][0]["from_run"] is None
    q = st["quarantined"]
    assert set(q) == {k[0] for k in BAD_KINDS} | {"Not A Name"}
    for name, _, words in BAD_KINDS:
        assert all(w in q[name]["reason"] for w in words), q[name]
        assert q[name]["fingerprint"] and q[name]["signature"]
    assert "invalid name" in q["Not A Name"]["reason"] and q["Not A Name"]["fingerprint"] is None
    events = [e["event"] for e in sched.events.recent]
    assert events.count("quarantined") == len(BAD_KINDS) + 1 and events.count("submitted") == 1
    assert harness.trained("lin-1-good") == ["1"]

    # a second pass: nothing is validated again, nothing trained again
    again = harness.scheduler()
    assert again.run() == 0
    assert not again.events.of("detected") and not again.events.of("submitted")

    # touching _READY is not a change; fixing the files is: the task is validated again and learned
    store.write_bytes("tasks/bad-json/_READY", b"touched\n")
    touched = harness.scheduler()
    touched.run()
    assert not touched.events.of("detected")
    small_task(store, "bad-json")
    fixed = harness.scheduler()
    assert fixed.run() == 0
    assert [e["task"] for e in fixed.events.of("released_from_quarantine")] == ["bad-json"]
    st = state_json(store)
    assert [t["task"] for t in st["learned"]] == ["good", "bad-json"]
    assert st["learned"][1]["from_run"] == "lin-1-good"
    assert "bad-json" not in st["quarantined"]


def test_min_rows_policy_quarantines_small_tasks(file_harness):
    store = file_harness.store
    small_task(store, "tiny", rows=2)
    sched = file_harness.scheduler(settings=LineageSettings(min_rows=3))
    assert sched.run() == 0
    q = state_json(store)["quarantined"]
    assert "2 train rows" in q["tiny"]["reason"] and "min_rows" in q["tiny"]["reason"]


@pytest.mark.parametrize("exc", [RecursionError("maximum recursion depth exceeded"), MemoryError("out of memory"),
                                 OSError(36, "File name too long"), IsADirectoryError(21, "Is a directory"),
                                 UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
                                 ValueError("pyarrow said no"), PermissionError(13, "Access denied")])
def test_any_exception_from_one_task_is_its_verdict(tmp_path, monkeypatch, exc):
    from cl_platform.scheduler import validate
    from cl_platform.store import Store

    store = Store(f"file://{tmp_path}/s")
    small_task(store, "odd")

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(validate, "read_task", boom)
    v = validate_task(store, "odd", DIGITS_SPEC)
    assert not v.ok and v.digest is None
    assert v.reason.startswith(f"task 'odd': {type(exc).__name__}: "), v.reason


@pytest.mark.parametrize("exc", [ConnectionError("connection refused"), TimeoutError("timed out"), PermissionError("denied")])
def test_store_level_errors_are_raised_when_the_store_does_not_answer(tmp_path, monkeypatch, exc):
    from cl_platform.scheduler import validate
    from cl_platform.store import Store

    store = Store(f"file://{tmp_path}/s")
    small_task(store, "t")

    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(validate, "read_task", boom)
    assert not validate_task(store, "t", DIGITS_SPEC).ok  # the store answers: the error is the task's
    monkeypatch.setattr(Store, "list", boom)
    with pytest.raises(type(exc)):
        validate_task(store, "t", DIGITS_SPEC)


def test_verdict_carries_the_manifest_digest_and_the_model_bounds(tmp_path):
    from cl_platform.data.task_format import manifest_digest
    from cl_platform.store import Store

    store = Store(f"file://{tmp_path}/s")
    small_task(store, "t")
    v = validate_task(store, "t", DIGITS_SPEC)
    assert v.ok and v.digest == manifest_digest(store, "t")
    short = validate_task(store, "t", DIGITS_SPEC, max_tokens=4)
    assert not short.ok and "more than the 4 allowed per row (max_tokens)" in short.reason
    assert short.file == "train/part-00000.parquet"


def test_rows_longer_than_the_lineage_models_context_are_quarantined(file_harness, tmp_path):
    """The lineage's own model says how many tokens a row may have (its max_position_embeddings)."""
    import json

    from cl_platform.scheduler.config import LineageSettings
    from cl_platform.scheduler.validate import lineage_context
    from cl_platform.suites.digits.vocab import DIGITS_SPEC
    from tests.support.sched_helpers import small_task, state_json

    store = file_harness.store
    store.write_json("models/short/config.json", {"max_position_embeddings": 4})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(DIGITS_SPEC.to_dict()))
    settings = LineageSettings(suite="tasks", model="models/short", spec=str(spec))
    assert lineage_context(store, settings) == 4 and lineage_context(store, LineageSettings()) is None
    small_task(store, "five-tokens")  # train rows of 5 tokens
    assert file_harness.scheduler(settings=settings).run() == 0
    assert "five-tokens" in state_json(store)["quarantined"]
