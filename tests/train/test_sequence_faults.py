"""Fault tolerance of a sequence end to end: a Ray Train worker killed mid-round, and the driver
killed between rounds then ``--resume``.

Each job runs as a subprocess with its own ``TMPDIR`` (so the embedded Ray's temp dir,
``<TMPDIR>/cl_ray_<uid>``, belongs to this test alone) in its own process group; every process
the test kills or cleans up is one it can attribute to that job: a descendant of the job's
driver, or a process whose command line or environment names the job's temp dir. Never
``ray stop``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from cl_platform.store import Store
from cl_platform.train.ledger import Ledger

psutil = pytest.importorskip("psutil")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JOB = os.path.join(ROOT, "jobs", "sequence.py")
TASKS = ["parity", "name"]


# ------------------------------------------------------------------------------ helpers


class Job:
    """``jobs/sequence.py`` in a subprocess: own session/process group, own TMPDIR, output to a file."""

    def __init__(self, args, tmp_root: str, log_path: str):
        self.tmp_root = tmp_root
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
        env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled", TMPDIR=tmp_root, PYTHONUNBUFFERED="1")
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, JOB, *args], cwd=ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.seen: set[int] = set()  # pids ever seen belonging to this job

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def descendants(self) -> list:
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen.update(p.pid for p in kids)
        return kids

    def attributable(self) -> list:
        """Live processes of this job: descendants of the driver, and any process naming its temp dir
        (Ray's workers start sessions of their own and outlive the driver by a moment)."""
        procs = {p.pid: p for p in self.descendants()}
        for pid in list(self.seen):
            if pid not in procs:
                try:
                    procs[pid] = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    pass
        for p in psutil.process_iter(["pid", "cmdline"]):
            if p.pid in procs or p.pid == os.getpid():
                continue
            try:
                if any(self.tmp_root in part for part in (p.info["cmdline"] or [])) or \
                        p.environ().get("TMPDIR") == self.tmp_root:
                    procs[p.pid] = p
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        alive = []
        for p in procs.values():
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        return alive

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"job did not finish in {timeout:.0f}s; output:\n{self.output()[-6000:]}")

    def kill_all(self) -> None:
        """SIGKILL the job's process group and every process attributable to it."""
        procs = self.attributable()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for p in procs:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        if self.proc.poll() is None or self.attributable():
            self.kill_all()
        self._log.close()


