"""Import the MoDE reference code's pre-tokenized jsonl into the platform's task format.

Inputs (Anole / Chameleon token ids, :data:`cl_platform.models.modality.ANOLE`):

- task files, one JSON object per line: ``{"tokens": [...]}``. The loss covers the tokens after
  the FIRST separator (id 8710). Each ``*.jsonl`` file in the tasks directory becomes one task,
  named after its file stem (lower-cased, runs of characters outside ``[a-z0-9_-]`` replaced by
  ``_``, leading ``_``/``-`` dropped, cut to 64 characters, then checked by the name rule).
- the image-generation file, one JSON object per line: ``{"image_tokens": [...]}``. It becomes
  the stream ``streams/<name>`` with prompt-free rows ``tokens = [boi] + image codes + [eoi]``
  (8197, codes in 4..8195, 8196). A line that is already wrapped in boi ... eoi is kept as is
  rather than wrapped twice. No ``prompt_len`` column is written (the rows have no prompt).
  ``image_code_offset`` is added to every code first, for files that hold raw VQ codebook
  indices (0..8191) instead of vocabulary ids; the default 0 takes the ids as vocabulary ids.

Rows of a task:

- train: ``tokens`` = the line's tokens, ``answer_start`` = index just after the first separator;
- eval: ``prompt_tokens`` = tokens up to and including the first separator, ``answer_tokens`` =
  the tokens after it (no ``answer`` string: the data is pre-tokenized).

Eval split: a line goes to eval when a 64-bit BLAKE2b hash of its token ids (int32,
little-endian) mapped to ``[0, 1)`` is below ``eval_fraction``. The choice depends only on the
token content: it does not change when lines are reordered or other lines are added, and
duplicate lines always land on the same side (no train/eval leakage of exact duplicates). Both
splits must be non-empty, so if the hash puts every row on one side, the row closest to the
threshold moves to the other (a task needs at least 2 valid rows).

Bad lines are skipped, never fatal; each is reported with its 1-based line number and one of
the reasons in :data:`SKIP_REASONS`. Blank lines are ignored (counted, not reported). Memory
stays constant in the file size: lines are read one at a time and rows are flushed to parquet
parts as they accumulate.

Command line::

    python -m cl_platform.suites.mode_official --tasks DIR --stream FILE --store URL \\
        [--eval-fraction 0.05] [--max-len N] [--rows-per-file N] [--overwrite] [--json]
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
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from cl_platform.data.errors import TaskValidationError
from cl_platform.data.task_format import DEFAULT_ROWS_PER_FILE, TaskWriter, validate_name
from cl_platform.models.modality import ANOLE, ModalitySpec
from cl_platform.store import Store, as_store

log = logging.getLogger(__name__)

#: Why a line can be skipped.
SKIP_REASONS = {
    "bad_json": "the line is not valid UTF-8 JSON",
    "bad_record": "not an object with a list of integer ids under the expected key",
    "empty": "the id list is empty",
    "id_out_of_range": "an id is outside the vocabulary (or, in the stream, not an image code)",
    "too_long": "more ids than --max-len",
    "no_separator": "no separator id in a task line",
    "empty_answer": "the separator is the last id: nothing to learn after it",
}

#: How many skipped lines per reason are kept with their details (the counts are always complete).
MAX_REPORTED_PER_REASON = 20

# Rows handed to the task writer at a time.
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
        rows: rows written per split (``{"train": n, "eval": m}`` or ``{"data": n}``).
        skipped_counts: reason -> number of lines skipped for it.
        skipped: the first :data:`MAX_REPORTED_PER_REASON` skipped lines of each reason.
        error: why nothing was written for this source, or ``None`` if it was imported.
        uri: store URI of the dataset directory when written.
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
    """

    store: str
    sources: list[SourceReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.sources)

    def source(self, name: str) -> SourceReport:
        """The report of the dataset called ``name``."""
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(f"no source imported as {name!r}; have {[s.name for s in self.sources]}")

    def summary(self) -> str:
        lines = [f"MoDE-official import into {self.store}:"] + ["  " + s.summary() for s in self.sources]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "ok": self.ok, "sources": [s.to_dict() for s in self.sources]}


