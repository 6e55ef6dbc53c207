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
  ``list<int64>``); known optional columns too; other extra columns are carried through unchecked.
- No nulls in checked columns; every split has at least one row.
- Token ids are ``>= 0`` and ``< vocab_size`` when a vocabulary size is given.
- Train rows: ``0 < answer_start < len(tokens)`` (the loss covers ``tokens[answer_start:]``, so
  there is at least one prompt and one answer token).
- Eval rows: non-empty ``prompt_tokens`` and ``answer_tokens``.
- Stream rows: non-empty ``tokens``; ``0 <= prompt_len < len(tokens)``; with
  ``image_token_ranges`` given, at least one image token per row. For tasks, the ranges are only
  checked to be well-formed and inside the vocabulary (tasks may be text-only).

The manifest is the source of truth: parquet files it does not list are ignored.
The writer writes the data files, then the manifest (with each file's sha256), then ``_READY``;
a reader ignores anything without ``_READY``. Each file is written atomically (see
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

from cl_platform.data.errors import TaskValidationError
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
    """

    name: str
    manifest: dict
    train: pa.Table
    eval: pa.Table
    files: dict[str, list[str]]

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
    """

    name: str
    manifest: dict
    data: pa.Table
    files: dict[str, list[str]]

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
    ) -> None:
        self.kind = _kind(kind)
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
        table = _conform(rows if isinstance(rows, pa.Table) else pa.table(dict(rows)), self.kind, split, self.name)
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
) -> dict:
    """Write a whole task (train and eval tables) and return its manifest. See :class:`TaskWriter`."""
    with TaskWriter(
        store, name, spec_id=spec_id, kind="task", rows_per_file=rows_per_file,
        overwrite=overwrite, vocab_size=vocab_size, meta=meta,
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
) -> dict:
    """Write a whole generation stream (one ``data`` split) and return its manifest."""
    with TaskWriter(
        store, name, spec_id=spec_id, kind="stream", rows_per_file=rows_per_file,
        overwrite=overwrite, vocab_size=vocab_size, meta=meta,
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
) -> Task:
    """Load and fully validate a ready task; raises :class:`TaskValidationError` on any defect."""
    manifest, tables, files = _read_dataset(as_store(store), TASK, name, vocab_size, image_token_ranges)
    return Task(name=name, manifest=manifest, train=tables["train"], eval=tables["eval"], files=files)


def read_stream(
    store: Store | str | None,
    name: str,
    *,
    vocab_size: int | None = None,
    image_token_ranges: Sequence[Sequence[int]] | None = None,
) -> Stream:
    """Load and fully validate a ready stream; raises :class:`TaskValidationError` on any defect."""
    manifest, tables, files = _read_dataset(as_store(store), STREAM, name, vocab_size, image_token_ranges)
    return Stream(name=name, manifest=manifest, data=tables["data"], files=files)


def read_manifest(store: Store | str | None, name: str, *, kind: str = "task") -> dict:
    """Check the name, ``_READY`` and the manifest's structure (no data read); return the manifest."""
    k = _kind(kind)
    return _load_manifest(as_store(store), k, validate_name(name, kind=k.kind))


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


def _conform(table: pa.Table, kind: DatasetKind, split: str, name: str) -> pa.Table:
    """Cast a caller's table to the split schema (safe casts only); extra columns are kept."""
    schema = kind.splits[split]
    missing = [c for c in schema.required if c not in table.column_names]
    if missing:
        raise ValueError(f"{kind.kind} {name!r} split {split!r}: missing column(s) {missing}; have {table.column_names}")
    wanted = {**schema.required, **schema.optional}
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


