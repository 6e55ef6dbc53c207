"""The scheduler loop with the stand-in job: retries with backoff, final failure, exactly-once
across restarts (every point a scheduler can die at), two schedulers, the Ray-job runner's
re-attach by submission id, the policy hook, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest
from tests.support.sched_helpers import FAKE_JOB, small_task, state_json

from cl_platform.scheduler.config import LineageSettings
from cl_platform.scheduler.runner import EmbeddedRunner, RayJobRunner, round_args
from cl_platform.scheduler.state import InFlightRound, StateStore
from cl_platform.train.ledger import Ledger

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_failed_round_is_retried_with_backoff_then_learned(file_harness):
    store = file_harness.store
    small_task(store, "flaky")
    sched = file_harness.scheduler(env={"FAKE_FAIL_ATTEMPTS": "1"})
    t0 = time.time()
    assert sched.run() == 0
    failed, finished = sched.events.of("failed"), sched.events.of("finished")
    assert len(failed) == 1 and failed[0]["final"] is False and failed[0]["retry_in_s"] == pytest.approx(0.2)
    assert "fake failure" in failed[0]["error"]
    assert len(finished) == 1 and finished[0]["attempt"] == 2
    assert finished[0]["time"] - failed[0]["time"] >= 0.2 and time.time() - t0 > 0.2
    learned = state_json(store)["learned"]
    assert learned[0]["attempts"] == 2 and learned[0]["run"] == "lin-1-flaky"
    rec = Ledger.open(store, "lin-1-flaky").record("mode", 0)
    assert rec.status == "done" and rec.attempt == 2 and rec.previous_attempts[0]["status"] == "failed"


def test_a_task_failing_every_attempt_is_marked_failed_and_does_not_block(file_harness):
    store = file_harness.store
    small_task(store, "broken")
    time.sleep(0.05)
    small_task(store, "fine")
    sched = file_harness.scheduler(env={"FAKE_FAIL_TASKS": "broken"})
    assert sched.run() == 1  # a round failed for good
    st = state_json(store)
    assert st["failed"]["broken"]["attempts"] == 3 and "fake failure" in st["failed"]["broken"]["error"]
    assert [t["task"] for t in st["learned"]] == ["fine"]
    assert st["learned"][0]["from_run"] is None  # the failed round left the model as it was
    assert sorted(file_harness.trained("lin-1-broken")) == ["1", "2", "3"]
    # not retried while its files are unchanged; retried (under a new run name) once they change
    again = file_harness.scheduler()
    assert again.run() == 0 and not again.events.of("submitted")
    small_task(store, "broken", token=40)
    fixed = file_harness.scheduler()
    assert fixed.run() == 0
    st = state_json(store)
    assert [t["task"] for t in st["learned"]] == ["fine", "broken"]
    assert st["learned"][1]["run"] == "lin-2-broken" and st["learned"][1]["from_run"] == "lin-1-fine"


def _in_flight(harness, task: str, **fields) -> InFlightRound:
    """Write a state with an in-flight round, as a scheduler killed at some point would leave it."""
    states = StateStore(harness.store, harness.lineage)
    st = states.load()
    inf = InFlightRound(**{"task": task, "n": 1, "run": f"lin-1-{task}", "from_run": None, "attempt": 1,
                           "runner": "embedded", "submission_id": f"lin-1-{task}-a1", "ready_time": time.time(), **fields})
    st.in_flight = inf
    states.save(st)
    return inf


def _run_job(harness, inf: InFlightRound, env=None, wait=True):
    args = round_args(harness.settings, harness.store.url, task=inf.task, run=inf.run, from_run=None)
    runner = EmbeddedRunner(str(harness.tmp_path / "logs"), job_script=FAKE_JOB, env=env)
    fields = runner.submit(inf, args, harness.store.url)
    if wait:
        runner._children[inf.submission_id].wait(60)
    return fields, runner


def test_killed_before_submitting_submits_once(harness):
    small_task(harness.store, "t")
    _in_flight(harness, "t")  # write-ahead record, no job
    sched = harness.scheduler()
    assert sched.run() == 0
    assert len(sched.events.of("submitted")) == 1 and harness.trained("lin-1-t") == ["1"]
    assert [t["task"] for t in state_json(harness.store)["learned"]] == ["t"]


def test_killed_after_the_job_finished_records_it_without_training_again(file_harness):
    small_task(file_harness.store, "t")
    inf = _in_flight(file_harness, "t")
    fields, _ = _run_job(file_harness, inf)  # the job ran to its end; the scheduler died before recording it
    st = StateStore(file_harness.store, "lin").load()
    st.in_flight.pid, st.in_flight.pid_started, st.in_flight.host = fields["pid"], fields["pid_started"], fields["host"]
    StateStore(file_harness.store, "lin").save(st)
    sched = file_harness.scheduler()
    assert sched.run() == 0
    assert not sched.events.of("submitted") and len(sched.events.of("finished")) == 1
    assert file_harness.trained("lin-1-t") == ["1"]


def test_killed_while_the_job_runs_reattaches_to_it(file_harness):
    small_task(file_harness.store, "t")
    inf = _in_flight(file_harness, "t")
    # the job outlives its scheduler (own session); the pid reached only the local pid file
    _run_job(file_harness, inf, env={"FAKE_SLEEP": "3"}, wait=False)
    sched = file_harness.scheduler()
    assert sched.run() == 0
    assert len(sched.events.of("reattached")) == 1 and not sched.events.of("submitted")
    assert file_harness.trained("lin-1-t") == ["1"]
    assert state_json(file_harness.store)["learned"][0]["attempts"] == 1


def test_job_killed_with_its_scheduler_is_resumed_at_once(file_harness):
    store = file_harness.store
    small_task(store, "t")
    inf = _in_flight(file_harness, "t")
    fields, runner = _run_job(file_harness, inf, env={"FAKE_SLEEP": "30"}, wait=False)
    deadline = time.time() + 30
    while not file_harness.trained("lin-1-t") and time.time() < deadline:
        time.sleep(0.1)
    runner._children[inf.submission_id].kill()  # the job dies mid-round
    runner._children[inf.submission_id].wait()
    st = StateStore(store, "lin").load()
    st.in_flight.pid, st.in_flight.pid_started, st.in_flight.host = fields["pid"], fields["pid_started"], fields["host"]
    StateStore(store, "lin").save(st)
    sched = file_harness.scheduler()
    assert sched.run() == 0
    failed = sched.events.of("failed")
    assert len(failed) == 1 and failed[0]["state"] == "GONE" and failed[0]["retry_in_s"] == 0
    assert [e["attempt"] for e in sched.events.of("submitted")] == [2]
    rec = Ledger.open(store, "lin-1-t").record("mode", 0)
    assert rec.status == "done" and rec.attempt == 2 and rec.previous_attempts[0]["status"] == "interrupted"


def test_two_schedulers_train_each_task_once(harness):
    store = harness.store
    for name in ("one", "two"):
        small_task(store, name)
        time.sleep(1.05)
    a = harness.scheduler(env={"FAKE_SLEEP": "0.5"})
    b = harness.scheduler(env={"FAKE_SLEEP": "0.5"})
    codes = {}
    threads = [threading.Thread(target=lambda s=s, k=k: codes.__setitem__(k, s.run())) for k, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert codes == {"a": 0, "b": 0}
    submitted = a.events.of("submitted") + b.events.of("submitted")
    assert sorted(e["task"] for e in submitted) == ["one", "two"]
    assert len(a.events.of("lease_waiting") + b.events.of("lease_waiting")) >= 1
    assert harness.trained("lin-1-one") == ["1"] and harness.trained("lin-2-two") == ["1"]
    assert [t["task"] for t in state_json(store)["learned"]] == ["one", "two"]


class FakeJobClient:
    """The few JobSubmissionClient calls the Ray-job runner makes; jobs 'run' the stand-in synchronously."""

    def __init__(self, store_env=None):
        self.jobs: dict[str, dict] = {}
        self.submits = 0

    def submit_job(self, *, entrypoint, submission_id, runtime_env=None, metadata=None):
        self.submits += 1
        if submission_id in self.jobs:
            raise RuntimeError(f"Job with submission_id {submission_id} already exists. Please use a different submission_id.")
        argv = entrypoint.split()
        assert argv[:2] == ["python", FAKE_JOB]
        proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, cwd=(runtime_env or {}).get("working_dir", ROOT))
        self.jobs[submission_id] = {"status": "SUCCEEDED" if proc.returncode == 0 else "FAILED",
                                    "logs": proc.stdout + proc.stderr, "rc": proc.returncode}
        return submission_id

    def get_job_info(self, submission_id):
        if submission_id not in self.jobs:
            raise RuntimeError(f"Request failed with status code 404: Job {submission_id} does not exist.")
        j = self.jobs[submission_id]
        return type("Info", (), {"status": j["status"], "driver_exit_code": j["rc"], "message": ""})()

    def get_job_logs(self, submission_id):
        return self.jobs[submission_id]["logs"]


def test_ray_job_runner_submits_by_deterministic_id_and_reattaches(file_harness):
    from cl_platform.scheduler.events import EventLog
    from cl_platform.scheduler.lease import Lease
    from cl_platform.scheduler.loop import Scheduler, SchedulerOptions

    store = file_harness.store
    small_task(store, "t")
    client = FakeJobClient()

    def make():
        lease = Lease(store, "lin", ttl=30)
        return Scheduler(store, "lin", file_harness.settings, RayJobRunner("http://x:8265", job_script=FAKE_JOB, client=client),
                         lease=lease, events=EventLog("lin", lease.holder, stream=None),
                         options=SchedulerOptions(poll_seconds=0.1, follow_seconds=0.05, once=True))

    # a scheduler died right after submitting: state still says "in flight, not submitted"
    inf = _in_flight(file_harness, "t", runner="ray-job")
    client.submit_job(entrypoint=f"python {FAKE_JOB} " + " ".join(
        round_args(file_harness.settings, store.url, task="t", run=inf.run, from_run=None)),
        submission_id=inf.submission_id, runtime_env={"working_dir": ROOT})
    sched = make()
    assert sched.run() == 0
    assert not sched.events.of("submitted") and len(sched.events.of("finished")) == 1
    assert client.submits == 1 and file_harness.trained("lin-1-t") == ["1"]
    # a new task goes through submit_job with id <run>-a1
    small_task(store, "u")
    sched = make()
    assert sched.run() == 0
    assert list(client.jobs) == ["lin-1-t-a1", "lin-2-u-a1"]
    assert sched.events.of("submitted")[0]["runner"] == "ray-job"


def test_hook_runs_after_every_k_learned_tasks(file_harness, tmp_path):
    store = file_harness.store
    out = tmp_path / "hook.txt"
    cmd = f"{sys.executable} -c \"open('{out}', 'a').write('{{n}} {{run}} {{tasks}}\\n')\""
    settings = LineageSettings(hook_every=2, hook_command=cmd, retry_base_seconds=0.1)
    for name in ("a1", "a2", "a3"):
        small_task(store, name)
        time.sleep(0.02)
    sched = file_harness.scheduler(settings=settings)
    assert sched.run() == 0
    hooks = state_json(store)["hooks"]
    assert [h["n"] for h in hooks] == [2] and "lin-2-a2" in hooks[0]["command"]
    deadline = time.time() + 20
    while not out.exists() and time.time() < deadline:
        time.sleep(0.1)
    assert out.read_text().strip() == "2 lin-2-a2 a1,a2"


def _cli(*args, env=None, timeout=120):
    e = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, os.path.join(ROOT, "jobs", "scheduler.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, env=e, timeout=timeout)


def test_cli_run_once_status_and_settings_change(tmp_path):
    from cl_platform.scheduler.events import parse_events
    from cl_platform.store import Store

    url = f"file://{tmp_path}/store"
    store = Store(url)
    small_task(store, "t")
    store.write_bytes("tasks/t2/manifest.json", b"{oops")
    store.write_bytes("tasks/t2/_READY", b"x")
    proc = _cli("run", "--store", url, "--lineage", "cli", "--once", "--quick", "--steps", "2", "--poll-seconds", "0.2",
                "--log-dir", str(tmp_path / "logs"), "--job-script", FAKE_JOB)
    assert proc.returncode == 0, proc.stderr
    events = parse_events(proc.stdout)
    # t landed first: it is trained first, then t2 is found bad
    assert [(e["event"], e["task"]) for e in events if e["event"] in ("quarantined", "submitted", "finished")] == \
        [("submitted", "t"), ("finished", "t"), ("quarantined", "t2")]
    assert all(e["lineage"] == "cli" for e in events)
    assert json.loads(store.read_bytes("lineages/cli/lineage.json"))["settings"]["steps"] == 2
    status = _cli("status", "--store", url, "--lineage", "cli", "--json")
    doc = json.loads(status.stdout)
    assert doc["current_model"]["run"] == "cli-1-t"
    assert doc["state"]["learned"][0]["metrics"]["avg_accuracy"] == 0.75
    assert "not valid JSON" in doc["state"]["quarantined"]["t2"]["reason"]
    table = _cli("status", "--store", url, "--lineage", "cli").stdout
    assert "cli-1-t" in table and "0.750" in table and "quarantined (1)" in table
    # other flags on a later start: in force, and the difference from the record is reported
    again = _cli("run", "--store", url, "--lineage", "cli", "--once", "--steps", "5", "--poll-seconds", "0.2",
                 "--log-dir", str(tmp_path / "logs"), "--job-script", FAKE_JOB)
    assert again.returncode == 0, again.stderr
    differ = [e for e in parse_events(again.stdout) if e["event"] == "settings_differ"]
    assert differ and differ[0]["differences"]["steps"] == {"recorded": 2, "in_force": 5}
    assert json.loads(store.read_bytes("lineages/cli/lineage.json"))["settings"]["steps"] == 5


def test_a_scheduler_whose_lease_is_taken_over_stops_and_the_new_holder_reattaches(file_harness):
    from cl_platform.scheduler.lease import LeaseRecord

    store = file_harness.store
    small_task(store, "t")
    a = file_harness.scheduler(env={"FAKE_SLEEP": "4"}, ttl=1.5)
    codes = []
    th = threading.Thread(target=lambda: codes.append(a.run()))
    th.start()
    deadline = time.time() + 60
    while not a.events.of("submitted") and time.time() < deadline:
        time.sleep(0.05)
    gen = a.lease.generation
    now = time.time()
    # another scheduler takes over (as if a's renewals had stalled past the expiry)
    store.write_bytes_if_absent(f"lineages/lin/lease/{gen + 1:012d}.json", LeaseRecord(
        generation=gen + 1, holder="b", host="h", pid=1, acquired_at=now, renewed_at=now, expires_at=now + 1).to_bytes())
    th.join(60)
    assert codes == [4] and a.events.of("lease_lost") and not a.events.of("finished")
    c = file_harness.scheduler()
    assert c.run() == 0
    assert [e["task"] for e in c.events.of("reattached")] == ["t"] and not c.events.of("submitted")
    assert file_harness.trained("lin-1-t") == ["1"]
    assert [t["task"] for t in state_json(store)["learned"]] == ["t"]



def test_a_head_that_asks_to_try_again_later_gets_the_round_again(file_harness, monkeypatch):
    """A Ray head whose job agent is still starting answers 500 "try again later": the submission
    is retried under the same id instead of failing the scheduler."""
    client = FakeJobClient()
    real, refusals = client.submit_job, []

    def flaky(**kwargs):
        if len(refusals) < 2:
            refusals.append(kwargs["submission_id"])
            raise RuntimeError("Request failed with status code 500: No available agent to submit job, please try again later..")
        return real(**kwargs)

    client.submit_job = flaky
    monkeypatch.setattr(RayJobRunner, "SUBMIT_RETRY_SECONDS", (0.01, 0.01, 0.01))
    inf = _in_flight(file_harness, "t", runner="ray-job")
    small_task(file_harness.store, "t")
    runner = RayJobRunner("http://x:8265", job_script=FAKE_JOB, client=client)
    args = round_args(file_harness.settings, file_harness.store.url, task="t", run=inf.run, from_run=None)
    assert runner.submit(inf, args, file_harness.store.url)["host"]
    assert refusals == [inf.submission_id] * 2 and client.submits == 1
    client.submit_job = lambda **kw: (_ for _ in ()).throw(RuntimeError("500: please try again later"))
    with pytest.raises(RuntimeError, match="try again later"):  # not forever
        runner.submit(inf, args, file_harness.store.url)
