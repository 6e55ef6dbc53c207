"""The run ledger: create / open / resume semantics, idempotence, lineage and atomic writes."""

from __future__ import annotations

import json
import math
import os

import pytest

from cl_platform.store import TMP_PREFIX, Store
from cl_platform.train.ledger import (
    ConfigMismatchError,
    Ledger,
    LedgerConflictError,
    LedgerError,
    RunExistsError,
    RunNotFoundError,
    config_hash,
    validate_run_name,
)

TASKS = ["count", "parity", "add"]
CONFIG = {"method": {"lr": 0.001, "rank": 4}, "seed": 0, "steps": 10}


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(str(tmp_path))


def _ckpt(store: Store, run: str, method: str, rnd: int) -> str:
    return store.uri(f"runs/{run}/{method}/round-{rnd}")


def test_config_hash_is_stable_and_key_order_free():
    a = {"b": [1, 2, {"y": 1, "x": 2}], "a": "é"}
    b = {"a": "é", "b": [1, 2, {"x": 2, "y": 1}]}
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 64 and int(config_hash(a), 16) >= 0
    assert config_hash(a) != config_hash({**a, "a": "e"})
    assert config_hash({"t": (1, 2)}) == config_hash({"t": [1, 2]})
    with pytest.raises(TypeError, match="canonical JSON"):
        config_hash({"x": object()})
    with pytest.raises(TypeError):
        config_hash({"x": math.nan})


@pytest.mark.parametrize("name", ["r1", "my-run_2", "a" * 64, "0"])
def test_valid_run_names(name):
    assert validate_run_name(name) == name


@pytest.mark.parametrize("name", ["", "R1", "-x", "_x", "a/b", "..", "a b", "a" * 65, None, 3])
def test_invalid_run_names_are_rejected_naming_the_input(name, store):
    with pytest.raises(LedgerError, match="invalid run name"):
        validate_run_name(name)
    with pytest.raises(LedgerError, match="invalid run name"):
        Ledger.create(store, name, task_order=TASKS, config=CONFIG)


def test_create_writes_run_level_fields(store):
    ledger = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG, methods=["mode", "seq_lora"])
    doc = json.loads((store.read_bytes("runs/r1/ledger.json")).decode())
    assert doc["run"] == "r1" and doc["task_order"] == TASKS and doc["methods"] == ["mode", "seq_lora"]
    assert doc["config"] == CONFIG and doc["config_hash"] == config_hash(CONFIG)
    assert doc["from_run"] is None and doc["rounds"] == [] and doc["created_at"].endswith("+00:00")
    assert ledger.uri == store.uri("runs/r1/ledger.json")
    assert [ledger.next_round(m) for m in ledger.methods] == [0, 0]
    assert ledger.last_checkpoint("mode") is None and not ledger.is_complete()


def test_create_refuses_an_existing_run_and_bad_inputs(store):
    Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    with pytest.raises(RunExistsError, match="'r1' already has a ledger"):
        Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    with pytest.raises(LedgerError, match="empty"):
        Ledger.create(store, "r2", task_order=[], config=CONFIG)
    with pytest.raises(LedgerError, match="repeats"):
        Ledger.create(store, "r2", task_order=["a", "a"], config=CONFIG)
    with pytest.raises(LedgerError, match="invalid task names"):
        Ledger.create(store, "r2", task_order=["../x"], config=CONFIG)
    with pytest.raises(RunNotFoundError, match="'nope' has no ledger"):
        Ledger.open(store, "nope")
    with pytest.raises(FileNotFoundError):  # RunNotFoundError is a FileNotFoundError too
        Ledger.open(store, "nope")