def _load_manifest(store: Store, kind: DatasetKind, name: str) -> dict:
    """Check ``_READY`` and the manifest's structure; return the manifest."""
    k, root = kind.kind, f"{kind.prefix}/{name}"

    def fail(file: str | None, reason: str) -> TaskValidationError:
        return TaskValidationError(name, file, reason, kind=k)

    if not store.exists(f"{root}/{READY}"):
        raise fail(READY, "missing: the dataset is still being written, or was never committed")
    try:
        raw = store.read_bytes(f"{root}/{MANIFEST}")
    except FileNotFoundError:
        raise fail(MANIFEST, "missing") from None
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(MANIFEST, f"not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise fail(MANIFEST, f"must be a JSON object, got {type(manifest).__name__}")
    version = manifest.get("schema_version")
    if type(version) is not int or version not in SUPPORTED_SCHEMA_VERSIONS:
        raise fail(MANIFEST, f"unsupported schema_version {version!r}; this reader supports {list(SUPPORTED_SCHEMA_VERSIONS)}")
    if manifest.get("kind") != k:
        raise fail(MANIFEST, f"kind is {manifest.get('kind')!r}, expected {k!r}")
    if manifest.get("name") != name:
        raise fail(MANIFEST, f"name is {manifest.get('name')!r}, expected {name!r} (the directory name)")
    if not isinstance(manifest.get("spec_id"), str) or not manifest["spec_id"]:
        raise fail(MANIFEST, f"spec_id must be a non-empty string, got {manifest.get('spec_id')!r}")
    rows = manifest.get("rows")
    if not isinstance(rows, dict) or set(rows) != set(kind.splits):
        raise fail(MANIFEST, f"'rows' must map exactly the splits {list(kind.splits)} to row counts, got {rows!r}")
    for split, n in rows.items():
        if type(n) is not int or n < 0:
            raise fail(MANIFEST, f"rows[{split!r}] must be a non-negative integer, got {n!r}")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise fail(MANIFEST, f"'files' must be an object mapping relative paths to {{sha256, rows}}, got {type(files).__name__}")
    for rel, entry in files.items():
        try:
            check_path(rel, what="data file path")
        except (ValueError, TypeError) as exc:
            raise fail(MANIFEST, f"bad file entry: {exc}") from None
        if rel.split("/", 1)[0] not in kind.splits or "/" not in rel or not rel.endswith(".parquet"):
            raise fail(MANIFEST, f"bad file entry {rel!r}: must be <split>/<file>.parquet with split in {list(kind.splits)}")
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("sha256"), str)
            or not re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])
            or type(entry.get("rows")) is not int
            or entry["rows"] < 0
        ):
            raise fail(MANIFEST, f"bad file entry {rel!r}: need {{'sha256': <64 hex chars>, 'rows': <int>}}, got {entry!r}")
    return manifest


def _read_dataset(
    store: Store,
    kind: DatasetKind,
    name: str,
    vocab_size: int | None,
    image_token_ranges: Sequence[Sequence[int]] | None,
) -> tuple[dict, dict[str, pa.Table], dict[str, list[str]]]:
    k = kind.kind
    validate_name(name, kind=k)  # before any path is built from it
    if vocab_size is not None and (type(vocab_size) is not int or vocab_size < 1):
        raise ValueError(f"vocab_size must be a positive int, got {vocab_size!r}")
    ranges = None
    if image_token_ranges is not None:
        from cl_platform.models.modality import normalize_ranges  # torch import only when needed

        ranges = normalize_ranges(image_token_ranges)
        if vocab_size is not None and ranges and ranges[-1][1] > vocab_size:
            raise ValueError(f"image_token_ranges {ranges} reach past vocab_size {vocab_size}")
    manifest = _load_manifest(store, kind, name)
    root = f"{kind.prefix}/{name}"
    tables: dict[str, pa.Table] = {}
    uris: dict[str, list[str]] = {}
    for split in kind.splits:
        rels = [rel for rel in manifest["files"] if rel.split("/", 1)[0] == split]
        if manifest["rows"][split] == 0 or not rels:
            raise TaskValidationError(name, f"{split}/", "split is empty", kind=k)
        parts = []
        for rel in rels:
            table = _read_part(store, kind, name, split, rel, manifest["files"][rel])
            _check_rows(table, kind, split, name, rel, vocab_size=vocab_size, ranges=ranges)
            parts.append(table)
        table = pa.concat_tables(parts)
        if table.num_rows != manifest["rows"][split]:
            raise TaskValidationError(
                name, MANIFEST, f"rows[{split!r}] is {manifest['rows'][split]} but the {split} files hold {table.num_rows} rows", kind=k
            )
        tables[split] = table
        uris[split] = [store.uri(f"{root}/{rel}") for rel in rels]
    return manifest, tables, uris


