"""Validation of a landed task against a lineage's model, before any training.

The task reader's checks (name, ``_READY``, manifest size, nesting, JSON and schema, splits, file
sizes, parquet integrity and metadata, column types and unknown columns, row and token bounds,
the decompression bound, sha256 of every file, ``answer_start`` bounds, text answers, prompts
beyond padding, eval rows that are not train rows) run with the lineage model's vocabulary size,
image-token ranges, pad id and context length, then the lineage's own rules: the task's modality
spec must be the model's, and the policy's minimum number of train rows.

Whatever goes wrong while one task is read is that task's verdict, never the scheduler's
failure: a bad task is quarantined with a reason and the tasks landing after it still start.
Only an error that says the store as a whole cannot be reached is raised (see
:func:`validate_task`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cl_platform.data.errors import TaskValidationError
from cl_platform.data.limits import TaskLimits
from cl_platform.data.task_format import read_task
from cl_platform.models.modality import ModalitySpec
from cl_platform.scheduler.config import LineageSettings
from cl_platform.store import Store

#: Longest exception message kept in a verdict's reason.
MAX_REASON_CHARS = 1000
#: Errors that may come from the store being unreachable rather than from the task.
STORE_ERRORS = (ConnectionError, TimeoutError, PermissionError)


@dataclass(frozen=True)
class Verdict:
    """The outcome of validating one task.

    Attributes:
        task: the task name.
        ok: True when the lineage may train it.
        reason: what is wrong (the full message, naming the task and file) when not ok.
        file: the file at fault, relative to the task directory (``None``: the task as a whole).
        train_rows: train rows of a readable task (``None`` otherwise).
        digest: sha256 of the ``manifest.json`` bytes that were validated (``None`` when the task
            could not be read); a round proves with
            :func:`cl_platform.data.task_format.verify_dataset` that it trains on these files.
    """

    task: str
    ok: bool
    reason: Optional[str] = None
    file: Optional[str] = None
    train_rows: Optional[int] = None
    digest: Optional[str] = None


def lineage_spec(store: Store, settings: LineageSettings) -> ModalitySpec:
    """The modality spec (vocabulary, image-token ranges) of the lineage's base model, resolved by
    its suite like any run's (:func:`cl_platform.suites.resolve_spec`: nothing written or trained);
    ``ValueError`` naming the model."""
    from cl_platform.suites import resolve_spec

    try:
        return resolve_spec(store, settings.run_request())
    except ValueError as exc:
        raise ValueError(f"lineage model: {exc}") from None


def lineage_context(store: Store, settings: LineageSettings) -> Optional[int]:
    """The context length (``max_position_embeddings``) of the lineage's own base model, the bound on
    tokens per row; ``None`` when the lineage uses its suite's model or the config does not say."""
    if not settings.model:
        return None
    uri = settings.model if "://" in settings.model else store.uri(settings.model)
    parent, _, name = uri.rstrip("/").rpartition("/")
    try:
        config = Store(parent).read_json(f"{name}/config.json")
    except (OSError, ValueError):
        return None
    n = config.get("max_position_embeddings") or (config.get("text_config") or {}).get("max_position_embeddings")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def validate_task(store: Store, name: str, spec: ModalitySpec, *, min_rows: int = 0, max_tokens: Optional[int] = None,
                  limits: Optional[TaskLimits] = None) -> Verdict:
    """Validate task ``name`` for a model with ``spec``; never raises for a bad task.

    Args:
        store: the store.
        name: the task name (a valid one; invalid names have :func:`invalid_name_verdict`).
        spec: the lineage model's modality spec (vocabulary, image ranges, pad id).
        min_rows: the policy's minimum number of train rows.
        max_tokens: the model's context length (its ``max_position_embeddings``); ``None``: the
            limits' ``max_tokens`` or their fallback.
        limits: the reader's bounds (``None``: the defaults).

    Any exception while reading the task becomes a verdict whose reason names the task and
    says ``<ExcType>: <message>`` (a RecursionError, an OSError for a long name, a directory
    where a file belongs, MemoryError, a pyarrow ValueError ...). A connection, timeout or
    permission error is raised instead when the store itself does not answer (the scheduler
    retries the scan later); when the store answers, such an error concerns this task only.
    """
    try:
        task = read_task(store, name, vocab_size=spec.vocab_size, image_token_ranges=[list(r) for r in spec.image_token_ranges],
                         pad_id=spec.pad_id, max_tokens=max_tokens, limits=limits, text_answers=True)
    except TaskValidationError as exc:
        return Verdict(task=name, ok=False, reason=str(exc), file=exc.file)
    except Exception as exc:  # noqa: BLE001 - whatever a task's files provoke is the task's verdict
        if isinstance(exc, STORE_ERRORS) and not _store_answers(store):
            raise
        return Verdict(task=name, ok=False, reason=f"task {name!r}: {_describe(exc)}", file=None)
    rows = int(task.train.num_rows)
    if task.spec_id != spec.spec_id:
        return Verdict(task=name, ok=False, file="manifest.json", train_rows=rows, digest=task.digest,
                       reason=f"task {name!r} file 'manifest.json': written for modality spec {task.spec_id!r}, "
                              f"the lineage's model uses {spec.spec_id!r}")
    if rows < min_rows:
        return Verdict(task=name, ok=False, file="train/", train_rows=rows, digest=task.digest,
                       reason=f"task {name!r} file 'train/': {rows} train rows, the lineage requires at least "
                              f"{min_rows} (policy min_rows)")
    return Verdict(task=name, ok=True, train_rows=rows, digest=task.digest)


def _describe(exc: BaseException) -> str:
    """``<ExcType>: <message>``, the message cut to :data:`MAX_REASON_CHARS`."""
    text = str(exc)
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def _store_answers(store: Store) -> bool:
    """True when the store answers a listing of ``tasks/`` (so an error concerned one task)."""
    try:
        store.list("tasks")
    except Exception:  # noqa: BLE001 - any failure here means the store is the problem
        return False
    return True


def invalid_name_verdict(name: str) -> Verdict:
    """The verdict for a directory under ``tasks/`` whose name breaks the rule."""
    from cl_platform.data.task_format import validate_name

    try:
        validate_name(name)
    except TaskValidationError as exc:
        return Verdict(task=name, ok=False, reason=str(exc), file=None)
    raise ValueError(f"task name {name!r} is valid")


__all__ = ["MAX_REASON_CHARS", "STORE_ERRORS", "Verdict", "invalid_name_verdict", "lineage_context", "lineage_spec", "validate_task"]