def test_round_lifecycle_and_reopen(store):
    ledger = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG, methods=["mode"])
    rec = ledger.start_round("mode", 0)
    assert (rec.status, rec.attempt, rec.task, rec.config_hash) == ("running", 1, "count", config_hash(CONFIG))
    assert rec.started_at and rec.ended_at is None
    done = ledger.finish_round("mode", 0, checkpoint=_ckpt(store, "r1", "mode", 0), metrics={"acc": 0.5, "loss": float("nan")})
    assert done.status == "done" and done.ended_at >= done.started_at
    assert done.metrics == {"acc": 0.5, "loss": None}  # non-finite floats are stored as null

    again = Ledger.open(store, "r1", config=CONFIG, task_order=TASKS)
    assert again.done_rounds("mode") == [0] and again.next_round("mode") == 1
    assert again.last_checkpoint("mode") == _ckpt(store, "r1", "mode", 0)
    assert again.interrupted == []
    stored = store.read_json("runs/r1/ledger.json")["rounds"][0]
    assert set(stored) >= {"round", "task", "method", "status", "attempt", "checkpoint", "metrics",
                           "config_hash", "started_at", "ended_at", "error"}


def test_done_round_is_never_rerun_and_rounds_run_in_order(store):
    ledger = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    with pytest.raises(LedgerError, match="before round 0 .* is done; it is never started"):
        ledger.start_round("mode", 1)
    ledger.start_round("mode", 0)
    ledger.finish_round("mode", 0, checkpoint="file:///c0")
    with pytest.raises(LedgerError, match="already done .* never re-run"):
        ledger.start_round("mode", 0)
    with pytest.raises(LedgerError, match="out of range"):
        ledger.start_round("mode", 3)
    with pytest.raises(LedgerError, match="cannot finish round 1 .* never started"):
        ledger.finish_round("mode", 1, checkpoint="file:///c1")


def test_finish_round_is_idempotent(store):
    ledger = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    ledger.start_round("mode", 0)
    first = ledger.finish_round("mode", 0, checkpoint="file:///c0", metrics={"acc": 1})
    revision = ledger.revision
    same = ledger.finish_round("mode", 0, checkpoint="file:///c0", metrics={"acc": 2})
    assert same == first and ledger.revision == revision  # no-op: nothing written
    with pytest.raises(LedgerError, match=r"already done with checkpoint file:///c0; refusing .*\(file:///other\)"):
        ledger.finish_round("mode", 0, checkpoint="file:///other")


def test_interrupted_round_is_reported_and_rerun_with_attempt_plus_one(store, caplog):
    ledger = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    ledger.start_round("mode", 0)
    ledger.finish_round("mode", 0, checkpoint="file:///c0")
    ledger.start_round("mode", 1)  # ... and the process dies here

    with caplog.at_level("WARNING", logger="cl_platform.train.ledger"):
        resumed = Ledger.open(store, "r1", config=CONFIG)
    assert [(r.round, r.attempt, r.status) for r in resumed.interrupted] == [(1, 1, "running")]
    assert "round 1 (task 'parity') of method 'mode' was left running" in caplog.text
    assert resumed.next_round("mode") == 1 and resumed.done_rounds("mode") == [0]

    rec = resumed.start_round("mode", 1)
    assert rec.attempt == 2 and rec.status == "running"
    assert [p["status"] for p in rec.previous_attempts] == ["interrupted"]
    resumed.finish_round("mode", 1, checkpoint="file:///c1")
    # exactly one record per round, whatever the attempts
    rounds = store.read_json("runs/r1/ledger.json")["rounds"]
    assert [(r["round"], r["attempt"], r["status"]) for r in rounds] == [(0, 1, "done"), (1, 2, "done")]


