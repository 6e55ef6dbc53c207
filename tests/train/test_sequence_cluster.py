"""A quick sequence end to end with the store on S3 (moto), and submitted with ``ray job submit``
to a local head started by the test (``infra/local/ray-up.sh`` on free ports, its own state dir,
stopped by ``ray-down.sh``; never ``ray stop``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cl_platform.store import Store
from cl_platform.train.ledger import Ledger

ROOT = Path(__file__).resolve().parents[2]
JOB = ROOT / "jobs" / "sequence.py"
LOCAL = ROOT / "infra" / "local"
VENV_BIN = ROOT / ".venv" / "bin"
TASKS = ["parity", "name"]
METRICS = {"avg_accuracy", "avg_forgetting", "bwt", "fwt", "generation_drop"}
RANKING_METRICS = {"ranking_avg_accuracy", "ranking_forgetting", "ranking_bwt"}


def _check_results(store: Store, run: str, method: str, tasks: list[str]) -> None:
    results = store.read_json(f"runs/{run}/results.json")
    assert results["task_order"] == tasks
    entry = results["methods"][method]
    assert len(entry["accuracy_matrix"]) == len(tasks) and all(len(r) == len(tasks) for r in entry["accuracy_matrix"])
    assert len(entry["generation_scores"]) == len(tasks) + 1
    assert set(entry["metrics"]) == METRICS | RANKING_METRICS
    # every digits task has a closed answer set (2-10 words): a full ranking matrix of fractions
    ranking = entry["ranking_matrix"]
    assert len(ranking) == len(tasks) and all(len(r) == len(tasks) for r in ranking)
    assert all(v is not None and 0.0 <= v <= 1.0 for r in ranking for v in r)
    assert len(entry["base_ranking_accuracy"]) == len(tasks)
    # ranking only among the allowed answers is rarely worse than emitting the answer exactly
    mean = lambda m: sum(map(sum, m)) / len(tasks) ** 2  # noqa: E731
    assert mean(ranking) >= mean(entry["accuracy_matrix"]) - 0.05, (ranking, entry["accuracy_matrix"])
    ledger = Ledger.open(store, run)
    recs = [r for r in ledger.rounds if r.method == method]
    assert [r.round for r in recs] == list(range(len(tasks)))  # every round exactly once
    assert all(r.status == "done" and r.attempt == 1 for r in recs)
    for r in recs:
        assert r.checkpoint == store.uri(f"runs/{run}/{method}/round-{r.round:02d}")
        assert store.exists(f"runs/{run}/{method}/round-{r.round:02d}/_COMPLETE")
        assert store.exists(f"runs/{run}/{method}/round-{r.round:02d}/adapter_model.safetensors")
    assert store.read_bytes(f"runs/{run}/report/report.md").decode().count(method) >= 1


#: Ray's routine lines, printed only with --verbose.
ROUTINE_RAY_LINES = ("Reporting training result", "Checkpoint successfully created", "Starting execution of Dataset",
                     "Execution plan of Dataset")


@pytest.mark.slow
def test_quick_sequence_two_workers_two_methods_with_the_store_on_s3(fresh_digits_store, s3_url, moto_s3):
    """A --quick sequence of two methods on the embedded Ray with 2 workers (DDP), the whole run
    reading and writing the store on (moto) S3: tasks and streams through Ray Data's pyarrow S3
    filesystem, the teacher cache, Ray Train checkpoints, adapters, ledger, results and report."""
    store = Store(s3_url)
    for name in ("tasks", "streams", "suites", "models"):
        store.put_dir(os.path.join(fresh_digits_store, name), name)
    run, methods = "s3run", ["mode", "seq_lora"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", **moto_s3.env()}
    env.pop("RAY_ADDRESS", None)
    short_tmp = tempfile.mkdtemp(prefix="cls-", dir="/tmp")  # Ray's socket paths live under TMPDIR (107 bytes)
    env["TMPDIR"] = short_tmp
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(JOB), "--store", s3_url, "--quick", "--tasks", ",".join(TASKS), "--suite", "digits",
             "--methods", ",".join(methods), "--workers", "2", "--cpus-per-worker", "0.5",
             "--run", run],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(short_tmp, ignore_errors=True)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    assert "avg accuracy" in proc.stdout and "generation drop" in proc.stdout
    assert f"results: {s3_url}/runs/{run}/results.json" in proc.stdout
    # a quiet terminal: the platform's lines, none of Ray's routine ones (no --verbose)
    out = proc.stdout + proc.stderr
    routine = [line for line in out.splitlines() if any(w in line for w in ROUTINE_RAY_LINES)]
    assert routine == [], routine[:5]
    assert "teacher: " in proc.stdout and "step " in proc.stdout
    for method in methods:
        _check_results(store, run, method, TASKS)
    # the gradient-conflict diagnostic of every round (rank 0 of the two workers), grouped by method
    rounds = store.read_json(f"runs/{run}/results.json")["methods"]
    assert [sorted(r["gradient_conflict"]["groups"]) for m in methods for r in rounds[m]["rounds"]] == (
        [["router", "text_experts", "visual_lora"]] * len(TASKS) + [["lora"]] * len(TASKS))
    assert len(store.glob("cache/teacher/*/index.json")) == 1  # computed once, in the bucket
    # the base model came from the bucket, and nothing went to a local store
    assert store.read_json(f"runs/{run}/results.json")["config"]["model_uri"].startswith(f"{s3_url}/models/")
    assert not (ROOT / ".cl_store" / "runs" / run).exists()
    # Ray Train's own checkpoints and state went to the bucket too
    ray_files = store.walk(f"runs/{run}/ray")
    assert any(p.endswith("checkpoint_manager_snapshot.json") for p in ray_files), ray_files
    assert any("/checkpoint_" in p and p.endswith("state.pt") for p in ray_files), ray_files
    pngs = [p for p in store.walk(f"runs/{run}/report") if p.endswith(".png")]
    assert pngs and all(store.read_bytes(p)[:4] == b"\x89PNG" for p in pngs)
    print(f"S3 quick sequence: {elapsed:.1f}s")


@pytest.mark.slow
def test_ray_job_submit_quick_sequence_against_a_local_head(fresh_digits_store, local_infra):
    if not (VENV_BIN / "ray").exists():
        pytest.skip("no Ray CLI in .venv")
    from ray.job_submission import JobStatus, JobSubmissionClient

    local_dir = Path(tempfile.mkdtemp(prefix="rj-", dir="/tmp"))  # short: Ray's unix sockets live under it
    dash_port, head_port = local_infra.free_port(), local_infra.free_port()
    env = local_infra.ray_env(local_dir, RAY_DASHBOARD_PORT=str(dash_port), RAY_HEAD_PORT=str(head_port))
    state, down = None, None
    run = "submitted"
    try:
        t0 = time.monotonic()
        up = subprocess.run([str(LOCAL / "ray-up.sh")], env=env, capture_output=True, text=True, timeout=240)
        assert up.returncode == 0, f"ray-up failed:\n{up.stdout}\n{up.stderr}"
        up_s = time.monotonic() - t0
        state = json.loads((local_dir / "head.json").read_text())
        url = f"http://127.0.0.1:{dash_port}"
        assert state["dashboard_url"] == url

        client = JobSubmissionClient(url)
        t1 = time.monotonic()
        job_id = client.submit_job(
            entrypoint=f"python jobs/sequence.py --store {fresh_digits_store} --quick --tasks parity --suite digits "
                       f"--method mode --teacher-mode online --run {run}",
            # .git and .venv are excluded by Ray by default (it warns when they are listed); the
            # upload is the code only, ~1 MB
            runtime_env={"working_dir": str(ROOT), "excludes": [".cl_store", ".ray_local", ".pytest_cache", "*.egg-info"]},
            metadata={"test": "test_sequence_cluster"},
        )
        deadline = time.monotonic() + 360
        status = client.get_job_status(job_id)
        while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
            time.sleep(1)
            status = client.get_job_status(job_id)
        job_s = time.monotonic() - t1
        logs = client.get_job_logs(job_id)
        if status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            client.stop_job(job_id)
        assert status == JobStatus.SUCCEEDED, f"job {status} after {job_s:.0f}s:\n{logs[-6000:]}"
        # the final table, printed by the job's driver
        assert "avg accuracy" in logs and "generation drop" in logs and "mode" in logs, logs[-4000:]
        assert f"results: file://{fresh_digits_store}/runs/{run}/results.json" in logs, logs[-4000:]
        # KD from the frozen base run by the worker itself: no cache built
        assert "teacher: online (asked" in logs and "teacher cache:" not in logs, logs[-4000:]
        _check_results(Store(fresh_digits_store), run, "mode", ["parity"])

        # the dashboard's job API lists the job
        jobs = {j.submission_id: j for j in client.list_jobs()}
        assert job_id in jobs, list(jobs)
        assert jobs[job_id].status == JobStatus.SUCCEEDED
        assert "jobs/sequence.py" in jobs[job_id].entrypoint and jobs[job_id].metadata.get("test") == "test_sequence_cluster"
        print(f"ray-up {up_s:.1f}s; submitted quick sequence {job_s:.1f}s")
    finally:
        down, leftover, _ = local_infra.ray_down(env, local_dir, state)  # kills what survives it
    assert down.returncode == 0, f"ray-down failed:\n{down.stdout}\n{down.stderr}"
    assert not leftover, f"processes of the head still running after ray-down: {leftover}"
