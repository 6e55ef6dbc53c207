"""The on-store format of tasks and generation streams: writer, validating reader, listing.

Layout (docs/architecture.md)::

    <store>/tasks/<name>/manifest.json
    <store>/tasks/<name>/train/part-00000.parquet ...   tokens list<int32>, answer_start int32
    <store>/tasks/<name>/eval/part-00000.parquet ...    prompt_tokens list<int32>, answer_tokens list<int32>, [answer string]
    <store>/tasks/<name>/_READY                         written last

    <store>/streams/<name>/manifest.json
    <store>/streams/<name>/data/part-00000.parquet ...  tokens list<int32>, [prompt_len int32], [label int32]
    <store>/streams/<name>/_READY

A stream has a single split, ``data/``: it is the fixed image-generation sequence used for KD and
the generation probe, and a consumer that wants a held-out slice takes one deterministically
(its rows are in a fixed order). ``tokens`` holds prompt + image tokens; ``prompt_len`` (when
present) is how many leading tokens are prompt.

``manifest.json``::

    {"schema_version": 1, "kind": "task" | "stream", "name": ..., "spec_id": ...,
     "created": "2025-01-01T00:00:00+00:00",
     "rows": {"train": N, "eval": M},                       # per split
     "files": {"train/part-00000.parquet": {"sha256": "<hex>", "rows": n, "bytes": b}, ...},
     "meta": {...}}                                         # free-form provenance (optional)

Rules (checked by the writer before it writes and by :func:`read_task` / :func:`read_stream`):

- ``name`` matches ``[a-z0-9][a-z0-9_-]{0,63}``, checked before it is joined into any path.
- Required columns have exactly the types above (``list<int32>``, not ``large_list`` or
  ``list<int64>``); known optional columns too. Unknown columns: with the default
  ``TaskLimits.unknown_columns = "reject"`` a column that is neither required nor a known
  optional one fails validation (and the writer refuses it); with ``"ignore"`` it is carried
  through unchecked.
- No nulls in checked columns; every split has at least one row.
- Token ids are ``>= 0`` and ``< vocab_size`` when a vocabulary size is given.
- Train rows: ``0 < answer_start < len(tokens)`` (the loss covers ``tokens[answer_start:]``, so
  there is at least one prompt and one answer token).
- Eval rows: non-empty ``prompt_tokens`` and ``answer_tokens``.
- Task answers are text: with ``text_answers`` (and ``image_token_ranges``) given, no id of
  ``answer_tokens`` nor of train ``tokens[answer_start:]`` is an image token (the scheduler's
  validation sets it: every task it trains has text answers). With ``pad_id`` given, a prompt (eval
  ``prompt_tokens``, train ``tokens[:answer_start]``) must hold more than padding.
- No eval row of a task (``prompt_tokens + answer_tokens``) equals one of its train rows
  (``TaskLimits.eval_duplicates``; compared through two 64-bit polynomial hashes and the length
  of each row).
- Stream rows: non-empty ``tokens``; ``0 <= prompt_len < len(tokens)``; with
  ``image_token_ranges`` given, at least one image token per row.

Bounds (:class:`~cl_platform.data.limits.TaskLimits`, each checked before the step it protects):
the manifest's size before it is downloaded, its JSON nesting by a scan of the bytes before it is
parsed, the number of listed files and of files under the dataset's folder, rows per split (from
the manifest and from each part's Parquet metadata), tokens per row (``max_tokens``, normally the
model's context length), each data file's size before it is downloaded, and the bytes a part
decodes to, estimated from its Parquet metadata (values x width, not only the encoded sizes)
before any page is decoded.

The manifest is the source of truth: parquet files it does not list are ignored (but they count
towards ``max_files``). Each entry holds the file's ``sha256`` and ``rows``, and ``bytes`` (its
size), which the writer records; a manifest without ``bytes`` stays valid, and when present it
must equal the file's size (checked after the content, so a stale size is reported only when
nothing worse is wrong). Each data file is read once: its sha256 is computed chunk by chunk as it
streams from the store, the verified bytes (at most ``max_file_bytes``) stay in memory, and the
Parquet metadata and then the row groups are read from them. :func:`manifest_digest` and
:func:`verify_dataset` let a later reader prove it reads the files that were validated.

The writer writes the data files, then the manifest (with each file's sha256 and size), then
``_READY``; a reader ignores anything without ``_READY``. Each file is written atomically (see
:mod:`cl_platform.store`). Checks are vectorised with pyarrow / numpy: no Python loop over rows
or tokens.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cl_platform.data.errors import TaskChangedError, TaskValidationError
from cl_platform.data.limits import DEFAULT_LIMITS, FALLBACK_MAX_TOKENS, MAX_NAME_CHARS, TaskLimits, json_depth
from cl_platform.store import Store, as_store, check_path

#: Manifest schema version this code writes and reads.
SCHEMA_VERSION = 1
#: Versions :func:`read_task` accepts.
SUPPORTED_SCHEMA_VERSIONS = (1,)
#: Task and stream names: lower-case letters, numbers, ``_`` and ``-``; 1 to 64 characters.
NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)

MANIFEST = "manifest.json"
READY = "_READY"
#: Rows per parquet part unless the caller says otherwise (~40 MB at ~1k tokens per row).
DEFAULT_ROWS_PER_FILE = 10_000

_LIST_I32 = pa.list_(pa.int32())


@dataclass(frozen=True)
class SplitSchema:
    """Columns of one split.

    Attributes:
        required: column -> exact Arrow type; each must be present.
        optional: column -> exact Arrow type, checked when present.
        list_columns: list columns whose rows must be non-empty and whose ids are vocabulary ids.
    """

    required: Mapping[str, pa.DataType]
    optional: Mapping[str, pa.DataType] = field(default_factory=dict)
    list_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetKind:
    """A kind of dataset in the store.

    Attributes:
        kind: ``"task"`` or ``"stream"`` (the manifest's ``kind``).
        prefix: top-level store folder (``tasks`` / ``streams``).
        splits: split name -> its schema, in the order they are written and read.
    """

    kind: str
    prefix: str
    splits: Mapping[str, SplitSchema]


TASK = DatasetKind(
    kind="task",
    prefix="tasks",
    splits={
        "train": SplitSchema(required={"tokens": _LIST_I32, "answer_start": pa.int32()}, list_columns=("tokens",)),
        "eval": SplitSchema(
            required={"prompt_tokens": _LIST_I32, "answer_tokens": _LIST_I32},
            optional={"answer": pa.string()},
            list_columns=("prompt_tokens", "answer_tokens"),
        ),
    },
)

STREAM = DatasetKind(
    kind="stream",
    prefix="streams",
    splits={
        "data": SplitSchema(
            required={"tokens": _LIST_I32},
            optional={"prompt_len": pa.int32(), "label": pa.int32()},
            list_columns=("tokens",),
        ),
    },
)

_KINDS = {"task": TASK, "stream": STREAM}


@dataclass
class Task:
    """A validated task, loaded.

    Attributes:
        name: the task name.
        manifest: the parsed ``manifest.json``.
        train: train rows (``tokens``, ``answer_start``, any extra columns).
        eval: eval rows (``prompt_tokens``, ``answer_tokens``, optional ``answer``).
        files: split -> full URIs of its parquet parts, in order (for Ray Data).
        digest: sha256 of the ``manifest.json`` bytes that were validated (see
            :func:`verify_dataset`).
    """

    name: str
    manifest: dict
    train: pa.Table
    eval: pa.Table
    files: dict[str, list[str]]
    digest: str = ""

    @property
    def spec_id(self) -> str:
        """The modality spec the token ids belong to (e.g. ``"anole"``)."""
        return self.manifest["spec_id"]


@dataclass
class Stream:
    """A validated generation stream, loaded.

    Attributes:
        name: the stream name.
        manifest: the parsed ``manifest.json``.
        data: rows (``tokens``, optional ``prompt_len`` / ``label``, any extra columns).
        files: ``{"data": [URIs of its parquet parts]}``.
        digest: sha256 of the ``manifest.json`` bytes that were validated.
    """

    name: str
    manifest: dict
    data: pa.Table
    files: dict[str, list[str]]
    digest: str = ""

    @property
    def spec_id(self) -> str:
        return self.manifest["spec_id"]


# ------------------------------------------------------------------------------------- names


def validate_name(name: Any, *, kind: str = "task") -> str:
    """Return ``name`` if it matches ``[a-z0-9][a-z0-9_-]{0,63}``, else raise TaskValidationError."""
    if not isinstance(name, str):
        raise TaskValidationError(repr(name), None, f"invalid name: must be a str matching {NAME_PATTERN}, got {type(name).__name__}", kind=kind)
    if not _NAME_RE.fullmatch(name):
        raise TaskValidationError(
            name, None, f"invalid name: must match {NAME_PATTERN} (lower-case letters, numbers, '_' and '-'; 1-64 chars)", kind=kind
        )
    return name


def is_valid_name(name: Any) -> bool:
    """True if ``name`` follows the name rule."""
    return isinstance(name, str) and _NAME_RE.fullmatch(name) is not None


def dataset_dir(name: str, kind: str = "task") -> str:
    """Store path of a task / stream directory (the name is validated first)."""
    k = _kind(kind)
    return f"{k.prefix}/{validate_name(name, kind=kind)}"


# ------------------------------------------------------------------------------------- writing


class TaskWriter:
    """Incremental writer of one task or stream, for producers that stream their rows.

    ``write(split, table)`` buffers rows and flushes a parquet part every ``rows_per_file`` rows;
    ``commit()`` flushes the rest, writes ``manifest.json`` and then ``_READY``. Used as a context
    manager it commits on a clean exit and, on an exception, deletes what it wrote (no ``_READY``
    is ever written for an incomplete dataset).

    Args:
        store: the store (or its URL).
        name: dataset name (validated).
        spec_id: modality spec id recorded in the manifest.
        kind: ``"task"`` or ``"stream"``.
        rows_per_file: rows per parquet part.
        overwrite: replace a dataset that is already ready; otherwise that is a FileExistsError.
            A leftover without ``_READY`` (an interrupted write) is always replaced.
        vocab_size: when given, ids are checked against it before anything is written.
        meta: free-form JSON provenance stored as the manifest's ``meta``.
        limits: the reader's bounds the rows are written for (``None``: :data:`DEFAULT_LIMITS`);
            its ``unknown_columns`` rule decides whether an extra column is refused.
    """

    def __init__(
        self,
        store: Store | str | None,
        name: str,
        *,
        spec_id: str,
        kind: str = "task",
        rows_per_file: int = DEFAULT_ROWS_PER_FILE,
        overwrite: bool = False,
        vocab_size: int | None = None,
        meta: Mapping[str, Any] | None = None,
        limits: TaskLimits | None = None,
    ) -> None:
        self.kind = _kind(kind)
        self.limits = limits or DEFAULT_LIMITS
        self.name = validate_name(name, kind=kind)
        if not isinstance(spec_id, str) or not spec_id:
            raise ValueError(f"{kind} {name!r}: spec_id must be a non-empty string, got {spec_id!r}")
        if int(rows_per_file) < 1:
            raise ValueError(f"{kind} {name!r}: rows_per_file must be >= 1, got {rows_per_file}")
        self.store = as_store(store)
        self.spec_id = spec_id
        self.rows_per_file = int(rows_per_file)
        self.vocab_size = vocab_size
        self.meta = dict(meta or {})
        self.root = f"{self.kind.prefix}/{self.name}"
        self._buffers: dict[str, list[pa.Table]] = {s: [] for s in self.kind.splits}
        self._buffered: dict[str, int] = {s: 0 for s in self.kind.splits}
        self._schemas: dict[str, pa.Schema] = {}
        self._parts: dict[str, int] = {s: 0 for s in self.kind.splits}
        self._rows: dict[str, int] = {s: 0 for s in self.kind.splits}
        self._files: dict[str, dict[str, Any]] = {}
        self._done = False

        if self.store.exists(f"{self.root}/{READY}"):
            if not overwrite:
                raise FileExistsError(f"{kind} {name!r} already exists at {self.store.uri(self.root)}; pass overwrite=True to replace it")
            self.store.delete(f"{self.root}/{READY}")  # unready first, so no reader picks up a mix
        if self.store.exists(self.root):
            self.store.delete(self.root, recursive=True)

    def write(self, split: str, rows: pa.Table | Mapping[str, Sequence]) -> None:
        """Append rows to ``split`` (a table or a column mapping; types are cast to the schema)."""
        if self._done:
            raise RuntimeError(f"{self.kind.kind} {self.name!r}: writer already committed or aborted")
        if split not in self.kind.splits:
            raise ValueError(f"{self.kind.kind} {self.name!r}: unknown split {split!r}; expected one of {list(self.kind.splits)}")
        table = _conform(rows if isinstance(rows, pa.Table) else pa.table(dict(rows)), self.kind, split, self.name,
                         unknown_columns=self.limits.unknown_columns)
        if table.num_rows == 0:
            return
        expected = self._schemas.setdefault(split, table.schema)
        if not table.schema.equals(expected):
            raise ValueError(
                f"{self.kind.kind} {self.name!r} split {split!r}: every batch must have the same columns; "
                f"got {table.schema.names}, earlier {expected.names}"
            )
        self._buffers[split].append(table)
        self._buffered[split] += table.num_rows
        if self._buffered[split] >= self.rows_per_file:
            self._flush(split, final=False)

    def _flush(self, split: str, *, final: bool) -> None:
        if not self._buffers[split]:
            return
        table = pa.concat_tables(self._buffers[split])
        self._buffers[split], self._buffered[split] = [], 0
        start = 0
        while table.num_rows - start >= self.rows_per_file or (final and start < table.num_rows):
            part = table.slice(start, self.rows_per_file)
            self._write_part(split, part)
            start += part.num_rows
        if start < table.num_rows:
            rest = table.slice(start)
            self._buffers[split], self._buffered[split] = [rest], rest.num_rows

    def _write_part(self, split: str, part: pa.Table) -> None:
        rel = f"{split}/part-{self._parts[split]:05d}.parquet"
        _check_rows(part, self.kind, split, self.name, rel, vocab_size=self.vocab_size, ranges=None)
        sink = pa.BufferOutputStream()
        pq.write_table(part.combine_chunks(), sink)
        data = sink.getvalue().to_pybytes()
        self.store.write_bytes(f"{self.root}/{rel}", data)
        self._files[rel] = {"sha256": hashlib.sha256(data).hexdigest(), "rows": part.num_rows, "bytes": len(data)}
        self._parts[split] += 1
        self._rows[split] += part.num_rows

    def commit(self) -> dict:
        """Flush, write ``manifest.json`` then ``_READY``; returns the manifest."""
        if self._done:
            raise RuntimeError(f"{self.kind.kind} {self.name!r}: writer already committed or aborted")
        for split in self.kind.splits:
            self._flush(split, final=True)
        for split in self.kind.splits:
            if self._rows[split] == 0:
                raise TaskValidationError(self.name, f"{split}/", "split is empty: no rows were written", kind=self.kind.kind)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "kind": self.kind.kind,
            "name": self.name,
            "spec_id": self.spec_id,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "rows": dict(self._rows),
            "files": dict(self._files),
            "meta": self.meta,
        }
        self.store.write_json(f"{self.root}/{MANIFEST}", manifest)
        self.store.write_bytes(f"{self.root}/{READY}", (manifest["created"] + "\n").encode())
        self._done = True
        return manifest

    def abort(self) -> None:
        """Drop buffered rows and delete everything written so far (best effort)."""
        self._done = True
        self._buffers = {s: [] for s in self.kind.splits}
        self.store.delete(self.root, recursive=True, missing_ok=True)

    def __enter__(self) -> "TaskWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            try:
                self.abort()
            except Exception:  # the original error matters more than a failed clean-up
                pass


def write_task(
    store: Store | str | None,
    name: str,
    train: pa.Table | Mapping[str, Sequence],
    eval: pa.Table | Mapping[str, Sequence],
    *,
    spec_id: str,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
    vocab_size: int | None = None,
    meta: Mapping[str, Any] | None = None,
    limits: TaskLimits | None = None,
) -> dict:
    """Write a whole task (train and eval tables) and return its manifest. See :class:`TaskWriter`."""
    with TaskWriter(
        store, name, spec_id=spec_id, kind="task", rows_per_file=rows_per_file,
        overwrite=overwrite, vocab_size=vocab_size, meta=meta, limits=limits,
    ) as writer:
        writer.write("train", train)
        writer.write("eval", eval)
        return writer.commit()


def write_stream(
    store: Store | str | None,
    name: str,
    data: pa.Table | Mapping[str, Sequence],
    *,
    spec_id: str,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
    vocab_size: int | None = None,
    meta: Mapping[str, Any] | None = None,
    limits: TaskLimits | None = None,
) -> dict:
    """Write a whole generation stream (one ``data`` split) and return its manifest."""
    with TaskWriter(
        store, name, spec_id=spec_id, kind="stream", rows_per_file=rows_per_file,
        overwrite=overwrite, vocab_size=vocab_size, meta=meta, limits=limits,
    ) as writer:
        writer.write("data", data)
        return writer.commit()


# ------------------------------------------------------------------------------------- reading


def read_task(
    store: Store | str | None,
    name: str,
    *,
    vocab_size: int | None = None,
    image_token_ranges: Sequence[Sequence[int]] | None = None,
    pad_id: int | None = None,
    max_tokens: int | None = None,
    limits: TaskLimits | None = None,
    text_answers: bool = False,
) -> Task:
    """Load and fully validate a ready task; raises :class:`TaskValidationError` on any defect.

    Args:
        store: the store (or its URL).
        name: the task name (validated before any path is built from it).
        vocab_size: ids must be below it (``None``: only ``>= 0`` is checked).
        image_token_ranges: ``[lo, hi)`` image-token ranges (checked to be well-formed and inside
            the vocabulary).
        pad_id: the padding id; a prompt made of nothing else is refused.
        max_tokens: the model's context length: tokens per row beyond it are refused (see
            :meth:`TaskLimits.tokens_per_row`).
        limits: the bounds applied while reading (``None``: :data:`DEFAULT_LIMITS`).
        text_answers: the task's answers are text: no answer id (eval ``answer_tokens``, train
            ``tokens[answer_start:]``) may lie in ``image_token_ranges``.
    """
    read = _read_dataset(as_store(store), TASK, name, vocab_size, image_token_ranges,
                         pad_id=pad_id, max_tokens=max_tokens, limits=limits, text_answers=text_answers)
    return Task(name=name, manifest=read.manifest, train=read.tables["train"], eval=read.tables["eval"],
                files=read.uris, digest=read.digest)


def read_stream(
    store: Store | str | None,
    name: str,
    *,
    vocab_size: int | None = None,
    image_token_ranges: Sequence[Sequence[int]] | None = None,
    max_tokens: int | None = None,
    limits: TaskLimits | None = None,
) -> Stream:
    """Load and fully validate a ready stream; raises :class:`TaskValidationError` on any defect.
    Arguments as :func:`read_task` (with ``image_token_ranges``, every row needs an image token)."""
    read = _read_dataset(as_store(store), STREAM, name, vocab_size, image_token_ranges,
                         max_tokens=max_tokens, limits=limits)
    return Stream(name=name, manifest=read.manifest, data=read.tables["data"], files=read.uris, digest=read.digest)


def read_manifest(store: Store | str | None, name: str, *, kind: str = "task", limits: TaskLimits | None = None) -> dict:
    """Check the name, ``_READY`` and the manifest's structure (no data read); return the manifest."""
    k = _kind(kind)
    store = as_store(store)
    validate_name(name, kind=k.kind)
    limits = limits or DEFAULT_LIMITS
    _check_ready(store, k, name)
    return _parse_manifest(_manifest_bytes(store, k, name, limits), k, name, limits)


