"""Sweeps end to end on the digits store: a tiny sweep's result files, and resume of an interrupted one.

Every call passes ``--tune-dir`` under the test's tmp_path: Tune's state lives on the machine that
runs the sweep (by default under ~/.cache), never in the store.
"""

import csv
import io
import json
import os
import subprocess
import sys

import pickle

import pytest
import yaml

from cl_platform.store import Store
from cl_platform.sweeps.runner import tune_experiment_dir
from cl_platform.train.ledger import Ledger
from tests.security.payload import Payload

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWEEP = os.path.join(ROOT, "sweeps", "sweep.py")


def tiny_sweep(tmp_path, name, num_samples, **search):
    """A sweep file with one task and two optimiser steps per trial (about 40 s a trial on 2 cores)."""
    doc = {
        "name": name, "suite": "digits", "method": "mode", "tasks": ["parity"],
        "space": {"kd_weight": {"type": "loguniform", "low": 0.03, "high": 3.0},
                  "r_text": {"type": "choice", "values": [4, 8]}},
        "probe_size": 1, "fixed": {"steps_per_task": 2, "log_every": 2},
        "search": {"num_samples": num_samples, "n_startup_trials": num_samples,
                   "objectives": {"avg_accuracy": "max", "generation_drop": "min"}, **search},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.99},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def run_sweep(*args, tune_dir, timeout=600):
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, SWEEP, *args, "--tune-dir", str(tune_dir)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


def trials(store, name):
    return store.read_json(f"sweeps/{name}/trials.json")["trials"]


def test_bad_sweep_file_is_a_clear_error(tmp_path, fresh_digits_store):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nspace:\n  r_text: {type: choice, values: [0, 8]}\n")
    proc = run_sweep("--config", str(path), "--store", fresh_digits_store, tune_dir=tmp_path / "tune", timeout=120)
    assert proc.returncode == 2
    assert f"{path}: space.r_text.values: r_text must be >= 1, got 0" in proc.stderr
    assert not Store(fresh_digits_store).exists("sweeps/bad")


