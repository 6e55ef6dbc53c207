"""New-task detection: which tasks in ``<store>/tasks/`` are ready, in landing order.

A task is *ready* once its ``_READY`` marker exists (the writer puts it last). Landing order is
the marker's modification time, then the name (S3 times have one-second resolution). Names that
break the task-name rule are reported as such and never joined into a path.

Two fingerprints tell whether a task's files changed (a quarantined or failed task is looked at
again only then):

- :func:`listing_signature`: sha256 of every file's path, size and mtime; cheap (a listing).
- :func:`content_fingerprint`: sha256 of every file's path and content sha256 (``_READY``
  excluded: re-touching the marker is not a change); computed only when the listing changed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Optional

from cl_platform.data.task_format import READY, is_valid_name
from cl_platform.store import Store

TASKS_PREFIX = "tasks"


@dataclass(frozen=True)
class Candidate:
    """One entry of ``tasks/``.

    Attributes:
        name: the directory name as listed.
        valid_name: whether it follows the task-name rule (nothing inside an invalid one is read).
        ready_time: the ``_READY`` marker's mtime (epoch seconds); ``None`` for an invalid name.
    """

    name: str
    valid_name: bool
    ready_time: Optional[float]


def scan_tasks(store: Store, *, skip: Iterable[str] = ()) -> list[Candidate]:
    """Ready tasks (and invalid names) under ``tasks/``, in landing order.

    Args:
        store: the store.
        skip: names not to look at (already learned): no request is made for them.

    Tasks still landing (no ``_READY``) are left out. Invalid names come first (they are only
    reported), then ready tasks by (marker time, name).
    """
    skip = set(skip)
    invalid, ready = [], []
    for name in store.list(TASKS_PREFIX):
        if name in skip:
            continue
        if not is_valid_name(name):
            invalid.append(Candidate(name=name, valid_name=False, ready_time=None))
            continue
        try:
            info = store.info(f"{TASKS_PREFIX}/{name}/{READY}")
        except FileNotFoundError:
            continue  # still landing
        if info.is_dir:
            continue
        ready.append(Candidate(name=name, valid_name=True, ready_time=float(info.mtime or 0.0)))
    ready.sort(key=lambda c: (c.ready_time, c.name))
    return sorted(invalid, key=lambda c: c.name) + ready


def _files(store: Store, name: str) -> list[str]:
    prefix = f"{TASKS_PREFIX}/{name}"
    return [p for p in store.walk(prefix)]


def listing_signature(store: Store, name: str) -> str:
    """sha256 over (path, size, mtime) of every file of task ``name`` (a valid name)."""
    h = hashlib.sha256()
    for path in _files(store, name):
        try:
            info = store.info(path)
        except FileNotFoundError:
            continue
        h.update(f"{path}\0{info.size}\0{info.mtime}\n".encode())
    return h.hexdigest()


def content_fingerprint(store: Store, name: str) -> str:
    """sha256 over (path, sha256 of content) of every file of task ``name`` except ``_READY``."""
    h = hashlib.sha256()
    for path in _files(store, name):
        if path.rsplit("/", 1)[-1] == READY:
            continue
        try:
            digest = hashlib.sha256(store.read_bytes(path)).hexdigest()
        except FileNotFoundError:
            continue
        h.update(f"{path}\0{digest}\n".encode())
    return h.hexdigest()


__all__ = ["Candidate", "TASKS_PREFIX", "content_fingerprint", "listing_signature", "scan_tasks"]
