"""infra/local: s3-up.sh / s3-down.sh (moto's S3 server on 127.0.0.1) and the local walkthrough.

Every test uses its own state dir and a free port (never the developer's .s3_local or 4566) and
stops only the server it started, by its recorded pid.

- ``test_s3_up_store_s3_down``: up, write and read an object through ``cl_platform.store.Store``
  configured by nothing but the env file, down, the pid is gone (about 3 s: not marked slow).
- ``test_walkthrough_task_dropped_into_the_bucket_is_learned`` (slow): the README walkthrough:
  ``s3-up``, ``ray-up``, a digits task dropped into the bucket (``drop_task.py``), ``jobs/scheduler.py
  run --once --ray-address`` learning it as a Ray job on the local head, ``status``, then
  ``ray-down`` and ``s3-down``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from cl_platform.devstack import s3_server

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "infra" / "local"
VENV_BIN = REPO / ".venv" / "bin"


def _env(infra, state_dir: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any AWS / Ray address settings, plus the overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k not in ("RAY_ADDRESS", "CL_STORE")}
    env.update({"S3_LOCAL_DIR": str(state_dir), "S3_LOCAL_PORT": str(infra.free_port())}, **extra)
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _kill_recorded(infra, state_dir: Path) -> None:
    """Test clean-up: SIGKILL the server recorded in ``state_dir`` if it is still ours and running."""
    try:
        state = json.loads((state_dir / "s3.json").read_text())
    except (OSError, ValueError):
        return
    if infra.running(state["pid"]):
        try:
            os.kill(state["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass


needs_moto = pytest.mark.skipif(not (VENV_BIN / "moto_server").exists(), reason="no moto_server in .venv")


def test_s3_down_without_a_server_is_a_no_op(tmp_path, local_infra):
    out = _run([str(LOCAL / "s3-down.sh")], _env(local_infra, tmp_path))
    assert out.returncode == 0, out.stderr
    assert "nothing to stop" in out.stdout


def test_env_file_round_trips_and_bad_settings_are_named(tmp_path, monkeypatch):
    state = s3_server.S3State(pid=1, port=4566, endpoint_url="http://127.0.0.1:4566", bucket="b-1", store_url="s3://b-1/cl",
                           command=[], env_file=str(tmp_path / "env"), log="", started_at="")
    s3_server.write_env_file(state)
    env = s3_server.read_env_file(str(tmp_path / "env"))
    assert env["AWS_ENDPOINT_URL"] == env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:4566"
    assert env["CL_STORE"] == "s3://b-1/cl" and env["AWS_EC2_METADATA_DISABLED"] == "true"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env)
    assert "127.0.0.1" in env["NO_PROXY"].split(",")
    monkeypatch.setenv("S3_LOCAL_BUCKET", "Bad_Bucket")
    with pytest.raises(s3_server.Fail, match="S3_LOCAL_BUCKET"):
        s3_server.bucket_and_prefix()


@needs_moto
def test_s3_up_refuses_a_busy_port(tmp_path, local_infra):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        out = _run([str(LOCAL / "s3-up.sh")], _env(local_infra, tmp_path, S3_LOCAL_PORT=str(port)))
    assert out.returncode == 1
    assert f"port {port} (S3_LOCAL_PORT) is already in use" in out.stderr
    assert not (tmp_path / "s3.json").exists()


@needs_moto
def test_s3_up_store_s3_down(tmp_path, local_infra):
    from cl_platform.store import Store

    env = _env(local_infra, tmp_path, S3_LOCAL_BUCKET="cl-test-bucket", S3_LOCAL_PREFIX="p/q")
    try:
        t0 = time.monotonic()
        up = _run([str(LOCAL / "s3-up.sh")], env)
        up_s = time.monotonic() - t0
        assert up.returncode == 0, f"s3-up failed:\n{up.stdout}\n{up.stderr}"
        state = json.loads((tmp_path / "s3.json").read_text())
        assert state["endpoint_url"] == f"http://127.0.0.1:{env['S3_LOCAL_PORT']}" and local_infra.running(state["pid"])
        again = _run([str(LOCAL / "s3-up.sh")], env)
        assert again.returncode == 0 and "already running" in again.stdout

        # The store, configured by the env file alone (sourced by a shell, as a developer would).
        script = ("from cl_platform.store import Store; import os; s = Store(os.environ['CL_STORE']); "
                  "s.write_json('hello/x.json', {'n': 1}); print(s.url, s.read_json('hello/x.json')['n'])")
        clean = {k: v for k, v in env.items() if k not in ("S3_LOCAL_DIR", "S3_LOCAL_PORT")}
        out = subprocess.run(["bash", "-c", f". {tmp_path / 'env'} && {VENV_BIN / 'python'} -c \"{script}\""],
                             env=clean, capture_output=True, text=True, timeout=120, cwd=REPO)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["s3://cl-test-bucket/p/q", "1"]
        # ... and the object really is in that bucket at that endpoint.
        seen = Store("s3://cl-test-bucket/p/q", **{"endpoint_url": state["endpoint_url"], "key": s3_server.ACCESS_KEY,
                                                   "secret": s3_server.SECRET_KEY, "region": s3_server.REGION})
        assert seen.walk("") == ["hello/x.json"]
        print(f"s3-up took {up_s:.1f} s")
    finally:
        down = _run([str(LOCAL / "s3-down.sh")], env)
        _kill_recorded(local_infra, tmp_path)
    assert down.returncode == 0, f"s3-down failed:\n{down.stdout}\n{down.stderr}"
    assert "stopped" in down.stdout
    assert not local_infra.running(state["pid"]), "moto_server still running after s3-down"
    assert not (tmp_path / "s3.json").exists() and not (tmp_path / "env").exists()


# ------------------------------------------------------------------------------ walkthrough


def _kill_tagged(tag: str) -> int:
    """SIGKILL every live process whose environment has ``CL_TEST_TAG=tag`` (only processes this
    test started carry it: the scheduler, its rounds, their Ray workers)."""
    import psutil

    n = 0
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get("CL_TEST_TAG") == tag and p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
                n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return n


@pytest.mark.slow
@needs_moto
def test_walkthrough_task_dropped_into_the_bucket_is_learned(tmp_path, local_infra):
    """The README walkthrough, end to end, on one machine (a few minutes on 2 cores)."""
    if not (VENV_BIN / "ray").exists():
        pytest.skip("no Ray CLI in .venv")
    from cl_platform.scheduler.events import parse_events

    s3_dir = tmp_path / "s3"
    ray_dir = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))  # short: Ray's socket paths live under it
    tag = f"walkthrough-{os.getpid()}-{time.time_ns()}"
    dash_port = local_infra.free_port()
    base = _env(local_infra, s3_dir, CL_TEST_TAG=tag, RAY_LOCAL_DIR=str(ray_dir), RAY_DASHBOARD_PORT=str(dash_port),
                RAY_HEAD_PORT=str(local_infra.free_port()), RAY_NUM_CPUS="2", RAY_USAGE_STATS_ENABLED="0",
                RAY_AUTH_MODE="disabled", XDG_CACHE_HOME=str(tmp_path / "cache"))
    py = str(VENV_BIN / "python")
    timings: dict[str, float] = {}
    head_state = None
    try:
        t0 = time.monotonic()
        up = _run([str(LOCAL / "s3-up.sh")], base)
        assert up.returncode == 0, up.stderr
        env = {**base, **s3_server.read_env_file(str(s3_dir / "env"))}  # what `. .s3_local/env` does
        store_url = env["CL_STORE"]
        ray_up = _run([str(LOCAL / "ray-up.sh")], env, timeout=240)
        assert ray_up.returncode == 0, f"ray-up failed:\n{ray_up.stdout}\n{ray_up.stderr}"
        head_state = json.loads((ray_dir / "head.json").read_text())
        timings["s3-up + ray-up"] = time.monotonic() - t0

        t0 = time.monotonic()
        drop = _run([py, str(LOCAL / "drop_task.py"), "parity", "fresh-parity", "--rows", "64", "--base-steps", "30",
                     "--staging", str(tmp_path / "staging")], env, timeout=600)
        assert drop.returncode == 0, f"drop_task failed:\n{drop.stdout}\n{drop.stderr}"
        assert f"dropped {store_url}/tasks/fresh-parity" in drop.stdout
        timings["drop (suite + 30-step base + task)"] = time.monotonic() - t0

        t0 = time.monotonic()
        sched = _run([py, "jobs/scheduler.py", "run", "--store", store_url, "--lineage", "demo", "--once",
                      "--ray-address", f"http://127.0.0.1:{dash_port}", "--quick", "--steps", "2",
                      "--poll-seconds", "1"], env, timeout=900)
        timings["scheduler --once (one round as a Ray job)"] = time.monotonic() - t0
        events = parse_events(sched.stdout)
        hint = ""
        if "because of a conflict" in sched.stdout:  # Ray refused the round driver's runtime_env
            hint = ("\nHint: the round's driver repeats the AWS_* env_vars the scheduler gave the job; RayJobRunner "
                    "must also set RAY_OVERRIDE_JOB_RUNTIME_ENV=1 in the job's env_vars so Ray merges them.")
        assert sched.returncode == 0, f"scheduler failed ({sched.returncode}):\n{sched.stdout[-4000:]}\n{sched.stderr[-4000:]}{hint}"
        assert [e["task"] for e in events if e["event"] == "submitted"] == ["fresh-parity"]
        assert [e["task"] for e in events if e["event"] == "finished"] == ["fresh-parity"]

        # The round ran as a Ray job on the local head: the dashboard's Jobs view lists it.
        from ray.job_submission import JobSubmissionClient

        jobs = JobSubmissionClient(f"http://127.0.0.1:{dash_port}").list_jobs()
        assert any((j.metadata or {}).get("cl_lineage_task") == "fresh-parity" and str(j.status).endswith("SUCCEEDED")
                   for j in jobs), [(j.submission_id, j.status, j.metadata) for j in jobs]

        status = _run([py, "jobs/scheduler.py", "status", "--store", store_url, "--lineage", "demo", "--json"], env)
        assert status.returncode == 0, status.stderr
        learned = json.loads(status.stdout)["state"]["learned"]
        assert [t["task"] for t in learned] == ["fresh-parity"]
        assert learned[0]["checkpoint"].startswith(store_url)
        print("walkthrough timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
    finally:
        ray_down = _run([str(LOCAL / "ray-down.sh")], base, timeout=120)
        s3_down = _run([str(LOCAL / "s3-down.sh")], base)
        _kill_tagged(tag)
        _kill_recorded(local_infra, s3_dir)
        shutil.rmtree(ray_dir, ignore_errors=True)
        if head_state and head_state.get("temp_dir") != str(ray_dir):
            shutil.rmtree(head_state["temp_dir"], ignore_errors=True)
    assert ray_down.returncode == 0, ray_down.stderr
    assert s3_down.returncode == 0 and "stopped" in s3_down.stdout, s3_down.stderr
