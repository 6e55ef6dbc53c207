"""Import the MoDE reference code's pre-tokenized jsonl into the platform's task format.

The reference data (Anole / Chameleon token ids, :data:`cl_platform.models.modality.ANOLE`) is
laid out as::

    <DATA_ROOT>/ScienceQA/train_data.jsonl     one folder per task: {"tokens": [...]} per line
    <DATA_ROOT>/TextVQA/train_data.jsonl
    ...
    <DATA_ROOT>/laion_data.jsonl               the image-generation sequences: {"image_tokens": [...]}

``--data-root DIR`` (``data_root=``) imports all of it: every task under ``DIR`` and the
generation stream from ``DIR/laion_data.jsonl`` when it exists (it is never imported as a task).
``--tasks DIR`` / ``--stream FILE`` import tasks and a stream from elsewhere.

Tasks. Under a tasks directory, both layouts are read and may coexist:

- ``<Task>/train_data.jsonl`` (the reference layout): one task per folder, named after the folder;
  a sub-folder without ``train_data.jsonl`` is skipped with a warning;
- ``<name>.jsonl``: one task per file, named after the file stem.

Names are lower-cased, runs of characters outside ``[a-z0-9_-]`` replaced by ``_``, leading
``_``/``-`` dropped, cut to 64 characters, then checked by the name rule
(``ScienceQA/train_data.jsonl`` -> ``scienceqa``, ``Science QA.jsonl`` -> ``science_qa``). Two
sources with the same name: the first in sorted order is imported, the other reported. A
``laion_data.jsonl`` in a tasks directory is the generation stream, never a task.

Each task line is ``{"tokens": [...]}``; the loss covers the tokens after the FIRST separator
(id 8710). Rows of a task:

- train: ``tokens`` = the line's tokens, ``answer_start`` = index just after the first separator;
- eval: ``prompt_tokens`` = tokens up to and including the first separator, ``answer_tokens`` =
  the tokens after it (no ``answer`` string: the data is pre-tokenized).

The generation stream. Each line is ``{"image_tokens": [...]}`` in one of two forms:

- bare image codes (ids in 4..8195): the row is ``[boi] + codes + [eoi]`` (8197 ... 8196) with
  ``prompt_len`` 0; a line already wrapped in boi ... eoi is kept as is, not wrapped twice;
- a whole text-to-image sequence, as the reference's ``laion_data.jsonl`` holds despite the key's
  name: ``[0 (bos), prompt ids..., 8197, image codes..., 8196]``. The prompt is everything before
  the first begin-of-image (its ids must be inside the vocabulary); what follows must be exactly
  begin-of-image, image codes, end-of-image. The row keeps the whole sequence as ``tokens`` with
  ``prompt_len`` = the index of the begin-of-image id.

Every stream row has a ``prompt_len`` column. ``image_code_offset`` is added to every image code
first, for files that hold raw VQ codebook indices (0..8191) instead of vocabulary ids; the
default 0 takes the ids as vocabulary ids.

Held-out splits, both by content: a 64-bit BLAKE2b hash of a row's token ids (int32,
little-endian) mapped to ``[0, 1)`` (:func:`eval_score`). The choice depends only on the token
content: it does not change when lines are reordered or other lines are added, and duplicate
lines always land on the same side (no leakage of exact duplicates).

- task eval split: a line goes to eval when its hash is below ``eval_fraction``;
- stream probe split: a row goes to the stream ``<name>-probe`` instead of ``<name>`` when its
  hash is below ``probe_fraction`` (default 0.05; 0 disables it and writes no probe stream). The
  probe stream measures image-generation forgetting (teacher-forced image-token likelihood) on
  rows the KD stream never trains on.

Both sides of a split must be non-empty, so if the hash puts every row on one side, the row
closest to the threshold moves to the other (a task, or a stream with a probe split, needs at
least 2 valid rows).

Bad lines are skipped, never fatal; each is reported with its 1-based line number and one of
the reasons in :data:`SKIP_REASONS`. Blank lines are ignored (counted, not reported). Memory
stays constant in the file size: lines are read one at a time and rows are flushed to parquet
parts as they accumulate.

Command line::

    python -m cl_platform.suites.mode_official --data-root DIR --store URL [options]
    python -m cl_platform.suites.mode_official [--tasks DIR] [--stream FILE] --store URL [options]

    options: [--stream-name NAME] [--eval-fraction 0.05] [--probe-fraction 0.05] [--max-len N]
             [--image-code-offset N] [--rows-per-file N] [--overwrite] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from cl_platform.data.errors import TaskValidationError
from cl_platform.data.task_format import DEFAULT_ROWS_PER_FILE, TaskWriter, validate_name
from cl_platform.models.modality import ANOLE, ModalitySpec
from cl_platform.store import Store, as_store

log = logging.getLogger(__name__)

#: File of one task in the reference layout (``<Task>/train_data.jsonl``).
TASK_FILE = "train_data.jsonl"
#: The reference layout's image-generation file, directly under the data root.
STREAM_FILE = "laion_data.jsonl"
#: Suffix of the probe stream held out of stream ``<name>``.
PROBE_SUFFIX = "-probe"

#: Why a line can be skipped.
SKIP_REASONS = {
    "bad_json": "the line is not valid UTF-8 JSON",
    "bad_record": "not an object with a list of integer ids under the expected key",
    "empty": "the id list is empty",
    "id_out_of_range": "an id is outside the vocabulary (or, in the stream's image part, not an image code)",
    "too_long": "more ids than --max-len",
    "no_separator": "no separator id in a task line",
    "empty_answer": "the separator is the last id: nothing to learn after it",
    "bad_image_span": "a stream line that does not end in begin-of-image, image codes, end-of-image",
}

#: How many skipped lines per reason are kept with their details (the counts are always complete).
MAX_REPORTED_PER_REASON = 20

# Rows handed to a writer at a time.
_BATCH_ROWS = 1024


class LineSkipped(ValueError):
    """A source line that cannot be imported; ``reason`` is a key of :data:`SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SkippedLine:
    """One input line that was not imported.

    Attributes:
        line: 1-based line number in the source file.
        reason: a key of :data:`SKIP_REASONS`.
        detail: what exactly was wrong.
    """

    line: int
    reason: str
    detail: str


@dataclass
class SourceReport:
    """What happened to one source file.

    Attributes:
        source: path of the jsonl file.
        kind: ``"task"`` or ``"stream"``.
        name: dataset name in the store (``None`` if the file name could not make one).
        lines: non-blank lines read.
        blank_lines: blank lines ignored.
        rows: rows written per split: ``{"train": n, "eval": m}`` for a task, ``{"data": n}`` for
            a stream, plus ``"probe"`` when its probe stream was written.
        skipped_counts: reason -> number of lines skipped for it.
        skipped: the first :data:`MAX_REPORTED_PER_REASON` skipped lines of each reason.
        error: why nothing was written for this source, or ``None`` if it was imported.
        uri: store URI of the dataset directory when written.
        probe_name: a stream's held-out probe stream (``<name>-probe``), ``None`` without one.
        probe_uri: store URI of the probe stream when written.
    """

    source: str
    kind: str
    name: str | None
    lines: int = 0
    blank_lines: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    skipped_counts: dict[str, int] = field(default_factory=dict)
    skipped: list[SkippedLine] = field(default_factory=list)
    error: str | None = None
    uri: str | None = None
    probe_name: str | None = None
    probe_uri: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped_counts.values())

    def skipped_lines(self, reason: str | None = None) -> list[int]:
        """Reported line numbers, optionally for one reason."""
        return [s.line for s in self.skipped if reason is None or s.reason == reason]

    def _skip(self, line: int, reason: str, detail: str) -> None:
        n = self.skipped_counts.get(reason, 0)
        self.skipped_counts[reason] = n + 1
        if n < MAX_REPORTED_PER_REASON:
            self.skipped.append(SkippedLine(line, reason, detail))
            if n < 3:
                log.warning("%s line %d skipped (%s): %s", self.source, line, reason, detail)

    def summary(self) -> str:
        """One line for people."""
        head = f"{self.kind} {self.name!r} <- {self.source}"
        if self.error:
            body = f"NOT IMPORTED: {self.error}"
        else:
            body = " / ".join(f"{n} {split}" for split, n in self.rows.items()) + f" rows from {self.lines} lines"
            if self.probe_name and "probe" in self.rows:
                body += f" (probe rows in stream {self.probe_name!r})"
        if self.skipped_counts:
            parts = []
            for reason, count in sorted(self.skipped_counts.items()):
                lines = [s.line for s in self.skipped if s.reason == reason][:5]
                more = ", ..." if count > len(lines) else ""
                parts.append(f"{reason} {count} (line{'s' if count > 1 else ''} {', '.join(map(str, lines))}{more})")
            body += f"; skipped {self.num_skipped}: " + ", ".join(parts)
        else:
            body += "; skipped 0"
        return f"{head}: {body}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportReport:
    """Reports of every source of one import.

    Attributes:
        store: the store URL written to.
        sources: one :class:`SourceReport` per input file, tasks first, then the stream.
        warnings: what was passed over without being a source (a task sub-folder without
            ``train_data.jsonl``, a ``laion_data.jsonl`` among the task files, no stream file
            under the data root).
    """

    store: str
    sources: list[SourceReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sources)

    def source(self, name: str) -> SourceReport:
        """The report of the dataset called ``name``."""
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"no source imported as {name!r}; have {[s.name for s in self.sources]}")

    def _warn(self, message: str) -> None:
        log.warning("%s", message)
        self.warnings.append(message)

    def summary(self) -> str:
        lines = [f"MoDE-official import into {self.store}:"] + ["  " + s.summary() for s in self.sources]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "ok": self.ok, "sources": [s.to_dict() for s in self.sources],
                "warnings": list(self.warnings)}


# ------------------------------------------------------------------------------------ names


def dataset_name(text: str) -> str:
    """Normalise a file stem or folder name into a dataset name (see the module docstring)."""
    low = text.lower()
    name = re.sub(r"[^a-z0-9_-]+", "_", low).lstrip("_-")[:64]
    return validate_name(name if name else low)


def name_from_path(path: str | os.PathLike) -> str:
    """Dataset name of a task or stream file.

    ``"ScienceQA train.jsonl"`` -> ``"scienceqa_train"``; a reference-layout task file is named
    after its folder: ``"ScienceQA/train_data.jsonl"`` -> ``"scienceqa"``.
    """
    path = os.fspath(path)
    base = os.path.basename(path)
    folder = os.path.basename(os.path.dirname(path))
    if base == TASK_FILE and folder:
        return dataset_name(folder)
    return dataset_name(os.path.splitext(base)[0])


def _source_label(path: str) -> str:
    """How a source file is named in a manifest: ``ScienceQA/train_data.jsonl``, ``x.jsonl``."""
    base = os.path.basename(path)
    folder = os.path.basename(os.path.dirname(path))
    return f"{folder}/{base}" if base == TASK_FILE and folder else base


def find_task_files(
    tasks_dir: str | os.PathLike,
    *,
    exclude: str | os.PathLike | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[str]:
    """The task files under ``tasks_dir``, in sorted order of their entry names.

    ``<entry>.jsonl`` files and the ``<entry>/train_data.jsonl`` of sub-folders. ``exclude`` (the
    stream file being imported) is left out silently; a sub-folder without ``train_data.jsonl``
    and any other ``laion_data.jsonl`` (a generation stream) are passed over with a call of
    ``warn`` (default: a logged warning).
    """
    tasks_dir = os.fspath(tasks_dir)
    warn = warn or (lambda message: log.warning("%s", message))
    excluded = os.path.realpath(exclude) if exclude is not None else None
    files = []
    for entry in sorted(os.listdir(tasks_dir)):
        full = os.path.join(tasks_dir, entry)
        if os.path.isdir(full):
            full = os.path.join(full, TASK_FILE)
            if not os.path.isfile(full):
                warn(f"{os.path.dirname(full)}: a sub-folder without {TASK_FILE}; skipped")
                continue
        elif not (entry.endswith(".jsonl") and os.path.isfile(full)):
            continue
        if os.path.realpath(full) == excluded:
            continue
        if entry == STREAM_FILE:
            warn(f"{full}: a generation stream, not a task; import it with --stream (or --data-root)")
            continue
        files.append(full)
    return files


# ------------------------------------------------------------------------------------ parsing


def _ids(raw: bytes, key: str, vocab_size: int) -> np.ndarray:
    """Parse one line into an int64 id array, or raise LineSkipped."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LineSkipped("bad_json", f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict) or key not in obj:
        got = f"keys {sorted(obj)[:5]}" if isinstance(obj, dict) else type(obj).__name__
        raise LineSkipped("bad_record", f"expected an object with {key!r}, got {got}")
    values = obj[key]
    if not isinstance(values, list):
        raise LineSkipped("bad_record", f"{key!r} must be a list of integers, got {type(values).__name__}")
    if not values:
        raise LineSkipped("empty", f"{key!r} is empty")
    # Booleans would silently become 0/1 in numpy; the byte test keeps the common case loop-free.
    if (b"true" in raw or b"false" in raw) and any(type(v) is bool for v in values):
        raise LineSkipped("bad_record", f"{key!r} contains booleans; ids must be integers")
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        raise LineSkipped("bad_record", f"{key!r} must be a flat list of integers") from None
    if arr.ndim != 1:
        raise LineSkipped("bad_record", f"{key!r} must be a flat list of integers")
    if arr.dtype.kind not in "iu":
        if arr.dtype == object and all(type(v) is int for v in values):  # ints beyond int64
            raise LineSkipped("id_out_of_range", f"{key!r} holds an id outside [0, {vocab_size})")
        raise LineSkipped("bad_record", f"{key!r} must hold integers, found {arr.dtype.name} values")
    arr = arr.astype(np.int64, copy=False)
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise LineSkipped("id_out_of_range", f"id {int(arr[pos])} at position {pos} is outside [0, {vocab_size})")
    return arr


def parse_task_line(raw: bytes, spec: ModalitySpec = ANOLE, max_len: int | None = None) -> tuple[np.ndarray, int]:
    """``(tokens, separator index)`` of one task line; raises :class:`LineSkipped` if bad."""
    arr = _ids(raw, "tokens", spec.vocab_size)
    if max_len is not None and len(arr) > max_len:
        raise LineSkipped("too_long", f"{len(arr)} ids > max_len {max_len}")
    seps = np.flatnonzero(arr == spec.sep_id)
    if len(seps) == 0:
        raise LineSkipped("no_separator", f"no separator id {spec.sep_id} among {len(arr)} ids")
    sep = int(seps[0])
    if sep == len(arr) - 1:
        raise LineSkipped("empty_answer", f"the first separator is the last id (position {sep}); no answer tokens")
    return arr, sep


def parse_stream_line(
    raw: bytes, spec: ModalitySpec = ANOLE, max_len: int | None = None, image_code_offset: int = 0
) -> tuple[np.ndarray, int]:
    """``(tokens, prompt_len)`` of one image-generation line; raises :class:`LineSkipped` if bad.

    A line without a begin-of-image id is bare image codes: ``tokens = [boi] + codes + [eoi]``,
    ``prompt_len = 0``. Otherwise ``prompt_len`` is the index of the first begin-of-image id and
    ``tokens[prompt_len:]`` must be begin-of-image, image codes, end-of-image (see the module
    docstring); the line is kept whole.
    """
    arr = _ids(raw, "image_tokens", spec.vocab_size)
    starts = np.flatnonzero(arr == spec.boi_id)
    if len(starts) == 0:  # bare codes
        prompt_len, codes = 0, arr
    else:
        prompt_len = int(starts[0])
        if len(arr) - prompt_len < 2 or arr[-1] != spec.eoi_id:
            raise LineSkipped(
                "bad_image_span",
                f"begin-of-image {spec.boi_id} at position {prompt_len} is not closed by end-of-image {spec.eoi_id} "
                f"as the last id (last id {int(arr[-1])})",
            )
        codes = arr[prompt_len + 1:-1]
    if len(codes) == 0:
        raise LineSkipped("empty", "no image codes between begin- and end-of-image")
    if image_code_offset:
        codes = codes + image_code_offset
    lo, hi = spec.image_code_range
    bad = (codes < lo) | (codes >= hi)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise LineSkipped("id_out_of_range", f"id {int(codes[pos])} at image position {pos} is not an image code [{lo}, {hi})")
    tokens = np.concatenate([arr[:prompt_len], [spec.boi_id], codes, [spec.eoi_id]])
    if max_len is not None and len(tokens) > max_len:
        raise LineSkipped("too_long", f"{len(tokens)} ids (with begin/end-of-image) > max_len {max_len}")
    return tokens, prompt_len


def eval_score(tokens: np.ndarray) -> float:
    """Where a row falls in ``[0, 1)`` for a held-out split: BLAKE2b-64 of its int32 LE ids."""
    digest = hashlib.blake2b(np.ascontiguousarray(tokens, dtype="<i4").tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _valid_rows(path: str, report: SourceReport, parse: Callable[[bytes], Any]) -> Iterator[Any]:
    """Parsed rows of a jsonl file; blank and bad lines are counted / reported in ``report``."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                report.blank_lines += 1
                continue
            report.lines += 1
            try:
                yield parse(raw)
            except LineSkipped as skip:
                report._skip(number, skip.reason, skip.detail)


# ------------------------------------------------------------------------------------ batching


def _list_array(arrays: list[np.ndarray]) -> pa.Array:
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


# A parsed row: ``(tokens, index)``: the separator index of a task line, the prompt length of a stream line.
_Row = tuple[np.ndarray, int]


def _train_table(rows: list[_Row]) -> pa.Table:
    return pa.table({"tokens": _list_array([t for t, _ in rows]), "answer_start": pa.array([s + 1 for _, s in rows], pa.int32())})


def _eval_table(rows: list[_Row]) -> pa.Table:
    return pa.table({"prompt_tokens": _list_array([t[: s + 1] for t, s in rows]),
                     "answer_tokens": _list_array([t[s + 1:] for t, s in rows])})


def _stream_table(rows: list[_Row]) -> pa.Table:
    return pa.table({"tokens": _list_array([t for t, _ in rows]), "prompt_len": pa.array([p for _, p in rows], pa.int32())})


class _Rows:
    """Buffers rows of one split of one writer and hands them over in batches."""

    def __init__(self, writer: TaskWriter, split: str, to_table: Callable[[list[_Row]], pa.Table]) -> None:
        self.writer, self.split, self.to_table = writer, split, to_table
        self.buffer: list[_Row] = []
        self.count = 0

    def add(self, row: _Row) -> None:
        self.buffer.append(row)
        self.count += 1
        if len(self.buffer) >= _BATCH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            table, self.buffer = self.to_table(self.buffer), []
            self.writer.write(self.split, table)


class _ImportFailed(Exception):
    pass


class _HeldOutSplit:
    """Routes rows by content hash: below ``fraction`` to the held-out side, else the kept side.

    With ``both`` set, both sides end non-empty without a second pass: the kept row closest to
    the threshold and the held-out row farthest into the held-out side are withheld until
    :meth:`finish`, which moves one of them across when the hash left a side empty.
    """

    def __init__(self, fraction: float, sides: dict[str, _Rows], kept: str, held: str, *, both: bool = True) -> None:
        self.fraction, self.sides, self.kept, self.held, self.both = fraction, sides, kept, held, both
        self.cand: dict[str, tuple[float, _Row] | None] = {kept: None, held: None}

    def add(self, score: float, row: _Row) -> None:
        side = self.held if score < self.fraction else self.kept
        if self.both:
            cand = self.cand[side]
            # Held-out side: withhold the highest score (closest to the threshold); kept side: the lowest.
            if cand is None or (score > cand[0] if side == self.held else score < cand[0]):
                self.cand[side] = (score, row)
                if cand is None:
                    return
                row = cand[1]
        self.sides[side].add(row)

    def finish(self) -> None:
        """Emit the withheld rows so that both sides are non-empty; raises _ImportFailed if too few rows."""
        valid = sum(s.count for s in self.sides.values()) + sum(c is not None for c in self.cand.values())
        if not self.both:
            if valid == 0:
                raise _ImportFailed("no valid lines")
            return
        if valid < 2:
            raise _ImportFailed(f"needs at least 2 valid lines (one {self.kept} row, one {self.held} row), found {valid}")
        kept, held = self.cand[self.kept], self.cand[self.held]
        if held is None:  # the hash put every row on the kept side: the one closest to held-out moves
            self.sides[self.held].add(kept[1])
        elif kept is None:  # every row held out: the one closest to kept moves
            self.sides[self.kept].add(held[1])
        else:
            self.sides[self.kept].add(kept[1])
            self.sides[self.held].add(held[1])


# ------------------------------------------------------------------------------------ importers
def _check_fraction(what: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be in [0, 1), got {value}")


def _import_rows(
    report: SourceReport,
    path: str,
    parse: Callable[[bytes], _Row],
    writers: dict[str, TaskWriter],
    split: _HeldOutSplit,
) -> None:
    """Read, split and write every row of ``path``, then commit ``writers`` (or abort them all).

    An import that cannot complete (too few valid rows) sets ``report.error``; anything else
    that goes wrong aborts the writers and propagates.
    """
    try:
        for row in _valid_rows(path, report, parse):
            split.add(eval_score(row[0]), row)
        split.finish()
        for rows in split.sides.values():
            rows.flush()
        for writer in writers.values():
            writer.meta.update(lines=report.lines, blank_lines=report.blank_lines, skipped=dict(report.skipped_counts))
            writer.commit()
    except _ImportFailed as exc:
        for writer in writers.values():
            writer.abort()
        report.error = str(exc)
        return
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    report.rows = {side: rows.count for side, rows in split.sides.items()}


def _open_writers(report: SourceReport, store: Store, names: dict[str, str], **kwargs: Any) -> dict[str, TaskWriter] | None:
    """One writer per ``names`` entry (key -> dataset name); ``None`` (and ``report.error``) if one exists."""
    writers: dict[str, TaskWriter] = {}
    try:
        for key, name in names.items():
            writers[key] = TaskWriter(store, name, **kwargs)
    except FileExistsError as exc:
        for writer in writers.values():
            writer.abort()
        report.error = str(exc)
        return None
    return writers


def import_task_file(
    store: Store | str | None,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    spec: ModalitySpec = ANOLE,
    eval_fraction: float = 0.05,
    max_len: int | None = None,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
) -> SourceReport:
    """Import one task jsonl file as ``tasks/<name>``; never raises for bad lines (see the report).

    ``name`` defaults to :func:`name_from_path` (``ScienceQA/train_data.jsonl`` -> ``scienceqa``).
    """
    path = os.fspath(path)
    _check_fraction("eval_fraction", eval_fraction)
    store = as_store(store)
    report = SourceReport(source=path, kind="task", name=None)
    try:
        report.name = name = validate_name(name) if name is not None else name_from_path(path)
    except TaskValidationError as exc:
        report.error = str(exc)
        return report
    meta = {
        "importer": "cl_platform.suites.mode_official",
        "source": _source_label(path),
        "separator_id": spec.sep_id,
        "eval_fraction": eval_fraction,
        "eval_split": "blake2b-64 of int32 little-endian token ids / 2**64 < eval_fraction",
        "max_len": max_len,
    }
    writers = _open_writers(report, store, {"task": name}, spec_id=spec.spec_id, kind="task", rows_per_file=rows_per_file,
                            overwrite=overwrite, vocab_size=spec.vocab_size, meta=meta)
    if writers is None:
        return report
    writer = writers["task"]
    sides = {"train": _Rows(writer, "train", _train_table), "eval": _Rows(writer, "eval", _eval_table)}
    _import_rows(report, path, lambda raw: parse_task_line(raw, spec, max_len), writers,
                 _HeldOutSplit(eval_fraction, sides, "train", "eval"))
    if report.ok:
        report.uri = store.uri(f"tasks/{name}")
    return report


def import_stream_file(
    store: Store | str | None,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    spec: ModalitySpec = ANOLE,
    probe_fraction: float = 0.05,
    max_len: int | None = None,
    image_code_offset: int = 0,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
) -> SourceReport:
    """Import an image-generation jsonl file as ``streams/<name>`` and its probe ``streams/<name>-probe``.

    Rows are ``tokens`` + ``prompt_len`` (see :func:`parse_stream_line`). Rows whose content hash
    is below ``probe_fraction`` go to the probe stream instead (none is written when it is 0);
    both streams are then non-empty, so at least 2 valid lines are needed. Never raises for bad
    lines (see the report).
    """
    path = os.fspath(path)
    _check_fraction("probe_fraction", probe_fraction)
    store = as_store(store)
    report = SourceReport(source=path, kind="stream", name=None)
    try:
        report.name = name = validate_name(name, kind="stream") if name is not None else name_from_path(path)
        names = {"data": name}
        if probe_fraction > 0:
            report.probe_name = names["probe"] = validate_name(name + PROBE_SUFFIX, kind="stream")
    except TaskValidationError as exc:
        report.error = str(exc)
        return report
    if probe_fraction == 0 and overwrite and store.exists(f"streams/{name}{PROBE_SUFFIX}"):
        log.warning("stream %r re-imported without a probe split: the existing %r may share rows with it",
                    name, name + PROBE_SUFFIX)
    meta = {
        "importer": "cl_platform.suites.mode_official",
        "source": _source_label(path),
        "layout": "tokens = [prompt] + [boi] + image codes + [eoi], prompt_len = len(prompt) (0: no prompt)",
        "image_code_offset": image_code_offset,
        "max_len": max_len,
        "probe_fraction": probe_fraction,
        "probe_split": "blake2b-64 of int32 little-endian token ids / 2**64 < probe_fraction",
        "kd_stream": name,
        "probe_stream": report.probe_name,
    }
    writers = _open_writers(report, store, names, spec_id=spec.spec_id, kind="stream", rows_per_file=rows_per_file,
                            overwrite=overwrite, vocab_size=spec.vocab_size, meta=meta)
    if writers is None:
        return report
    for role, writer in writers.items():
        writer.meta["role"] = "kd" if role == "data" else "probe"
    sides = {role: _Rows(writer, "data", _stream_table) for role, writer in writers.items()}
    _import_rows(report, path, lambda raw: parse_stream_line(raw, spec, max_len, image_code_offset), writers,
                 _HeldOutSplit(probe_fraction, sides, "data", "probe", both=probe_fraction > 0))
    if report.ok:
        report.uri = store.uri(f"streams/{name}")
        if report.probe_name:
            report.probe_uri = store.uri(f"streams/{report.probe_name}")
    return report


def import_mode_official(
    store: Store | str | None,
    *,
    data_root: str | os.PathLike | None = None,
    tasks_dir: str | os.PathLike | None = None,
    stream_file: str | os.PathLike | None = None,
    stream_name: str | None = None,
    spec: ModalitySpec = ANOLE,
    eval_fraction: float = 0.05,
    probe_fraction: float = 0.05,
    max_len: int | None = None,
    image_code_offset: int = 0,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
) -> ImportReport:
    """Import the tasks under ``tasks_dir`` and the stream ``stream_file`` (with its probe split).

    ``data_root`` is the reference layout: tasks from the folders / files under it and the stream
    from ``data_root/laion_data.jsonl`` when present; it excludes ``tasks_dir`` and ``stream_file``.
    A source that cannot be imported (name clash, too few valid lines, already in the store
    without ``overwrite``) is reported and the others go on.
    """
    if data_root is not None:
        if tasks_dir is not None or stream_file is not None:
            raise ValueError("give data_root, or tasks_dir and/or stream_file, not both")
        data_root = tasks_dir = os.fspath(data_root)
        candidate = os.path.join(data_root, STREAM_FILE)
        stream_file = candidate if os.path.isfile(candidate) else None
    if tasks_dir is None and stream_file is None:
        raise ValueError("nothing to import: give data_root, or tasks_dir and/or stream_file")
    _check_fraction("eval_fraction", eval_fraction)
    _check_fraction("probe_fraction", probe_fraction)
    if tasks_dir is not None and not os.path.isdir(tasks_dir):
        what = "data root" if data_root is not None else "tasks directory"
        raise NotADirectoryError(f"{what} {os.fspath(tasks_dir)!r} does not exist or is not a directory")
    if stream_file is not None and not os.path.isfile(stream_file):
        raise FileNotFoundError(f"stream file {os.fspath(stream_file)!r} does not exist")
    store = as_store(store)
    report = ImportReport(store=store.url)
    if data_root is not None and stream_file is None:
        report._warn(f"no {STREAM_FILE} under {data_root}: no generation stream imported")
    if tasks_dir is not None:
        tasks_dir = os.fspath(tasks_dir)
        files = find_task_files(tasks_dir, exclude=stream_file, warn=report._warn)
        if not files:
            report._warn(f"no task in {tasks_dir} (neither <Task>/{TASK_FILE} folders nor *.jsonl files)")
        seen: dict[str, str] = {}
        for path in files:
            try:
                name = name_from_path(path)
            except TaskValidationError as exc:
                report.sources.append(SourceReport(source=path, kind="task", name=None, error=str(exc)))
                continue
            if name in seen:
                report.sources.append(SourceReport(
                    source=path, kind="task", name=name,
                    error=f"task name {name!r} is already taken by {seen[name]}; rename one of them",
                ))
                continue
            seen[name] = path
            report.sources.append(import_task_file(
                store, path, name=name, spec=spec, eval_fraction=eval_fraction, max_len=max_len,
                rows_per_file=rows_per_file, overwrite=overwrite,
            ))
    if stream_file is not None:
        report.sources.append(import_stream_file(
            store, stream_file, name=stream_name, spec=spec, probe_fraction=probe_fraction, max_len=max_len,
            image_code_offset=image_code_offset, rows_per_file=rows_per_file, overwrite=overwrite,
        ))
    return report


# ------------------------------------------------------------------------------------ CLI


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m cl_platform.suites.mode_official",
        description=(
            "Convert the MoDE reference code's pre-tokenized jsonl (Anole ids) into tasks, a KD stream and its "
            "held-out probe stream. Give --data-root (the reference layout: <Task>/train_data.jsonl folders and "
            "laion_data.jsonl), or --tasks and/or --stream."
        ),
    )
    p.add_argument("--data-root", metavar="DIR",
                   help=f"the reference layout: tasks from DIR (as --tasks) and the stream from DIR/{STREAM_FILE} when present")
    p.add_argument("--tasks", metavar="DIR",
                   help=f"task directory: <Task>/{TASK_FILE} folders and/or <task>.jsonl files ({{'tokens': [...]}} per line)")
    p.add_argument("--stream", metavar="FILE",
                   help="image-generation jsonl ({'image_tokens': [...]} per line: bare image codes, or "
                        "[bos, prompt..., boi, codes..., eoi] sequences)")
    p.add_argument("--stream-name", help="stream name (default: from the file name; the probe stream is <name>-probe)")
    p.add_argument("--store", default=None, help="store URL: s3://bucket/prefix, file://..., or a path (default ./.cl_store)")
    p.add_argument("--eval-fraction", type=_fraction, default=0.05, help="share of each task's lines held out for eval (default 0.05)")
    p.add_argument("--probe-fraction", type=_fraction, default=0.05,
                   help="share of the stream's lines held out as the probe stream <name>-probe (default 0.05; 0: none)")
    p.add_argument("--max-len", type=_positive_int, default=None, help="skip lines with more ids than this")
    p.add_argument("--image-code-offset", type=int, default=0, help="add this to stream image codes (4 for raw VQ indices 0..8191)")
    p.add_argument("--rows-per-file", type=_positive_int, default=DEFAULT_ROWS_PER_FILE, help="rows per parquet part")
    p.add_argument("--overwrite", action="store_true", help="replace tasks / streams that already exist")
    p.add_argument("--json", action="store_true", help="print the full report as JSON instead of the summary")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; exit status 0 when every source was imported (skipped lines allowed), else 1."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.data_root is not None and (args.tasks is not None or args.stream is not None):
        parser.error("--data-root reads the tasks and the stream itself: give it without --tasks / --stream")
    if args.data_root is None and args.tasks is None and args.stream is None:
        parser.error("give --data-root, or --tasks and/or --stream")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    report = import_mode_official(
        Store(args.store),
        data_root=args.data_root,
        tasks_dir=args.tasks,
        stream_file=args.stream,
        stream_name=args.stream_name,
        eval_fraction=args.eval_fraction,
        probe_fraction=args.probe_fraction,
        max_len=args.max_len,
        image_code_offset=args.image_code_offset,
        rows_per_file=args.rows_per_file,
        overwrite=args.overwrite,
    )
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.summary())
    return 0 if report.ok else 1


__all__ = [
    "LineSkipped",
    "MAX_REPORTED_PER_REASON",
    "PROBE_SUFFIX",
    "SKIP_REASONS",
    "STREAM_FILE",
    "TASK_FILE",
    "ImportReport",
    "SkippedLine",
    "SourceReport",
    "dataset_name",
    "eval_score",
    "find_task_files",
    "import_mode_official",
    "import_stream_file",
    "import_task_file",
    "main",
    "name_from_path",
    "parse_stream_line",
    "parse_task_line",
]


if __name__ == "__main__":
    sys.exit(main())
