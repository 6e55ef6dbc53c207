"""The scheduler loop: hold the lease, find new tasks, validate, train one round at a time.

One pass (:meth:`Scheduler.step`) does the first thing that applies:

1. an in-flight round in the state: follow it to its end (re-attaching to a job an earlier
   scheduler started; a round never submitted is first checked against the run's ledger), then
   record the outcome: learned (checkpoint and metrics), a retry with backoff, or failed;
2. a pending retry that is due: resubmit it (same run, ``--resume``);
3. otherwise scan ``tasks/`` in landing order: quarantine bad tasks (and invalid names), look
   again at quarantined or failed ones only when their files changed, and start a round for the
   first valid new task.

Retries block the tasks behind them (rounds stay in landing order); quarantined and failed tasks
do not. Every decision is written to the lineage state before it is acted on (write-ahead), so a
scheduler killed at any point and restarted neither loses a task nor trains one twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Optional

from cl_platform.scheduler.config import LineageSettings, lineage_dir, record_settings, tune_sweep_doc, tuned_job_args
from cl_platform.scheduler.detect import content_fingerprint, listing_signature, scan_tasks
from cl_platform.scheduler.events import EventLog
from cl_platform.scheduler.lease import Lease, LeaseKeeper, LeaseLost
from cl_platform.scheduler.progress import guard_crossings, lineage_summary
from cl_platform.scheduler.report import write_lineage_report
from cl_platform.scheduler.runner import GONE, NOT_FOUND, JobStatus, Runner, round_args
from cl_platform.scheduler.state import (
    FailedTask, HeldRound, InFlightRound, LearnedTask, LineageState, PendingRetry, QuarantinedTask, StateConflictError, StateStore,
)
from cl_platform.scheduler.validate import Verdict, invalid_name_verdict, lineage_context, lineage_spec, validate_task
from cl_platform.store import Store
from cl_platform.suites import available_suites

#: The module whose ``tune`` command runs a lineage's sweep (the command line's: it may use the sweeps).
TUNE_MODULE = "cl_platform.cli.scheduler"
#: Exit codes of :meth:`Scheduler.run`.
EXIT_OK, EXIT_FAILED_ROUNDS, EXIT_NO_LEASE, EXIT_LEASE_LOST = 0, 1, 3, 4
#: Longest error text kept in the state.
MAX_ERROR_CHARS = 3000
#: Metrics copied from a round's ledger record into the lineage state.
ROUND_METRICS = ("accuracy", "earlier_accuracy", "generation_score", "base_generation_score", "loss", "train_seconds",
                 "eval_seconds")


@dataclass
class SchedulerOptions:
    """How the loop behaves (not stored: per process).

    Attributes:
        poll_seconds: pause between scans of ``tasks/`` when there is nothing to do.
        follow_seconds: pause between checks of a running round.
        once: handle what is in the store now (rounds, retries included) and return.
        lease_wait_seconds: with ``once``, give up after waiting this long for another
            scheduler's lease (``None``: wait until it is released or expires).
    """

    poll_seconds: float = 10.0
    follow_seconds: float = 2.0
    once: bool = False
    lease_wait_seconds: Optional[float] = None


def round_run_name(lineage: str, n: int, task: str, taken: Callable[[str], bool]) -> str:
    """``<lineage>-<n>-<task>``, kept within 64 characters; ``-v2``, ``-v3``, ... while ``taken(name)``."""
    base = f"{lineage}-{n}-{task}"
    if len(base) > 64:
        digest = hashlib.sha256(task.encode()).hexdigest()[:6]
        base = f"{lineage}-{n}-{task[: 64 - len(lineage) - len(str(n)) - 9]}-{digest}"
    name, k = base, 2
    while taken(name):
        suffix = f"-v{k}"
        name = base[: 64 - len(suffix)] + suffix
        k += 1
    return name


@dataclass
class Outcome:
    """What the run's ledger says about a round.

    Attributes:
        done: every round of the run is done for the lineage's method.
        checkpoint: the run's final checkpoint URI when done.
        metrics: round and results metrics when done.
    """

    done: bool
    checkpoint: Optional[str] = None
    metrics: Optional[dict[str, Any]] = None


def read_outcome(store: Store, run: str, method: str) -> Outcome:
    """The outcome of ``run`` from its ledger (and ``results.json`` for the summary metrics)."""
    from cl_platform.train.ledger import Ledger, RunNotFoundError

    try:
        ledger = Ledger.open(store, run)
    except RunNotFoundError:
        return Outcome(done=False)
    if method not in ledger.methods or not ledger.is_complete(method):
        return Outcome(done=False)
    rec = ledger.record(method, len(ledger.task_order) - 1)
    metrics: dict[str, Any] = {}
    if rec is not None:
        for k in ROUND_METRICS:
            if k in rec.metrics:
                v = rec.metrics[k]
                metrics[k] = v[-1] if k == "accuracy" and isinstance(v, list) and v else v
    try:
        results = store.read_json(f"runs/{run}/results.json")
        metrics.update(results["methods"][method]["metrics"])
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        pass
    return Outcome(done=True, checkpoint=ledger.last_checkpoint(method, include_parent=False), metrics=metrics)


class Scheduler:
    """Automated retraining of one lineage (see the module docstring).

    Args:
        store: the store holding ``tasks/``, ``runs/`` and ``lineages/``.
        lineage: the lineage name.
        settings: the lineage's settings (:func:`~cl_platform.scheduler.config.ensure_settings`).
        runner: where rounds run (:mod:`cl_platform.scheduler.runner`).
        lease: this scheduler's lease handle (its holder id names the scheduler).
        events: the structured log.
        options: loop timings and ``once``.
        clock: time source.
    """

    def __init__(self, store: Store, lineage: str, settings: LineageSettings, runner: Runner, *, lease: Lease,
                 events: EventLog, options: SchedulerOptions = SchedulerOptions(),
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.lineage = lineage
        self.settings = settings
        self.runner = runner
        self.lease = lease
        self.events = events
        self.options = options
        self.clock = clock
        self.states = StateStore(store, lineage, fence=lease.check)
        self.stop_event = threading.Event()
        self.permanent_failures = 0
        self._spec = None
        self._context: Optional[int] = None  # tokens per row the lineage's model takes (0: unknown)
        self._mine: set[str] = set()  # submission ids this process submitted (not re-attached)
        self._keeper: Optional[LeaseKeeper] = None
        self._lost_error: Optional[BaseException] = None

    # ------------------------------------------------------------------ control
    def stop(self) -> None:
        """Ask the loop to end (a signal handler calls this). A running round keeps running."""
        self.stop_event.set()

    def _halted(self) -> bool:
        return self.stop_event.is_set() or (self._keeper is not None and self._keeper.lost.is_set())

    @property
    def spec(self):
        if self._spec is None:
            self._spec = lineage_spec(self.store, self.settings)
        return self._spec

    def run(self) -> int:
        """Acquire the lease and loop until done (``once``) or stopped; returns an exit code."""
        self.events.emit("started", store=self.store.url, runner=self.runner.kind, once=self.options.once,
                         poll_seconds=self.options.poll_seconds, settings=self.settings.to_dict())
        code = EXIT_OK
        try:
            while not self.stop_event.is_set():
                if not self._wait_for_lease():
                    code = EXIT_NO_LEASE if not self.stop_event.is_set() else EXIT_OK
                    break
                self._record_settings()
                self._keeper = LeaseKeeper(self.lease).start()
                try:
                    code = self._act()
                finally:
                    self._keeper.stop()
                if self._keeper.lost.is_set() or code == EXIT_LEASE_LOST:
                    self.events.emit("lease_lost", error=str(self._keeper.error or self._lost_error))
                    self._keeper = None
                    if self.options.once:
                        code = EXIT_LEASE_LOST
                        break
                    continue  # wait for the lease again
                break
        finally:
            if self.lease.held and self.lease.release():
                self.events.emit("lease_released")
            self.events.emit("stopped", code=code, permanent_failures=self.permanent_failures)
        return code

    def _record_settings(self) -> None:
        """Record the settings in force in ``lineage.json`` and report how they differ from the
        last record (which is data: never obeyed)."""
        try:
            diff = record_settings(self.store, self.lineage, self.settings, holder=self.lease.holder, at=self.clock())
        except Exception as exc:  # the record is for people; a failed write must not stop the lineage
            self.events.emit("error", error=f"recording the settings: {type(exc).__name__}: {exc}")
            return
        if diff:
            self.events.emit("settings_differ", differences=diff,
                             note="lineage.json held other settings; the command line's are in force")

    def _wait_for_lease(self) -> bool:
        start = self.clock()
        announced = False
        while not self.stop_event.is_set():
            if self.lease.try_acquire():
                self.events.emit("lease_acquired", generation=self.lease.generation, ttl=self.lease.ttl)
                return True
            if not announced:
                cur = self.lease.current()
                self.events.emit("lease_waiting", held_by=cur.holder if cur else None,
                                 expires_at=cur.expires_at if cur else None)
                announced = True
            limit = self.options.lease_wait_seconds
            if self.options.once and limit is not None and self.clock() - start >= limit:
                return False
            self.stop_event.wait(min(self.options.poll_seconds, 2.0))
        return False

    def _act(self) -> int:
        while not self._halted():
            try:
                did = self.step()
            except (LeaseLost, StateConflictError) as exc:
                # the lease check before a state write found another holder, or the conditional write
                # itself lost (a successor fenced the state, or wrote it): stop as a lease loser does;
                # the state is read afresh once the lease is held again, never written blindly
                self._lost_error = exc
                return EXIT_LEASE_LOST
            except Exception as exc:
                if self.options.once:
                    raise
                self.events.emit("error", error=f"{type(exc).__name__}: {exc}")
                self.stop_event.wait(self.options.poll_seconds)
                continue
            if did:
                continue
            state = self.states.load()
            if self.options.once and state.in_flight is None and state.tuning is None and not state.retries:
                return EXIT_FAILED_ROUNDS if self.permanent_failures else EXIT_OK
            self.stop_event.wait(self._idle_wait(state))
        return EXIT_OK

    def _idle_wait(self, state: LineageState) -> float:
        wait = self.options.poll_seconds
        for r in state.retries.values():
            wait = min(wait, max(0.05, r.next_at - self.clock()))
        return wait

    # ------------------------------------------------------------------ one pass
    def step(self) -> bool:
        """One pass (see the module docstring); True when it did something."""
        state = self.states.load()
        if state.in_flight is not None:
            self._follow(state)
            return True
        if state.tuning is not None:
            self._follow_tune(state)
            return True
        if state.retries:
            retry = next(iter(state.retries.values()))
            if self.clock() < retry.next_at:
                self._scan(state, start=False)  # still quarantine bad tasks meanwhile
                return False
            changed = self._changed_since_validation(retry.task, retry.digest)
            if changed is not None:  # re-validated before every retry: never train what was not validated
                state.retries.pop(retry.task, None)
                self._quarantine(state, retry.task, *changed)
                return True
            self._start_round(state, retry.task, ready_time=retry.ready_time, fingerprint=retry.fingerprint,
                              attempt=retry.attempts + 1, run=retry.run, digest=retry.digest)
            return True
        return self._scan(state, start=True)

    def _scan(self, state: LineageState, *, start: bool) -> bool:
        blocked = set(state.retries)
        for cand in scan_tasks(self.store, skip=state.learned_names()):
            if self._halted():
                return False
            name = cand.name
            if not self.settings.includes(name) or name in blocked:
                continue
            if not cand.valid_name:
                if name not in state.quarantined:
                    v = invalid_name_verdict(name)
                    state.quarantined[name] = QuarantinedTask(task=name, reason=v.reason, at=self.clock())
                    self.states.save(state)
                    self.events.emit("quarantined", task=name, reason=v.reason, file=None)
                continue
            prior = state.quarantined.get(name) or state.failed.get(name) or state.held.get(name)
            if prior is not None:
                sig = listing_signature(self.store, name)
                if sig == prior.signature:
                    continue
                fp = content_fingerprint(self.store, name)
                if fp == prior.fingerprint:
                    prior.signature = sig  # touched, not changed
                    self.states.save(state)
                    continue
                state.quarantined.pop(name, None)
                state.failed.pop(name, None)
                state.held.pop(name, None)
                self.states.save(state)
                self.events.emit("released_from_quarantine", task=name, fingerprint=fp)
            if not start:
                continue
            detected = self.clock()
            self.events.emit("detected", task=name, ready_time=cand.ready_time,
                             since_ready_s=round(detected - cand.ready_time, 3))
            verdict = self._validate(name)
            if verdict.ok:
                verdict = self._suite_rule(verdict)
            if not verdict.ok:
                self._quarantine(state, name, verdict.reason or "invalid", verdict.file)
                continue
            fp = content_fingerprint(self.store, name)
            self.events.emit("validated", task=name, train_rows=verdict.train_rows, fingerprint=fp, digest=verdict.digest)
            self._start_round(state, name, ready_time=cand.ready_time, fingerprint=fp, attempt=1, detected_at=detected,
                              digest=verdict.digest)
            return True
        return False

    def _validate(self, name: str) -> Verdict:
        if self._context is None:
            self._context = lineage_context(self.store, self.settings) or 0
        return validate_task(self.store, name, self.spec, min_rows=self.settings.min_rows,
                             max_tokens=self._context or None)

    def _quarantine(self, state: LineageState, name: str, reason: str, file: Optional[str]) -> None:
        fp = content_fingerprint(self.store, name)
        state.quarantined[name] = QuarantinedTask(task=name, reason=reason, file=file, fingerprint=fp,
                                                  signature=listing_signature(self.store, name), at=self.clock())
        self.states.save(state)
        self.events.emit("quarantined", task=name, reason=reason, file=file, fingerprint=fp)

    def _suite_rule(self, verdict: Verdict) -> Verdict:
        """A task a built-in suite wrote for its own runs (``meta.suite`` in its manifest) is
        learned only by lineages of that suite: a benchmark run on a shared bucket must not feed
        its tasks to a production lineage."""
        from cl_platform.data.task_format import read_manifest

        try:
            owner = (read_manifest(self.store, verdict.task).get("meta") or {}).get("suite")
        except Exception as exc:  # read a moment ago; whatever changed since is the task's problem
            return replace(verdict, ok=False, reason=f"{type(exc).__name__}: {exc}", file="manifest.json")
        mine = self.settings.run_request().suite
        if isinstance(owner, str) and owner in available_suites() and owner != mine:
            return replace(verdict, ok=False, file="manifest.json",
                           reason=f"task {verdict.task!r} file 'manifest.json': written by the {owner!r} suite for its own "
                                  f"runs (meta.suite); this lineage learns with suite {mine!r}")
        return verdict

    def _changed_since_validation(self, task: str, digest: Optional[str]) -> Optional[tuple[str, Optional[str]]]:
        """``(reason, file)`` when task ``task`` is no longer valid or no longer the version that was
        validated (its manifest's sha256 differs from ``digest``); ``None`` when it is unchanged."""
        verdict = self._validate(task)
        if not verdict.ok:
            return verdict.reason or "invalid", verdict.file
        if digest is not None and verdict.digest != digest:
            return (f"task {task!r} file 'manifest.json': changed after it was validated (sha256 {verdict.digest}, "
                    f"validated {digest}); the round does not train files it did not validate"), "manifest.json"
        return None

    # ------------------------------------------------------------------ rounds
    def _start_round(self, state: LineageState, task: str, *, ready_time: Optional[float], fingerprint: Optional[str],
                     attempt: int, run: Optional[str] = None, detected_at: Optional[float] = None,
                     digest: Optional[str] = None) -> None:
        n = len(state.learned) + 1
        if run is None:  # a fresh round never reuses a run name (a failed incarnation's, or anyone's)
            used = state.used_runs()
            run = round_run_name(self.lineage, n, task,
                                 lambda name: name in used or self.store.exists(f"runs/{name}/ledger.json"))
        latest = state.latest
        state.retries.pop(task, None)
        state.in_flight = InFlightRound(
            task=task, n=n, run=run, from_run=latest.run if latest else None, attempt=attempt,
            runner=self.runner.kind, submission_id=f"{run}-a{attempt}", fingerprint=fingerprint,
            ready_time=ready_time, detected_at=detected_at or self.clock(), holder=self.lease.holder, digest=digest,
        )
        self.states.save(state)  # write-ahead: the round exists before its job does
        self._submit(state)

    def _submit(self, state: LineageState) -> None:
        inf = state.in_flight
        assert inf is not None
        args = round_args(self.settings, self.store.url, task=inf.task, run=inf.run, from_run=inf.from_run)
        tuned = state.tuned()
        if tuned:  # the settings the last sweep chose (after the lineage's job_args: they win)
            args += tuned_job_args(tuned["params"], tuned["space"])
        # the round's task, and every earlier task whose eval split it reads, as they were validated
        for task, digest in [*((t.task, t.digest) for t in state.learned), (inf.task, inf.digest)]:
            if digest:
                args += ["--task-digest", f"{task}={digest}"]
        fields = self.runner.submit(inf, args, self.store.url)
        self._mine.add(inf.submission_id)
        now = self.clock()
        state.in_flight = replace(inf, submitted_at=now, **fields)
        self.states.save(state)
        self.events.emit("submitted", task=inf.task, run=inf.run, from_run=inf.from_run, attempt=inf.attempt,
                         submission_id=inf.submission_id, runner=self.runner.kind, pid=fields.get("pid"),
                         ready_time=inf.ready_time,
                         latency_s=round(now - inf.ready_time, 3) if inf.ready_time else None)

    def _follow(self, state: LineageState) -> None:
        inf = state.in_flight
        assert inf is not None
        status = self.runner.status(inf)
        if status.state == NOT_FOUND:
            # never submitted (killed between the write-ahead record and the submission): the
            # ledger says whether the work happened anyway; only then is it submitted
            outcome = read_outcome(self.store, inf.run, self.settings.method)
            if outcome.done:
                self._learned(state, outcome)
            else:
                self._submit(state)
            return
        if status.active and inf.submission_id not in self._mine:
            self._mine.add(inf.submission_id)
            self.events.emit("reattached", task=inf.task, run=inf.run, attempt=inf.attempt,
                             submission_id=inf.submission_id, pid=inf.pid, message=status.message)
        while status.active:
            if self._halted():
                return  # the job goes on; whoever holds the lease next re-attaches
            self.stop_event.wait(self.options.follow_seconds)
            status = self.runner.status(inf)
        outcome = read_outcome(self.store, inf.run, self.settings.method)
        if outcome.done:
            self._learned(state, outcome)
        else:
            self._failed(state, status)

    def _learned(self, state: LineageState, outcome: Outcome) -> None:
        """Record a finished round: promoted (the lineage's model advances), or held back when it
        crosses a guard rail and ``guard_action`` is ``hold``."""
        inf = state.in_flight
        assert inf is not None and outcome.checkpoint
        now = self.clock()
        learned = LearnedTask(
            task=inf.task, n=inf.n, run=inf.run, from_run=inf.from_run, checkpoint=outcome.checkpoint,
            metrics=outcome.metrics or {}, fingerprint=inf.fingerprint, ready_time=inf.ready_time,
            submitted_at=inf.submitted_at, finished_at=now, attempts=inf.attempt, digest=inf.digest,
        )
        s = self.settings
        crossings = guard_crossings(lineage_summary([*state.learned, learned]),
                                    {"max_generation_drop": s.max_generation_drop, "max_avg_forgetting": s.max_avg_forgetting})
        learned.crossings = crossings
        hold = bool(crossings) and s.guard_action == "hold"
        if hold:
            state.held[inf.task] = HeldRound(**asdict(learned), signature=self._signature(inf.task), at=now)
        else:
            state.learned.append(learned)
        state.in_flight = None
        state.retries.pop(inf.task, None)
        state.failed.pop(inf.task, None)
        self.states.save(state)
        self._keep_log(inf)
        self.events.emit("finished", task=inf.task, run=inf.run, attempt=inf.attempt, checkpoint=outcome.checkpoint,
                         metrics=outcome.metrics, seconds=round(now - inf.submitted_at, 1) if inf.submitted_at else None,
                         promoted=not hold)
        if crossings:
            latest = state.latest
            self.events.emit("guard_rail", task=inf.task, run=inf.run, action=s.guard_action, crossings=crossings,
                             current_model=latest.run if latest else None)
        if hold:
            return
        self._write_report(state)
        self._maybe_hook(state)
        self._maybe_tune(state)

    def _write_report(self, state: LineageState) -> None:
        """Rewrite ``lineages/<name>/report/`` (best effort: the report is for people)."""
        try:
            write_lineage_report(self.store, self.lineage, lineage_summary(state.learned))
        except Exception as exc:
            self.events.emit("error", error=f"writing the lineage report: {type(exc).__name__}: {exc}")

    def _failed(self, state: LineageState, status: JobStatus) -> None:
        inf = state.in_flight
        assert inf is not None
        tail = self.runner.logs_tail(inf)
        error = f"{status.state}: {status.message}".strip() + (f"\n{tail}" if tail else "")
        if len(error) > MAX_ERROR_CHARS:
            error = "..." + error[-(MAX_ERROR_CHARS - 3):]
        now = self.clock()
        state.in_flight = None
        self._keep_log(inf)
        changed = self._changed_since_validation(inf.task, inf.digest)
        if changed is not None:  # the files changed under the round (it refused them): quarantine, no retry
            self.events.emit("failed", task=inf.task, run=inf.run, attempt=inf.attempt, final=True,
                             state=status.state, error=error[-500:])
            state.retries.pop(inf.task, None)
            self._quarantine(state, inf.task, *changed)
            return
        if inf.attempt < self.settings.max_attempts:
            # a job that vanished with its scheduler is re-run at once; a failed one after a backoff
            delay = 0.0 if status.state == GONE else self.settings.backoff(inf.attempt)
            state.retries[inf.task] = PendingRetry(task=inf.task, run=inf.run, attempts=inf.attempt, next_at=now + delay,
                                                   last_error=error, fingerprint=inf.fingerprint, ready_time=inf.ready_time,
                                                   digest=inf.digest)
            self.states.save(state)
            self.events.emit("failed", task=inf.task, run=inf.run, attempt=inf.attempt, final=False,
                             retry_in_s=delay, state=status.state, error=error[-500:])
            return
        state.retries.pop(inf.task, None)
        state.failed[inf.task] = FailedTask(task=inf.task, run=inf.run, error=error, attempts=inf.attempt,
                                            fingerprint=inf.fingerprint, signature=self._signature(inf.task), at=now)
        self.states.save(state)
        self.permanent_failures += 1
        self.events.emit("failed", task=inf.task, run=inf.run, attempt=inf.attempt, final=True,
                         state=status.state, error=error[-500:])

    def _signature(self, task: str) -> Optional[str]:
        try:
            return listing_signature(self.store, task)
        except Exception:
            return None

    def _keep_log(self, inf: InFlightRound) -> None:
        """Copy an embedded attempt's log next to the lineage state (best effort)."""
        if inf.log and os.path.exists(inf.log):
            try:
                with open(inf.log, "rb") as f:
                    self.store.write_bytes(f"{lineage_dir(self.lineage)}/logs/{inf.submission_id}.log", f.read())
            except Exception:
                pass

    # ------------------------------------------------------------------ the every-K sweep
    def _maybe_tune(self, state: LineageState) -> None:
        """After every ``tune_every`` learned tasks: submit the sweep over the recent tasks (write-ahead)."""
        k = self.settings.tune_every
        if not k or len(state.learned) % k:
            return
        n = len(state.learned)
        name = f"{self.lineage[:28]}-tune-{n}"
        tasks = state.learned_names()[-(self.settings.tune_tasks or k):]
        state.tunes.append({"n": n, "sweep": name, "tasks": tasks, "space": dict(self.settings.tune_space),
                            "doc": tune_sweep_doc(self.settings, name, tasks), "status": "running", "at": self.clock()})
        state.tuning = InFlightRound(task=state.latest.task, n=n, run=name, from_run=None, attempt=1,
                                     runner=self.runner.kind, submission_id=f"{name}-a1", detected_at=self.clock(),
                                     holder=self.lease.holder)
        self.states.save(state)
        self._submit_tune(state)

    def _submit_tune(self, state: LineageState) -> None:
        inf, entry = state.tuning, state.tunes[-1]
        assert inf is not None
        args = ["tune", "--store", self.store.url, "--sweep-json", json.dumps(entry["doc"], sort_keys=True)]
        fields = self.runner.submit(inf, args, self.store.url, module=TUNE_MODULE)
        self._mine.add(inf.submission_id)
        state.tuning = replace(inf, submitted_at=self.clock(), **fields)
        self.states.save(state)
        self.events.emit("tune_started", sweep=inf.run, tasks=entry["tasks"], space=entry["space"],
                         trials=entry["doc"]["search"]["num_samples"], objective=self.settings.tune_objective,
                         submission_id=inf.submission_id, runner=self.runner.kind)

    def _follow_tune(self, state: LineageState) -> None:
        """Wait for the sweep; its best configuration (``sweeps/<name>/best.json``, read as data and
        checked as job_args are) becomes the settings of the next rounds."""
        inf = state.tuning
        assert inf is not None
        status = self.runner.status(inf)
        if status.state == NOT_FOUND:
            self._submit_tune(state)
            return
        while status.active:
            if self._halted():
                return
            self.stop_event.wait(self.options.follow_seconds)
            status = self.runner.status(inf)
        entry = state.tunes[-1]
        try:
            best = self.store.read_json(f"sweeps/{inf.run}/best.json")["best"][0]
            entry["job_args"] = tuned_job_args(best["params"], entry["space"])
            entry["params"] = {k: best["params"][k] for k in sorted(best["params"])}
            entry.update(status="done", trial=best.get("trial_id"), objective=self.settings.tune_objective,
                         value=(best.get("final") or {}).get(self.settings.tune_objective))
        except Exception as exc:  # no result, or one that is not a configuration of the space: settings stay
            tail = self.runner.logs_tail(inf, 500)
            entry.update(status="failed", error=f"{status.state}: {type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]
                         + (f"\n{tail}" if tail else ""))
        entry["finished_at"] = self.clock()
        state.tuning = None
        self.states.save(state)
        self._keep_log(inf)
        self.events.emit("tuned", sweep=inf.run, status=entry["status"], params=entry.get("params"),
                         objective=entry.get("objective"), value=entry.get("value"), error=entry.get("error"))

    def _maybe_hook(self, state: LineageState) -> None:
        k = self.settings.hook_every
        if not k or not self.settings.hook_command or len(state.learned) % k:
            return
        latest = state.latest
        n = len(state.learned)
        command = self.settings.hook_command.format(store=self.store.url, lineage=self.lineage, run=latest.run,
                                                    tasks=",".join(state.learned_names()), n=n)
        hook_id = f"{self.lineage}-hook-{n}"
        entry: dict[str, Any] = {"n": n, "command": command, "id": hook_id, "at": self.clock()}
        try:
            entry["handle"] = self.runner.start_hook(command, hook_id, self.store.url)
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        state.hooks.append(entry)
        self.states.save(state)
        self.events.emit("hook_started", **entry)


__all__ = [
    "EXIT_FAILED_ROUNDS",
    "EXIT_LEASE_LOST",
    "EXIT_NO_LEASE",
    "EXIT_OK",
    "Outcome",
    "Scheduler",
    "SchedulerOptions",
    "read_outcome",
    "round_run_name",
]