def test_failed_round_is_rerun_with_attempt_plus_one(store):
    ledger = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    ledger.start_round("mode", 0)
    failed = ledger.fail_round("mode", 0, RuntimeError("worker died"))
    assert failed.status == "failed" and failed.error == "RuntimeError: worker died" and failed.ended_at
    with pytest.raises(LedgerError, match="it is failed, not running"):
        ledger.finish_round("mode", 0, checkpoint="file:///c0")
    rec = ledger.start_round("mode", 0)
    assert rec.attempt == 2 and rec.error is None
    assert rec.previous_attempts[0]["status"] == "failed" and rec.previous_attempts[0]["error"] == "RuntimeError: worker died"
    ledger.finish_round("mode", 0, checkpoint="file:///c0")
    with pytest.raises(LedgerError, match="done; it cannot be marked failed"):
        ledger.fail_round("mode", 0, "late")


def test_config_mismatch_raises_unless_allowed(store):
    Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    changed = {**CONFIG, "seed": 1, "method": {"lr": 0.01, "rank": 4}}
    with pytest.raises(ConfigMismatchError, match=r"differs at: method\.lr, seed"):
        Ledger.open(store, "r1", config=changed)
    with pytest.raises(LedgerError, match="task order"):
        Ledger.open(store, "r1", config=CONFIG, task_order=["parity", "count", "add"])
    assert Ledger.open(store, "r1").config_hash == config_hash(CONFIG)  # unchanged by the failures

    ledger = Ledger.open(store, "r1", config=changed, allow_config_change=True)
    assert ledger.config_hash == config_hash(changed)
    doc = store.read_json("runs/r1/ledger.json")
    assert doc["config_hash"] == config_hash(changed)
    assert doc["config_history"][0]["config_hash"] == config_hash(CONFIG)
    assert ledger.start_round("mode", 0).config_hash == config_hash(changed)


def test_open_or_create_follows_the_resume_flag(store):
    a = Ledger.open_or_create(store, "r1", task_order=TASKS, config=CONFIG, methods=["mode"])
    a.start_round("mode", 0)
    with pytest.raises(RunExistsError, match="--resume"):
        Ledger.open_or_create(store, "r1", task_order=TASKS, config=CONFIG, methods=["mode"])
    b = Ledger.open_or_create(store, "r1", task_order=TASKS, config=CONFIG, methods=["mode"], resume=True)
    assert b.interrupted[0].round == 0
    with pytest.raises(LedgerError, match="cannot resume with \\['moe_lora'\\]"):
        Ledger.open_or_create(store, "r1", task_order=TASKS, config=CONFIG, methods=["moe_lora"], resume=True)
    # resume with no ledger yet simply starts the run
    c = Ledger.open_or_create(store, "fresh", task_order=TASKS, config=CONFIG, resume=True)
    assert c.revision == 1


def test_methods_fixed_at_create_or_added_on_first_use(store):
    fixed = Ledger.create(store, "fixed", task_order=TASKS, config=CONFIG, methods=["mode"])
    with pytest.raises(LedgerError, match="created for methods \\['mode'\\]"):
        fixed.start_round("seq_lora", 0)
    free = Ledger.create(store, "free", task_order=TASKS, config=CONFIG)
    free.start_round("seq_lora", 0)
    free.start_round("mode", 0)
    assert free.methods == ["seq_lora", "mode"]
    assert [r.method for r in free.rounds] == ["seq_lora", "mode"]


