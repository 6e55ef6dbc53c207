"""The lineage state: ``<store>/lineages/<name>/state.json``, the scheduler's only memory.

It records, for one lineage: the tasks learned (in order, with their runs, checkpoints and
metrics), the quarantined tasks (with the reason and the files' fingerprint), the failed tasks,
pending retries, the in-flight round and the hooks started. The scheduler process keeps nothing
else: kill it at any moment and the next one continues from this file.

Every write is one compare-and-swap (:meth:`Store.write_bytes_if_match`): it replaces the
state only if the stored object is still the version this process read (``If-Match`` on the
ETag on S3, a locked content check on file://), else :class:`StateConflictError` and nothing is
written. A reader sees the old state or the new one, never half of one.

Fencing. The state records ``lease_generation``: the highest lease generation that has written
it. A scheduler takes over a lineage by first raising that field to the new generation (a
conditional write, :meth:`StateStore.take_over`) and only then creating that generation's lease
record (:mod:`cl_platform.scheduler.lease`), so no lease generation exists that the state does not
already name. A write by the holder of generation ``g`` is refused when the
version it read carries a higher generation (:class:`StaleWriteError`), and the conditional write
makes that check hold at the moment of the write: had a successor raised the generation after this
process read the state, the version would differ and the write would fail. So a scheduler paused
past its lease (a long GC pause, a stopped process, a delayed request) cannot write over its
successor's state, however late its write arrives; the check and the write are one operation on
the store. The ``fence`` callback (the scheduler passes :meth:`Lease.check`) still runs first and
supplies the writer's generation.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from cl_platform.scheduler.config import lineage_dir
from cl_platform.store import ConflictError, Store

#: Schema version of ``state.json``.
STATE_SCHEMA_VERSION = 1
#: Reads of the state a takeover makes when its conditional write keeps losing to other writers.
_TAKE_OVER_TRIES = 5


class StateError(ValueError):
    """``state.json`` is unreadable or inconsistent."""


class StateConflictError(StateError, ConflictError):
    """The stored state changed since this process read it (another writer); nothing was written."""


class StaleWriteError(StateConflictError):
    """A newer lease generation than the writer's has written the state: the writer lost the lineage."""


def now_iso(t: Optional[float] = None) -> str:
    t = _dt.datetime.now(_dt.timezone.utc) if t is None else _dt.datetime.fromtimestamp(t, _dt.timezone.utc)
    return t.isoformat(timespec="seconds")


@dataclass
class LearnedTask:
    """A task the lineage has learned.

    Attributes:
        task: task name.
        n: 1-based position in the lineage (round number).
        run: the run that learned it (``<lineage>-<n>-<task>``).
        from_run: the run it continued (``None`` for the first round: the base model).
        checkpoint: URI of the adapter checkpoint after this round (the lineage's model then).
        metrics: round metrics (accuracy on the task, ``earlier_accuracy`` on the tasks learned before
            it, generation score, base generation score, ...).
        fingerprint: sha256 of the task's files when it was learned.
        ready_time: when its ``_READY`` marker landed (epoch seconds).
        submitted_at: when its (last) attempt was submitted (epoch seconds).
        finished_at: when the round's outcome was recorded (epoch seconds).
        attempts: attempts it took.
        digest: sha256 of the validated ``manifest.json``; later rounds verify it before they read
            the task's eval split (``--task-digest``).
        crossings: guard rails the round crossed and was promoted anyway (``guard_action`` warn):
            ``{"guard", "value", "limit"}`` each.
    """

    task: str
    n: int
    run: str
    from_run: Optional[str]
    checkpoint: str
    metrics: dict[str, Any] = field(default_factory=dict)
    fingerprint: Optional[str] = None
    ready_time: Optional[float] = None
    submitted_at: Optional[float] = None
    finished_at: Optional[float] = None
    attempts: int = 1
    digest: Optional[str] = None
    crossings: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class HeldRound(LearnedTask):
    """A round that crossed a guard rail and was not promoted (``guard_action`` hold): the lineage
    stayed on the previous adapter; the run is kept for inspection. The task is not trained again
    until its files change. The fields of :class:`LearnedTask` (``crossings``: the guard rails it
    crossed), and:

    Attributes:
        signature: the task's listing signature when it was held.
        at: when it was held (epoch seconds).
    """

    signature: Optional[str] = None
    at: Optional[float] = None


