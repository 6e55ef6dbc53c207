"""The run ledger: ``<store>/runs/<run>/ledger.json``, one record per round, written atomically.

A *run* trains one or more methods through the same task order; round ``i`` of a method trains
``task_order[i]``. The ledger is the run's lineage and its resume point:

- run-level fields: run name, methods, task order, config and its hash, the parent run it
  continues (``from_run``, with the parent's final checkpoint per method) and creation time;
- one :class:`RoundRecord` per (method, round): task, status (``running`` / ``done`` /
  ``failed``), attempt, checkpoint URI, metrics, config hash, start and end times, error.

Resume semantics:

- :meth:`Ledger.open` with a ``config`` whose hash differs from the recorded one raises
  :class:`ConfigMismatchError` (naming the keys that differ) unless ``allow_config_change=True``.
  A different task order is always an error: round indices refer to it.
- A record still ``running`` when the ledger is opened was left by a process that stopped
  mid-round: it is reported (log warning and :attr:`Ledger.interrupted`) and
  :meth:`Ledger.start_round` re-runs it as ``attempt + 1``. A ``failed`` round is re-run the same
  way. The earlier attempts are kept in the record's ``previous_attempts``.
- A ``done`` round is never re-run: :meth:`Ledger.start_round` refuses it, and
  :meth:`Ledger.next_round` skips it. Rounds of a method run in order; starting round ``i``
  needs rounds ``0..i-1`` done.
- :meth:`Ledger.finish_round` is idempotent: finishing a done round with the same checkpoint
  is a no-op, with a different checkpoint an error.

Writes: every change rewrites ``ledger.json`` with one compare-and-swap
(:meth:`Store.write_bytes_if_match`), conditional on the version of the ledger this object read:
``If-Match`` on its ETag on S3, a locked content check on file://. Creation is a conditional
create, so two processes creating the same run cannot both succeed. Writes are atomic (a reader
sees the old ledger or the new one, never half of one). If a write fails the in-memory ledger is
rolled back to what is stored.

One writer at a time: when another process wrote the ledger since this object read it, the
write fails with :class:`LedgerConflictError` and nothing is written (call :meth:`Ledger.refresh`
if that was expected, e.g. the training workers wrote rounds that a driver now wants to extend).
Of two concurrent writers exactly one succeeds. The ``revision`` counter (writes so far) is kept
for people and error messages; the store's version is what the write checks.

Heartbeat: while a round this object started is running (from :meth:`Ledger.start_round` to
:meth:`Ledger.finish_round` / :meth:`Ledger.fail_round`), a daemon thread rewrites
``runs/<run>/heartbeat.json`` (method, round, attempt, host, pid and ``at``, epoch seconds)
every :data:`HEARTBEAT_SECONDS`. It is a separate object so that it never changes the ledger's
version. A scheduler that cannot see the round's process (it runs on another host) presumes the
round alive until the heartbeat is older than :data:`HEARTBEAT_STALE_SECONDS`
(:func:`heartbeat_age`, :meth:`cl_platform.scheduler.runner.EmbeddedRunner.status`).

Metric values must be JSON numbers, strings, booleans, lists or dicts; numpy scalars are
converted, and non-finite floats (NaN, inf) are stored as ``null``.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

from cl_platform.data.task_format import NAME_PATTERN
from cl_platform.store import ConflictError, Store, as_store

logger = logging.getLogger(__name__)

#: Ledger JSON schema version written by this module.
LEDGER_SCHEMA_VERSION = 1
#: File name of the ledger inside ``runs/<run>/``.
LEDGER_FILENAME = "ledger.json"
#: Record statuses.
RUNNING, DONE, FAILED = "running", "done", "failed"
STATUSES = (RUNNING, DONE, FAILED)
#: Longest error text kept in a record (the tail is kept: it has the exception).
MAX_ERROR_CHARS = 4000
#: File name of a running round's heartbeat inside ``runs/<run>/``.
HEARTBEAT_FILENAME = "heartbeat.json"
#: Seconds between heartbeats of a running round.
HEARTBEAT_SECONDS = 30.0
#: A heartbeat older than this says the round's process is gone (it covers a process's start-up
#: before its first round too: see :meth:`cl_platform.scheduler.runner.EmbeddedRunner.status`).
HEARTBEAT_STALE_SECONDS = 600.0

_NAME_RE = re.compile(NAME_PATTERN)


# ------------------------------------------------------------------------------------ errors


class LedgerError(ValueError):
    """A run ledger was asked for something inconsistent with what it records."""


class RunExistsError(LedgerError):
    """:meth:`Ledger.create` found a ledger already there."""


class RunNotFoundError(LedgerError, FileNotFoundError):
    """:meth:`Ledger.open` found no ledger for the run."""


class ConfigMismatchError(LedgerError):
    """A run was reopened with a config whose hash differs from the recorded one."""


class LedgerConflictError(LedgerError, ConflictError):
    """The stored ledger changed since this object read it (another writer); nothing was written."""


# ------------------------------------------------------------------------------------ helpers


def validate_run_name(name: Any) -> str:
    """Return ``name`` if it is a valid run name (same rule as task names), else raise.

    The rule is ``[a-z0-9][a-z0-9_-]{0,63}``: lower-case letters, numbers, ``_`` and ``-``,
    1 to 64 characters, first one a letter or digit. Raises :class:`LedgerError` naming the input.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise LedgerError(
            f"invalid run name {name!r}: must match {NAME_PATTERN} "
            "(lower-case letters, numbers, '_' and '-'; 1-64 characters)"
        )
    return name


