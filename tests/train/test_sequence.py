"""Continual-learning sequences on Ray: validation before the fit, and quick runs end to end."""

import os
import subprocess
import sys

import pytest

from cl_platform.store import Store

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