# ------------------------------------------------------------------------------------ names


def name_from_path(path: str | os.PathLike) -> str:
    """Dataset name from a file name: ``"ScienceQA train.jsonl"`` -> ``"scienceqa_train"``."""
    stem = os.path.splitext(os.path.basename(os.fspath(path)))[0].lower()
    name = re.sub(r"[^a-z0-9_-]+", "_", stem).lstrip("_-")[:64]
    return validate_name(name if name else stem)


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
) -> np.ndarray:
    """``[boi] + image codes + [eoi]`` of one image-generation line; raises LineSkipped if bad."""
    arr = _ids(raw, "image_tokens", spec.vocab_size)
    if len(arr) >= 2 and arr[0] == spec.boi_id and arr[-1] == spec.eoi_id:
        codes = arr[1:-1]
    else:
        codes = arr
    if len(codes) == 0:
        raise LineSkipped("empty", "no image codes between begin- and end-of-image")
    if image_code_offset:
        codes = codes + image_code_offset
    lo, hi = spec.image_code_range
    bad = (codes < lo) | (codes >= hi)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise LineSkipped("id_out_of_range", f"id {int(codes[pos])} at image position {pos} is not an image code [{lo}, {hi})")
    tokens = np.concatenate([[spec.boi_id], codes, [spec.eoi_id]])
    if max_len is not None and len(tokens) > max_len:
        raise LineSkipped("too_long", f"{len(tokens)} ids (with begin/end-of-image) > max_len {max_len}")
    return tokens