def manifest_digest(store: Store | str | None, name: str, kind: str = "task", *, limits: TaskLimits | None = None) -> str:
    """sha256 (hex) of the dataset's ``manifest.json`` bytes, after the name check.

    The manifest lists every data file's sha256 and size, so this digest pins the whole dataset:
    :func:`verify_dataset` later proves the files are still the ones validated.
    """
    k = _kind(kind)
    validate_name(name, kind=k.kind)
    return hashlib.sha256(_manifest_bytes(as_store(store), k, name, limits or DEFAULT_LIMITS)).hexdigest()


def verify_dataset(store: Store | str | None, name: str, digest: str, *, kind: str = "task",
                   limits: TaskLimits | None = None) -> None:
    """Prove a dataset is still the one validated: its manifest's sha256 is ``digest``, and every
    listed file's sha256 and size (when the manifest records it) match the manifest.

    Files are hashed as they stream from the store (nothing kept in memory). Raises
    :class:`TaskChangedError` naming the file on any difference (a file missing, grown past the
    limits or replaced by a directory included).
    """
    k = _kind(kind)
    validate_name(name, kind=k.kind)
    store, limits = as_store(store), limits or DEFAULT_LIMITS
    try:
        raw = _manifest_bytes(store, k, name, limits)
        actual = hashlib.sha256(raw).hexdigest()
        if actual != digest:
            raise TaskChangedError(name, MANIFEST, f"changed since validation: sha256 is {actual}, the validated one was {digest}",
                                   kind=k.kind)
        manifest = _parse_manifest(raw, k, name, limits)
        for rel, entry in manifest["files"].items():
            _fetch_verified(store, k, name, rel, entry, limits, keep=False)
    except TaskChangedError:
        raise
    except TaskValidationError as exc:
        raise TaskChangedError(exc.task, exc.file, f"changed since validation: {exc.reason}", kind=exc.kind) from None


