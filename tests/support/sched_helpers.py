"""Helpers of the scheduler tests: small valid digits-spec tasks, seven ways to break one, and a
harness building schedulers that run the stand-in job (``fake_sequence.py``)."""

from __future__ import annotations

import io
import json
import os
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from cl_platform.data.task_format import write_task
from cl_platform.scheduler.config import LineageSettings
from cl_platform.scheduler.events import EventLog
from cl_platform.scheduler.lease import Lease
from cl_platform.scheduler.loop import Scheduler, SchedulerOptions
from cl_platform.scheduler.runner import EmbeddedRunner
from cl_platform.store import Store
from cl_platform.suites.digits.vocab import DIGITS_SPEC

FAKE_JOB = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scheduler", "fake_sequence.py")


def small_task(store: Store, name: str, *, rows: int = 4, token: int = 30, spec_id: str = DIGITS_SPEC.spec_id) -> dict:
    """Write a tiny valid task (ids inside the digits vocabulary) and return its manifest."""
    train = {"tokens": [[1, token, DIGITS_SPEC.sep_id, token + 1, 2]] * rows, "answer_start": [3] * rows}
    ev = {"prompt_tokens": [[1, token + 1, DIGITS_SPEC.sep_id]] * 2, "answer_tokens": [[token + 2, 2]] * 2,
          "answer": ["x", "x"]}
    return write_task(store, name, train, ev, spec_id=spec_id, overwrite=True)


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def replace_part(store: Store, name: str, rel: str, data: bytes, *, fix_sha: bool = True) -> None:
    """Overwrite one data file of a task; with ``fix_sha`` the manifest's sha256 is updated to match."""
    import hashlib

    store.write_bytes(f"tasks/{name}/{rel}", data)
    if fix_sha:
        m = store.read_json(f"tasks/{name}/manifest.json")
        m["files"][rel]["sha256"] = hashlib.sha256(data).hexdigest()
        store.write_json(f"tasks/{name}/manifest.json", m)


def train_part(store: Store, name: str) -> str:
    return next(p for p in store.walk(f"tasks/{name}/train") if p.endswith(".parquet")).split(f"tasks/{name}/", 1)[1]


#: (kind, how to break a freshly written task, words the quarantine reason must contain)
def _bad_json(store: Store, name: str) -> None:
    store.write_bytes(f"tasks/{name}/manifest.json", b'{"schema_version": 1, "name": ')


def _missing_split(store: Store, name: str) -> None:
    store.delete(f"tasks/{name}/eval", recursive=True)


def _corrupt_parquet(store: Store, name: str) -> None:
    replace_part(store, name, train_part(store, name), b"PAR1 this is not a parquet file PAR1")


def _wrong_types(store: Store, name: str) -> None:
    t = pa.table({"tokens": pa.array([[1, 30, 3, 31, 2]] * 4, pa.list_(pa.int32())), "answer_start": pa.array([3] * 4, pa.int64())})
    replace_part(store, name, train_part(store, name), _parquet_bytes(t))


def _out_of_vocab(store: Store, name: str) -> None:
    t = pa.table({"tokens": pa.array([[1, 30, 3, 500, 2]] * 4, pa.list_(pa.int32())), "answer_start": pa.array([3] * 4, pa.int32())})
    replace_part(store, name, train_part(store, name), _parquet_bytes(t))


def _sha_mismatch(store: Store, name: str) -> None:
    rel = train_part(store, name)
    t = pa.table({"tokens": pa.array([[1, 30, 3, 32, 2]] * 4, pa.list_(pa.int32())), "answer_start": pa.array([3] * 4, pa.int32())})
    replace_part(store, name, rel, _parquet_bytes(t), fix_sha=False)


def _spec_mismatch(store: Store, name: str) -> None:
    m = store.read_json(f"tasks/{name}/manifest.json")
    m["spec_id"] = "anole"
    store.write_json(f"tasks/{name}/manifest.json", m)


BAD_KINDS: list[tuple[str, Callable[[Store, str], None], list[str]]] = [
    ("bad-json", _bad_json, ["manifest.json", "not valid JSON"]),
    ("missing-split", _missing_split, ["eval"]),
    ("corrupt-parquet", _corrupt_parquet, ["train/part-00000.parquet"]),
    ("wrong-types", _wrong_types, ["answer_start", "int64"]),
    ("out-of-vocab", _out_of_vocab, ["500", "vocab"]),
    ("sha-mismatch", _sha_mismatch, ["sha256"]),
    ("spec-mismatch", _spec_mismatch, ["anole", "digits-v1"]),
]


