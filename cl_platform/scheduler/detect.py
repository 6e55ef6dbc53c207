"""New-task detection: which tasks in ``<store>/tasks/`` are ready, in landing order.

A task is *ready* once its ``_READY`` marker exists (the writer puts it last). Landing order is
the marker's modification time, then the name (S3 times have one-second resolution). Names that
break the task-name rule are reported as such and never joined into a path.

Two fingerprints tell whether a task's files changed (a quarantined or failed task is looked at
again only then):

- :func:`listing_signature`: sha256 of every file's path, size and mtime; cheap (a listing).
- :func:`content_fingerprint`: sha256 of every file's path and content sha256 (``_READY``
  excluded: re-touching the marker is not a change); computed only when the listing changed.

Both look into no file of a task with more than ``TaskLimits.max_files`` files (invalid whatever
they hold: a digest of its whole listing is its fingerprint), hash contents as they stream (a few
files at a time, on threads: many small files are bound by request latency), and record an
entry they cannot read (a key with a backslash, a name too long for the file system, a directory
where a file belongs) instead of raising: one odd task must not stop the scan of the others.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from cl_platform.data.limits import DEFAULT_LIMITS, TaskLimits
from cl_platform.data.task_format import READY, is_valid_name
from cl_platform.store import Store

TASKS_PREFIX = "tasks"
#: Bytes read per chunk while hashing a file.
_CHUNK = 4 * 2**20


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
        except (FileNotFoundError, NotADirectoryError):
            continue  # still landing (or an object where a task folder belongs: never ready)
        if info.is_dir:
            continue
        ready.append(Candidate(name=name, valid_name=True, ready_time=float(info.mtime or 0.0)))
    ready.sort(key=lambda c: (c.ready_time, c.name))
    return sorted(invalid, key=lambda c: c.name) + ready


def _files(store: Store, name: str, limits: TaskLimits) -> tuple[list[str], bytes]:
    """The paths under the task (sorted) and a digest of the whole listing.

    A task with more than ``max_files`` files is invalid whatever they hold, so no file of it is
    looked into: the paths returned are ``[]`` and its fingerprints are the listing digest,
    which changes when the listing does (a file added, removed or renamed).
    """
    paths = store.walk(f"{TASKS_PREFIX}/{name}")
    listing = hashlib.sha256(f"{len(paths)}\n".encode())
    for path in paths:
        listing.update(path.encode("utf-8", "surrogateescape") + b"\0")
    return (paths if len(paths) <= limits.max_files else []), listing.digest()


def _unreadable(exc: Exception) -> str:
    """What a fingerprint records for an entry it cannot look into (a weird key, a directory,
    a name too long for the file system); store-level errors are raised instead."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        raise exc
    return f"unreadable:{type(exc).__name__}"


def listing_signature(store: Store, name: str, *, limits: Optional[TaskLimits] = None) -> str:
    """sha256 over (path, size, mtime) of the task's files (a valid name); never raises for an
    odd entry (it is recorded as unreadable). A task over ``max_files`` files: its listing only."""
    paths, listing = _files(store, name, limits or DEFAULT_LIMITS)
    h = hashlib.sha256(listing)
    for path, entry in zip(paths, _each(paths, lambda p: _guarded(lambda: _size_and_mtime(store, p)))):
        if entry is not None:
            h.update(f"{path}\0{entry}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def content_fingerprint(store: Store, name: str, *, limits: Optional[TaskLimits] = None) -> str:
    """sha256 over (path, sha256 of content) of the task's files except ``_READY``.

    Contents are hashed as they stream (one chunk in memory per file being read); a file over
    ``max_file_bytes`` contributes its size and mtime instead of its content; an entry that
    cannot be read is recorded as unreadable; a task over ``max_files`` files is fingerprinted by
    its listing only (see :func:`_files`). Never raises for an odd entry.
    """
    limits = limits or DEFAULT_LIMITS
    paths, listing = _files(store, name, limits)
    paths = [p for p in paths if p.rsplit("/", 1)[-1] != READY]
    h = hashlib.sha256(listing)
    digests = _each(paths, lambda p: _guarded(lambda: _content_digest(store, p, limits.max_file_bytes)))
    for path, entry in zip(paths, digests):
        if entry is not None:
            h.update(f"{path}\0{entry}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


#: Files looked at concurrently (a fingerprint of many small files is bound by request latency).
_WORKERS = 16


def _each(paths: list[str], fn: Callable[[str], Optional[str]]) -> list[Optional[str]]:
    """``fn`` over ``paths`` on a few threads, results in order."""
    if len(paths) < 2:
        return [fn(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(_WORKERS, len(paths))) as pool:
        return list(pool.map(fn, paths))


def _guarded(fn: Callable[[], str]) -> Optional[str]:
    """``fn()``; ``None`` for an entry gone meanwhile; the unreadable marker for an odd one."""
    try:
        return fn()
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - an odd key must not stop the scan
        return _unreadable(exc)


def _size_and_mtime(store: Store, path: str) -> str:
    info = store.info(path)
    return f"{info.size}\0{info.mtime}"


def _content_digest(store: Store, path: str, max_bytes: int) -> str:
    info = store.info(path)
    if info.is_dir:
        return "directory"
    if info.size > max_bytes:
        return f"large:{info.size}:{info.mtime}"
    digest = hashlib.sha256()
    with store.open_read(path) as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


__all__ = ["Candidate", "TASKS_PREFIX", "content_fingerprint", "listing_signature", "scan_tasks"]