def test_from_run_records_parent_checkpoints_and_lineage(store):
    parent = Ledger.create(store, "base", task_order=["count", "parity"], config=CONFIG, methods=["mode", "seq_lora"])
    with pytest.raises(LedgerError, match="not finished for method 'mode'"):
        Ledger.create(store, "child", task_order=["add"], config=CONFIG, from_run="base")
    for m in parent.methods:
        for i in range(2):
            parent.start_round(m, i)
            parent.finish_round(m, i, checkpoint=_ckpt(store, "base", m, i))

    child = Ledger.create(store, "child", task_order=["add"], config=CONFIG, methods=["mode"], from_run="base")
    assert child.from_run.run == "base"
    assert child.last_checkpoint("mode") == _ckpt(store, "base", "mode", 1)
    assert child.last_checkpoint("mode", include_parent=False) is None
    assert child.lineage() == ["base", "child"]
    assert store.read_json("runs/child/ledger.json")["from_run"]["checkpoints"]["mode"] == _ckpt(store, "base", "mode", 1)
    child.start_round("mode", 0)
    child.finish_round("mode", 0, checkpoint=_ckpt(store, "child", "mode", 0))
    assert child.last_checkpoint("mode") == _ckpt(store, "child", "mode", 0)

    grandchild = Ledger.create(store, "grandchild", task_order=["count"], config=CONFIG, from_run="child")
    assert grandchild.lineage() == ["base", "child", "grandchild"]
    with pytest.raises(LedgerError, match="no checkpoint for method 'seq_lora'"):
        grandchild.start_round("seq_lora", 0)
    with pytest.raises(LedgerError, match="no checkpoint for methods \\['moe_lora'\\]"):
        Ledger.create(store, "other", task_order=["add"], config=CONFIG, methods=["moe_lora"], from_run="base")
    with pytest.raises(LedgerError, match="'missing' has no ledger"):
        Ledger.create(store, "orphan", task_order=["add"], config=CONFIG, from_run="missing")


def test_writes_are_atomic_and_failed_writes_roll_back(store, tmp_path, monkeypatch):
    ledger = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    ledger.start_round("mode", 0)
    before = store.read_bytes("runs/r1/ledger.json")

    def boom(path, data, expected):
        raise OSError("disk full")

    monkeypatch.setattr(store, "write_bytes_if_match", boom)
    with pytest.raises(OSError, match="disk full"):
        ledger.finish_round("mode", 0, checkpoint="file:///c0")
    monkeypatch.undo()
    # neither the stored ledger nor the in-memory one changed; no temp files are left behind
    assert store.read_bytes("runs/r1/ledger.json") == before
    assert ledger.record("mode", 0).status == "running"
    assert not [f for f in os.listdir(tmp_path / "runs" / "r1") if f.startswith(TMP_PREFIX)]
    # a write goes through a temp file + os.replace: observe it
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (replaced.append((src, dst)), real_replace(src, dst)))
    ledger.finish_round("mode", 0, checkpoint="file:///c0")
    assert len(replaced) == 1 and os.path.basename(replaced[0][0]).startswith(TMP_PREFIX)
    assert replaced[0][1].endswith("runs/r1/ledger.json")
    assert Ledger.open(store, "r1").done_rounds("mode") == [0]


def test_concurrent_writer_is_detected(store):
    a = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    b = Ledger.open(store, "r1")
    a.start_round("mode", 0)
    with pytest.raises(LedgerConflictError, match="another process wrote it"):
        b.start_round("mode", 0)
    assert b.refresh().record("mode", 0).status == "running"
    b.finish_round("mode", 0, checkpoint="file:///c0")


def test_corrupt_or_foreign_ledger_is_a_clear_error(store):
    store.write_bytes("runs/r1/ledger.json", b"{not json")
    with pytest.raises(LedgerError, match="is not valid JSON"):
        Ledger.open(store, "r1")
    store.write_json("runs/r2/ledger.json", {"schema_version": 99, "run": "r2"})
    with pytest.raises(LedgerError, match="unsupported schema version 99"):
        Ledger.open(store, "r2")


def test_ledger_pickles_for_ray_workers(store):
    import pickle

    ledger = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    copy = pickle.loads(pickle.dumps(ledger))
    copy.start_round("mode", 0)
    assert Ledger.open(store, "r1").record("mode", 0).status == "running"


def test_metrics_must_be_json(store):
    np = pytest.importorskip("numpy")
    ledger = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    ledger.start_round("mode", 0)
    with pytest.raises(TypeError, match=r"metrics of round 0 \(mode\)\['bad'\]"):
        ledger.finish_round("mode", 0, checkpoint="file:///c0", metrics={"bad": object()})
    rec = ledger.finish_round("mode", 0, checkpoint="file:///c0",
                              metrics={"acc": np.float32(0.25), "row": np.array([1, 2]), "inf": math.inf})
    assert rec.metrics == {"acc": 0.25, "row": [1, 2], "inf": None}