def write_bad_task(store: Store, name: str, breaker: Callable[[Store, str], None]) -> None:
    """A valid task broken by ``breaker``; ``_READY`` is re-written last (landing order)."""
    small_task(store, name)
    breaker(store, name)
    store.write_bytes(f"tasks/{name}/_READY", b"now\n")


class Harness:
    """Builds schedulers on one store and lineage, all running the stand-in job."""

    def __init__(self, store: Store, tmp_path, lineage: str = "lin") -> None:
        self.store = store
        self.tmp_path = tmp_path
        self.lineage = lineage
        self.settings = LineageSettings(quick=True, max_attempts=3, retry_base_seconds=0.2, retry_max_seconds=1.0)

    def scheduler(self, *, once: bool = True, ttl: float = 30.0, env: Optional[dict] = None,
                  holder: Optional[str] = None, settings: Optional[LineageSettings] = None, poll: float = 0.2) -> Scheduler:
        settings = settings or self.settings
        runner = EmbeddedRunner(str(self.tmp_path / "logs"), job_script=FAKE_JOB, env=env)
        lease = Lease(self.store, self.lineage, holder, ttl=ttl)
        events = EventLog(self.lineage, lease.holder, stream=None)
        return Scheduler(self.store, self.lineage, settings, runner, lease=lease, events=events,
                         options=SchedulerOptions(poll_seconds=poll, follow_seconds=0.1, once=once))

    def trained(self, run: str) -> list[str]:
        """Attempts of ``run`` that actually trained (stand-in job's markers)."""
        return self.store.list(f"fake/trained/{run}")



def state_json(store: Store, lineage: str = "lin") -> dict:
    return json.loads(store.read_bytes(f"lineages/{lineage}/state.json"))


def copy_digits_task(store: Store, src: str, dst: str, *, src_store: Optional[Store] = None, rows: Optional[int] = None) -> dict:
    """Publish a copy of digits task ``src`` under the name ``dst`` (optionally its first ``rows`` train rows)."""
    from cl_platform.data.task_format import read_task

    t = read_task(src_store or store, src)
    train = t.train if rows is None else t.train.slice(0, rows)
    return write_task(store, dst, train, t.eval, spec_id=t.spec_id, overwrite=True)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class SchedulerProcess:
    """``jobs/scheduler.py run ...`` in a subprocess of its own session, with its own ``TMPDIR``
    (so the embedded Ray of its rounds is attributable to this test alone), stdout to a file."""

    def __init__(self, args: list[str], tmp_root: str, log_path: str, env: Optional[dict] = None) -> None:
        import subprocess
        import sys

        self.tmp_root = tmp_root
        self.log_path = log_path
        e = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        e.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", TMPDIR=tmp_root, PYTHONUNBUFFERED="1", **(env or {}))
        self._out = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, os.path.join(REPO, "jobs", "scheduler.py"), "run", *args], cwd=REPO,
                                     env=e, stdout=self._out, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def events(self, name: Optional[str] = None) -> list[dict]:
        from cl_platform.scheduler.events import parse_events

        evs = parse_events(self.output())
        return [e for e in evs if name is None or e["event"] == name]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        import time

        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            if self.proc.poll() is not None and not predicate():
                raise AssertionError(f"scheduler exited ({self.proc.returncode}) before {what}:\n{self.output()[-4000:]}")
            time.sleep(0.5)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}:\n{self.output()[-4000:]}")

    def wait(self, timeout: float) -> int:
        import subprocess

        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"scheduler did not exit in {timeout:.0f}s:\n{self.output()[-4000:]}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self._out.close()


def kill_attributable(tmp_root: str) -> int:
    """SIGKILL every live process whose environment has ``TMPDIR=tmp_root`` (started by this test:
    its schedulers, their round jobs and those jobs' embedded Ray); returns how many."""
    import psutil

    n = 0
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get("TMPDIR") == tmp_root and p.status() != psutil.STATUS_ZOMBIE:
                p.kill()
                n += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return n