def _validate_method(method: Any) -> str:
    if not isinstance(method, str) or not _NAME_RE.fullmatch(method):
        raise LedgerError(f"invalid method name {method!r}: must match {NAME_PATTERN}")
    return method


def canonical_json(obj: Any) -> str:
    """The canonical JSON text of ``obj``: sorted keys, no whitespace, UTF-8, no NaN/inf.

    Raises ``TypeError`` naming the offending value when ``obj`` is not JSON-serialisable.
    """
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"config is not canonical JSON (plain dicts, lists, str, int, finite float, bool, None): {exc}") from None


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable SHA-256 (hex) of a config's canonical JSON.

    Key order does not matter; tuples hash like lists; ``1`` and ``1.0`` hash differently (keep
    types stable in the config you record).
    """
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


def _jsonable(value: Any, where: str) -> Any:
    """A JSON-safe copy of a metrics value (numpy scalars unwrapped, non-finite floats -> None)."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()  # numpy / torch scalar
    elif hasattr(value, "tolist") and callable(value.tolist):
        value = value.tolist()  # numpy array
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: key {k!r} is not a string")
            out[k] = _jsonable(v, f"{where}[{k!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"{where}: {type(value).__name__} value {value!r} is not JSON-serialisable")


def _diff_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two JSON values differ (for error messages)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{path} (added)")
            elif key not in new:
                out.append(f"{path} (removed)")
            else:
                out.extend(_diff_keys(old[key], new[key], path))
        return out
    return [] if canonical_json(old) == canonical_json(new) else [prefix or "(whole config)"]


def heartbeat_path(run: str) -> str:
    """Store path of a run's heartbeat: ``runs/<run>/heartbeat.json``."""
    return f"runs/{validate_run_name(run)}/{HEARTBEAT_FILENAME}"


def read_heartbeat(store: Store | str | None, run: str) -> dict[str, Any] | None:
    """The run's last heartbeat (see the module docstring), ``None`` if it never had one."""
    store = as_store(store)
    try:
        doc = store.read_json(heartbeat_path(run))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None  # torn by hand or by a foreign tool: as good as none
    return doc if isinstance(doc, dict) and isinstance(doc.get("at"), (int, float)) else None


def heartbeat_age(store: Store | str | None, run: str, now: float | None = None) -> float | None:
    """Seconds since the run's last heartbeat (``None``: never had one). Clocks of hosts must agree (NTP)."""
    beat = read_heartbeat(store, run)
    return None if beat is None else (time.time() if now is None else now) - float(beat["at"])


class _Heartbeat:
    """The daemon thread behind a ledger's heartbeat; stops when told to or when its ledger is collected."""

    def __init__(self, store: Store, run: str) -> None:
        self.store, self.run = store, run
        self.info: dict[str, Any] = {}
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def beat(self) -> None:
        try:
            self.store.write_json(heartbeat_path(self.run), {**self.info, "at": time.time()})
        except Exception as exc:  # a liveness hint only: the next beat tries again
            logger.debug("run %r: heartbeat not written: %s", self.run, exc)

    def start(self, info: dict[str, Any]) -> None:
        self.info = {**info, "host": socket.gethostname(), "pid": os.getpid()}
        self.beat()
        if self.thread is not None and self.thread.is_alive() and not self.stop.is_set():
            return
        if self.thread is not None:
            self.thread.join()  # told to stop: it ends at once
        self.stop.clear()
        self.thread = threading.Thread(target=self._loop, name=f"heartbeat-{self.run}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            self.beat()


# ------------------------------------------------------------------------------------ records


@dataclass
class RoundRecord:
    """One round of one method in a run.

    Attributes:
        round: index into the run's task order (0-based).
        task: the task trained in this round (``task_order[round]``).
        method: the continual-learning method.
        status: ``"running"``, ``"done"`` or ``"failed"``.
        attempt: 1 for the first try, +1 for every re-run after an interruption or failure.
        config_hash: hash of the run config the attempt ran under.
        started_at: ISO-8601 UTC time the current attempt started.
        ended_at: ISO-8601 UTC time it finished or failed; ``None`` while running.
        checkpoint: URI of the round's checkpoint (set when done).
        metrics: the round's metrics (JSON values).
        error: why the attempt failed (``"failed"`` only).
        previous_attempts: earlier attempts of this round, oldest first: dicts with ``attempt``,
            ``status`` (``"interrupted"`` or ``"failed"``), ``started_at``, ``ended_at`` and
            ``error``.
    """

    round: int
    task: str
    method: str
    status: str
    attempt: int
    config_hash: str
    started_at: str
    ended_at: str | None = None
    checkpoint: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    previous_attempts: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RoundRecord":
        known = {f for f in cls.__dataclass_fields__}
        rec = cls(**{k: copy.deepcopy(v) for k, v in d.items() if k in known})
        if rec.status not in STATUSES:
            raise LedgerError(f"record of round {rec.round} ({rec.method}) has unknown status {rec.status!r}")
        return rec

    def describe(self) -> str:
        return f"round {self.round} (task {self.task!r}) of method {self.method!r}"


@dataclass(frozen=True)
class ParentRun:
    """The run a run continues (``--from-run``), as resolved when the child was created.

    Attributes:
        run: the parent run's name.
        checkpoints: method -> URI of the parent's final checkpoint for that method.
        task_order: the parent's task order.
        config_hash: the parent's config hash.
        lineage: ancestor run names, oldest first, ending with ``run``.
    """

    run: str
    checkpoints: dict[str, str]
    task_order: list[str]
    config_hash: str
    lineage: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ParentRun":
        return cls(
            run=d["run"],
            checkpoints=dict(d.get("checkpoints") or {}),
            task_order=list(d.get("task_order") or []),
            config_hash=d.get("config_hash", ""),
            lineage=list(d.get("lineage") or [d["run"]]),
        )


# ------------------------------------------------------------------------------------ ledger


class Ledger:
    """The ledger of one run; build it with :meth:`create`, :meth:`open` or :meth:`open_or_create`.

    Attributes (read-only views; change the ledger through its methods):
        store: the store holding the run.
        run: the run name.
        task_order: tasks in training order; round ``i`` trains ``task_order[i]``.
        methods: methods of the run, in order (grows on first use when created without a list).
        config: the run config (JSON) and config_hash its :func:`config_hash`.
        from_run: the parent run, or ``None``.
        created_at: ISO-8601 UTC creation time.
        interrupted: records that were ``running`` when the ledger was (re)read: rounds a stopped
            process left unfinished (re-run as ``attempt + 1`` by :meth:`start_round`).

    A ledger pickles (store URL, state and the version read; not its heartbeat), so it can be
    handed to Ray workers.
    """

    # use the classmethods
    def __init__(self, store: Store, run: str, doc: dict[str, Any], version: str | None = None) -> None:
        self.store = store
        self.run = run
        self._version = version
        self._heartbeat: _Heartbeat | None = None
        self._load(doc)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_heartbeat": None}

    # ------------------------------------------------------------------ construction

    @staticmethod
    def path(run: str) -> str:
        """Store path of a run's ledger: ``runs/<run>/ledger.json``."""
        return f"runs/{validate_run_name(run)}/{LEDGER_FILENAME}"

    @classmethod
    def exists(cls, store: Store | str | None, run: str) -> bool:
        """True if the run has a ledger in the store."""
        return as_store(store).exists(cls.path(run))

    @classmethod
    def create(
        cls,
        store: Store | str | None,
        run: str,
        *,
        task_order: Sequence[str],
        config: Mapping[str, Any],
        methods: Sequence[str] | None = None,
        from_run: str | None = None,
    ) -> "Ledger":
        """Create the ledger of a new run; :class:`RunExistsError` if the run already has one.

        Args:
            store: the store (or its URL).
            run: the run name (:func:`validate_run_name`).
            task_order: the tasks in training order (non-empty, no repeats).
            config: the run config (canonical JSON; its hash guards resumes). Include everything
                that changes results (method hyperparameters, seeds, model, data).
            methods: the methods this run will train; ``None`` lets them be added on first
                :meth:`start_round`.
            from_run: a finished run to continue: its final checkpoint per method is recorded
                and returned by :meth:`last_checkpoint` until this run has its own.
        """
        store = as_store(store)
        validate_run_name(run)
        order = [str(t) for t in task_order]
        if not order:
            raise LedgerError(f"run {run!r}: task_order is empty")
        bad = [t for t in order if not _NAME_RE.fullmatch(t)]
        if bad:
            raise LedgerError(f"run {run!r}: invalid task names in task_order: {bad}")
        dups = sorted({t for t in order if order.count(t) > 1})
        if dups:
            raise LedgerError(f"run {run!r}: task_order repeats {dups}")
        method_list = [_validate_method(m) for m in (methods or [])]
        if len(set(method_list)) != len(method_list):
            raise LedgerError(f"run {run!r}: methods repeat: {method_list}")
        cfg = json.loads(canonical_json(dict(config)))

        parent: ParentRun | None = None
        if from_run is not None:
            parent = cls._resolve_parent(store, run, from_run, method_list)

        now = _now()
        doc = {
            "schema_version": LEDGER_SCHEMA_VERSION,
            "run": run,
            "revision": 1,
            "created_at": now,
            "updated_at": now,
            "methods": method_list,
            "methods_fixed": methods is not None,
            "task_order": order,
            "config": cfg,
            "config_hash": config_hash(cfg),
            "from_run": parent.to_dict() if parent else None,
            "config_history": [],
            "rounds": [],
        }
        try:
            version = store.write_bytes_if_match(cls.path(run), _encode(doc), None)
        except ConflictError:
            raise RunExistsError(
                f"run {run!r} already has a ledger at {store.uri(cls.path(run))}; "
                "resume it (--resume) or choose another run name"
            ) from None
        return cls(store, run, doc, version)

    @classmethod
    def open(
        cls,
        store: Store | str | None,
        run: str,
        *,
        config: Mapping[str, Any] | None = None,
        task_order: Sequence[str] | None = None,
        allow_config_change: bool = False,
    ) -> "Ledger":
        """Open an existing run's ledger (:class:`RunNotFoundError` if there is none).

        Args:
            config: when given, its hash must equal the recorded one, else
                :class:`ConfigMismatchError`; with ``allow_config_change=True`` the new config is
                recorded instead (the old one goes to ``config_history``) and later rounds carry
                the new hash.
            task_order: when given, must equal the recorded order (always an error otherwise).

        Records left ``running`` are logged as interrupted and listed in :attr:`interrupted`.
        """
        store = as_store(store)
        ledger = cls(store, run, *cls._read_versioned(store, run))
        if task_order is not None and list(task_order) != ledger.task_order:
            raise LedgerError(
                f"run {run!r}: task order {list(task_order)} differs from the recorded {ledger.task_order}; "
                "a run's task order cannot change (start a new run, e.g. with --from-run)"
            )
        if config is not None:
            new_cfg = json.loads(canonical_json(dict(config)))
            new_hash = config_hash(new_cfg)
            if new_hash != ledger.config_hash:
                if not allow_config_change:
                    diff = _diff_keys(ledger.config, new_cfg)
                    shown = ", ".join(diff[:10]) + (f" and {len(diff) - 10} more" if len(diff) > 10 else "")
                    raise ConfigMismatchError(
                        f"run {run!r} was recorded with config hash {ledger.config_hash[:12]} but this config "
                        f"hashes to {new_hash[:12]} (differs at: {shown}); resume with the same config, "
                        "allow the change explicitly, or start a new run"
                    )
                ledger._change_config(new_cfg, new_hash)
        for rec in ledger.interrupted:
            logger.warning(
                "run %r: %s was left running (attempt %d, started %s): interrupted; it will be re-run as attempt %d",
                run, rec.describe(), rec.attempt, rec.started_at, rec.attempt + 1,
            )
        return ledger

    @classmethod
    def open_or_create(
        cls,
        store: Store | str | None,
        run: str,
        *,
        task_order: Sequence[str],
        config: Mapping[str, Any],
        methods: Sequence[str] | None = None,
        from_run: str | None = None,
        resume: bool = False,
        allow_config_change: bool = False,
    ) -> "Ledger":
        """What a job's ``--run`` / ``--resume`` flags mean.

        No ledger yet: create one. A ledger and ``resume=True``: open it, checking the config
        and task order (and that ``from_run``, if given, is the recorded parent). A ledger and
        ``resume=False``: :class:`RunExistsError`.
        """
        store = as_store(store)
        if not cls.exists(store, run):
            try:
                return cls.create(store, run, task_order=task_order, config=config, methods=methods, from_run=from_run)
            except RunExistsError:
                if not resume:
                    raise
        elif not resume:
            raise RunExistsError(
                f"run {run!r} already has a ledger at {store.uri(cls.path(run))}; "
                "pass --resume to continue it or choose another run name"
            )
        ledger = cls.open(store, run, config=config, task_order=task_order, allow_config_change=allow_config_change)
        recorded_parent = ledger.from_run.run if ledger.from_run else None
        if from_run is not None and from_run != recorded_parent:
            raise LedgerError(f"run {run!r} continues {recorded_parent!r}, not {from_run!r}; it cannot change on resume")
        if methods and ledger._doc.get("methods_fixed"):
            missing = [m for m in methods if m not in ledger.methods]
            if missing:
                raise LedgerError(f"run {run!r} was created for methods {ledger.methods}; it cannot resume with {missing}")
        return ledger

    @classmethod
    def _read(cls, store: Store, run: str) -> dict[str, Any]:
        return cls._read_versioned(store, run)[0]

    @classmethod
    def _read_versioned(cls, store: Store, run: str) -> tuple[dict[str, Any], str]:
        """The stored ledger document and its store version."""
        path = cls.path(run)
        try:
            data, version = store.read_bytes_versioned(path)
        except FileNotFoundError:
            raise RunNotFoundError(f"run {run!r} has no ledger at {store.uri(path)}") from None
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LedgerError(f"ledger {store.uri(path)} is not valid JSON: {exc}") from None
        if not isinstance(doc, dict) or doc.get("schema_version") != LEDGER_SCHEMA_VERSION:
            version = doc.get("schema_version") if isinstance(doc, dict) else None
            raise LedgerError(
                f"ledger {store.uri(path)}: unsupported schema version {version!r} (this code reads {LEDGER_SCHEMA_VERSION})"
            )
        if doc.get("run") != run:
            raise LedgerError(f"ledger {store.uri(path)} names run {doc.get('run')!r}, expected {run!r}")
        return doc, version

    @classmethod
    def _resolve_parent(cls, store: Store, run: str, from_run: str, methods: list[str]) -> ParentRun:
        validate_run_name(from_run)
        if from_run == run:
            raise LedgerError(f"run {run!r} cannot continue itself (from_run)")
        try:
            parent = cls(store, from_run, cls._read(store, from_run))
        except RunNotFoundError:
            raise LedgerError(f"run {run!r}: from_run {from_run!r} has no ledger at {store.uri(cls.path(from_run))}") from None
        if not parent.methods:
            raise LedgerError(f"run {run!r}: from_run {from_run!r} has no rounds to continue from")
        for m in parent.methods:
            if not parent.is_complete(m):
                done = parent.done_rounds(m)
                raise LedgerError(
                    f"run {run!r}: from_run {from_run!r} is not finished for method {m!r} "
                    f"({len(done)} of {len(parent.task_order)} rounds done); resume it first"
                )
        checkpoints = {m: parent.last_checkpoint(m) for m in parent.methods}
        checkpoints = {m: c for m, c in checkpoints.items() if c}
        missing = [m for m in methods if m not in checkpoints]
        if missing:
            raise LedgerError(
                f"run {run!r}: from_run {from_run!r} has no checkpoint for methods {missing} "
                f"(it ran {sorted(checkpoints)})"
            )
        lineage = (parent.from_run.lineage if parent.from_run else []) + [from_run]
        return ParentRun(run=from_run, checkpoints=checkpoints, task_order=parent.task_order,
                         config_hash=parent.config_hash, lineage=lineage)

    def _load(self, doc: dict[str, Any]) -> None:
        self._doc = copy.deepcopy(doc)
        self._records = [RoundRecord.from_dict(r) for r in doc.get("rounds", [])]
        self.interrupted: list[RoundRecord] = [copy.deepcopy(r) for r in self._records if r.status == RUNNING]

    def refresh(self) -> "Ledger":
        """Re-read the ledger from the store (after another process wrote it); returns self."""
        doc, version = self._read_versioned(self.store, self.run)
        self._load(doc)
        self._version = version
        return self

    # ------------------------------------------------------------------ read-only views

    @property
    def uri(self) -> str:
        """URI of ``ledger.json``."""
        return self.store.uri(self.path(self.run))

    @property
    def task_order(self) -> list[str]:
        return list(self._doc["task_order"])

    @property
    def methods(self) -> list[str]:
        return list(self._doc["methods"])

    @property
    def config(self) -> dict[str, Any]:
        return copy.deepcopy(self._doc["config"])

    @property
    def config_hash(self) -> str:
        return self._doc["config_hash"]

    @property
    def created_at(self) -> str:
        return self._doc["created_at"]

    @property
    def revision(self) -> int:
        """Number of writes the stored ledger has seen (1 after creation)."""
        return int(self._doc.get("revision", 0))

    @property
    def from_run(self) -> ParentRun | None:
        d = self._doc.get("from_run")
        return ParentRun.from_dict(d) if d else None

    @property
    def rounds(self) -> list[RoundRecord]:
        """Copies of all records, by method (in :attr:`methods` order) then round."""
        return [copy.deepcopy(r) for r in self._sorted(self._records)]

    def to_dict(self) -> dict[str, Any]:
        """The ledger as stored (a copy)."""
        return copy.deepcopy(self._doc)

    def lineage(self) -> list[str]:
        """Run names from the oldest ancestor to this run."""
        parent = self.from_run
        return (parent.lineage if parent else []) + [self.run]

    def earlier_tasks(self) -> list[str]:
        """Tasks learned before this run's first round: the task orders of its ancestors
        (``from_run`` chain), oldest first; empty without a parent."""
        parent = self.from_run
        if parent is None:
            return []
        return Ledger.open(self.store, parent.run).earlier_tasks() + list(parent.task_order)

    def record(self, method: str, round: int) -> RoundRecord | None:
        """A copy of the record of ``round`` for ``method``; ``None`` if it never started."""
        rec = self._find(method, round)
        return copy.deepcopy(rec) if rec else None

    def done_rounds(self, method: str) -> list[int]:
        """Indices of the method's done rounds, ascending."""
        return sorted(r.round for r in self._records if r.method == method and r.status == DONE)

    def next_round(self, method: str) -> int | None:
        """The first round of ``method`` that is not done; ``None`` when all are."""
        done = set(self.done_rounds(method))
        return next((i for i in range(len(self._doc["task_order"])) if i not in done), None)

    def is_complete(self, method: str | None = None) -> bool:
        """True when every round of ``method`` (or of every recorded method) is done."""
        methods = [method] if method is not None else self.methods
        return bool(methods) and all(self.next_round(m) is None for m in methods)

    def last_checkpoint(self, method: str, *, include_parent: bool = True) -> str | None:
        """Checkpoint URI of the method's latest done round.

        Before this run has a done round, the parent's (``from_run``) checkpoint for the method
        when ``include_parent``; ``None`` when there is none.
        """
        done = [r for r in self._records if r.method == method and r.status == DONE and r.checkpoint]
        if done:
            return max(done, key=lambda r: r.round).checkpoint
        return self.parent_checkpoint(method) if include_parent else None

    def parent_checkpoint(self, method: str) -> str | None:
        """The parent run's final checkpoint for ``method``; ``None`` without a parent.

        :class:`LedgerError` if there is a parent but it did not train ``method``.
        """
        parent = self.from_run
        if parent is None:
            return None
        if method not in parent.checkpoints:
            raise LedgerError(
                f"run {self.run!r} continues {parent.run!r}, which has no checkpoint for method {method!r} "
                f"(it has {sorted(parent.checkpoints)})"
            )
        return parent.checkpoints[method]

    # ------------------------------------------------------------------ changes

    def start_round(self, method: str, round: int) -> RoundRecord:
        """Mark ``round`` of ``method`` running and return its record.

        A new round starts as attempt 1; a round left ``running`` (interrupted) or ``failed`` is
        re-run as ``attempt + 1``. Raises :class:`LedgerError` if the round is done (a done round
        is never re-run), out of range, or an earlier round of the method is not done.
        """
        idx = self._check_round(round)

        def change() -> RoundRecord:
            self._ensure_method(method)
            rec = self._find(method, idx)
            if rec is not None and rec.status == DONE:
                raise LedgerError(
                    f"run {self.run!r}: {rec.describe()} is already done (checkpoint {rec.checkpoint}); "
                    "a done round is never re-run"
                )
            for earlier in range(idx):
                prev = self._find(method, earlier)
                if prev is None or prev.status != DONE:
                    state = "never started" if prev is None else prev.status
                    raise LedgerError(
                        f"run {self.run!r}: cannot start round {idx} of method {method!r} before round {earlier} "
                        f"(task {self._doc['task_order'][earlier]!r}) is done; it is {state}"
                    )
            now = _now()
            if rec is None:
                rec = RoundRecord(round=idx, task=self._doc["task_order"][idx], method=method, status=RUNNING,
                                  attempt=1, config_hash=self.config_hash, started_at=now)
                self._records.append(rec)
            else:
                rec.previous_attempts.append({
                    "attempt": rec.attempt,
                    "status": "interrupted" if rec.status == RUNNING else FAILED,
                    "started_at": rec.started_at,
                    "ended_at": rec.ended_at,
                    "error": rec.error,
                    "config_hash": rec.config_hash,
                })
                rec.attempt += 1
                rec.status = RUNNING
                rec.started_at = now
                rec.ended_at = None
                rec.checkpoint = None
                rec.metrics = {}
                rec.error = None
                rec.config_hash = self.config_hash
            return copy.deepcopy(rec)

        rec = self._commit(change)
        self._beat({"method": method, "round": idx, "attempt": rec.attempt})
        return rec

    def finish_round(self, method: str, round: int, *, checkpoint: str, metrics: Mapping[str, Any] | None = None) -> RoundRecord:
        """Mark a running round done with its checkpoint URI and metrics; return the record.

        Idempotent: if the round is already done with the same checkpoint this is a no-op (the
        stored metrics are kept); a different checkpoint raises :class:`LedgerError`. A round
        that is not running (never started, or failed) raises too.
        """
        idx = self._check_round(round)
        if not isinstance(checkpoint, str) or not checkpoint:
            raise LedgerError(
                f"run {self.run!r}: checkpoint of round {idx} ({method}) must be a non-empty URI string, got {checkpoint!r}"
            )
        clean = _jsonable(dict(metrics or {}), f"metrics of round {idx} ({method})")
        rec = self._find(method, idx)
        if rec is not None and rec.status == DONE:
            if rec.checkpoint == checkpoint:
                return copy.deepcopy(rec)
            raise LedgerError(
                f"run {self.run!r}: {rec.describe()} is already done with checkpoint {rec.checkpoint}; "
                f"refusing to record a different one ({checkpoint})"
            )
        if rec is None or rec.status != RUNNING:
            state = "never started" if rec is None else rec.status
            raise LedgerError(f"run {self.run!r}: cannot finish round {idx} of method {method!r}: it is {state}, not running")

        def change() -> RoundRecord:
            r = self._find(method, idx)
            r.status = DONE
            r.checkpoint = checkpoint
            r.metrics = clean
            r.ended_at = _now()
            return copy.deepcopy(r)

        rec = self._commit(change)
        self._end_beat()
        return rec

    def fail_round(self, method: str, round: int, error: BaseException | str) -> RoundRecord:
        """Mark a running (or already failed) round failed with ``error``; return the record.

        Raises :class:`LedgerError` for a done round or one that never started.
        """
        idx = self._check_round(round)
        if isinstance(error, BaseException):
            text = f"{type(error).__name__}: {error}"
        else:
            text = str(error)
        if len(text) > MAX_ERROR_CHARS:
            text = "..." + text[-(MAX_ERROR_CHARS - 3):]
        rec = self._find(method, idx)
        if rec is None:
            raise LedgerError(f"run {self.run!r}: cannot fail round {idx} of method {method!r}: it never started")
        if rec.status == DONE:
            raise LedgerError(f"run {self.run!r}: {rec.describe()} is done; it cannot be marked failed")

        def change() -> RoundRecord:
            r = self._find(method, idx)
            r.status = FAILED
            r.error = text
            r.ended_at = _now()
            return copy.deepcopy(r)

        rec = self._commit(change)
        self._end_beat()
        return rec

    # ------------------------------------------------------------------ internals

    def _check_round(self, round: Any) -> int:
        n = len(self._doc["task_order"])
        if isinstance(round, bool) or not isinstance(round, int) or not 0 <= round < n:
            raise LedgerError(f"run {self.run!r}: round {round!r} is out of range (the task order has {n} tasks: 0..{n - 1})")
        return int(round)

    def _find(self, method: str, round: int) -> RoundRecord | None:
        return next((r for r in self._records if r.method == method and r.round == round), None)

    def _ensure_method(self, method: str) -> None:
        _validate_method(method)
        methods = self._doc["methods"]
        if method in methods:
            return
        if self._doc.get("methods_fixed"):
            raise LedgerError(f"run {self.run!r} was created for methods {methods}; {method!r} is not one of them")
        if self.from_run is not None:
            self.parent_checkpoint(method)  # raises if the parent did not train it
        methods.append(method)

    def _sorted(self, records: list[RoundRecord]) -> list[RoundRecord]:
        order = {m: i for i, m in enumerate(self._doc["methods"])}
        return sorted(records, key=lambda r: (order.get(r.method, len(order)), r.method, r.round))

    def _change_config(self, cfg: dict[str, Any], new_hash: str) -> None:
        def change() -> None:
            self._doc["config_history"].append(
                {"config_hash": self._doc["config_hash"], "config": self._doc["config"], "replaced_at": _now()}
            )
            self._doc["config"] = cfg
            self._doc["config_hash"] = new_hash

        self._commit(change)

    def _beat(self, info: dict[str, Any]) -> None:
        """Start (or retarget) the heartbeat of a running round (module docstring)."""
        if self._heartbeat is None:
            self._heartbeat = _Heartbeat(self.store, self.run)
            weakref.finalize(self, self._heartbeat.stop.set)
        self._heartbeat.start(info)

    def _end_beat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop.set()

    def _commit(self, change):
        """Apply ``change`` to the in-memory state, write the ledger conditionally on the version this
        object read, roll back if anything fails."""
        snapshot = copy.deepcopy(self._doc)
        records = copy.deepcopy(self._records)
        interrupted = self.interrupted
        try:
            result = change()
            self._doc["rounds"] = [r.to_dict() for r in self._sorted(self._records)]
            self._doc["revision"] = int(snapshot.get("revision", 0)) + 1
            self._doc["updated_at"] = _now()
            try:
                version = self.store.write_bytes_if_match(self.path(self.run), _encode(self._doc), self._version)
            except ConflictError:
                try:
                    stored = f"at revision {self._read(self.store, self.run).get('revision', 0)}"
                except LedgerError:
                    stored = "gone or unreadable"
                raise LedgerConflictError(
                    f"run {self.run!r}: the ledger at {self.uri} is {stored}, but this process read "
                    f"revision {snapshot.get('revision', 0)}: another process wrote it meanwhile; nothing was "
                    "written (refresh() first if that was expected)"
                ) from None
        except BaseException:
            self._doc, self._records, self.interrupted = snapshot, records, interrupted
            raise
        self._version = version
        return result

    def __repr__(self) -> str:
        done = {m: len(self.done_rounds(m)) for m in self.methods}
        return f"Ledger(run={self.run!r}, tasks={len(self.task_order)}, done={done}, uri={self.uri!r})"


def _encode(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


__all__ = [
    "ConfigMismatchError",
    "HEARTBEAT_FILENAME",
    "HEARTBEAT_SECONDS",
    "HEARTBEAT_STALE_SECONDS",
    "LEDGER_FILENAME",
    "LEDGER_SCHEMA_VERSION",
    "Ledger",
    "LedgerConflictError",
    "LedgerError",
    "ParentRun",
    "RoundRecord",
    "RunExistsError",
    "RunNotFoundError",
    "canonical_json",
    "config_hash",
    "heartbeat_age",
    "heartbeat_path",
    "read_heartbeat",
    "validate_run_name",
]