def test_too_many_concurrent_trials_is_an_immediate_clear_error(tmp_path, fresh_digits_store):
    cfg = tiny_sweep(tmp_path, "toomany", 2, max_concurrent_trials=16)
    proc = run_sweep("--config", cfg, "--store", fresh_digits_store, tune_dir=tmp_path / "tune", timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "search.max_concurrent_trials 16" in proc.stderr and "CPU" in proc.stderr
    assert not Store(fresh_digits_store).exists("sweeps/toomany")
    assert not (tmp_path / "tune").exists()


@pytest.mark.slow
def test_sweep_stopped_and_resumed_runs_only_unfinished_trials_and_writes_every_output(tmp_path, fresh_digits_store):
    cfg = tiny_sweep(tmp_path, "tiny", 2)
    tune_dir = tmp_path / "tune"
    first = run_sweep("--config", cfg, "--store", fresh_digits_store, "--stop-after", "1", tune_dir=tune_dir)
    assert first.returncode == 130, first.stdout[-3000:] + first.stderr[-5000:]
    assert "[sweep] trial 1/2" in first.stdout and "round 1/1" in first.stdout
    store = Store(fresh_digits_store)
    before = {r["trial_id"]: r for r in trials(store, "tiny")}
    done_first = [t for t, r in before.items() if r["state"] == "completed"]
    assert len(done_first) == 1
    assert len(before) < 2 or any(r["state"] == "unfinished" for r in before.values())
    ledger_before = {t: store.read_bytes(f"runs/{before[t]['runs'][0]}/ledger.json") for t in done_first}
    # a second start of the same sweep without --resume is refused
    again = run_sweep("--config", cfg, "--store", fresh_digits_store, tune_dir=tune_dir, timeout=180)
    assert again.returncode == 2 and "pass --resume" in again.stderr
    # Tune's state is in the local directory only; a resume from another --tune-dir (another machine) is refused
    experiment = tune_experiment_dir(store.url, "tiny", str(tune_dir))
    assert os.path.isfile(os.path.join(experiment, "tuner.pkl")) and not store.exists("sweeps/tiny/tune")
    assert store.read_json("sweeps/tiny/sweep.json")["tune"]["dir"] == experiment
    elsewhere = run_sweep("--config", cfg, "--store", fresh_digits_store, "--resume", tune_dir=tmp_path / "other",
                          timeout=180)
    assert elsewhere.returncode == 2 and f"it was written to {experiment!r}" in elsewhere.stderr
    # a tuner.pkl planted where older versions kept Tune's state is never read by the resume
    marker = tmp_path / "tune-ran"
    store.write_bytes("sweeps/tiny/tune/tuner.pkl", pickle.dumps(Payload(marker)))

    second = run_sweep("--config", cfg, "--store", fresh_digits_store, "--resume", tune_dir=tune_dir)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    assert f"resuming from {experiment}" in second.stdout and "Pareto set" in second.stdout
    assert "ignoring " + store.uri("sweeps/tiny/tune") in second.stdout and not marker.exists()
    rows = trials(store, "tiny")
    after = {r["trial_id"]: r for r in rows}
    assert len(after) == 2 and all(r["state"] == "completed" for r in after.values())
    assert set(before) <= set(after)  # restored trials keep their ids
    for t in done_first:  # the finished trial was not run again: not started, its run untouched
        assert f"{t} started" not in second.stdout
        assert store.read_bytes(f"runs/{before[t]['runs'][0]}/ledger.json") == ledger_before[t]
    assert rows[0]["is_default"] and rows[0]["params"] == {"kd_weight": 0.3, "r_text": 8}
    for r in rows:
        assert r["rounds_done"] == 1 and len(r["per_round"]) == 1 and r["final"]["avg_accuracy"] is not None
        # each trial's sequence is a normal run with its ledger (every round once), results and report
        run = r["runs"][0]
        assert run == f"tiny-{r['trial_id']}"
        assert [(x.round, x.status) for x in Ledger.open(store, run).rounds] == [(0, "done")]
        assert store.exists(f"runs/{run}/results.json") and store.exists(f"runs/{run}/report/report.md")
    table = list(csv.DictReader(io.StringIO(store.read_bytes("sweeps/tiny/trials.csv").decode())))
    assert [t["trial_id"] for t in table] == [r["trial_id"] for r in rows] and "kd_weight" in table[0]
    pareto = store.read_json("sweeps/tiny/pareto.json")
    assert pareto["front"] and pareto["default"]["trial_id"] == rows[0]["trial_id"]
    best = store.read_json("sweeps/tiny/best.json")
    assert best["kind"] == "pareto_set" and best["best"]
    assert store.read_bytes("sweeps/tiny/pareto.png")[:8] == b"\x89PNG\r\n\x1a\n"
    summary = store.read_bytes("sweeps/tiny/summary.md").decode()
    assert "Sweep `tiny`" in summary and f"tensorboard --logdir {experiment}" in summary
    # the teacher cache was computed once for the whole sweep; TensorBoard event files per trial, locally
    assert len(store.glob("cache/teacher/*/index.json")) == 1
    events = [os.path.join(d, f) for d, _, files in os.walk(experiment) for f in files if "events.out.tfevents" in f]
    assert len(events) >= 2
    assert store.walk("sweeps/tiny/tune") == ["sweeps/tiny/tune/tuner.pkl"]  # only the planted file


@pytest.mark.slow
def test_sweep_under_ray_job_submit(tmp_path, fresh_digits_store, local_infra):
    """The sweep as a Ray job against a local head (infra/local/ray-up.sh on free ports); its trials
    are visible through the dashboard's job API (status and logs on 127.0.0.1)."""
    import tempfile
    import time
    import urllib.request
    from pathlib import Path

    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "ray")):
        pytest.skip("no Ray CLI in .venv")
    from ray.job_submission import JobStatus, JobSubmissionClient

    local_dir = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))  # short: Ray's socket paths live under it
    dash_port, head_port = local_infra.free_port(), local_infra.free_port()
    env = local_infra.ray_env(local_dir, RAY_DASHBOARD_PORT=str(dash_port), RAY_HEAD_PORT=str(head_port), RAY_NUM_CPUS="2")
    local = os.path.join(ROOT, "infra", "local")
    cfg = tiny_sweep(tmp_path, "jobsweep", 1)
    state = None
    try:
        up = subprocess.run([os.path.join(local, "ray-up.sh")], env=env, capture_output=True, text=True, timeout=240)
        assert up.returncode == 0, f"ray-up failed:\n{up.stdout}\n{up.stderr}"
        state = json.loads((local_dir / "head.json").read_text())
        url = f"http://127.0.0.1:{dash_port}"
        client = JobSubmissionClient(url)
        job = client.submit_job(
            entrypoint=f"python sweeps/sweep.py --config {cfg} --store {fresh_digits_store} --tune-dir {tmp_path / 'tune'}",
            runtime_env={"working_dir": ROOT, "excludes": [".ray_local", ".cl_store", ".git", ".venv"],
                         "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}},
        )
        deadline = time.monotonic() + 540
        status = client.get_job_status(job)
        while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
            time.sleep(2)
            status = client.get_job_status(job)
        logs = client.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, logs[-5000:]
        # the job API (plain HTTP on 127.0.0.1) shows the job and, in its logs, every trial
        with urllib.request.urlopen(f"{url}/api/jobs/{job}") as resp:
            info = json.loads(resp.read())
        assert info["status"] == "SUCCEEDED" and "sweeps/sweep.py" in info["entrypoint"]
        with urllib.request.urlopen(f"{url}/api/jobs/{job}/logs") as resp:
            http_logs = json.loads(resp.read())["logs"]
        rows = trials(Store(fresh_digits_store), "jobsweep")
        assert len(rows) == 1 and all(r["state"] == "completed" for r in rows)
        for r in rows:
            assert f"{r['trial_id']} started" in http_logs and f"{r['trial_id']} finished" in http_logs
        assert "[sweep] done" in http_logs
    finally:
        local_infra.ray_down(env, local_dir, state)  # never leave a head behind