@dataclass
class QuarantinedTask:
    """A task that failed validation; it is not looked at again until its files change.

    Attributes:
        task: the name as found in the store (possibly an invalid name).
        reason: what is wrong (the validator's message, naming the file).
        file: the file inside the task that is wrong (``None``: the task as a whole, e.g. its name).
        fingerprint: sha256 over the task's files (path and content) when it was quarantined;
            ``None`` for an invalid name (nothing inside is read).
        signature: cheap listing signature (paths, sizes, mtimes) used to notice a change
            before re-hashing the content.
        at: when it was quarantined (epoch seconds).
    """

    task: str
    reason: str
    file: Optional[str] = None
    fingerprint: Optional[str] = None
    signature: Optional[str] = None
    at: Optional[float] = None


@dataclass
class FailedTask:
    """A task whose round failed on every attempt; retried only when its files change.

    Attributes:
        task: task name.
        run: the run of the failed attempts.
        error: the last attempt's error (tail of the job's log).
        attempts: attempts made.
        fingerprint: sha256 of the task's files when it failed.
        signature: listing signature at that time.
        at: when it was marked failed (epoch seconds).
    """

    task: str
    run: str
    error: str
    attempts: int
    fingerprint: Optional[str] = None
    signature: Optional[str] = None
    at: Optional[float] = None


@dataclass
class PendingRetry:
    """A task whose last attempt failed and that is retried after a backoff.

    Attributes:
        task: task name.
        run: its run (the retry resumes it).
        attempts: attempts made so far.
        next_at: earliest time of the next attempt (epoch seconds).
        last_error: the last attempt's error.
        fingerprint: sha256 of the task's files.
        ready_time: when its ``_READY`` landed.
        digest: sha256 of the validated ``manifest.json`` (the retry re-validates against it).
    """

    task: str
    run: str
    attempts: int
    next_at: float
    last_error: str
    fingerprint: Optional[str] = None
    ready_time: Optional[float] = None
    digest: Optional[str] = None


@dataclass
class InFlightRound:
    """The round being trained (written *before* it is submitted: a write-ahead record).

    Attributes:
        task: task name.
        n: its position in the lineage.
        run: run name (``<lineage>-<n>-<task>``).
        from_run: the run it continues (``None``: from the base model).
        attempt: 1-based attempt number.
        runner: ``"embedded"`` (a local process) or ``"ray-job"`` (Ray Jobs API).
        submission_id: the Ray job's submission id (deterministic: ``<run>-a<attempt>``), also
            used as the id of an embedded attempt.
        pid: embedded: the job process id (``None`` until it started).
        pid_started: embedded: the process's start time (guards against pid reuse).
        host: the host running the embedded process / the scheduler that submitted.
        log: embedded: local path of the job's log file.
        fingerprint: sha256 of the task's files.
        ready_time: when its ``_READY`` landed.
        detected_at: when the scheduler saw it.
        submitted_at: when it was submitted (``None`` until the submission returned).
        holder: the scheduler that submitted it.
        store: embedded: the URL of the store the round writes to, where a scheduler on another
            host reads the round's heartbeat (:meth:`EmbeddedRunner.status`).
        digest: sha256 of the validated ``manifest.json``; the round job proves before reading that
            it trains these files (``--task-digest``).
    """

    task: str
    n: int
    run: str
    from_run: Optional[str]
    attempt: int
    runner: str
    submission_id: str
    pid: Optional[int] = None
    pid_started: Optional[float] = None
    host: Optional[str] = None
    log: Optional[str] = None
    fingerprint: Optional[str] = None
    ready_time: Optional[float] = None
    detected_at: Optional[float] = None
    submitted_at: Optional[float] = None
    holder: Optional[str] = None
    store: Optional[str] = None
    digest: Optional[str] = None


