"""Validation of a landed task against a lineage's model, before any training.

The task reader's checks (name, ``_READY``, manifest JSON and schema, splits, parquet integrity,
column types, empty splits, sha256 of every file, ``answer_start`` bounds) run with the lineage
model's vocabulary size and image-token ranges, then the lineage's own rules: the task's modality
spec must be the model's, and the policy's minimum number of train rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cl_platform.data.errors import TaskValidationError
from cl_platform.data.task_format import read_task
from cl_platform.models.modality import ModalitySpec
from cl_platform.scheduler.config import LineageSettings
from cl_platform.store import Store


@dataclass(frozen=True)
class Verdict:
    """The outcome of validating one task.

    Attributes:
        task: the task name.
        ok: True when the lineage may train it.
        reason: what is wrong (the full message, naming the task and file) when not ok.
        file: the file at fault, relative to the task directory (``None``: the task as a whole).
        train_rows: train rows of a readable task (``None`` otherwise).
    """

    task: str
    ok: bool
    reason: Optional[str] = None
    file: Optional[str] = None
    train_rows: Optional[int] = None


def lineage_spec(store: Store, settings: LineageSettings) -> ModalitySpec:
    """The modality spec (vocabulary, image-token ranges) of the lineage's base model, resolved by
    its suite like any run's (:func:`cl_platform.suites.resolve_spec`: nothing written or trained);
    ``ValueError`` naming the model."""
    from cl_platform.suites import resolve_spec

    try:
        return resolve_spec(store, settings.run_request())
    except ValueError as exc:
        raise ValueError(f"lineage model: {exc}") from None


def validate_task(store: Store, name: str, spec: ModalitySpec, *, min_rows: int = 0) -> Verdict:
    """Validate task ``name`` for a model with ``spec``; never raises for a bad task.

    Store errors (network, permissions) do raise: they say nothing about the task.
    """
    try:
        task = read_task(store, name, vocab_size=spec.vocab_size,
                         image_token_ranges=[list(r) for r in spec.image_token_ranges])
    except TaskValidationError as exc:
        return Verdict(task=name, ok=False, reason=str(exc), file=exc.file)
    rows = int(task.train.num_rows)
    if task.spec_id != spec.spec_id:
        return Verdict(task=name, ok=False, file="manifest.json", train_rows=rows,
                       reason=f"task {name!r} file 'manifest.json': written for modality spec {task.spec_id!r}, "
                              f"the lineage's model uses {spec.spec_id!r}")
    if rows < min_rows:
        return Verdict(task=name, ok=False, file="train/", train_rows=rows,
                       reason=f"task {name!r} file 'train/': {rows} train rows, the lineage requires at least "
                              f"{min_rows} (policy min_rows)")
    return Verdict(task=name, ok=True, train_rows=rows)


def invalid_name_verdict(name: str) -> Verdict:
    """The verdict for a directory under ``tasks/`` whose name breaks the rule."""
    from cl_platform.data.task_format import validate_name

    try:
        validate_name(name)
    except TaskValidationError as exc:
        return Verdict(task=name, ok=False, reason=str(exc), file=None)
    raise ValueError(f"task name {name!r} is valid")


__all__ = ["Verdict", "invalid_name_verdict", "lineage_spec", "validate_task"]