def test_ledger_on_s3(s3_url):
    """The same lifecycle on the moto S3 store (conditional create, atomic PUTs)."""
    s3 = Store(s3_url)
    ledger = Ledger.create(s3, "r1", task_order=TASKS, config=CONFIG)
    with pytest.raises(RunExistsError):
        Ledger.create(s3, "r1", task_order=TASKS, config=CONFIG)
    ledger.start_round("mode", 0)
    ledger.finish_round("mode", 0, checkpoint=s3.uri("runs/r1/mode/round-0"))
    ledger.start_round("mode", 1)
    resumed = Ledger.open(s3, "r1", config=CONFIG)
    assert resumed.done_rounds("mode") == [0] and [r.round for r in resumed.interrupted] == [1]
    assert resumed.start_round("mode", 1).attempt == 2


def test_a_foreign_rewrite_keeping_the_revision_is_still_a_conflict(store):
    """The write names the version it read: a rewrite that keeps the revision number is caught too."""
    a = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    doc = store.read_json("runs/r1/ledger.json")
    doc["config"] = {"tampered": True}
    store.write_json("runs/r1/ledger.json", doc)
    with pytest.raises(LedgerConflictError, match="at revision 1.*nothing was written"):
        a.start_round("mode", 0)
    assert store.read_json("runs/r1/ledger.json") == doc and a.record("mode", 0) is None


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_two_writers_of_one_version_one_wins(backend, tmp_path, request):
    import threading

    s = Store(str(tmp_path)) if backend == "file" else Store(request.getfixturevalue("s3_url"))
    Ledger.create(s, "r1", task_order=TASKS, config=CONFIG)
    writers = [Ledger.open(s, "r1"), Ledger.open(s, "r1")]
    barrier = threading.Barrier(2)
    outcome: list[str] = []

    def start(ledger: Ledger) -> None:
        barrier.wait()
        try:
            ledger.start_round("mode", 0)
            outcome.append("won")
        except LedgerConflictError:
            outcome.append("lost")

    threads = [threading.Thread(target=start, args=(w,)) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcome) == ["lost", "won"]
    stored = Ledger.open(s, "r1")
    assert stored.revision == 2 and stored.record("mode", 0).attempt == 1  # one start, not two


def test_a_running_round_beats_until_it_ends(store, monkeypatch):
    import pickle
    import socket
    import time

    from cl_platform.train import ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "HEARTBEAT_SECONDS", 0.05)
    ledger = Ledger.create(store, "r1", task_order=TASKS, config=CONFIG)
    assert ledger_mod.read_heartbeat(store, "r1") is None and ledger_mod.heartbeat_age(store, "r1") is None
    ledger.start_round("mode", 0)
    first = ledger_mod.read_heartbeat(store, "r1")
    assert first["round"] == 0 and first["attempt"] == 1 and first["method"] == "mode"
    assert first["host"] == socket.gethostname() and first["pid"] == os.getpid()
    time.sleep(0.3)
    assert ledger_mod.read_heartbeat(store, "r1")["at"] > first["at"]  # it beats
    revision = Ledger.open(store, "r1").revision
    assert revision == 2  # ... without writing the ledger
    assert pickle.loads(pickle.dumps(ledger))._heartbeat is None  # a copy for a worker does not beat
    ledger.finish_round("mode", 0, checkpoint="file:///c0")
    last = ledger_mod.read_heartbeat(store, "r1")["at"]
    time.sleep(0.3)
    assert ledger_mod.read_heartbeat(store, "r1")["at"] == last  # it stopped with the round
    assert 0.25 < ledger_mod.heartbeat_age(store, "r1") < ledger_mod.HEARTBEAT_STALE_SECONDS