@dataclass
class LineageState:
    """Everything the scheduler knows about a lineage (see the module docstring).

    Attributes:
        lineage: the lineage name.
        revision: writes so far (0: never written).
        learned: learned tasks in the order they were learned.
        quarantined: task name -> quarantine record.
        failed: task name -> failure record.
        retries: task name -> pending retry (at most one: retries block later tasks, keeping order).
        in_flight: the round being trained, if any.
        hooks: policy hooks started: ``{"n", "command", "id", "at"}``.
        held: task name -> a round held back by a guard rail (not promoted).
        tuning: the every-K sweep job in flight (its ``run`` is the sweep's name), written before it
            is submitted; rounds wait for it.
        tunes: the every-K sweeps, oldest first: ``{"n", "sweep", "tasks", "doc", "status"}`` and,
            once done, ``params`` and ``job_args`` (the chosen settings), ``objective``, ``value``, or
            ``error``.
        updated_at: ISO time of the last write.
        lease_generation: the highest lease generation that has written the state (0: none); a
            writer holding an older generation is refused (module docstring).
        lease_holder: the scheduler that wrote that generation.
        version: the store version this copy was read at (``None``: not stored yet); not part of
            the stored document, the conditional write of :meth:`StateStore.save` names it.
    """

    lineage: str
    revision: int = 0
    learned: list[LearnedTask] = field(default_factory=list)
    quarantined: dict[str, QuarantinedTask] = field(default_factory=dict)
    failed: dict[str, FailedTask] = field(default_factory=dict)
    retries: dict[str, PendingRetry] = field(default_factory=dict)
    in_flight: Optional[InFlightRound] = None
    hooks: list[dict[str, Any]] = field(default_factory=list)
    held: dict[str, HeldRound] = field(default_factory=dict)
    tuning: Optional[InFlightRound] = None
    tunes: list[dict[str, Any]] = field(default_factory=list)
    updated_at: Optional[str] = None
    lease_generation: int = 0
    lease_holder: Optional[str] = None
    version: Optional[str] = field(default=None, compare=False, repr=False)

    # -------------------------------------------------------------- views
    def learned_names(self) -> list[str]:
        return [t.task for t in self.learned]

    def is_learned(self, task: str) -> bool:
        return any(t.task == task for t in self.learned)

    @property
    def latest(self) -> Optional[LearnedTask]:
        """The last learned task (its run holds the lineage's current model)."""
        return self.learned[-1] if self.learned else None

    def used_runs(self) -> set[str]:
        """Every run name the lineage has used (learned, failed, retrying, in flight)."""
        runs = {t.run for t in self.learned} | {f.run for f in self.failed.values()} | {r.run for r in self.retries.values()}
        runs |= {h.run for h in self.held.values()}
        if self.in_flight:
            runs.add(self.in_flight.run)
        return runs

    def tuned(self) -> Optional[dict[str, Any]]:
        """The latest sweep that chose settings (they are in force for the next rounds), if any."""
        return next((t for t in reversed(self.tunes) if t.get("status") == "done"), None)

    # -------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": STATE_SCHEMA_VERSION,
            "lineage": self.lineage,
            "revision": self.revision,
            "updated_at": self.updated_at,
            "lease_generation": self.lease_generation,
            "lease_holder": self.lease_holder,
            "learned": [asdict(t) for t in self.learned],
            "quarantined": {k: asdict(v) for k, v in self.quarantined.items()},
            "failed": {k: asdict(v) for k, v in self.failed.items()},
            "retries": {k: asdict(v) for k, v in self.retries.items()},
            "in_flight": asdict(self.in_flight) if self.in_flight else None,
            "hooks": copy.deepcopy(self.hooks),
            "held": {k: asdict(v) for k, v in self.held.items()},
            "tuning": asdict(self.tuning) if self.tuning else None,
            "tunes": copy.deepcopy(self.tunes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, where: str = "state.json") -> "LineageState":
        if not isinstance(d, dict) or d.get("schema_version") != STATE_SCHEMA_VERSION:
            version = d.get("schema_version") if isinstance(d, dict) else None
            raise StateError(f"{where}: unsupported schema version {version!r} (this code reads {STATE_SCHEMA_VERSION})")
        try:
            return cls(
                lineage=d["lineage"],
                revision=int(d.get("revision", 0)),
                updated_at=d.get("updated_at"),
                lease_generation=int(d.get("lease_generation") or 0),
                lease_holder=d.get("lease_holder"),
                learned=[LearnedTask(**t) for t in d.get("learned", [])],
                quarantined={k: QuarantinedTask(**v) for k, v in d.get("quarantined", {}).items()},
                failed={k: FailedTask(**v) for k, v in d.get("failed", {}).items()},
                retries={k: PendingRetry(**v) for k, v in d.get("retries", {}).items()},
                in_flight=InFlightRound(**d["in_flight"]) if d.get("in_flight") else None,
                hooks=list(d.get("hooks", [])),
                held={k: HeldRound(**v) for k, v in d.get("held", {}).items()},
                tuning=InFlightRound(**d["tuning"]) if d.get("tuning") else None,
                tunes=list(d.get("tunes", [])),
            )
        except (KeyError, TypeError) as exc:
            raise StateError(f"{where}: malformed lineage state ({type(exc).__name__}: {exc})") from None


