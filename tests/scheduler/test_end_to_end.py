"""End to end with real rounds (``jobs/sequence.py --quick --steps 2`` on an embedded Ray): a task
landing in moto S3 while two schedulers run is learned exactly once and shows in ``status`` with
its metrics and its lineage report; three tasks landing together are learned in landing order, the
scheduler killed during the first round and restarted finishes that round exactly once, and the
lineage's accuracy matrix and generation curve equal those of one sequence run over the same order.

Each round costs one to two minutes on a 2-core machine: these tests run four rounds in all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from tests.support.sched_helpers import REPO, SchedulerProcess, copy_digits_task

from cl_platform.store import Store
from cl_platform.train.ledger import Ledger, RunNotFoundError

pytestmark = pytest.mark.slow


def _learned(store: Store, lineage: str) -> list[dict]:
    try:
        return json.loads(store.read_bytes(f"lineages/{lineage}/state.json"))["learned"]
    except FileNotFoundError:
        return []


def _status(store_url: str, lineage: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(REPO, "jobs", "scheduler.py"), "status", "--store", store_url,
                           "--lineage", lineage, *extra], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_s3_task_landing_while_two_schedulers_run_is_learned_once(digits_base, s3_url, tmp_path, ray_tmp):
    store = Store(s3_url)
    for d in ("models", "streams", "suites"):
        store.put_dir(os.path.join(digits_base, d), d)
    args = ["--store", s3_url, "--lineage", "prod", "--quick", "--steps", "2", "--poll-seconds", "1",
            "--lease-ttl", "8", "--log-dir", str(tmp_path / "logs")]
    a = SchedulerProcess(args, ray_tmp, str(tmp_path / "a.out"))
    b = SchedulerProcess(args, ray_tmp, str(tmp_path / "b.out"))
    try:
        both = lambda name: a.events(name) + b.events(name)  # noqa: E731
        a.wait_for(lambda: both("lease_acquired") and both("lease_waiting"), 120, "one holder and one waiter")
        time.sleep(2)  # the holder has scanned an empty tasks/ at least once: the task lands while it runs
        copy_digits_task(store, "parity", "fresh", src_store=Store(os.path.join(digits_base, "source")), rows=64)
        a.wait_for(lambda: _learned(store, "prod"), 600, "the task to be learned")
        time.sleep(4)  # a few more polls: nothing is trained twice
        assert [e["task"] for e in both("submitted")] == ["fresh"]
        assert [e["task"] for e in both("finished")] == ["fresh"]
        submitted = both("submitted")[0]
        assert submitted["latency_s"] <= 1 + 5 + 2  # poll interval + 5 s (+ S3's 1 s mtime resolution)
        # the holder stops cleanly; the waiter takes over and has nothing to do
        holder, waiter = (a, b) if a.events("lease_acquired") else (b, a)
        holder.proc.send_signal(signal.SIGTERM)
        assert holder.wait(60) == 0
        waiter.wait_for(lambda: waiter.events("lease_acquired"), 60, "the takeover")
        time.sleep(3)
        waiter.proc.send_signal(signal.SIGTERM)
        assert waiter.wait(60) == 0
        assert [e["task"] for e in both("submitted")] == ["fresh"]
    finally:
        a.close()
        b.close()
    learned = _learned(store, "prod")
    assert [t["task"] for t in learned] == ["fresh"] and learned[0]["run"] == "prod-1-fresh"
    rec = Ledger.open(store, "prod-1-fresh").record("mode", 0)
    assert rec.status == "done" and rec.attempt == 1
    doc = json.loads(_status(s3_url, "prod", "--json").stdout)
    m = doc["state"]["learned"][0]["metrics"]
    assert {"accuracy", "generation_score", "avg_accuracy", "generation_drop"} <= set(m)
    assert doc["current_model"]["checkpoint"].startswith(s3_url)
    table = _status(s3_url, "prod").stdout
    assert "prod-1-fresh" in table and "avg_acc" in table
    progress = doc["progress"]  # one round: a 1x1 matrix, the base's and the round's generation scores
    assert progress["accuracy_matrix"] == [[m["accuracy"]]]
    assert progress["generation_curve"] == [m["base_generation_score"], m["generation_score"]]
    assert store.read_bytes("lineages/prod/report/report.md").decode().startswith("# Lineage report: prod")
    assert store.exists("lineages/prod/report/accuracy_matrix.png")


def _round_running(store: Store, run: str) -> bool:
    try:
        rec = Ledger.open(store, run).record("mode", 0)
    except RunNotFoundError:
        return False
    return rec is not None and rec.status == "running"


def test_three_tasks_in_landing_order_with_a_scheduler_killed_mid_round(digits_base, tmp_path, ray_tmp):
    root = tmp_path / "store"
    shutil.copytree(digits_base, root)
    store, src = Store(str(root)), Store(str(root / "source"))
    landing = [("t-b", "parity"), ("t-a", "name"), ("t-c", "compare")]  # name order differs from landing order
    for name, source in landing:
        copy_digits_task(store, source, name, src_store=src, rows=64)
        time.sleep(0.05)
    # the likelihood probe: a generation score that two runs share only if their adapters are the same
    args = ["--store", str(root), "--lineage", "lin", "--once", "--quick", "--steps", "2", "--poll-seconds", "1",
            "--lease-ttl", "6", "--log-dir", str(tmp_path / "logs"), "--probe-stream", "probe"]
    first = SchedulerProcess(args, ray_tmp, str(tmp_path / "first.out"))
    try:
        first.wait_for(lambda: _round_running(store, "lin-1-t-b"), 600, "the first round to start training")
        first.proc.kill()  # SIGKILL: no clean-up; its round's job (own session) goes on
        first.proc.wait(30)
    finally:
        first.close()
    second = SchedulerProcess(args, ray_tmp, str(tmp_path / "second.out"))
    try:
        assert second.wait(1200) == 0, second.output()[-4000:]
    finally:
        second.close()
    assert [e["task"] for e in first.events("submitted")] == ["t-b"]
    # the killed scheduler's round is followed to its end by the second (re-attached while it runs, or
    # read from the ledger when it ended before the second looked: on a loaded machine it may)
    assert [e["task"] for e in second.events("reattached")] in (["t-b"], [])
    assert [e["task"] for e in second.events("finished")] == ["t-b", "t-a", "t-c"]
    assert [e["task"] for e in second.events("submitted")] == ["t-a", "t-c"]
    learned = _learned(store, "lin")
    assert [t["task"] for t in learned] == ["t-b", "t-a", "t-c"]
    assert [t["from_run"] for t in learned] == [None, "lin-1-t-b", "lin-2-t-a"]
    for t in learned:
        rec = Ledger.open(store, t["run"]).record("mode", 0)
        assert rec.status == "done" and rec.attempt == 1 and not rec.previous_attempts  # trained exactly once
        assert t["checkpoint"] == rec.checkpoint
    assert Ledger.open(store, "lin-3-t-c").lineage() == ["lin-1-t-b", "lin-2-t-a", "lin-3-t-c"]
    # what the lineage knows after three rounds equals what one sequence run over the same order reports
    progress = json.loads(_status(str(root), "lin", "--json").stdout)["progress"]
    assert progress["tasks"] == ["t-b", "t-a", "t-c"]
    assert [len(row) for row in progress["accuracy_matrix"]] == [1, 2, 3]
    assert os.path.exists(root / "lineages" / "lin" / "report" / "report.md")
    assert os.path.exists(root / "lineages" / "lin" / "report" / "generation_curve.png")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", TMPDIR=ray_tmp)
    seq = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "sequence.py"), "--store", str(root), "--suite",
                          "digits", "--tasks", "t-b,t-a,t-c", "--method", "mode", "--run", "seq", "--quick", "--steps", "2",
                          "--probe-stream", "probe"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert seq.returncode == 0, seq.stderr[-4000:]
    reference = store.read_json("runs/seq/results.json")["methods"]["mode"]
    assert progress["accuracy_matrix"] == [row[: i + 1] for i, row in enumerate(reference["accuracy_matrix"])]
    assert progress["generation_curve"] == reference["generation_scores"] and min(progress["generation_curve"]) > 0
    # the rounds trained on the same batches, KD batches and dropout: the same losses, to the last bit
    seq_ledger = Ledger.open(store, "seq")
    for r, t in enumerate(learned):
        ours, theirs = Ledger.open(store, t["run"]).record("mode", 0).metrics, seq_ledger.record("mode", r).metrics
        assert (ours["loss"], ours["kd_loss"]) == (theirs["loss"], theirs["kd_loss"])
