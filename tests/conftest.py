"""Shared pytest set-up: Ray and AWS environment for every test, and a local S3 (moto) server.

Fixtures:
    moto_s3: session-wide moto S3 server on 127.0.0.1 (free port) with one bucket; a
        :class:`MotoS3` with its endpoint, bucket and credentials.
    s3_url: ``s3://<bucket>/<unique prefix>`` for one test, with the standard AWS variables
        (endpoint, credentials, region) pointing at the moto server for that test only.
    store_url: parametrised over both backends: ``file://<tmp_path>/store`` and ``s3_url``.
    store: a :class:`cl_platform.store.Store` at ``store_url``.
    local_infra: :class:`LocalInfra`, helpers of the tests that start a local Ray head or S3
        server with ``infra/local/*-up.sh`` (free ports, process checks, clean-up); the modules
        behind those scripts are imported as ``cl_platform.devstack.*``.
    digits_store: the digits suite and a briefly pre-trained base, built once per run (shared by
        the pytest-xdist workers of ``make test``).

Under pytest-xdist (``make test``: ``-n 2 --dist loadgroup``) the end-to-end tests (marked
``slow``) are queued first, so the two workers start the long tests early and the short ones fill
in at the end. Every worker is a process of its own: session fixtures run once per worker (moto's
server is cheap), and each local Ray is started with ``address="local"`` (never joins another).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class MotoS3:
    """A running moto S3 server.

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>``.
        bucket: a bucket created for the test session.
        key, secret, region: the (fake) credentials and region the server accepts.
    """

    endpoint_url: str
    bucket: str
    key: str = "testing"
    secret: str = "testing"
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """The AWS environment variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def options(self) -> dict[str, str]:
        """The same settings as explicit ``Store`` options."""
        return {"endpoint_url": self.endpoint_url, "key": self.key, "secret": self.secret, "region": self.region}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalInfra:
    """What the tests that start ``infra/local/ray-up.sh`` / ``s3-up.sh`` share."""

    REPO = Path(__file__).resolve().parents[1]
    LOCAL = REPO / "infra" / "local"
    VENV_BIN = REPO / ".venv" / "bin"

    free_port = staticmethod(_free_port)

    @staticmethod
    def running(pid: int) -> bool:
        """True if ``pid`` exists and is not a zombie (PID 1 here may never reap orphans)."""
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
        except OSError:
            return True

    @staticmethod
    def ray_env(local_dir: Path | str, **extra: str) -> dict[str, str]:
        """This process's environment without a Ray address, for a head recorded in ``local_dir``."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env.update({"RAY_LOCAL_DIR": str(local_dir), "RAY_USAGE_STATS_ENABLED": "0"}, **extra)
        return env

    def ray_down(self, env: dict[str, str], local_dir: Path, state: dict | None):
        """Test clean-up: ``ray-down.sh``, SIGKILL whatever of the head survived it, remove its dirs.

        Returns ``(ray-down's CompletedProcess, pids still running after it, head.json or env left behind)``.
        """
        down = subprocess.run([str(self.LOCAL / "ray-down.sh")], env=env, capture_output=True, text=True, timeout=120)
        leftover = [p for p in (state or {}).get("pids", []) if self.running(p)]
        record_left = (local_dir / "head.json").exists() or (local_dir / "env").exists()
        if leftover and (state or {}).get("pgid"):  # never leave a head behind, even if the test failed
            try:
                os.killpg(state["pgid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(local_dir, ignore_errors=True)
        if state and state.get("temp_dir") and state["temp_dir"] != str(local_dir):
            shutil.rmtree(state["temp_dir"], ignore_errors=True)
        return down, leftover, record_left


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the ``slow`` tests first (a stable sort: every worker collects the same
    order, which xdist requires). The tests that start a local Ray head or S3 server (the
    ``local_infra`` fixture: ``infra/local/*-up.sh``, default ports, ``ray job submit``) get the
    ``local_infra`` marker: ``make test`` runs them after the others, in one process."""
    for item in items:
        if "local_infra" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.local_infra)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def local_infra() -> LocalInfra:
    return LocalInfra()


@pytest.fixture(scope="session")
def moto_s3() -> MotoS3:
    """Start moto's S3 server once per session, create a bucket, stop the server at the end."""
    pytest.importorskip("moto.server")
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per request otherwise

    # A proxy in the environment must not intercept calls to the local server.
    for name in ("NO_PROXY", "no_proxy"):
        os.environ[name] = ",".join(filter(None, [os.environ.get(name, ""), "127.0.0.1", "localhost"]))
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        moto = MotoS3(endpoint_url=f"http://127.0.0.1:{port}", bucket=f"cl-test-{uuid.uuid4().hex[:8]}")
        client = boto3.client(
            "s3",
            endpoint_url=moto.endpoint_url,
            aws_access_key_id=moto.key,
            aws_secret_access_key=moto.secret,
            region_name=moto.region,
        )
        client.create_bucket(Bucket=moto.bucket)
        yield moto
    finally:
        server.stop()


@pytest.fixture
def s3_url(moto_s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh ``s3://bucket/prefix`` for one test; AWS env vars point at moto during the test."""
    for name, value in moto_s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return f"s3://{moto_s3.bucket}/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["file", "s3"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """The same test on a local store and on the moto S3 store."""
    if request.param == "file":
        return f"file://{tmp_path}/store"
    return request.getfixturevalue("s3_url")


@pytest.fixture
def store(store_url: str):
    from cl_platform.store import Store

    return Store(store_url)


# ------------------------------------------------------------------ digits store (shared)
# A local store with the digits suite and a base model pre-trained for a few steps only: built once
# per session and copied by the tests that write into it (sequences, sweeps, the scheduler).


def _write_digits_store(root: Path) -> None:
    from cl_platform.suites.digits.pretrain import PretrainConfig, ensure_base_model
    from cl_platform.suites.digits.publish import write_suite

    from cl_platform.store import Store

    store = Store(str(root))
    write_suite(store, log=lambda *_: None)
    ensure_base_model(store, PretrainConfig(steps=30, eval_per_digit=1, log_every=10), log=lambda *_: None)


@pytest.fixture(scope="session")
def digits_store(tmp_path_factory) -> str:
    """Local store with the digits suite and a base model pre-trained for a few steps only.

    Under pytest-xdist the workers share one: the first to ask writes it into the run's base temp
    dir (the parent of every worker's own) while the others wait on a file lock."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.mktemp("digits_store")
        _write_digits_store(root)
        return str(root)
    from filelock import FileLock

    run_dir = tmp_path_factory.getbasetemp().parent
    root, done = run_dir / "digits_store", run_dir / "digits_store.done"
    with FileLock(str(run_dir / "digits_store.lock")):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)  # a worker that died half-way
            _write_digits_store(root)
            done.touch()
    return str(root)


@pytest.fixture
def fresh_digits_store(digits_store, tmp_path) -> str:
    """A private copy of :func:`digits_store` (runs write into it)."""
    import shutil

    dst = tmp_path / "store"
    shutil.copytree(digits_store, dst)
    return str(dst)