class StateStore:
    """Reads and writes one lineage's ``state.json`` (see the module docstring).

    Args:
        store: the store.
        lineage: the lineage name.
        fence: called before every write; it raises to forbid the write, and returns the writer's
            lease record (anything with ``generation`` and ``holder``, or an ``int`` generation, or
            ``None``: unfenced). The scheduler passes :meth:`Lease.check`.
    """

    def __init__(self, store: Store, lineage: str, *, fence: Optional[Callable[[], Any]] = None) -> None:
        self.store = store
        self.lineage = lineage
        self.path = f"{lineage_dir(lineage)}/state.json"
        self.fence = fence

    def load(self) -> LineageState:
        """The stored state with its version, or an empty one (revision 0, no version) when there is none."""
        try:
            data, version = self.store.read_bytes_versioned(self.path)
        except FileNotFoundError:
            return LineageState(lineage=self.lineage)
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateError(f"{self.store.uri(self.path)} is not valid JSON: {exc}") from None
        state = LineageState.from_dict(doc, where=self.store.uri(self.path))
        if state.lineage != self.lineage:
            raise StateError(f"{self.store.uri(self.path)} names lineage {state.lineage!r}, expected {self.lineage!r}")
        state.version = version
        return state

    def stored_revision(self) -> int:
        try:
            return int(self.store.read_json(self.path).get("revision", 0))
        except FileNotFoundError:
            return 0

    def save(self, state: LineageState) -> LineageState:
        """Write ``state`` as revision ``state.revision + 1``, conditional on ``state.version``; returns it updated.

        Raises whatever the fence raises, :class:`StaleWriteError` if ``state`` carries a newer
        lease generation than the fence's, and :class:`StateConflictError` if the stored state is
        no longer the version ``state`` was read at (its ``StaleWriteError`` subclass when the
        writer was a newer generation). On any error nothing is written and ``state`` is unchanged.
        """
        token = self.fence() if self.fence is not None else None
        if isinstance(token, int) and not isinstance(token, bool):
            generation, holder = token, None
        else:
            generation, holder = getattr(token, "generation", None), getattr(token, "holder", None)
        return self._write(state, generation, holder)

    def take_over(self, holder: str, generation: int) -> bool:
        """Fence the lineage for lease ``generation`` before its lease record is created.

        Raises the state's ``lease_generation`` to ``generation`` with a conditional write, so
        that every write of an older generation fails from then on. True when the state is fenced
        at ``generation`` after the call (by this call, or by a contender for the same generation:
        the exclusive create of the lease record then decides between them); False when a newer
        generation already fenced it. A conflict with another writer is looked at again, a few
        times, never written over.
        """
        for _ in range(_TAKE_OVER_TRIES):
            state = self.load()
            if state.lease_generation != generation:
                if state.lease_generation > generation:
                    return False
                try:
                    self._write(state, generation, holder)
                except StateConflictError:
                    continue
            return True
        return False

    def _write(self, state: LineageState, generation: Optional[int], holder: Optional[str]) -> LineageState:
        if generation is not None and state.lease_generation > generation:
            raise self._stale(state.lease_generation, state.lease_holder, generation, holder)
        doc = state.to_dict()
        doc["revision"] = state.revision + 1
        doc["updated_at"] = now_iso()
        if generation is not None:
            doc["lease_generation"], doc["lease_holder"] = generation, holder
        data = (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")
        try:
            version = self.store.write_bytes_if_match(self.path, data, state.version)
        except ConflictError:
            raise self._conflict(state, generation, holder) from None
        state.revision = doc["revision"]
        state.updated_at = doc["updated_at"]
        state.lease_generation, state.lease_holder = doc["lease_generation"], doc["lease_holder"]
        state.version = version
        return state

    def _stale(self, stored: int, stored_holder: Optional[str], generation: int,
               holder: Optional[str]) -> StaleWriteError:
        return StaleWriteError(
            f"lineage {self.lineage!r}: {self.store.uri(self.path)} was written by lease generation {stored} "
            f"({stored_holder or 'unknown holder'}); {holder or 'this writer'} holds generation {generation} only: "
            "the lineage was taken over, nothing was written"
        )

    def _conflict(self, state: LineageState, generation: Optional[int], holder: Optional[str]) -> StateConflictError:
        """The error of a lost conditional write, naming what is stored now."""
        try:
            now = self.load()
        except StateError:
            now = None
        if now is not None and generation is not None and now.lease_generation > generation:
            return self._stale(now.lease_generation, now.lease_holder, generation, holder)
        stored = "unreadable" if now is None else "absent" if now.version is None else f"at revision {now.revision}"
        return StateConflictError(
            f"lineage {self.lineage!r}: {self.store.uri(self.path)} is {stored}, this process read "
            f"revision {state.revision}: another scheduler wrote it meanwhile; nothing was written"
        )


__all__ = [
    "FailedTask",
    "HeldRound",
    "InFlightRound",
    "LearnedTask",
    "LineageState",
    "PendingRetry",
    "QuarantinedTask",
    "STATE_SCHEMA_VERSION",
    "StateConflictError",
    "StateError",
    "StaleWriteError",
    "StateStore",
    "now_iso",
]
