"""Split brain: two schedulers (or two hosts) acting on one lineage at once, from the outside.

The attack of the hardening issue: a scheduler whose lease expired while it was paused (a long GC
pause, a stopped process, a request stuck in the network) sends a lineage-state write after a
successor took over. It must fail, the successor's state must stay as the successor wrote it, and
no task may be trained twice. Here the pause is a store whose writes are held back from the
moment the paused scheduler sends one (its lease renewals too, so its lease really expires), then
let through once the successor has acted: exactly what a stopped process does when it resumes.

The second part is the embedded runner seen from another host: a round whose process runs where
the successor cannot see it must not be taken for gone and trained again at once.

Every scheduler here runs the stand-in job of the scheduler tests on a stand-in model (the
``tasks`` suite with a spec file), so no model is trained or resolved.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from dataclasses import replace
from typing import Callable

from tests.support.sched_helpers import FAKE_JOB, Harness, small_task

from cl_platform.scheduler.config import LineageSettings
from cl_platform.scheduler.loop import EXIT_LEASE_LOST
from cl_platform.scheduler.runner import GONE, NOT_FOUND, RUNNING, EmbeddedRunner, round_args
from cl_platform.scheduler.state import InFlightRound, StateConflictError, StateStore
from cl_platform.store import Store
from cl_platform.suites.digits.vocab import DIGITS_SPEC
from cl_platform.train import ledger as ledger_mod

STATE = "lineages/lin/state.json"


def _settings(tmp_path) -> LineageSettings:
    """Rounds of the stand-in job on a stand-in model: the tasks suite with the digits spec from a file."""
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(DIGITS_SPEC.to_dict()))
    return LineageSettings(model="models/stand-in", spec=str(spec), quick=True, max_attempts=3,
                           retry_base_seconds=0.2, retry_max_seconds=1.0)


class PausedStore(Store):
    """The paused scheduler's view of the store.

    From the first write that ``pause_when(path, data)`` matches, that write and every later one
    (whatever the method) wait until :attr:`resume` is set, then go through as sent.
    """

    def __init__(self, url: str, pause_when: Callable[[str, bytes], bool]) -> None:
        super().__init__(url)
        self.pause_when = pause_when
        self.hit = threading.Event()
        self.resume = threading.Event()

    def _gate(self, path: str, data: bytes) -> None:
        if not self.hit.is_set() and self.pause_when(path, bytes(data)):
            self.hit.set()
        if self.hit.is_set():
            self.resume.wait(120)

    def write_bytes(self, path, data):
        self._gate(path, data)
        return super().write_bytes(path, data)

    def write_bytes_if_absent(self, path, data):
        self._gate(path, data)
        return super().write_bytes_if_absent(path, data)

    def write_bytes_if_match(self, path, data, expected):
        self._gate(path, data)
        return super().write_bytes_if_match(path, data, expected)


def _quarantining_bad(path: str, data: bytes) -> bool:
    return path == STATE and b'"BAD"' in data


def _state_bytes(store: Store):
    return store.read_bytes(STATE) if store.exists(STATE) else None


def test_a_paused_holder_cannot_write_over_its_successor(store, tmp_path):
    settings = _settings(tmp_path)
    store.write_bytes("tasks/BAD/_READY", b"now\n")  # an invalid name: the first thing a scheduler records
    small_task(store, "one")
    paused = PausedStore(store.url, _quarantining_bad)
    a = Harness(paused, tmp_path).scheduler(holder="a", ttl=2.0, settings=settings)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(code=a.run()))
    runner.start()
    try:
        assert paused.hit.wait(60), "scheduler a never wrote the lineage state"
        # a is stopped with a state write in flight; it renews nothing, its lease expires, b takes over
        b = Harness(store, tmp_path).scheduler(holder="b", settings=settings)
        assert b.run() == 0
        successor = store.read_bytes(STATE)
        assert [t["task"] for t in json.loads(successor)["learned"]] == ["one"]
    finally:
        paused.resume.set()  # a resumes: its write arrives now
        runner.join(60)
    assert result["code"] == EXIT_LEASE_LOST and a.events.of("lease_lost")  # a stopped as a lease loser does
    assert store.read_bytes(STATE) == successor  # the successor's revision is intact
    # a third scheduler has nothing to do: 'one' was trained once, by b
    c = Harness(store, tmp_path).scheduler(holder="c", settings=settings)
    assert c.run() == 0 and not c.events.of("submitted")
    assert store.walk("fake/trained") == ["fake/trained/lin-1-one/1"]


def test_a_late_write_fails_as_soon_as_a_successor_holds_the_lease(store, tmp_path):
    settings = _settings(tmp_path)
    store.write_bytes("tasks/BAD/_READY", b"now\n")
    paused = PausedStore(store.url, _quarantining_bad)
    a = Harness(paused, tmp_path).scheduler(holder="a", ttl=1.0, settings=settings)
    assert a.lease.try_acquire()
    errors: list[BaseException] = []

    def step() -> None:
        try:
            a.step()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            errors.append(exc)

    stepping = threading.Thread(target=step)
    stepping.start()
    try:
        assert paused.hit.wait(60), "scheduler a never wrote the lineage state"
        time.sleep(1.3)  # a's lease expires while its write is held back
        b = Harness(store, tmp_path).scheduler(holder="b", settings=settings)
        assert b.lease.try_acquire()  # b only takes the lease over, and writes nothing else
        successor = _state_bytes(store)
    finally:
        paused.resume.set()
        stepping.join(60)
    assert len(errors) == 1 and isinstance(errors[0], StateConflictError), errors
    assert _state_bytes(store) == successor
    assert "BAD" not in StateStore(store, "lin").load().quarantined


def test_a_second_host_waits_for_a_round_it_cannot_see(tmp_path, monkeypatch):
    """Host A's scheduler died with its round's process running on A; host B's scheduler follows it
    until its heartbeat goes stale, finds it learned, and trains nothing itself."""
    monkeypatch.setattr(ledger_mod, "HEARTBEAT_STALE_SECONDS", 8.0, raising=False)
    store = Store(f"file://{tmp_path}/store")
    settings = _settings(tmp_path)
    harness = Harness(store, tmp_path)
    small_task(store, "t")
    states = StateStore(store, "lin")
    st = states.load()
    inf = InFlightRound(task="t", n=1, run="lin-1-t", from_run=None, attempt=1, runner="embedded",
                        submission_id="lin-1-t-a1", ready_time=time.time(), holder="host-a:1:dead")
    st.in_flight = inf
    states.save(st)
    on_a = EmbeddedRunner(str(tmp_path / "logs-host-a"), job_script=FAKE_JOB, env={"FAKE_SLEEP": "3"})
    fields = on_a.submit(inf, round_args(settings, store.url, task="t", run=inf.run, from_run=None), store.url)
    fields["host"] = "host-a"  # seen from here, the process runs on another host
    st = states.load()
    st.in_flight = replace(inf, submitted_at=time.time(), **fields)
    states.save(st)
    try:
        b = harness.scheduler(holder="b", settings=settings)
        assert b.run() == 0
    finally:
        on_a._children[inf.submission_id].wait(60)
    assert harness.trained("lin-1-t") == ["1"]  # trained once, on host A
    assert not b.events.of("submitted") and not b.events.of("failed")
    assert [e["attempt"] for e in b.events.of("finished")] == [1]
    assert "host-a" in b.events.of("reattached")[0]["message"]


def test_the_rule_for_a_process_on_another_host(tmp_path, monkeypatch):
    """Presumed running until its last sign of life (heartbeat, else submission) is older than the limit."""
    monkeypatch.setattr(ledger_mod, "HEARTBEAT_STALE_SECONDS", 60.0)
    store = Store(f"file://{tmp_path}/store")
    runner = EmbeddedRunner(str(tmp_path / "logs"))
    now = time.time()
    rec = InFlightRound(task="t", n=1, run="lin-1-t", from_run=None, attempt=1, runner="embedded",
                        submission_id="lin-1-t-a1", pid=4242, host="host-a", store=store.url, submitted_at=now - 5)
    assert runner.status(rec).state == RUNNING  # just submitted, no heartbeat yet: still starting
    old = replace(rec, submitted_at=now - 600)
    assert runner.status(old).state == GONE  # no sign of life for longer than the limit
    beat = {"method": "mode", "round": 0, "attempt": 1, "host": "host-a", "pid": 4242}
    store.write_json(ledger_mod.heartbeat_path("lin-1-t"), {**beat, "at": now - 30})
    assert runner.status(old).state == RUNNING  # it trains: the heartbeat is fresh
    store.write_json(ledger_mod.heartbeat_path("lin-1-t"), {**beat, "at": now - 90})
    gone = runner.status(old)
    assert gone.state == GONE and "host-a" in gone.message
    # no process recorded yet (its scheduler died right after the write-ahead record) by a holder on host A
    unseen = replace(rec, pid=None, host=None, store=None, submitted_at=None, detected_at=now, holder="host-a:7:abcd")
    assert runner.status(unseen).state == RUNNING
    assert runner.status(replace(unseen, detected_at=now - 600)).state == GONE
    # the same on this host: nothing was started (no pid file), as before
    here = replace(unseen, holder=f"{socket.gethostname()}:7:abcd")
    assert runner.status(here).state == NOT_FOUND

