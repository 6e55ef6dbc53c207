"""Errors raised when a task or stream in the store is malformed."""

from __future__ import annotations


class TaskValidationError(ValueError):
    """A task (or stream) failed validation.

    The message names the dataset, the file inside it and what is wrong, e.g.
    ``task 'parity' file 'train/part-00000.parquet': column 'answer_start' has type int64, expected int32``.

    Attributes:
        task: the task or stream name as given (possibly invalid).
        file: the file relative to the dataset directory (``manifest.json``, ``_READY``,
            ``train/part-00000.parquet``, ``eval/`` for a whole split), or ``None`` when the
            problem is not about one file (an invalid name).
        reason: what is wrong, in words.
        kind: ``"task"`` or ``"stream"``.
    """

    def __init__(self, task: str, file: str | None, reason: str, *, kind: str = "task") -> None:
        self.task = task
        self.file = file
        self.reason = reason
        self.kind = kind
        where = f"{kind} {task!r}" + (f" file {file!r}" if file is not None else "")
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):  # keep the fields across pickling (Ray ships exceptions between processes)
        return (_rebuild, (self.task, self.file, self.reason, self.kind))


class TaskChangedError(TaskValidationError):
    """A dataset's files are not the ones that were validated: its manifest's sha256 differs from
    the digest taken at validation, or a listed file's sha256 or size differs from its manifest
    entry. ``file`` names the file that changed."""

    def __reduce__(self):
        return (_rebuild_changed, (self.task, self.file, self.reason, self.kind))


def _rebuild(task: str, file: str | None, reason: str, kind: str) -> TaskValidationError:
    return TaskValidationError(task, file, reason, kind=kind)


def _rebuild_changed(task: str, file: str | None, reason: str, kind: str) -> TaskChangedError:
    return TaskChangedError(task, file, reason, kind=kind)


__all__ = ["TaskChangedError", "TaskValidationError"]