def _read_part(store: Store, kind: DatasetKind, name: str, split: str, rel: str, entry: dict) -> pa.Table:
    """Read one part once: hash the bytes, parse the same buffer, check the schema."""
    k = kind.kind
    try:
        data = store.read_bytes(f"{kind.prefix}/{name}/{rel}")
    except FileNotFoundError:
        raise TaskValidationError(name, rel, "listed in the manifest but missing from the store", kind=k) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry["sha256"]:
        raise TaskValidationError(
            name, rel, f"sha256 mismatch: manifest says {entry['sha256']}, file has {digest} (changed after the dataset was written)", kind=k
        )
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TaskValidationError(name, rel, f"not a readable parquet file: {exc}", kind=k) from None
    del data
    schema = kind.splits[split]
    for col, expected in schema.required.items():
        if col not in table.column_names:
            raise TaskValidationError(name, rel, f"missing column {col!r} (has {table.column_names})", kind=k)
    for col, expected in {**schema.required, **schema.optional}.items():
        if col in table.column_names:
            actual = table.schema.field(col).type
            if not _same_type(actual, expected):
                raise TaskValidationError(
                    name, rel, f"column {col!r} has type {_type_name(actual)}, expected {_type_name(expected)}", kind=k
                )
    if table.num_rows != entry["rows"]:
        raise TaskValidationError(name, rel, f"has {table.num_rows} rows, the manifest says {entry['rows']}", kind=k)
    return table


def _list_stats(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per-row lengths, flat values, row-level nulls and value-level nulls of a list column."""
    arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    flat = arr.flatten()
    values = flat.to_numpy(zero_copy_only=False) if flat.null_count == 0 else np.zeros(0, np.int32)
    return lengths, values, arr.null_count, flat.null_count


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_rows(
    table: pa.Table,
    kind: DatasetKind,
    split: str,
    name: str,
    rel: str,
    *,
    vocab_size: int | None,
    ranges: list[list[int]] | None,
) -> None:
    """Vectorised row checks of one part (row numbers in messages are 0-based within the file)."""
    k = kind.kind

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
    image_counts = None
    for col in schema.list_columns:
        lens, values, row_nulls, value_nulls = _list_stats(table.column(col))
        if row_nulls or value_nulls:
            raise fail(f"column {col!r} contains nulls ({row_nulls} null rows, {value_nulls} null ids)")
        lengths[col] = lens
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
        if ranges and col == "tokens" and k == "stream":
            is_image = np.zeros(values.shape, dtype=bool)
            for lo, hi in ranges:
                is_image |= (values >= lo) & (values < hi)
            row_ids = np.repeat(np.arange(len(lens)), lens)
            image_counts = np.bincount(row_ids[is_image], minlength=len(lens))
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
    if k == "stream" and "prompt_len" in table.column_names:
        plen = table.column("prompt_len").to_numpy()
        n_tokens = lengths["tokens"]
        bad = (plen < 0) | (plen >= n_tokens)
        if bad.any():
            row = _first(bad)
            raise fail(f"row {row}: prompt_len {int(plen[row])} must satisfy 0 <= prompt_len < len(tokens) = {int(n_tokens[row])}")
    if image_counts is not None and (image_counts == 0).any():
        row = _first(image_counts == 0)
        raise fail(
            f"row {row}: no image token (ids in {ranges}); every stream row must contain image tokens "
            f"({int((image_counts == 0).sum())} such rows in this file)"
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
    "TaskWriter",
    "dataset_dir",
    "is_valid_name",
    "list_ready_streams",
    "list_ready_tasks",
    "read_manifest",
    "read_stream",
    "read_task",
    "ready_time",
    "validate_name",
    "write_stream",
    "write_task",
]
