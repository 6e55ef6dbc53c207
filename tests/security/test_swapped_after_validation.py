"""Train exactly what was validated: files swapped after validation are never trained.

Attacks of the hardening issue, from outside: a task passes validation, then its writer swaps a
data file (and fixes the manifest to match) while the round runs, or swaps the manifest for one
that points outside the store. The round job receives the validated manifest digest and proves the
files before it reads them; the scheduler quarantines the task instead of retrying it, and the task
that landed after it is learned.
"""

from __future__ import annotations

import hashlib
import threading
import time

import pyarrow as pa
import pytest

from cl_platform.cli.sequence import main as sequence_main
from cl_platform.data.task_format import manifest_digest
from cl_platform.store import Store
from tests.support.sched_helpers import Harness, _parquet_bytes, replace_part, small_task, state_json, train_part


def _swap_train_part(store: Store, name: str) -> None:
    """Replace the train file with other (valid) rows and fix the manifest's sha256 to match."""
    t = pa.table({"tokens": pa.array([[1, 33, 3, 34, 2]] * 4, pa.list_(pa.int32())),
                  "answer_start": pa.array([3] * 4, pa.int32())})
    data = _parquet_bytes(t)
    rel = train_part(store, name)
    replace_part(store, name, rel, data, fix_sha=True)
    m = store.read_json(f"tasks/{name}/manifest.json")
    if "bytes" in m["files"][rel]:
        m["files"][rel]["bytes"] = len(data)
        store.write_json(f"tasks/{name}/manifest.json", m)


def _wait_for(predicate, timeout: float = 30.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_a_task_swapped_while_its_round_runs_is_quarantined_not_trained(store_url, tmp_path):
    store = Store(store_url)
    harness = Harness(store, tmp_path)
    small_task(store, "a")
    sched = harness.scheduler(env={"FAKE_SLEEP": "2.5"})
    thread = threading.Thread(target=sched.run, daemon=True)
    thread.start()

    def submitted() -> bool:
        try:
            inf = state_json(store)["in_flight"]
        except FileNotFoundError:
            return False
        return bool(inf and inf.get("submitted_at"))

    _wait_for(submitted)
    run = state_json(store)["in_flight"]["run"]
    _swap_train_part(store, "a")
    small_task(store, "b", token=40)  # lands after the attack
    thread.join(timeout=90)
    assert not thread.is_alive()

    state = state_json(store)
    assert "changed after it was validated" in state["quarantined"]["a"]["reason"]
    assert state["retries"] == {} and state["in_flight"] is None
    assert harness.trained(run) == []  # the job refused the swapped files before training
    assert [t["task"] for t in state["learned"]] == ["b"]


def test_the_round_job_refuses_a_swapped_manifest_before_reading(tmp_path, capsys):
    url = f"file://{tmp_path}/store"
    store = Store(url)
    (tmp_path / "outside.parquet").write_bytes(_parquet_bytes(pa.table({"tokens": [[1]], "answer_start": [1]})))
    small_task(store, "t")
    digest = manifest_digest(store, "t")
    m = store.read_json("tasks/t/manifest.json")
    rel = train_part(store, "t")
    outside = "train/../../../outside.parquet"
    m["files"][outside] = {**m["files"].pop(rel), "sha256": hashlib.sha256(b"x").hexdigest()}
    store.write_json("tasks/t/manifest.json", m)

    code = sequence_main(["--store", url, "--suite", "tasks", "--model", "models/none", "--tasks", "t",
                          "--task-digest", f"t={digest}", "--run", "r1"])
    err = capsys.readouterr().err
    assert code == 2 and "manifest.json" in err and "changed since validation" in err
    assert not store.exists("runs/r1")

    # without a digest the reader still refuses the path that leaves the task
    from cl_platform.data.pipeline import _split_paths

    with pytest.raises(ValueError, match=r"\.\."):
        _split_paths(store, "t", "task", "train")


def test_a_bad_digest_argument_is_refused(capsys):
    with pytest.raises(SystemExit):
        sequence_main(["--tasks", "t", "--task-digest", "t=abc"])
    assert "TASK=<sha256: 64 lower-case hex characters>" in capsys.readouterr().err
