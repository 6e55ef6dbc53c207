"""Where a store is when none is given, and the local stores a submitted Ray job refuses.

The Ray job is simulated the way Ray marks a job's driver: ``RAY_JOB_CONFIG_JSON_ENV_VAR`` in the
environment (the job's runtime_env and metadata as JSON), with the current directory standing in
for Ray's unpacked copy of the job's working dir.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cl_platform.store import (
    RAY_JOB_ENV,
    STORE_ENV,
    Store,
    StoreLocationError,
    as_store,
    default_store_url,
    ray_job_driver,
)

ROOT = Path(__file__).resolve().parents[1]


def _job_env(monkeypatch: pytest.MonkeyPatch, *, working_dir: bool = True, submission_id: str = "raysubmit_abc") -> None:
    runtime_env = {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip"} if working_dir else {}
    config = {"runtime_env": runtime_env, "metadata": {"job_submission_id": submission_id, "job_name": submission_id}}
    monkeypatch.setenv(RAY_JOB_ENV, json.dumps(config))


@pytest.fixture
def outside_job(tmp_path, monkeypatch) -> Path:
    """cwd = a fresh directory, no Ray job, no CL_STORE."""
    monkeypatch.delenv(RAY_JOB_ENV, raising=False)
    monkeypatch.delenv(STORE_ENV, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def test_default_is_cl_store_env_then_dot_cl_store(outside_job, tmp_path, monkeypatch):
    assert default_store_url() == f"file://{outside_job}/.cl_store"
    assert Store().url == Store(None).url == as_store(None).url == f"file://{outside_job}/.cl_store"
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "elsewhere"))
    assert default_store_url() == str(tmp_path / "elsewhere")
    assert Store().url == f"file://{tmp_path}/elsewhere"
    monkeypatch.setenv(STORE_ENV, "s3://bucket/prefix")
    assert Store().url == "s3://bucket/prefix"
    monkeypatch.setenv(STORE_ENV, "")  # empty counts as unset
    assert Store().url == f"file://{outside_job}/.cl_store"
    # an explicit URL wins over CL_STORE
    monkeypatch.setenv(STORE_ENV, "s3://bucket/prefix")
    assert Store(str(tmp_path / "given")).url == f"file://{tmp_path}/given"


def test_outside_a_job_local_paths_under_the_cwd_are_fine(outside_job):
    assert ray_job_driver() is None
    Store("rel/store").write_bytes("x", b"1")
    assert (outside_job / "rel" / "store" / "x").read_bytes() == b"1"


def test_ray_job_driver_reads_rays_job_config(monkeypatch):
    _job_env(monkeypatch, submission_id="raysubmit_xyz")
    job = ray_job_driver()
    assert job is not None and job.submission_id == "raysubmit_xyz" and job.working_dir
    _job_env(monkeypatch, working_dir=False)
    assert not ray_job_driver().working_dir
    monkeypatch.setenv(RAY_JOB_ENV, "not json")  # unreadable: assume the worst (a working-dir copy)
    assert ray_job_driver().working_dir
    monkeypatch.delenv(RAY_JOB_ENV)
    assert ray_job_driver() is None


def test_inside_a_job_the_default_store_is_refused_before_anything_is_written(outside_job, monkeypatch):
    _job_env(monkeypatch)
    with pytest.raises(StoreLocationError, match="--store") as err:
        Store(None)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "CL_STORE" in msg and "raysubmit_abc" in msg and f"file://{outside_job}/.cl_store" in msg
    assert "no --store and no CL_STORE" in msg and "working directory" in msg
    # a default under a job without working_dir is refused too: the driver's cwd is nobody's choice
    _job_env(monkeypatch, working_dir=False)
    with pytest.raises(StoreLocationError, match="default store of Ray job raysubmit_abc"):
        as_store(None)
    assert list(outside_job.iterdir()) == []


@pytest.mark.parametrize("given", ["rel", "./.cl_store", "file://{cwd}/.cl_store", "{cwd}/sub/dir", "{cwd}"])
def test_inside_a_job_explicit_paths_in_the_working_dir_copy_are_refused(outside_job, monkeypatch, given):
    _job_env(monkeypatch)
    url = given.format(cwd=outside_job)
    with pytest.raises(StoreLocationError, match="working directory of Ray job raysubmit_abc"):
        Store(url)
    monkeypatch.setenv(STORE_ENV, url)  # the same through CL_STORE
    with pytest.raises(StoreLocationError, match="Ray's temporary copy"):
        Store()
    assert list(outside_job.iterdir()) == []


def test_inside_a_job_a_symlink_into_the_working_dir_copy_is_refused(outside_job, tmp_path, monkeypatch):
    link = tmp_path / "link"
    link.symlink_to(outside_job)
    _job_env(monkeypatch)
    with pytest.raises(StoreLocationError):
        Store(str(link / "store"))


def test_inside_a_job_stores_outside_the_copy_are_fine(outside_job, tmp_path, monkeypatch):
    _job_env(monkeypatch)
    kept = tmp_path / "kept"
    Store(f"file://{kept}").write_bytes("x", b"1")
    assert (kept / "x").read_bytes() == b"1"
    monkeypatch.setenv(STORE_ENV, f"file://{kept}")
    assert Store().url == f"file://{kept}" and Store().read_bytes("x") == b"1"
    monkeypatch.setenv(STORE_ENV, "s3://bucket/prefix")
    assert Store().url == "s3://bucket/prefix"
    monkeypatch.delenv(STORE_ENV)
    # a sibling whose name starts like the cwd is not inside it
    assert Store(str(outside_job) + "-sibling").url == f"file://{outside_job}-sibling"
    # a job without a working_dir runs in a directory that is not a copy: explicit paths are fine
    _job_env(monkeypatch, working_dir=False)
    assert Store("rel").url == f"file://{outside_job}/rel"


def test_sequence_entry_point_inside_a_job_without_a_store_exits_2_naming_the_fix(tmp_path):
    """``jobs/sequence.py`` as a submitted job's driver would run it: ``error: ...``, exit 2, nothing written."""
    env = {k: v for k, v in os.environ.items() if k not in (STORE_ENV, "RAY_ADDRESS")}
    env[RAY_JOB_ENV] = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"},
                                   "metadata": {"job_submission_id": "raysubmit_cli"}})
    proc = subprocess.run([sys.executable, str(ROOT / "jobs" / "sequence.py"), "--suite", "digits", "--quick"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: no --store and no CL_STORE"), proc.stderr
    assert "raysubmit_cli" in proc.stderr and "--store" in proc.stderr and "CL_STORE" in proc.stderr
    assert list(tmp_path.iterdir()) == []