def wait_until(predicate, timeout: float, job: Job, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if job.proc.poll() is not None:
            pytest.fail(f"job exited (rc {job.proc.returncode}) before {what}; output:\n{job.output()[-6000:]}")
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; output:\n{job.output()[-6000:]}")


def ledger_doc(store: Store, run: str):
    try:
        return store.read_json(f"runs/{run}/ledger.json")
    except (FileNotFoundError, ValueError):
        return None


def check_complete(store: Store, run: str, method: str, tasks) -> Ledger:
    """results.json complete; every round in the ledger exactly once, done, with its adapter."""
    results = store.read_json(f"runs/{run}/results.json")
    assert results["task_order"] == tasks
    entry = results["methods"][method]
    assert len(entry["accuracy_matrix"]) == len(tasks) and all(len(row) == len(tasks) for row in entry["accuracy_matrix"])
    assert len(entry["generation_scores"]) == len(tasks) + 1
    assert set(entry["metrics"]) == {"avg_accuracy", "avg_forgetting", "bwt", "fwt", "generation_drop",
                                     "ranking_avg_accuracy", "ranking_forgetting", "ranking_bwt"}
    ledger = Ledger.open(store, run)
    recs = [r for r in ledger.rounds if r.method == method]
    assert [r.round for r in recs] == list(range(len(tasks))), [r.describe() for r in recs]  # each round once
    assert [r.task for r in recs] == tasks
    assert all(r.status == "done" and r.checkpoint for r in recs), [(r.round, r.status) for r in recs]
    for r in recs:
        assert store.exists(f"runs/{run}/{method}/round-{r.round:02d}/_COMPLETE")
        assert len(r.metrics["accuracy"]) == len(tasks)
    return ledger


def registered_step(store: Store, run: str, method: str) -> int:
    """Step of the latest Ray checkpoint registered mid-round 0 (0 if none)."""
    try:
        snap = store.read_json(f"runs/{run}/ray/{method}/checkpoint_manager_snapshot.json")
    except (FileNotFoundError, ValueError):
        return 0
    metrics = (snap.get("latest_checkpoint_result") or {}).get("metrics") or {}
    return int(metrics.get("step", 0)) if metrics.get("round") == 0 else 0


@pytest.fixture
def job_tmp():
    """A short private TMPDIR for the job (Ray's unix socket paths live under it: 107-byte limit)."""
    d = tempfile.mkdtemp(prefix="clf-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------ tests


@pytest.mark.slow
def test_worker_killed_mid_round_then_driver_killed_between_rounds_then_resume(fresh_digits_store, job_tmp, tmp_path):
    """One run through both faults: its Ray Train worker is killed mid-round 0 (the fit restarts it
    from the last registered checkpoint), then the driver is killed once round 0 is done, and
    ``--resume`` finishes the run; every round ends up in the ledger exactly once."""
    store, run, method = Store(fresh_digits_store), "faults", "mode"
    args = ["--store", fresh_digits_store, "--quick", "--tasks", ",".join(TASKS), "--suite", "digits",
            "--method", method, "--workers", "1", "--checkpoint-every", "4", "--steps", "24", "--max-failures", "2",
            "--run", run]
    t0 = time.monotonic()
    first = Job(args, job_tmp, str(tmp_path / "first.log"))

    def round0(status):
        doc = ledger_doc(store, run)
        recs = [r for r in (doc or {}).get("rounds", []) if r["method"] == method and r["round"] == 0]
        return bool(recs) and recs[0]["status"] == status

    try:
        # round 0 started (ledger), then a mid-round checkpoint of it was registered by Ray Train
        wait_until(lambda: round0("running"), 300, first, "round 0 to start")
        # A checkpoint counts once Ray Train's controller has registered it (all ranks' reports
        # collected): its snapshot in the run's storage then names it. Kill only after that.
        registered = wait_until(lambda: registered_step(store, run, method), 300, first,
                                "a mid-round checkpoint of round 0 to be registered")
        workers = wait_until(
            lambda: [p for p in first.descendants() if "RayTrainWorker" in " ".join(p.cmdline())], 30, first,
            "the Ray Train worker process")
        assert len(workers) == 1, [p.cmdline() for p in workers]
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        worker_killed_at = time.monotonic() - t0
        assert round0("running"), "round 0 ended before the worker was killed"

        wait_until(lambda: round0("done"), 480, first, "round 0 to be done after the worker was killed")
        out = first.output()
        assert not victim.is_running() or victim.status() == psutil.STATUS_ZOMBIE
        # the restarted worker resumed mid-round from the registered Ray checkpoint rather than from step 0
        resumed = re.search(r"resumed from Ray checkpoint at round 0 step (\d+)", out)
        assert resumed and registered <= int(resumed.group(1)) < 24, out[-6000:]
        assert f"round 1/2 'parity' (attempt 2): steps {resumed.group(1)}..24" in out, out[-6000:]
        procs = first.attributable()
        assert any("raylet" in " ".join(p.cmdline()) for p in procs), "no embedded Ray under the driver?"
        first.kill_all()  # SIGKILL: the driver's process group (driver, GCS, raylet) and its Ray workers
        driver_killed_at = time.monotonic() - t0
        deadline = time.monotonic() + 60
        while first.attributable() and time.monotonic() < deadline:
            time.sleep(0.5)
        left = first.attributable()
        assert not left, f"processes of the killed job left running: {[(p.pid, p.cmdline()) for p in left]}"
    finally:
        first.close()

    doc = ledger_doc(store, run)
    r0_before = next(r for r in doc["rounds"] if r["method"] == method and r["round"] == 0)
    assert r0_before["status"] == "done" and r0_before["attempt"] >= 2, r0_before
    assert r0_before["previous_attempts"][0]["status"] == "interrupted"
    assert not store.exists(f"runs/{run}/results.json")

    second = Job([*args, "--resume"], job_tmp, str(tmp_path / "second.log"))
    try:
        rc = second.wait(600)
        out = second.output()
        assert rc == 0, out[-6000:]
    finally:
        second.close()
    assert not second.attributable()
    assert "avg accuracy" in out
    assert "round 1/2 'parity'" not in out, "round 0 was trained again"
    # the teacher cache the killed run computed is reused by the resumed run
    assert "teacher cache: reusing" in out and len(store.glob("cache/teacher/*/index.json")) == 1
    ledger = check_complete(store, run, method, TASKS)
    r0, r1 = ledger.record(method, 0), ledger.record(method, 1)
    assert (r0.attempt, r0.ended_at, r0.checkpoint, r0.started_at) == (
        r0_before["attempt"], r0_before["ended_at"], r0_before["checkpoint"], r0_before["started_at"])
    assert r0.metrics["accuracy"] == r0_before["metrics"]["accuracy"]
    # round 1 ran to completion once: an attempt the driver kill cut short is recorded as interrupted
    assert all(p["status"] == "interrupted" for p in r1.previous_attempts) and len(r1.previous_attempts) == r1.attempt - 1
    results = store.read_json(f"runs/{run}/results.json")
    assert [r["attempt"] for r in results["methods"][method]["rounds"]] == [r0.attempt, r1.attempt]
    print(f"worker killed at {worker_killed_at:.1f}s (checkpoint at step {registered} registered), resumed at step "
          f"{resumed.group(1)}; driver killed at {driver_killed_at:.1f}s; resumed run finished at "
          f"{time.monotonic() - t0:.1f}s")