def eval_score(tokens: np.ndarray) -> float:
    """Where a row falls in ``[0, 1)`` for the eval split: BLAKE2b-64 of its int32 LE ids."""
    digest = hashlib.blake2b(np.ascontiguousarray(tokens, dtype="<i4").tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            yield number, raw


# ------------------------------------------------------------------------------------ batching


def _list_array(arrays: list[np.ndarray]) -> pa.Array:
    lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(arrays).astype(np.int32) if arrays else np.zeros(0, np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(values, pa.int32()))


class _TaskRows:
    """Buffers train / eval rows and hands them to the writer in batches."""

    def __init__(self, writer: TaskWriter) -> None:
        self.writer = writer
        self.train: list[tuple[np.ndarray, int]] = []
        self.eval: list[tuple[np.ndarray, int]] = []
        self.rows = {"train": 0, "eval": 0}

    def add(self, split: str, tokens: np.ndarray, sep: int) -> None:
        buf = self.train if split == "train" else self.eval
        buf.append((tokens, sep))
        self.rows[split] += 1
        if len(buf) >= _BATCH_ROWS:
            self.flush(split)

    def flush(self, split: str) -> None:
        if split == "train" and self.train:
            table = pa.table(
                {
                    "tokens": _list_array([t for t, _ in self.train]),
                    "answer_start": pa.array([s + 1 for _, s in self.train], pa.int32()),
                }
            )
            self.train = []
            self.writer.write("train", table)
        elif split == "eval" and self.eval:
            table = pa.table(
                {
                    "prompt_tokens": _list_array([t[: s + 1] for t, s in self.eval]),
                    "answer_tokens": _list_array([t[s + 1:] for t, s in self.eval]),
                }
            )
            self.eval = []
            self.writer.write("eval", table)


# ------------------------------------------------------------------------------------ importers


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
    """Import one task jsonl file as ``tasks/<name>``; never raises for bad lines (see the report)."""
    path = os.fspath(path)
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    store = as_store(store)
    report = SourceReport(source=path, kind="task", name=None)
    try:
        report.name = name = validate_name(name) if name is not None else name_from_path(path)
    except TaskValidationError as exc:
        report.error = str(exc)
        return report
    meta = {
        "importer": "cl_platform.suites.mode_official",
        "source": os.path.basename(path),
        "separator_id": spec.sep_id,
        "eval_fraction": eval_fraction,
        "eval_split": "blake2b-64 of int32 little-endian token ids / 2**64 < eval_fraction",
        "max_len": max_len,
    }
    try:
        writer = TaskWriter(store, name, spec_id=spec.spec_id, kind="task", rows_per_file=rows_per_file,
                            overwrite=overwrite, vocab_size=spec.vocab_size, meta=meta)
    except FileExistsError as exc:
        report.error = str(exc)
        return report
    rows = _TaskRows(writer)
    # Withheld so that both splits can be made non-empty at the end without a second pass:
    # the train row closest to the eval threshold and the eval row farthest into eval.
    train_cand: tuple[float, np.ndarray, int] | None = None
    eval_cand: tuple[float, np.ndarray, int] | None = None
    try:
        for number, raw in _lines(path):
            if not raw.strip():
                report.blank_lines += 1
                continue
            report.lines += 1
            try:
                tokens, sep = parse_task_line(raw, spec, max_len)
            except LineSkipped as skip:
                report._skip(number, skip.reason, skip.detail)
                continue
            row: tuple[float, np.ndarray, int] | None = (eval_score(tokens), tokens, sep)
            if row[0] < eval_fraction:
                if eval_cand is None or row[0] > eval_cand[0]:
                    row, eval_cand = eval_cand, row
                if row is not None:
                    rows.add("eval", row[1], row[2])
            else:
                if train_cand is None or row[0] < train_cand[0]:
                    row, train_cand = train_cand, row
                if row is not None:
                    rows.add("train", row[1], row[2])
        valid = rows.rows["train"] + rows.rows["eval"] + (train_cand is not None) + (eval_cand is not None)
        if valid < 2:
            raise _ImportFailed(f"needs at least 2 valid lines (one train, one eval), found {valid}")
        if eval_cand is None:  # the hash put every row in train: the one closest to eval moves
            rows.add("eval", train_cand[1], train_cand[2])
        elif train_cand is None:  # every row in eval: the one closest to train moves
            rows.add("train", eval_cand[1], eval_cand[2])
        else:
            rows.add("train", train_cand[1], train_cand[2])
            rows.add("eval", eval_cand[1], eval_cand[2])
        rows.flush("train")
        rows.flush("eval")
        writer.meta.update(lines=report.lines, blank_lines=report.blank_lines, skipped=dict(report.skipped_counts))
        writer.commit()
    except _ImportFailed as exc:
        writer.abort()
        report.error = str(exc)
        return report
    except BaseException:
        writer.abort()
        raise
    report.rows = dict(rows.rows)
    report.uri = store.uri(f"tasks/{name}")
    return report


class _ImportFailed(Exception):
    pass


def import_stream_file(
    store: Store | str | None,
    path: str | os.PathLike,
    *,
    name: str | None = None,
    spec: ModalitySpec = ANOLE,
    max_len: int | None = None,
    image_code_offset: int = 0,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
) -> SourceReport:
    """Import the image-generation jsonl file as ``streams/<name>`` (rows ``[boi] + codes + [eoi]``)."""
    path = os.fspath(path)
    store = as_store(store)
    report = SourceReport(source=path, kind="stream", name=None)
    try:
        report.name = name = validate_name(name, kind="stream") if name is not None else name_from_path(path)
    except TaskValidationError as exc:
        report.error = str(exc)
        return report
    meta = {
        "importer": "cl_platform.suites.mode_official",
        "source": os.path.basename(path),
        "layout": "prompt-free [boi] + image codes + [eoi]",
        "image_code_offset": image_code_offset,
        "max_len": max_len,
    }
    try:
        writer = TaskWriter(store, name, spec_id=spec.spec_id, kind="stream", rows_per_file=rows_per_file,
                            overwrite=overwrite, vocab_size=spec.vocab_size, meta=meta)
    except FileExistsError as exc:
        report.error = str(exc)
        return report
    batch: list[np.ndarray] = []
    n = 0
    try:
        for number, raw in _lines(path):
            if not raw.strip():
                report.blank_lines += 1
                continue
            report.lines += 1
            try:
                batch.append(parse_stream_line(raw, spec, max_len, image_code_offset))
            except LineSkipped as skip:
                report._skip(number, skip.reason, skip.detail)
                continue
            n += 1
            if len(batch) >= _BATCH_ROWS:
                writer.write("data", pa.table({"tokens": _list_array(batch)}))
                batch = []
        if batch:
            writer.write("data", pa.table({"tokens": _list_array(batch)}))
        if n == 0:
            writer.abort()
            report.error = "no valid lines"
            return report
        writer.meta.update(lines=report.lines, blank_lines=report.blank_lines, skipped=dict(report.skipped_counts))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    report.rows = {"data": n}
    report.uri = store.uri(f"streams/{name}")
    return report


def import_mode_official(
    store: Store | str | None,
    *,
    tasks_dir: str | os.PathLike | None = None,
    stream_file: str | os.PathLike | None = None,
    stream_name: str | None = None,
    spec: ModalitySpec = ANOLE,
    eval_fraction: float = 0.05,
    max_len: int | None = None,
    image_code_offset: int = 0,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    overwrite: bool = False,
) -> ImportReport:
    """Import every ``*.jsonl`` in ``tasks_dir`` as a task and ``stream_file`` as a stream.

    A source that cannot be imported (name clash, too few valid lines, already in the store
    without ``overwrite``) is reported and the others go on.
    """
    if tasks_dir is None and stream_file is None:
        raise ValueError("nothing to import: give tasks_dir and/or stream_file")
    store = as_store(store)
    report = ImportReport(store=store.url)
    if tasks_dir is not None:
        tasks_dir = os.fspath(tasks_dir)
        if not os.path.isdir(tasks_dir):
            raise NotADirectoryError(f"tasks directory {tasks_dir!r} does not exist or is not a directory")
        stream_real = os.path.realpath(stream_file) if stream_file is not None else None
        files = sorted(
            os.path.join(tasks_dir, f) for f in os.listdir(tasks_dir)
            if f.endswith(".jsonl") and os.path.isfile(os.path.join(tasks_dir, f))
        )
        files = [f for f in files if os.path.realpath(f) != stream_real]
        if not files:
            log.warning("no *.jsonl task files in %s", tasks_dir)
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
                    error=f"task name {name!r} is already taken by {seen[name]}; rename one of the files",
                ))
                continue
            seen[name] = path
            report.sources.append(import_task_file(
                store, path, name=name, spec=spec, eval_fraction=eval_fraction, max_len=max_len,
                rows_per_file=rows_per_file, overwrite=overwrite,
            ))
    if stream_file is not None:
        if not os.path.isfile(stream_file):
            raise FileNotFoundError(f"stream file {os.fspath(stream_file)!r} does not exist")
        report.sources.append(import_stream_file(
            store, stream_file, name=stream_name, spec=spec, max_len=max_len,
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
        description="Convert the MoDE reference code's pre-tokenized jsonl (Anole ids) into tasks and a stream.",
    )
    p.add_argument("--tasks", metavar="DIR", help="directory of task jsonl files ({'tokens': [...]} per line)")
    p.add_argument("--stream", metavar="FILE", help="image-generation jsonl file ({'image_tokens': [...]} per line)")
    p.add_argument("--stream-name", help="stream name (default: from the file name)")
    p.add_argument("--store", default=None, help="store URL: s3://bucket/prefix, file://..., or a path (default ./.cl_store)")
    p.add_argument("--eval-fraction", type=_fraction, default=0.05, help="share of each task's lines held out for eval (default 0.05)")
    p.add_argument("--max-len", type=_positive_int, default=None, help="skip lines with more ids than this")
    p.add_argument("--image-code-offset", type=int, default=0, help="add this to stream image codes (4 for raw VQ indices 0..8191)")
    p.add_argument("--rows-per-file", type=_positive_int, default=DEFAULT_ROWS_PER_FILE, help="rows per parquet part")
    p.add_argument("--overwrite", action="store_true", help="replace tasks / streams that already exist")
    p.add_argument("--json", action="store_true", help="print the full report as JSON instead of the summary")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; exit status 0 when every source was imported (skipped lines allowed), else 1."""
    args = build_parser().parse_args(argv)
    if args.tasks is None and args.stream is None:
        build_parser().error("give --tasks and/or --stream")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    report = import_mode_official(
        Store(args.store),
        tasks_dir=args.tasks,
        stream_file=args.stream,
        stream_name=args.stream_name,
        eval_fraction=args.eval_fraction,
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
    "SKIP_REASONS",
    "ImportReport",
    "SkippedLine",
    "SourceReport",
    "eval_score",
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
