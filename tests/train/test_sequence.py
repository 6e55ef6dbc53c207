"""Continual-learning sequences on Ray: validation before the fit, and quick runs end to end."""

import json
import os
import subprocess
import sys

import pytest

from cl_platform.store import Store
from cl_platform.train.ledger import Ledger

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOB = os.path.join(ROOT, "jobs", "sequence.py")


def run_job(*args, env=None, timeout=600):
    e = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", **(env or {})}
    return subprocess.run([sys.executable, JOB, *args], capture_output=True, text=True, cwd=ROOT, env=e, timeout=timeout)


def test_too_many_workers_is_an_immediate_clear_error(fresh_digits_store):
    proc = run_job("--store", fresh_digits_store, "--quick", "--workers", "64", "--run", "toomany", timeout=180)
    assert proc.returncode != 0
    assert "asked for 64 workers" in proc.stderr and "CPU" in proc.stderr
    assert not Store(fresh_digits_store).exists("runs/toomany/ray")


def test_corrupt_task_is_rejected_naming_it(fresh_digits_store):
    store = Store(fresh_digits_store)
    path = [p for p in store.walk("tasks/compare/train") if p.endswith(".parquet")][0]
    data = bytearray(store.read_bytes(path))
    data[len(data) // 2] ^= 0xFF
    store.write_bytes(path, bytes(data))
    proc = run_job("--store", fresh_digits_store, "--quick", "--run", "corrupt", timeout=180)
    assert proc.returncode != 0
    assert "task 'compare'" in proc.stderr and "sha256" in proc.stderr
    assert not store.exists("runs/corrupt")


def _check_run(store: Store, run: str, methods, tasks):
    results = json.loads(store.read_bytes(f"runs/{run}/results.json"))
    assert results["task_order"] == tasks
    for m in methods:
        entry = results["methods"][m]
        assert len(entry["accuracy_matrix"]) == len(tasks) and len(entry["generation_scores"]) == len(tasks) + 1
        assert set(entry["metrics"]) == {"avg_accuracy", "avg_forgetting", "bwt", "fwt", "generation_drop"}
    ledger = Ledger.open(store, run)
    for m in methods:
        recs = [r for r in ledger.rounds if r.method == m]
        assert sorted(r.round for r in recs) == list(range(len(tasks)))  # every round exactly once
        assert all(r.status == "done" for r in recs)
        for r in recs:
            assert store.exists(f"runs/{run}/{m}/round-{r.round:02d}/_COMPLETE")
    report = store.read_bytes(f"runs/{run}/report/report.md").decode()
    for m in methods:
        assert m in report
    pngs = [p for p in store.walk(f"runs/{run}/report") if p.endswith(".png")]
    assert len(pngs) >= 2 + len(methods)
    for p in pngs:
        assert store.read_bytes(p)[:8] == b"\x89PNG\r\n\x1a\n"
    return results


@pytest.mark.slow
def test_quick_sequence_two_workers_two_methods(fresh_digits_store):
    tasks = ["parity", "name"]
    proc = run_job("--store", fresh_digits_store, "--quick", "--tasks", ",".join(tasks), "--suite", "digits",
                   "--methods", "mode,seq_lora", "--workers", "2", "--cpus-per-worker", "0.5", "--run", "q2w")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "avg accuracy" in proc.stdout and "generation drop" in proc.stdout
    _check_run(Store(fresh_digits_store), "q2w", ["mode", "seq_lora"], tasks)
    # the teacher cache was written once and is reused by a second run on the same base
    store = Store(fresh_digits_store)
    caches = store.walk("cache/teacher")
    assert len(caches) == 1
    proc = run_job("--store", fresh_digits_store, "--quick", "--tasks", "pair", "--suite", "digits",
                   "--method", "mode", "--run", "again")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "teacher cache: reusing" in proc.stdout
    assert store.walk("cache/teacher") == caches
