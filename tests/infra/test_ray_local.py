"""infra/local: ray-up.sh / ray-down.sh start and stop one local Ray head for ``ray job submit``.

The end-to-end test starts a real head on free ports with its own state dir (never the
developer's 8265 / .ray_local), submits a job, and stops the head by its recorded pids.
"""

from __future__ import annotations

import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from cl_platform.devstack import ray_head

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


def test_ray_mk_defines_the_targets():
    text = (LOCAL / "ray.mk").read_text()
    for target in ("ray-up:", "ray-down:", "ray-status:"):
        assert f"\n{target}" in text
    assert "ray stop" not in text.replace("`ray stop`", "")  # mentioned only as what not to run


@pytest.mark.slow
def test_ray_up_submit_job_ray_down(local_infra):
    if not (VENV_BIN / "ray").exists():
        pytest.skip("no Ray CLI in .venv")
    from ray.job_submission import JobStatus, JobSubmissionClient

    # A short state dir: Ray's unix socket paths live under it (107-byte limit).
    local_dir = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))
    dash_port, head_port = local_infra.free_port(), local_infra.free_port()
    env = local_infra.ray_env(local_dir, RAY_DASHBOARD_PORT=str(dash_port), RAY_HEAD_PORT=str(head_port))
    state = None
    try:
        t0 = time.monotonic()
        up = subprocess.run([str(LOCAL / "ray-up.sh")], env=env, capture_output=True, text=True, timeout=240)
        up_s = time.monotonic() - t0
        assert up.returncode == 0, f"ray-up failed:\n{up.stdout}\n{up.stderr}"
        url = f"http://127.0.0.1:{dash_port}"
        assert f"dashboard:    {url}" in up.stdout and f"RAY_ADDRESS={url}" in up.stdout
        state = json.loads((local_dir / "head.json").read_text())
        assert state["dashboard_url"] == url and state["head_port"] == head_port
        assert state["pids"] and all(local_infra.running(p) for p in state["pids"])

        again = subprocess.run([str(LOCAL / "ray-up.sh")], env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0 and "already running" in again.stdout

        client = JobSubmissionClient(url)
        job = client.submit_job(
            entrypoint=(
                "python -c 'import sys, cl_platform; print(42); print(\"PYTHON=\" + sys.executable)' && "
                # inside a submitted job init_ray() joins the head (RAY_ADDRESS) instead of starting Ray
                "python -c 'from cl_platform.train.resources import init_ray as i; print(\"STARTED=%s\" % i())'"
            ),
            runtime_env={"working_dir": str(REPO), "excludes": [".ray_local", ".cl_store", ".git"]},
        )
        deadline = time.monotonic() + 180
        status = client.get_job_status(job)
        while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED) and time.monotonic() < deadline:
            time.sleep(0.5)
            status = client.get_job_status(job)
        logs = client.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, logs
        lines = logs.splitlines()
        assert "42" in lines
        python = next(line.split("=", 1)[1] for line in lines if line.startswith("PYTHON="))
        assert Path(python).parent == VENV_BIN, f"job ran {python}, not the venv's python"
        assert "STARTED=False" in lines, logs
        print(f"ray-up took {up_s:.1f} s")
    finally:
        t0 = time.monotonic()
        down, leftover, record_left = local_infra.ray_down(env, local_dir, state)  # kills what survives it
        print(f"ray-down took {time.monotonic() - t0:.1f} s")
    assert down.returncode == 0, f"ray-down failed:\n{down.stdout}\n{down.stderr}"
    assert "stopped" in down.stdout
    assert not leftover, f"processes of the head still running after ray-down: {leftover}"
    assert not record_left, "ray-down left head.json behind"
