"""Bounds on what reading one task or stream may cost, checked before the costly step.

The store is shared: anyone who can write to it can drop a dataset under ``tasks/<name>/``. A
reader therefore bounds everything an input controls: how many bytes it downloads (per file, per
manifest), how deep the manifest's JSON nests (checked by a scan of the bytes, before any JSON
parser recurses), how many files it looks at, how many rows and tokens it accepts, and how many
bytes a Parquet part may decode to (read from the Parquet metadata, before decoding: a few KB of
run-length-encoded ids can decode to gigabytes).

:class:`TaskLimits` holds the bounds; ``None`` wherever a reader takes ``limits`` means
:data:`DEFAULT_LIMITS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

MiB = 2**20
GiB = 2**30

#: Tokens per row when neither the limits nor the caller give a model context length.
FALLBACK_MAX_TOKENS = 131_072
#: Longest file or folder name accepted in a manifest path (most file systems stop at 255 bytes).
MAX_NAME_CHARS = 255


@dataclass(frozen=True)
class TaskLimits:
    """Bounds applied while reading one dataset (see the module docstring).

    Attributes:
        max_file_bytes: largest data file (Parquet part) downloaded, in bytes.
        max_manifest_bytes: largest ``manifest.json``, in bytes.
        max_manifest_depth: deepest nesting of JSON arrays / objects in the manifest (the
            top-level object is depth 1).
        max_files: most files per dataset, counting both the manifest's ``files`` and every
            object under the dataset's folder (listed or not).
        max_rows: most rows per split.
        max_tokens: most tokens per row (train ``tokens``; eval ``prompt_tokens`` +
            ``answer_tokens``; stream ``tokens``). ``None``: the model's context length that
            the caller passes, else :data:`FALLBACK_MAX_TOKENS`.
        max_decoded_bytes: most bytes one Parquet part may decode to (from its metadata).
        max_expansion: most bytes one Parquet part may decode to per byte of file, above
            ``expansion_allowance`` (the decompression-bomb bound).
        expansion_allowance: decoded bytes always allowed whatever the file's size (small files
            are mostly Parquet overhead, so their ratio says little).
        unknown_columns: ``"reject"``: a column that is neither required nor a known optional one
            fails validation (and the writer refuses it); ``"ignore"``: it is carried through
            unchecked.
        eval_duplicates: ``"reject"``: a task whose eval row (prompt + answer) equals one of its
            train rows fails validation; ``"ignore"``: not checked.
    """

    max_file_bytes: int = 512 * MiB
    max_manifest_bytes: int = 1 * MiB
    max_manifest_depth: int = 16
    max_files: int = 1000
    max_rows: int = 5_000_000
    max_tokens: Optional[int] = None
    max_decoded_bytes: int = 2 * GiB
    max_expansion: int = 64
    expansion_allowance: int = 16 * MiB
    unknown_columns: Literal["reject", "ignore"] = "reject"
    eval_duplicates: Literal["reject", "ignore"] = "reject"

    def __post_init__(self) -> None:
        for name in ("max_file_bytes", "max_manifest_bytes", "max_manifest_depth", "max_files", "max_rows",
                     "max_decoded_bytes", "max_expansion", "expansion_allowance"):
            _positive_int(name, getattr(self, name))
        if self.max_tokens is not None:
            _positive_int("max_tokens", self.max_tokens)
        for name in ("unknown_columns", "eval_duplicates"):
            if getattr(self, name) not in ("reject", "ignore"):
                raise ValueError(f"TaskLimits.{name} must be 'reject' or 'ignore', got {getattr(self, name)!r}")

    def tokens_per_row(self, context: Optional[int] = None) -> int:
        """Tokens allowed per row: ``max_tokens`` and the model's ``context`` (the smaller when both
        are given), else :data:`FALLBACK_MAX_TOKENS`."""
        if context is not None:
            _positive_int("max_tokens", context)
        given = [n for n in (self.max_tokens, context) if n is not None]
        return min(given) if given else FALLBACK_MAX_TOKENS

    def decoded_bound(self, file_bytes: int) -> int:
        """Most bytes a Parquet part of ``file_bytes`` bytes may decode to."""
        return min(self.max_decoded_bytes, self.expansion_allowance + self.max_expansion * int(file_bytes))


def _positive_int(name: str, value: object) -> None:
    if type(value) is not int or value < 1:
        raise ValueError(f"TaskLimits.{name} must be a positive int, got {value!r}")


#: The limits a reader applies when given none.
DEFAULT_LIMITS = TaskLimits()


def json_depth(data: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in JSON text ``data``, brackets inside strings not counted.

    A vectorised scan (no recursion, no parser): a quote opens or closes a string unless an odd
    run of backslashes precedes it. Malformed JSON gives some number; the parser rejects it later.
    """
    arr = np.frombuffer(data, dtype=np.uint8)
    if arr.size == 0:
        return 0
    idx = np.arange(arr.size)
    not_backslash = np.where(arr != ord("\\"), idx, -1)
    last_plain = np.maximum.accumulate(not_backslash)  # last position <= i that is not a backslash
    run_before = np.zeros(arr.size, dtype=np.int64)
    run_before[1:] = idx[:-1] - last_plain[:-1]  # backslashes right before position i
    quote = (arr == ord('"')) & (run_before % 2 == 0)
    in_string = (np.cumsum(quote) % 2 == 1) & ~quote  # the closing quote itself is outside
    opens = ((arr == ord("[")) | (arr == ord("{"))) & ~in_string
    closes = ((arr == ord("]")) | (arr == ord("}"))) & ~in_string
    depth = np.cumsum(opens.astype(np.int64) - closes.astype(np.int64))
    return int(depth.max(initial=0))


__all__ = ["DEFAULT_LIMITS", "FALLBACK_MAX_TOKENS", "GiB", "MAX_NAME_CHARS", "MiB", "TaskLimits", "json_depth"]
