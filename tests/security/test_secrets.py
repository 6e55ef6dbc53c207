"""No credential leaves the process environment: not into a Ray runtime_env (served by the job
API and the dashboard), not into pickles (the store, its pyarrow filesystem), not into the files
a run writes (the store, Ray's session logs). The secrets are looked for by value, not by name."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from cl_platform.store import Store


@pytest.fixture
def secrets(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Secret-looking credentials in the environment of the moto store (moto accepts any keys)."""
    tag = uuid.uuid4().hex
    values = {
        "AWS_ACCESS_KEY_ID": f"AKIAIDSECRET{tag[:12].upper()}",
        "AWS_SECRET_ACCESS_KEY": f"secret-access-key-{tag}",
        "AWS_SESSION_TOKEN": f"session-token-{tag}",
        "AWS_SECURITY_TOKEN": f"security-token-{tag}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def _leaks(blob: bytes | str, secrets: dict[str, str]) -> list[str]:
    """The names of the secrets whose values occur in ``blob``."""
    data = blob.encode() if isinstance(blob, str) else blob
    return sorted(name for name, value in secrets.items() if value.encode() in data)


# ------------------------------------------------------------------------------ runtime_env


def test_runtime_envs_hold_no_secret(s3_url: str, secrets: dict[str, str], monkeypatch, tmp_path) -> None:
    from cl_platform.scheduler.runner import RayJobRunner
    from cl_platform.train.resources import runtime_env_for_store

    monkeypatch.setenv("AWS_PROFILE", "someone")
    for store in (s3_url, Store(s3_url)):
        env = runtime_env_for_store(store)
        assert not _leaks(json.dumps(env), secrets), env
        # what workers need to find the store, and nothing about who they are
        assert env["env_vars"]["AWS_ENDPOINT_URL_S3"] == os.environ["AWS_ENDPOINT_URL_S3"]
        assert env["env_vars"]["AWS_REGION"] == os.environ["AWS_REGION"]
        assert "AWS_PROFILE" not in env["env_vars"]
    for working_dir in (None, str(tmp_path)):
        job_env = RayJobRunner("http://127.0.0.1:1", working_dir=working_dir)._runtime_env(s3_url)
        assert not _leaks(json.dumps(job_env), secrets), job_env
        assert job_env["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"


def test_no_variable_with_a_secret_name_is_forwarded(monkeypatch) -> None:
    from cl_platform.train.resources import FORWARDED_AWS_SETTINGS, is_secret_env_name, public_env_vars

    assert not any(is_secret_env_name(name) for name in FORWARDED_AWS_SETTINGS)
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                 "DB_PASSWORD", "RAY_AUTH_TOKEN", "aws_secret_access_key"):
        assert is_secret_env_name(name), name
    assert public_env_vars({"AWS_REGION": "r", "MY_API_KEY": "x"}) == {"AWS_REGION": "r"}


# ------------------------------------------------------------------------------ pickles


def test_store_and_pyarrow_filesystem_pickle_without_secrets(s3_url: str, secrets: dict[str, str]) -> None:
    import cloudpickle
    import pyarrow.fs as pafs

    store = Store(s3_url)
    store.write_bytes("p/x.bin", b"payload")
    fs, root = store.pyarrow_filesystem()
    for dump in (pickle.dumps, cloudpickle.dumps):
        assert not _leaks(dump(fs), secrets)
        assert not _leaks(dump(store), secrets)
    # unpickled, both find their credentials in this process's environment again
    again, _ = pickle.loads(pickle.dumps((fs, root)))
    with again.open_input_stream(f"{root}/p/x.bin") as f:
        assert f.read() == b"payload"
    assert pickle.loads(pickle.dumps(store)).read_bytes("p/x.bin") == b"payload"
    assert isinstance(again, pafs.S3FileSystem)


def test_explicit_keys_are_refused_for_a_pyarrow_filesystem(moto_s3, s3_url: str, secrets: dict[str, str]) -> None:
    explicit = Store(s3_url, key=secrets["AWS_ACCESS_KEY_ID"], secret=secrets["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(ValueError, match="explicitly .*environment") as err:
        explicit.pyarrow_filesystem()
    assert not _leaks(str(err.value), secrets)
    fs, _ = explicit.pyarrow_filesystem(explicit_credentials=True)  # this process only: carries them
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(_leaks(pickle.dumps(fs), secrets))
    # the store's own pickle keeps what was given explicitly (the caller's choice), not the env's token
    assert _leaks(pickle.dumps(explicit), secrets) == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]


# ------------------------------------------------------------------------------ a real run


def _files_with_secrets(top: Path, secrets: dict[str, str]) -> dict[str, list[str]]:
    """Regular files under ``top`` that hold a secret value, with the names of those secrets."""
    found = {}
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            try:
                leaks = _leaks(path.read_bytes(), secrets)
            except OSError:
                continue
            if leaks:
                found[str(path)] = leaks
    return found


@pytest.mark.slow
def test_a_ray_run_on_the_store_leaves_no_secret_in_the_bucket_or_ray_logs(moto_s3, s3_url: str,
                                                                          secrets: dict[str, str]) -> None:
    """Ray Data reads and writes through the store's pyarrow filesystem and a task writes through an
    unpickled store, on a local 1-CPU Ray whose workers hold the credentials only in the
    environment they inherit. Then no object of the bucket and no file of Ray's session holds a
    secret."""
    ray = pytest.importorskip("ray")
    import boto3
    import pyarrow as pa

    from cl_platform.train.resources import init_ray, runtime_env_for_store

    if ray.is_initialized():
        pytest.skip("Ray is already initialised in this process")
    store = Store(s3_url)
    store.write_parquet("ds/part-0.parquet", pa.table({"v": list(range(8))}))
    temp_dir = tempfile.mkdtemp(prefix="rsec-", dir="/tmp")  # short: Ray's socket paths live under it
    try:
        assert init_ray(num_cpus=1, temp_dir=temp_dir, runtime_env=runtime_env_for_store(store))
        try:
            fs, root = store.pyarrow_filesystem()
            ds = ray.data.read_parquet(f"{root}/ds/part-0.parquet", filesystem=fs)
            assert sorted(r["v"] for r in ds.take_all()) == list(range(8))
            ds.map_batches(lambda b: {"w": b["v"] * 2}).write_parquet(f"{root}/out", filesystem=fs)

            @ray.remote(num_cpus=1)
            def write_from_worker(s: Store) -> str:
                s.write_json("from-worker.json", {"pid": os.getpid()})
                return s.read_bytes("ds/part-0.parquet")[:4].decode()

            assert ray.get(write_from_worker.remote(store)) == "PAR1"
        finally:
            ray.shutdown()
        assert store.read_json("from-worker.json")["pid"] != os.getpid()
        assert store.walk("out"), "Ray Data wrote nothing"

        bucket = s3_url[len("s3://"):].split("/", 1)[0]
        client = boto3.client("s3", endpoint_url=moto_s3.endpoint_url, aws_access_key_id=moto_s3.key,
                              aws_secret_access_key=moto_s3.secret, region_name=moto_s3.region)
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                for o in page.get("Contents", [])]
        assert keys
        in_bucket = {k: _leaks(client.get_object(Bucket=bucket, Key=k)["Body"].read(), secrets) for k in keys}
        assert not {k: v for k, v in in_bucket.items() if v}, in_bucket
        assert any(Path(temp_dir).glob("session_*/logs/*")), "no Ray session logs to search"
        assert not _files_with_secrets(Path(temp_dir), secrets)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
