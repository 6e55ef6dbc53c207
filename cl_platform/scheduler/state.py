"""The lineage state: ``<store>/lineages/<name>/state.json``, the scheduler's only memory.

It records, for one lineage: the tasks learned (in order, with their runs, checkpoints and
metrics), the quarantined tasks (with the reason and the files' fingerprint), the failed tasks,
pending retries, the in-flight round and the hooks started. The scheduler process keeps nothing
else: kill it at any moment and the next one continues from this file.

Writes are atomic (:meth:`Store.write_json`: a reader sees the old state or the new one) and
guarded twice: a ``revision`` counter (the stored revision must still be the one this process
read: :class:`StateConflictError` otherwise) and a fence callback (the scheduler passes "I still
hold the lease", so a scheduler whose lease was taken over cannot overwrite its successor's state).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

from cl_platform.scheduler.config import lineage_dir
from cl_platform.store import Store

#: Schema version of ``state.json``.
STATE_SCHEMA_VERSION = 1


class StateError(ValueError):
    """``state.json`` is unreadable or inconsistent."""


class StateConflictError(StateError):
    """The stored state changed since this process read it (another writer)."""


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
        metrics: round metrics (accuracy on the task, generation score, avg accuracy, generation drop, ...).
        fingerprint: sha256 of the task's files when it was learned.
        ready_time: when its ``_READY`` marker landed (epoch seconds).
        submitted_at: when its (last) attempt was submitted (epoch seconds).
        finished_at: when the round's outcome was recorded (epoch seconds).
        attempts: attempts it took.
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
    """

    task: str
    run: str
    attempts: int
    next_at: float
    last_error: str
    fingerprint: Optional[str] = None
    ready_time: Optional[float] = None


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
        updated_at: ISO time of the last write.
    """

    lineage: str
    revision: int = 0
    learned: list[LearnedTask] = field(default_factory=list)
    quarantined: dict[str, QuarantinedTask] = field(default_factory=dict)
    failed: dict[str, FailedTask] = field(default_factory=dict)
    retries: dict[str, PendingRetry] = field(default_factory=dict)
    in_flight: Optional[InFlightRound] = None
    hooks: list[dict[str, Any]] = field(default_factory=list)
    updated_at: Optional[str] = None

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
        if self.in_flight:
            runs.add(self.in_flight.run)
        return runs

    # -------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": STATE_SCHEMA_VERSION,
            "lineage": self.lineage,
            "revision": self.revision,
            "updated_at": self.updated_at,
            "learned": [asdict(t) for t in self.learned],
            "quarantined": {k: asdict(v) for k, v in self.quarantined.items()},
            "failed": {k: asdict(v) for k, v in self.failed.items()},
            "retries": {k: asdict(v) for k, v in self.retries.items()},
            "in_flight": asdict(self.in_flight) if self.in_flight else None,
            "hooks": copy.deepcopy(self.hooks),
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
                learned=[LearnedTask(**t) for t in d.get("learned", [])],
                quarantined={k: QuarantinedTask(**v) for k, v in d.get("quarantined", {}).items()},
                failed={k: FailedTask(**v) for k, v in d.get("failed", {}).items()},
                retries={k: PendingRetry(**v) for k, v in d.get("retries", {}).items()},
                in_flight=InFlightRound(**d["in_flight"]) if d.get("in_flight") else None,
                hooks=list(d.get("hooks", [])),
            )
        except (KeyError, TypeError) as exc:
            raise StateError(f"{where}: malformed lineage state ({type(exc).__name__}: {exc})") from None


class StateStore:
    """Reads and writes one lineage's ``state.json``.

    Args:
        store: the store.
        lineage: the lineage name.
        fence: called before every write; it raises to forbid the write (the scheduler passes its
            lease check, so only the lease holder writes).
    """

    def __init__(self, store: Store, lineage: str, *, fence: Optional[Callable[[], None]] = None) -> None:
        self.store = store
        self.lineage = lineage
        self.path = f"{lineage_dir(lineage)}/state.json"
        self.fence = fence

    def load(self) -> LineageState:
        """The stored state, or an empty one (revision 0) when the lineage has none yet."""
        try:
            doc = self.store.read_json(self.path)
        except FileNotFoundError:
            return LineageState(lineage=self.lineage)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateError(f"{self.store.uri(self.path)} is not valid JSON: {exc}") from None
        state = LineageState.from_dict(doc, where=self.store.uri(self.path))
        if state.lineage != self.lineage:
            raise StateError(f"{self.store.uri(self.path)} names lineage {state.lineage!r}, expected {self.lineage!r}")
        return state

    def stored_revision(self) -> int:
        try:
            return int(self.store.read_json(self.path).get("revision", 0))
        except FileNotFoundError:
            return 0

    def save(self, state: LineageState) -> LineageState:
        """Write ``state`` atomically as revision ``state.revision + 1``; returns it updated.

        Raises :class:`StateConflictError` if the stored revision is not ``state.revision``, and
        whatever the fence raises. On any error nothing is written and ``state`` is unchanged.
        """
        if self.fence is not None:
            self.fence()
        stored = self.stored_revision()
        if stored != state.revision:
            raise StateConflictError(
                f"lineage {self.lineage!r}: {self.store.uri(self.path)} is at revision {stored}, this process read "
                f"revision {state.revision}: another scheduler wrote it meanwhile"
            )
        doc = state.to_dict()
        doc["revision"] = state.revision + 1
        doc["updated_at"] = now_iso()
        self.store.write_json(self.path, doc)
        state.revision = doc["revision"]
        state.updated_at = doc["updated_at"]
        return state


__all__ = [
    "FailedTask",
    "InFlightRound",
    "LearnedTask",
    "LineageState",
    "PendingRetry",
    "QuarantinedTask",
    "STATE_SCHEMA_VERSION",
    "StateConflictError",
    "StateError",
    "StateStore",
    "now_iso",
]