def list_ready_tasks(store: Store | str | None) -> list[str]:
    """Names of the tasks that have ``_READY``, sorted. Entries that break the name rule are ignored."""
    return _list_ready(as_store(store), TASK)


def list_ready_streams(store: Store | str | None) -> list[str]:
    """Names of the streams that have ``_READY``, sorted."""
    return _list_ready(as_store(store), STREAM)


def ready_time(store: Store | str | None, name: str, *, kind: str = "task") -> float:
    """When the dataset's ``_READY`` marker was written (seconds since the epoch; 1 s resolution on S3)."""
    k = _kind(kind)
    return as_store(store).mtime(f"{k.prefix}/{validate_name(name, kind=k.kind)}/{READY}")


# ------------------------------------------------------------------------------------- internals


def _kind(kind: str) -> DatasetKind:
    try:
        return _KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {sorted(_KINDS)}") from None


def _list_ready(store: Store, kind: DatasetKind) -> list[str]:
    return [n for n in store.list(kind.prefix) if is_valid_name(n) and store.exists(f"{kind.prefix}/{n}/{READY}")]


def _type_name(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return f"list<{t.value_type}>"
    if pa.types.is_large_list(t):
        return f"large_list<{t.value_type}>"
    return str(t)


def _same_type(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_list(expected):
        return pa.types.is_list(actual) and actual.value_type == expected.value_type
    return actual == expected


def _conform(table: pa.Table, kind: DatasetKind, split: str, name: str, *, unknown_columns: str = "reject") -> pa.Table:
    """Cast a caller's table to the split schema (safe casts only); extra columns are refused
    (``unknown_columns="reject"``) or kept."""
    schema = kind.splits[split]
    missing = [c for c in schema.required if c not in table.column_names]
    if missing:
        raise ValueError(f"{kind.kind} {name!r} split {split!r}: missing column(s) {missing}; have {table.column_names}")
    wanted = {**schema.required, **schema.optional}
    unknown = [c for c in table.column_names if c not in wanted]
    if unknown and unknown_columns == "reject":
        raise ValueError(f"{kind.kind} {name!r} split {split!r}: unknown column(s) {unknown}; a {kind.kind} has only "
                         f"{list(wanted)} (unknown_columns='reject')")
    for i, col in enumerate(table.column_names):
        target = wanted.get(col)
        if target is None or _same_type(table.schema.field(i).type, target):
            continue
        try:
            table = table.set_column(i, col, table.column(i).cast(target, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(
                f"{kind.kind} {name!r} split {split!r}: column {col!r} of type {_type_name(table.schema.field(i).type)} "
                f"cannot be converted to {_type_name(target)}: {exc}"
            ) from None
    return table




# ------------------------------------------------------------------------------------- manifest


def _fail(name: str, kind: DatasetKind, file: str | None, reason: str) -> TaskValidationError:
    return TaskValidationError(name, file, reason, kind=kind.kind)


def _check_ready(store: Store, kind: DatasetKind, name: str) -> None:
    try:
        info = store.info(f"{kind.prefix}/{name}/{READY}")
    except (FileNotFoundError, NotADirectoryError):
        raise _fail(name, kind, READY, "missing: the dataset is still being written, or was never committed") from None
    if info.is_dir:
        raise _fail(name, kind, READY, "is a directory, not a file")


def _manifest_bytes(store: Store, kind: DatasetKind, name: str, limits: TaskLimits) -> bytes:
    """The manifest's bytes, its size checked before they are downloaded."""
    path = f"{kind.prefix}/{name}/{MANIFEST}"
    size = _file_size(store, kind, name, MANIFEST, missing="missing")
    if size > limits.max_manifest_bytes:
        raise _fail(name, kind, MANIFEST, f"is {size} bytes, more than the {limits.max_manifest_bytes} allowed (max_manifest_bytes)")
    _, data = _stream_sha256(store, path, limits.max_manifest_bytes, keep=True)
    if len(data) > limits.max_manifest_bytes:
        raise _fail(name, kind, MANIFEST, f"is over {limits.max_manifest_bytes} bytes (max_manifest_bytes)")
    return data


def _parse_manifest(raw: bytes, kind: DatasetKind, name: str, limits: TaskLimits) -> dict:
    """Parse the manifest (depth checked first, without recursion) and check its structure."""
    k = kind.kind

    def fail(reason: str) -> TaskValidationError:
        return _fail(name, kind, MANIFEST, reason)

    depth = json_depth(raw)
    if depth > limits.max_manifest_depth:
        raise fail(f"not valid: JSON nested {depth} levels deep, more than the {limits.max_manifest_depth} allowed (max_manifest_depth)")
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise fail(f"must be a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise fail(f"unsupported schema_version {version!r}; this reader supports {list(SUPPORTED_SCHEMA_VERSIONS)}")
    if manifest.get("kind") != k:
        raise fail(f"kind is {manifest.get('kind')!r}, expected {k!r}")
    if manifest.get("name") != name:
        raise fail(f"name is {manifest.get('name')!r}, expected {name!r} (the directory name)")
    if not isinstance(manifest.get("spec_id"), str) or not manifest["spec_id"]:
        raise fail(f"spec_id must be a non-empty string, got {manifest.get('spec_id')!r}")
    rows = manifest.get("rows")
    if not isinstance(rows, dict) or set(rows) != set(kind.splits):
        raise fail(f"'rows' must map exactly the splits {list(kind.splits)} to row counts, got {rows!r}")
    for split, n in rows.items():
        if type(n) is not int or n < 0:
            raise fail(f"rows[{split!r}] must be a non-negative integer, got {n!r}")
        if n > limits.max_rows:
            raise fail(f"rows[{split!r}] is {n}, more than the {limits.max_rows} rows allowed per split (max_rows)")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise fail(f"'files' must be an object mapping relative paths to {{sha256, rows}}, got {type(files).__name__}")
    if len(files) > limits.max_files:
        raise fail(f"lists {len(files)} files, more than the {limits.max_files} allowed per dataset (max_files)")
    for rel, entry in files.items():
        _check_file_entry(rel, entry, kind, limits, fail)
    return manifest


def _check_file_entry(rel: str, entry: Any, kind: DatasetKind, limits: TaskLimits, fail) -> None:
    """One ``files`` entry: a safe ``<split>/<file>.parquet`` path and ``{sha256, rows[, bytes]}``."""
    try:
        check_path(rel, what="data file path")
    except (ValueError, TypeError) as exc:
        raise fail(f"bad file entry: {exc}") from None
    if rel.split("/", 1)[0] not in kind.splits or "/" not in rel or not rel.endswith(".parquet"):
        raise fail(f"bad file entry {rel!r}: must be <split>/<file>.parquet with split in {list(kind.splits)}")
    longest = max(len(part) for part in rel.split("/"))
    if longest > MAX_NAME_CHARS:
        raise fail(f"bad file entry {rel[:80]!r}...: a file name of {longest} characters, more than {MAX_NAME_CHARS}")
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("sha256"), str)
        or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
        or type(entry.get("rows")) is not int
        or entry["rows"] < 0
    ):
        raise fail(f"bad file entry {rel!r}: need {{'sha256': <64 hex chars>, 'rows': <int>}}, got {entry!r}")
    size = entry.get("bytes")
    if size is not None and (type(size) is not int or size < 0):
        raise fail(f"bad file entry {rel!r}: 'bytes' must be a non-negative integer when present, got {size!r}")
    if size is not None and size > limits.max_file_bytes:
        raise fail(f"bad file entry {rel!r}: {size} bytes, more than the {limits.max_file_bytes} allowed per file (max_file_bytes)")


def _check_folder(store: Store, kind: DatasetKind, name: str, limits: TaskLimits) -> None:
    """Every object under the dataset's folder counts towards ``max_files``, listed or not, and
    has a key that is a valid store path (no backslash, NUL, empty or dot component)."""
    root = f"{kind.prefix}/{name}"
    paths = store.walk(root)
    if len(paths) > limits.max_files:
        raise _fail(name, kind, None, f"holds {len(paths)} files, more than the {limits.max_files} allowed per dataset (max_files)")
    for path in paths:
        rel = path[len(root) + 1:]
        try:
            check_path(rel, what="key")
        except (ValueError, TypeError) as exc:
            raise _fail(name, kind, None, f"holds an object whose key is not a valid store path: {exc}") from None


# ------------------------------------------------------------------------------------- data files

#: Bytes read from the store per chunk while hashing.
_CHUNK = 4 * 2**20


def _file_size(store: Store, kind: DatasetKind, name: str, rel: str, *, missing: str) -> int:
    """Size of a listed file; a clear error if it is missing or a directory."""
    try:
        info = store.info(f"{kind.prefix}/{name}/{rel}")
    except (FileNotFoundError, NotADirectoryError):
        raise _fail(name, kind, rel, missing) from None
    if info.is_dir:
        raise _fail(name, kind, rel, "is a directory, not a file")
    return info.size


def _stream_sha256(store: Store, path: str, max_bytes: int, *, keep: bool) -> tuple[str, bytes]:
    """sha256 of the object at ``path``, computed chunk by chunk as it streams from the store.

    Reads at most ``max_bytes + 1`` bytes (the caller compares the length with its bound). With
    ``keep`` the bytes read are returned too (else ``b""``).
    """
    digest, kept, total = hashlib.sha256(), bytearray(), 0
    with store.open_read(path) as f:
        while total <= max_bytes:
            chunk = f.read(min(_CHUNK, max_bytes + 1 - total))
            if not chunk:
                break
            digest.update(chunk)
            total += len(chunk)
            if keep:
                kept += chunk
    return digest.hexdigest(), bytes(kept)


def _fetch_verified(store: Store, kind: DatasetKind, name: str, rel: str, entry: dict, limits: TaskLimits,
                    *, keep: bool, check_size: bool = True) -> tuple[int, bytes]:
    """Check one listed file's size bound (before the download) and sha256 (while it streams).

    Returns ``(size, bytes)``; the bytes only with ``keep`` (the verified bytes are parsed from
    memory, so each file is downloaded once), else ``b""``. With ``check_size`` the manifest's
    ``bytes`` (when recorded) must equal the size; :func:`_read_dataset` checks it last instead.
    """
    size = _file_size(store, kind, name, rel, missing="listed in the manifest but missing from the store")
    if size > limits.max_file_bytes:
        raise _fail(name, kind, rel, f"is {size} bytes, more than the {limits.max_file_bytes} allowed per file (max_file_bytes)")
    if check_size:
        _check_size(entry, size, kind, name, rel)
    digest, data = _stream_sha256(store, f"{kind.prefix}/{name}/{rel}", limits.max_file_bytes, keep=keep)
    if digest != entry["sha256"]:
        raise _fail(name, kind, rel,
                    f"sha256 mismatch: manifest says {entry['sha256']}, file has {digest} (changed after the dataset was written)")
    return size, data


def _check_size(entry: dict, size: int, kind: DatasetKind, name: str, rel: str) -> None:
    """The manifest's ``bytes`` entry, when present, is the file's size."""
    expected = entry.get("bytes")
    if expected is not None and size != expected:
        raise _fail(name, kind, rel, f"size mismatch: the manifest says {expected} bytes, the file has {size}")


@dataclass
class _Read:
    manifest: dict
    tables: dict[str, pa.Table]
    uris: dict[str, list[str]]
    digest: str


def _read_dataset(
    store: Store,
    kind: DatasetKind,
    name: str,
    vocab_size: int | None,
    image_token_ranges: Sequence[Sequence[int]] | None,
    *,
    pad_id: int | None = None,
    max_tokens: int | None = None,
    limits: TaskLimits | None = None,
    text_answers: bool = False,
) -> _Read:
    k = kind.kind
    validate_name(name, kind=k)  # before any path is built from it
    limits = limits or DEFAULT_LIMITS
    if vocab_size is not None and (type(vocab_size) is not int or vocab_size < 1):
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    ranges = _normalized_ranges(image_token_ranges, vocab_size)
    if text_answers and ranges is None:
        raise ValueError("text_answers needs image_token_ranges")
    rules = _RowRules(vocab_size=vocab_size, ranges=ranges, pad_id=pad_id, max_tokens=limits.tokens_per_row(max_tokens),
                      text_answers=text_answers)
    _check_ready(store, kind, name)
    raw = _manifest_bytes(store, kind, name, limits)
    manifest = _parse_manifest(raw, kind, name, limits)
    _check_folder(store, kind, name, limits)
    root = f"{kind.prefix}/{name}"
    tables: dict[str, pa.Table] = {}
    uris: dict[str, list[str]] = {}
    parts_of: dict[str, list[tuple[str, int]]] = {}
    sizes: dict[str, int] = {}
    for split in kind.splits:
        rels = [rel for rel in manifest["files"] if rel.split("/", 1)[0] == split]
        if manifest["rows"][split] == 0 or not rels:
            raise TaskValidationError(name, f"{split}/", "split is empty", kind=k)
        parts, seen = [], 0
        for rel in rels:
            seen += manifest["files"][rel]["rows"]  # each part's metadata must agree, before it is decoded
            if seen > limits.max_rows:
                raise TaskValidationError(name, rel, f"the {split} files up to this one hold more than the {limits.max_rows} "
                                                     f"rows allowed per split (max_rows)", kind=k)
            table, size = _read_part(store, kind, name, split, rel, manifest["files"][rel], limits, rules)
            _check_rows(table, kind, split, name, rel, vocab_size=vocab_size, ranges=ranges, rules=rules)
            sizes[rel] = size
            parts.append(table)
        table = pa.concat_tables(parts)
        if table.num_rows != manifest["rows"][split]:
            raise TaskValidationError(
                name, MANIFEST, f"rows[{split!r}] is {manifest['rows'][split]} but the {split} files hold {table.num_rows} rows", kind=k
            )
        tables[split] = table
        parts_of[split] = [(rel, p.num_rows) for rel, p in zip(rels, parts)]
        uris[split] = [store.uri(f"{root}/{rel}") for rel in rels]
    if kind is TASK and limits.eval_duplicates == "reject":
        _check_eval_not_train(tables["train"], tables["eval"], name, parts_of["eval"])
    for rel, size in sizes.items():  # last: a stale size matters less than bad content
        _check_size(manifest["files"][rel], size, kind, name, rel)
    return _Read(manifest=manifest, tables=tables, uris=uris, digest=hashlib.sha256(raw).hexdigest())


def _normalized_ranges(image_token_ranges: Sequence[Sequence[int]] | None, vocab_size: int | None) -> list[list[int]] | None:
    if image_token_ranges is None:
        return None
    from cl_platform.models.modality import normalize_ranges  # torch import only when needed

    ranges = normalize_ranges(image_token_ranges)
    if vocab_size is not None and ranges and ranges[-1][1] > vocab_size:
        raise ValueError(f"image_token_ranges {ranges} reach past vocab_size {vocab_size}")
    return ranges


def _read_part(store: Store, kind: DatasetKind, name: str, split: str, rel: str, entry: dict, limits: TaskLimits,
               rules: "_RowRules") -> tuple[pa.Table, int]:
    """Read one part: size bound, then sha256 while it streams, then the Parquet metadata
    (schema, rows, tokens, decoded size) and only then decode it, row group by row group.
    Returns the table and the file's size."""
    k = kind.kind
    size, data = _fetch_verified(store, kind, name, rel, entry, limits, keep=True, check_size=False)
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TaskValidationError(name, rel, f"not a readable parquet file: {exc}", kind=k) from None
    _check_metadata(pf, kind, split, name, rel, entry, limits, rules, file_bytes=len(data))
    table = _decode(pf, name, rel, k)
    del data
    return table, size


def _check_metadata(pf: pq.ParquetFile, kind: DatasetKind, split: str, name: str, rel: str, entry: dict,
                    limits: TaskLimits, rules: "_RowRules", *, file_bytes: int) -> None:
    """The checks the Parquet footer allows, before any page is decoded."""

    def fail(reason: str) -> TaskValidationError:
        return TaskValidationError(name, rel, reason, kind=kind.kind)

    schema, arrow = kind.splits[split], pf.schema_arrow
    names = arrow.names
    for col in schema.required:
        if col not in names:
            raise fail(f"missing column {col!r} (has {names})")
    known = {**schema.required, **schema.optional}
    for col, expected in known.items():
        if col in names and not _same_type(arrow.field(col).type, expected):
            raise fail(f"column {col!r} has type {_type_name(arrow.field(col).type)}, expected {_type_name(expected)}")
    unknown = [c for c in names if c not in known]
    if unknown and limits.unknown_columns == "reject":
        raise fail(f"unknown column(s) {unknown}: a {kind.kind} has only {list(known)} (unknown_columns='reject')")
    md = pf.metadata
    if md.num_rows != entry["rows"]:
        raise fail(f"has {md.num_rows} rows, the manifest says {entry['rows']}")
    if md.num_rows > limits.max_rows:
        raise fail(f"has {md.num_rows} rows, more than the {limits.max_rows} allowed per split (max_rows)")
    decoded, values = _decoded_estimate(pf)
    for col in schema.list_columns:
        n = values.get(col, 0)
        if n > md.num_rows * (rules.max_tokens + 1):
            raise fail(f"column {col!r} holds {n} token ids in {md.num_rows} rows: some row has more than the "
                       f"{rules.max_tokens} tokens allowed per row (max_tokens)")
    bound = limits.decoded_bound(file_bytes)
    if decoded > bound:
        raise fail(f"decodes to about {decoded} bytes (from its Parquet metadata), more than the {bound} allowed for a "
                   f"{file_bytes}-byte file (max_decoded_bytes, max_expansion); refused before decoding")


#: Decoded bytes per value of each Parquet physical type (byte arrays: their offsets only).
_WIDTH = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12, "BYTE_ARRAY": 4}


def _decoded_estimate(pf: pq.ParquetFile) -> tuple[int, dict[str, int]]:
    """(decoded bytes, values per top-level column) from the footer.

    A column chunk's ``total_uncompressed_size`` is its size after decompression but still
    encoded: dictionary and run-length encoding keep a million copies of one id tiny. The
    estimate is therefore the larger of that size and ``num_values`` times the value width.
    """
    md = pf.metadata
    decoded, values = 0, {}
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            width = _WIDTH.get(chunk.physical_type, md.schema.column(c).length or 1)
            decoded += max(chunk.total_uncompressed_size, chunk.num_values * width)
            top = chunk.path_in_schema.split(".", 1)[0]
            values[top] = values.get(top, 0) + chunk.num_values
    return decoded, values


def _decode(pf: pq.ParquetFile, name: str, rel: str, kind: str) -> pa.Table:
    """Decode the row groups of a part whose metadata passed."""
    try:
        groups = [pf.read_row_group(g) for g in range(pf.metadata.num_row_groups)]
        return pa.concat_tables(groups) if groups else pf.schema_arrow.empty_table()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TaskValidationError(name, rel, f"not a readable parquet file: {exc}", kind=kind) from None


# ------------------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class _RowRules:
    """What rows are checked against besides their schema."""

    vocab_size: int | None = None
    ranges: list[list[int]] | None = None
    pad_id: int | None = None
    max_tokens: int = FALLBACK_MAX_TOKENS
    text_answers: bool = False


def _list_stats(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per-row lengths, flat values, row-level nulls and value-level nulls of a list column."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    flat = arr.flatten()
    values = flat.to_numpy(zero_copy_only=False) if flat.null_count == 0 else np.zeros(0, np.int32)
    return lengths, values, arr.null_count, flat.null_count


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _image_mask(values: np.ndarray, ranges: list[list[int]]) -> np.ndarray:
    is_image = np.zeros(values.shape, dtype=bool)
    for lo, hi in ranges:
        is_image |= (values >= lo) & (values < hi)
    return is_image


def _positions(lens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row of each flat value, position of each value inside its row)."""
    total = int(lens.sum())
    starts = np.cumsum(lens) - lens
    rows = np.repeat(np.arange(len(lens)), lens)
    return rows, np.arange(total) - np.repeat(starts, lens)


def _check_rows(
    table: pa.Table,
    kind: DatasetKind,
    split: str,
    name: str,
    rel: str,
    *,
    vocab_size: int | None,
    ranges: list[list[int]] | None,
    rules: _RowRules | None = None,
) -> None:
    """Vectorised row checks of one part (row numbers in messages are 0-based within the file)."""
    k = kind.kind
    rules = rules or _RowRules(vocab_size=vocab_size, ranges=ranges)

    def fail(reason: str) -> TaskValidationError:
        return TaskValidationError(name, rel, reason, kind=k)

    schema = kind.splits[split]
    if table.num_rows == 0:
        raise fail("has no rows")
    for col in (*schema.required, *schema.optional):
        if col in table.column_names and col not in schema.list_columns and col != "answer":
            if table.column(col).null_count:
                row = _first(table.column(col).is_null().to_numpy(zero_copy_only=False))
                raise fail(f"row {row}: column {col!r} is null")
    lengths: dict[str, np.ndarray] = {}
    flat: dict[str, np.ndarray] = {}
    for col in schema.list_columns:
        lens, values, row_nulls, value_nulls = _list_stats(table.column(col))
        if row_nulls or value_nulls:
            raise fail(f"column {col!r} contains nulls ({row_nulls} null rows, {value_nulls} null ids)")
        lengths[col], flat[col] = lens, values
        if (lens == 0).any():
            row = _first(lens == 0)
            raise fail(f"row {row}: column {col!r} is empty ({int((lens == 0).sum())} empty rows in this file)")
        bad = values < 0 if vocab_size is None else (values < 0) | (values >= vocab_size)
        if bad.any():
            idx = _first(bad)
            row = int(np.searchsorted(np.cumsum(lens), idx, side="right"))
            bound = "[0, ...)" if vocab_size is None else f"[0, {vocab_size})"
            raise fail(
                f"row {row}: column {col!r} has token id {int(values[idx])} outside {bound} "
                f"({int(bad.sum())} bad ids in this file)"
            )
    _check_lengths(lengths, rules.max_tokens, fail)
    if "answer_start" in schema.required:
        starts = table.column("answer_start").to_numpy()
        n_tokens = lengths["tokens"]
        bad = (starts <= 0) | (starts >= n_tokens)
        if bad.any():
            row = _first(bad)
            raise fail(
                f"row {row}: answer_start {int(starts[row])} must satisfy 0 < answer_start < len(tokens) = {int(n_tokens[row])} "
                f"({int(bad.sum())} bad rows in this file)"
            )
    if k == "task":
        _check_task_rows(table, split, lengths, flat, rules, fail)
    if k == "stream":
        _check_stream_rows(table, lengths["tokens"], flat["tokens"], ranges, fail)


def _check_lengths(lengths: dict[str, np.ndarray], max_tokens: int, fail) -> None:
    """Tokens per row (all list columns of a row together) within ``max_tokens``."""
    total = sum(lengths.values())
    over = total > max_tokens
    if np.any(over):
        row = _first(over)
        raise fail(f"row {row}: {int(total[row])} tokens, more than the {max_tokens} allowed per row (max_tokens) "
                   f"({int(over.sum())} such rows in this file)")


def _check_task_rows(table: pa.Table, split: str, lengths: dict[str, np.ndarray], flat: dict[str, np.ndarray],
                     rules: _RowRules, fail) -> None:
    """Answers are text (no image-token id); prompts hold more than padding."""
    if split == "train":
        rows, pos = _positions(lengths["tokens"])
        in_answer = pos >= np.repeat(table.column("answer_start").to_numpy(), lengths["tokens"])
        prompt_rows, prompt_ids = rows[~in_answer], flat["tokens"][~in_answer]
        answer_rows, answer_ids = rows[in_answer], flat["tokens"][in_answer]
        where, n = "tokens[answer_start:]", len(lengths["tokens"])
    else:
        prompt_rows, prompt_ids = _positions(lengths["prompt_tokens"])[0], flat["prompt_tokens"]
        answer_rows, answer_ids = _positions(lengths["answer_tokens"])[0], flat["answer_tokens"]
        where, n = "answer_tokens", len(lengths["prompt_tokens"])
    if rules.text_answers and rules.ranges:
        image = _image_mask(answer_ids, rules.ranges)
        if image.any():
            row = int(answer_rows[_first(image)])
            raise fail(f"row {row}: the answer ({where}) holds image token id {int(answer_ids[_first(image)])} "
                       f"(image ids {rules.ranges}); answers of a task are text "
                       f"({len(np.unique(answer_rows[image]))} such rows in this file)")
    if rules.pad_id is not None:
        content = np.bincount(prompt_rows[prompt_ids != rules.pad_id], minlength=n)
        if (content == 0).any():
            row = _first(content == 0)
            raise fail(f"row {row}: the prompt is only padding (pad id {rules.pad_id}) "
                       f"({int((content == 0).sum())} such rows in this file)")


def _check_stream_rows(table: pa.Table, lens: np.ndarray, values: np.ndarray, ranges: list[list[int]] | None, fail) -> None:
    """``prompt_len`` bounds; with image ranges, at least one image token per row."""
    if "prompt_len" in table.column_names:
        plen = table.column("prompt_len").to_numpy()
        bad = (plen < 0) | (plen >= lens)
        if bad.any():
            row = _first(bad)
            raise fail(f"row {row}: prompt_len {int(plen[row])} must satisfy 0 <= prompt_len < len(tokens) = {int(lens[row])}")
    if ranges:
        rows = _positions(lens)[0]
        image_counts = np.bincount(rows[_image_mask(values, ranges)], minlength=len(lens))
        if (image_counts == 0).any():
            row = _first(image_counts == 0)
            raise fail(
                f"row {row}: no image token (ids in {ranges}); every stream row must contain image tokens "
                f"({int((image_counts == 0).sum())} such rows in this file)"
            )


# ------------------------------------------------------------------------------------- eval vs train

#: Bases of the two polynomial row hashes (odd 64-bit constants; arithmetic wraps modulo 2**64).
_BASES = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))


def _list_parts(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    lens = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    return lens, arr.flatten().to_numpy(zero_copy_only=False).astype(np.uint64)


def _powers(base: np.uint64, n: int) -> np.ndarray:
    """``base ** k mod 2**64`` for ``k`` in ``[0, n]``."""
    out = np.full(n + 1, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out, dtype=np.uint64)


def _row_keys(*columns: pa.ChunkedArray) -> np.ndarray:
    """One 24-byte key per row of the concatenation of ``columns`` (list<int32>, non-empty rows):
    two polynomial hashes of the ids and the length, computed without a loop over rows."""
    parts = [_list_parts(c) for c in columns]
    total_len = sum(lens for lens, _ in parts)
    keys = [total_len.astype(np.uint64)]
    for base in _BASES:
        powers = _powers(base, int(total_len.max(initial=0)))
        h = np.zeros(len(total_len), dtype=np.uint64)
        offset = np.zeros(len(total_len), dtype=np.int64)
        for lens, values in parts:
            _, pos = _positions(lens)
            terms = (values + np.uint64(1)) * powers[pos + np.repeat(offset, lens)]
            prefix = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
            ends = np.cumsum(lens)
            h += prefix[ends] - prefix[ends - lens]  # per-row sums; differences wrap like the sums
            offset += lens
        keys.append(h)
    return np.ascontiguousarray(np.stack(keys, axis=1)).view(np.dtype((np.void, 24))).ravel()


def _check_eval_not_train(train: pa.Table, eval_: pa.Table, name: str, eval_parts: list[tuple[str, int]]) -> None:
    """No eval row (prompt + answer) may equal a train row's tokens: such a task measures recall
    of its own training data, not what was learned."""
    dup = np.isin(_row_keys(eval_.column("prompt_tokens"), eval_.column("answer_tokens")), _row_keys(train.column("tokens")))
    if not dup.any():
        return
    row = _first(dup)
    ends = np.cumsum([n for _, n in eval_parts])
    part = int(np.searchsorted(ends, row, side="right"))
    rel, local = eval_parts[part][0], row - (int(ends[part - 1]) if part else 0)
    raise TaskValidationError(
        name, rel, f"row {local}: eval prompt + answer duplicates a train row ({int(dup.sum())} of {len(dup)} eval rows "
        f"are copies of train rows); eval rows must not be train rows", kind="task",
    )


__all__ = [
    "DEFAULT_ROWS_PER_FILE",
    "MANIFEST",
    "NAME_PATTERN",
    "READY",
    "SCHEMA_VERSION",
    "STREAM",
    "TASK",
    "DatasetKind",
    "SplitSchema",
    "Stream",
    "Task",
    "TaskChangedError",
    "TaskLimits",
    "TaskWriter",
    "dataset_dir",
    "is_valid_name",
    "list_ready_streams",
    "list_ready_tasks",
    "manifest_digest",
    "read_manifest",
    "read_stream",
    "read_task",
    "ready_time",
    "validate_name",
    "verify_dataset",
    "write_stream",
    "write_task",
]
