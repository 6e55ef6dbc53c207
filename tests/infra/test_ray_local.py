"""infra/local: ray-up.sh / ray-down.sh start and stop one local Ray head for ``ray job submit``.

The end-to-end test starts a real head on free ports with its own state dir (never the
developer's 8265 / .ray_local), submits jobs with ``--working-dir`` semantics (a quick sequence
without a store fails fast; with ``CL_STORE`` from the head's env file it writes into that store
and reuses its base model), and stops the head by its recorded pids.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from cl_platform.devstack import procs, ray_head

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "infra" / "local"
VENV_BIN = REPO / ".venv" / "bin"


def test_ray_down_without_a_head_is_a_no_op(tmp_path, local_infra):
    out = subprocess.run([str(LOCAL / "ray-down.sh")], env=local_infra.ray_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "no local Ray head recorded" in out.stdout


def test_ray_up_refuses_a_busy_dashboard_port(tmp_path, local_infra):
    if not (VENV_BIN / "ray").exists():
        pytest.skip("no Ray CLI in .venv")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = subprocess.run([str(LOCAL / "ray-up.sh")], env=local_infra.ray_env(tmp_path, RAY_DASHBOARD_PORT=str(port)),
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert f"port {port} (dashboard) is already in use" in out.stderr and "RAY_DASHBOARD_PORT" in out.stderr
    assert not (tmp_path / "head.json").exists()


def test_long_state_dirs_get_a_short_ray_temp_dir():
    assert ray_head.ray_temp_dir("/work/x/.ray_local") == "/work/x/.ray_local"
    long_dir = "/home/someone/" + "a" * 60 + "/.ray_local"
    short = ray_head.ray_temp_dir(long_dir)
    assert short.startswith("/tmp/ray_local_") and short == ray_head.ray_temp_dir(long_dir)
    assert len(short) <= ray_head.MAX_TEMP_DIR_CHARS


def _state(tmp_path: Path, store_url: str = "") -> "ray_head.HeadState":
    return ray_head.HeadState(pgid=1, pids=[1], temp_dir=str(tmp_path), session_dir=str(tmp_path), session_name="s",
                              gcs_address="127.0.0.1:6380", dashboard_url="http://127.0.0.1:8265", head_port=6380,
                              dashboard_port=8265, client_port=1, agent_port=2, python="python", venv=".venv",
                              started_at="", store_url=store_url, env_file=str(tmp_path / "env"))


def test_env_file_names_the_store_jobs_use(tmp_path, monkeypatch):
    monkeypatch.setenv("CL_REPO_DIR", str(tmp_path / "repo"))
    monkeypatch.delenv("CL_STORE", raising=False)
    assert ray_head.store_url() == f"file://{tmp_path}/repo/.cl_store"  # the store `make demo` fills
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CL_STORE", "rel/store")  # CL_STORE for ray-up: made absolute
    assert ray_head.store_url() == f"file://{tmp_path}/rel/store"
    monkeypatch.setenv("CL_STORE", "gs://bucket/x")
    with pytest.raises(ray_head.Fail, match="CL_STORE='gs://bucket/x'.*unsupported scheme"):
        ray_head.store_url()

    state = _state(tmp_path, f"file://{tmp_path}/my store")
    ray_head.write_env_file(state)
    assert procs.read_env_file(state.env_file) == {"CL_STORE": f"file://{tmp_path}/my store"}
    out = subprocess.run(["bash", "-c", f'. "{state.env_file}" && printf %s "$CL_STORE"'], capture_output=True, text=True)
    assert out.stdout == f"file://{tmp_path}/my store"
    text = Path(state.env_file).read_text()
    assert 'ray job submit --working-dir . -- python jobs/sequence.py --store "$CL_STORE"' in text


def test_ray_mk_defines_the_targets():
    text = (LOCAL / "ray.mk").read_text()
    for target in ("ray-up:", "ray-down:", "ray-status:"):
        assert f"\n{target}" in text
    assert "ray stop" not in text.replace("`ray stop`", "")  # mentioned only as what not to run


def _wait(client, job_id: str, timeout: float) -> tuple[str, float]:
    """Poll a job until it ends (or ``timeout`` s pass; then stop it): its status and how long it took."""
    from ray.job_submission import JobStatus

    t0, ended = time.monotonic(), (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED)
    status = client.get_job_status(job_id)
    while status not in ended and time.monotonic() - t0 < timeout:
        time.sleep(0.5)
        status = client.get_job_status(job_id)
    if status not in ended:
        client.stop_job(job_id)
    return status, time.monotonic() - t0


@pytest.mark.slow
def test_ray_up_submit_jobs_ray_down(local_infra, fresh_digits_store):
    """ray-up (its env file names the store), three jobs with ``--working-dir`` semantics submitted at
    once, ray-down. A quick sequence without a store fails fast naming --store / CL_STORE; with
    ``CL_STORE`` from the env file it writes ``runs/<run>/results.json`` into that store and reuses
    the base model already there (no pre-training)."""
    if not (VENV_BIN / "ray").exists():
        pytest.skip("no Ray CLI in .venv")
    from ray.job_submission import JobStatus, JobSubmissionClient

    # A short state dir: Ray's unix socket paths live under it (107-byte limit).
    local_dir = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    dash_port, head_port = local_infra.free_port(), local_infra.free_port()
    store_url = f"file://{fresh_digits_store}"
    env = local_infra.ray_env(local_dir, RAY_DASHBOARD_PORT=str(dash_port), RAY_HEAD_PORT=str(head_port),
                              CL_STORE=store_url)
    model_files = {p: p.stat().st_mtime_ns for p in (Path(fresh_digits_store) / "models").rglob("*") if p.is_file()}
    run = "submitted"
    sequence = f"python jobs/sequence.py --suite digits --tasks parity --method seq_lora --quick --steps 2 --run {run}"
    # what `ray job submit --working-dir .` uploads: the checkout without state dirs and caches
    working_dir = {"working_dir": str(REPO), "excludes": [".ray_local", ".cl_store", ".git", ".pytest_cache", "*.egg-info"]}
    state = None
    try:
        t0 = time.monotonic()
        up = subprocess.run([str(LOCAL / "ray-up.sh")], env=env, capture_output=True, text=True, timeout=240)
        up_s = time.monotonic() - t0
        assert up.returncode == 0, f"ray-up failed:\n{up.stdout}\n{up.stderr}"
        url = f"http://127.0.0.1:{dash_port}"
        assert f"dashboard:    {url}" in up.stdout and f"RAY_ADDRESS={url} ray job submit" in up.stdout
        assert f"CL_STORE={store_url}" in up.stdout and f"--store {store_url}" in up.stdout
        state = json.loads((local_dir / "head.json").read_text())
        assert state["dashboard_url"] == url and state["head_port"] == head_port
        assert state["pids"] and all(local_infra.running(p) for p in state["pids"])
        head_env = procs.read_env_file(str(local_dir / "env"))
        assert head_env == {"CL_STORE": store_url}

        again = subprocess.run([str(LOCAL / "ray-up.sh")], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "already running" in again.stdout

        client = JobSubmissionClient(url)
        basics = client.submit_job(
            entrypoint=(
                "python -c 'import sys, os, cl_platform; print(42); print(\"PYTHON=\" + sys.executable); "
                "print(\"CL_STORE=%s\" % os.environ.get(\"CL_STORE\"))' && "
                # inside a submitted job init_ray() joins the head (RAY_ADDRESS) instead of starting Ray
                "python -c 'from cl_platform.train.resources import init_ray as i; print(\"STARTED=%s\" % i())'"
            ),
            runtime_env=working_dir,
        )
        no_store = client.submit_job(entrypoint=sequence.replace(run, "no-store"), runtime_env=working_dir)
        with_store = client.submit_job(entrypoint=sequence, runtime_env={**working_dir, "env_vars": head_env})

        status, _ = _wait(client, basics, 180)
        logs = client.get_job_logs(basics)
        assert status == JobStatus.SUCCEEDED, logs
        lines = logs.splitlines()
        assert "42" in lines
        python = next(line.split("=", 1)[1] for line in lines if line.startswith("PYTHON="))
        assert Path(python).parent == VENV_BIN, f"job ran {python}, not the venv's python"
        assert "STARTED=False" in lines, logs
        assert "CL_STORE=None" in lines, "CL_STORE leaked into the head's environment"

        status, no_store_s = _wait(client, no_store, 180)
        logs = client.get_job_logs(no_store)
        assert status == JobStatus.FAILED, logs[-3000:]
        assert "error: no --store and no CL_STORE" in logs and "working directory" in logs, logs[-3000:]
        assert "Traceback" not in logs and "reusing" not in logs, logs[-3000:]  # refused before any work
        assert not Path(fresh_digits_store, "runs", "no-store").exists()

        status, seq_s = _wait(client, with_store, 420)
        logs = client.get_job_logs(with_store)
        assert status == JobStatus.SUCCEEDED, f"job {status} after {seq_s:.0f}s:\n{logs[-6000:]}"
        # the run's last lines name the results in the store the env file names, not in the job's copy
        assert f"results: {store_url}/runs/{run}/results.json" in logs, logs[-4000:]
        results = json.loads(Path(fresh_digits_store, "runs", run, "results.json").read_text())
        assert results["task_order"] == ["parity"] and "seq_lora" in results["methods"]
        assert results["config"]["model_uri"].startswith(f"{store_url}/models/")
        # the base model already in the store was reused: not pre-trained again, not touched
        assert f"reusing {store_url}/models/" in logs and "saved file://" not in logs, logs[-4000:]
        assert {p: p.stat().st_mtime_ns for p in model_files} == model_files
        print(f"ray-up {up_s:.1f} s; no-store job failed in {no_store_s:.1f} s; quick sequence job {seq_s:.1f} s")
    finally:
        t0 = time.monotonic()
        down, leftover, record_left = local_infra.ray_down(env, local_dir, state)  # kills what survives it
        print(f"ray-down took {time.monotonic() - t0:.1f} s")
    assert down.returncode == 0, f"ray-down failed:\n{down.stdout}\n{down.stderr}"
    assert "stopped" in down.stdout
    assert not leftover, f"processes of the head still running after ray-down: {leftover}"
    assert not record_left, "ray-down left head.json or env behind"
