"""Task limits: each bound fires with a message naming the task, the file and the limit, before
the step it protects (download, JSON parse, decode)."""

from __future__ import annotations

import functools
import hashlib
import json
import resource

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cl_platform.data import TaskLimits, TaskValidationError, read_task, write_task
from cl_platform.data import task_format as tf
from cl_platform.data.limits import DEFAULT_LIMITS, FALLBACK_MAX_TOKENS, json_depth
from cl_platform.store import Store

LI32 = pa.list_(pa.int32())
TRAIN = {"tokens": [[5, 6, 9, 1], [7, 9, 2, 3], [4, 9, 8]], "answer_start": [3, 2, 2]}
EVAL = {"prompt_tokens": [[5, 9], [2, 2, 9]], "answer_tokens": [[1], [0, 0]]}


@pytest.fixture
def local(tmp_path) -> Store:
    return Store(f"file://{tmp_path}/store")


def make(store: Store, name: str = "t", **kw) -> dict:
    return write_task(store, name, TRAIN, EVAL, spec_id="s", **kw)


def parquet_bytes(table: pa.Table, **kw) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **kw)
    return sink.getvalue().to_pybytes()


def put_part(store: Store, name: str, rel: str, data: bytes, rows: int) -> None:
    """Replace a listed part and make the manifest agree with it (sha256, rows, bytes)."""
    store.write_bytes(f"tasks/{name}/{rel}", data)
    m = store.read_json(f"tasks/{name}/manifest.json")
    split = rel.split("/")[0]
    m["rows"][split] += rows - m["files"][rel]["rows"]
    m["files"][rel] = {"sha256": hashlib.sha256(data).hexdigest(), "rows": rows, "bytes": len(data)}
    store.write_json(f"tasks/{name}/manifest.json", m)


def refused(store: Store, match: str, *, file: str | None = "train/part-00000.parquet", **kw) -> TaskValidationError:
    with pytest.raises(TaskValidationError, match=match) as err:
        read_task(store, "t", **kw)
    assert err.value.task == "t" and err.value.file == file, str(err.value)
    assert str(err.value).startswith("task 't'")
    return err.value


# ------------------------------------------------------------------------------------ the dataclass


def test_limits_are_checked_and_have_sane_defaults() -> None:
    assert DEFAULT_LIMITS.max_manifest_depth == 16 and DEFAULT_LIMITS.unknown_columns == "reject"
    assert DEFAULT_LIMITS.decoded_bound(1000) == DEFAULT_LIMITS.expansion_allowance + 64_000
    assert DEFAULT_LIMITS.decoded_bound(10**12) == DEFAULT_LIMITS.max_decoded_bytes
    assert DEFAULT_LIMITS.tokens_per_row() == FALLBACK_MAX_TOKENS
    assert DEFAULT_LIMITS.tokens_per_row(4096) == 4096
    assert TaskLimits(max_tokens=100).tokens_per_row(4096) == 100
    for bad in ({"max_rows": 0}, {"max_files": -1}, {"max_tokens": 0}, {"max_file_bytes": 1.5}):
        with pytest.raises(ValueError, match="must be a positive int"):
            TaskLimits(**bad)
    with pytest.raises(ValueError, match="'reject' or 'ignore'"):
        TaskLimits(unknown_columns="keep")
    with pytest.raises(ValueError, match="max_tokens must be a positive int"):
        DEFAULT_LIMITS.tokens_per_row(0)


@pytest.mark.parametrize("text,depth", [
    (b"", 0), (b"{}", 1), (b'{"a": [1, {"b": 2}]}', 3), (b'{"a": "[[[[{{{{"}', 1),
    (b'{"a\\\\": [[1]]}', 3), (b'{"a\\"[[": [1]}', 2), (b"[" * 100_000, 100_000),
])
def test_json_depth_counts_brackets_outside_strings(text: bytes, depth: int) -> None:
    assert json_depth(text) == depth
    if depth and depth < 100:
        json.loads(text)  # the cases are valid JSON


# ------------------------------------------------------------------------------------ manifest


def test_a_manifest_nested_deeper_than_the_limit_is_refused_before_parsing(local: Store) -> None:
    make(local)
    local.write_bytes("tasks/t/manifest.json", b"[" * 100_000 + b"]" * 100_000)
    refused(local, r"nested 100000 levels deep, more than the 16 allowed \(max_manifest_depth\)", file="manifest.json")
    m = make(local, overwrite=True)
    deep: dict = {}
    for _ in range(20):
        deep = {"x": deep}
    local.write_json("tasks/t/manifest.json", {**m, "meta": deep})
    refused(local, r"nested 22 levels deep", file="manifest.json")
    read_task(local, "t", limits=TaskLimits(max_manifest_depth=22))


def test_a_manifest_over_the_size_limit_is_refused_before_download(local: Store, monkeypatch) -> None:
    make(local)
    size = local.info("tasks/t/manifest.json").size
    monkeypatch.setattr(tf, "_stream_sha256", lambda *a, **k: pytest.fail("downloaded"))
    refused(local, rf"is {size} bytes, more than the 100 allowed \(max_manifest_bytes\)", file="manifest.json",
            limits=TaskLimits(max_manifest_bytes=100))


def test_too_many_files_listed_or_under_the_folder(local: Store) -> None:
    make(local, rows_per_file=1)  # 3 train + 2 eval parts, manifest, _READY: 7 files
    refused(local, r"lists 5 files, more than the 4 allowed per dataset \(max_files\)", file="manifest.json",
            limits=TaskLimits(max_files=4))
    read_task(local, "t", limits=TaskLimits(max_files=7))
    local.write_bytes("tasks/t/train/extra.bin", b"x")  # not listed, still counted
    refused(local, r"holds 8 files, more than the 7 allowed per dataset \(max_files\)", file=None,
            limits=TaskLimits(max_files=7))


def test_rows_per_split_limit(local: Store) -> None:
    make(local, rows_per_file=1)
    refused(local, r"rows\['train'\] is 3, more than the 2 rows allowed per split \(max_rows\)", file="manifest.json",
            limits=TaskLimits(max_rows=2))
    m = local.read_json("tasks/t/manifest.json")
    local.write_json("tasks/t/manifest.json", {**m, "rows": {"train": 1, "eval": 2}})  # understated: parts still counted
    refused(local, r"the train files up to this one hold more than the 2 rows allowed per split \(max_rows\)",
            file="train/part-00002.parquet", limits=TaskLimits(max_rows=2))


def test_file_size_limit_before_download(local: Store, monkeypatch) -> None:
    m = make(local)
    size = m["files"]["train/part-00000.parquet"]["bytes"]
    real = tf._stream_sha256

    def no_parts(store, path, max_bytes, *, keep):
        assert not path.endswith(".parquet"), "a part over the limit was downloaded"
        return real(store, path, max_bytes, keep=keep)

    monkeypatch.setattr(tf, "_stream_sha256", no_parts)
    refused(local, r"bad file entry 'train/part-00000.parquet': \d+ bytes, more than the 100 allowed per file",
            file="manifest.json", limits=TaskLimits(max_file_bytes=100))
    for entry in m["files"].values():
        entry.pop("bytes")
    local.write_json("tasks/t/manifest.json", m)  # no size in the manifest: the store's size decides
    refused(local, rf"is {size} bytes, more than the 100 allowed per file \(max_file_bytes\)", limits=TaskLimits(max_file_bytes=100))


# ------------------------------------------------------------------------------------ tokens


def test_tokens_per_row_from_the_model_context(local: Store) -> None:
    make(local)
    refused(local, r"row 0: 4 tokens, more than the 3 allowed per row \(max_tokens\) \(2 such rows in this file\)", max_tokens=3)
    refused(local, r"row 1: 5 tokens, more than the 4 allowed", file="eval/part-00000.parquet", max_tokens=4)  # prompt + answer
    read_task(local, "t", max_tokens=5)
    refused(local, r"more than the 3 allowed", max_tokens=5, limits=TaskLimits(max_tokens=3))


def test_a_long_row_is_refused_from_the_metadata(local: Store, monkeypatch) -> None:
    make(local)
    long_row = pa.table({"tokens": pa.array([np.arange(200_000) % 50], LI32), "answer_start": pa.array([1], pa.int32())})
    put_part(local, "t", "train/part-00000.parquet", parquet_bytes(long_row), rows=1)
    monkeypatch.setattr(tf, "_decode", lambda *a: pytest.fail("decoded"))
    refused(local, r"column 'tokens' holds 200000 token ids in 1 rows: some row has more than the 131072 tokens allowed "
                   r"per row \(max_tokens\)")


# ------------------------------------------------------------------------------------ decoded size


@functools.lru_cache(maxsize=None)
def _bomb(rows: int = 10_000, width: int = 2000) -> bytes:
    """A train part of ``rows`` x ``width`` copies of one id: 80 MB decoded, a few KB on disk."""
    offsets = pa.array(np.arange(0, (rows + 1) * width, width, dtype=np.int32))
    tokens = pa.ListArray.from_arrays(offsets, pa.array(np.full(rows * width, 7, np.int32)))
    return parquet_bytes(pa.table({"tokens": tokens, "answer_start": pa.array(np.ones(rows, np.int32))}))


def test_a_decompression_bomb_is_refused_before_decoding(local: Store, monkeypatch) -> None:
    make(local)
    data = _bomb()
    assert len(data) < 20_000
    put_part(local, "t", "train/part-00000.parquet", data, rows=10_000)
    decoded = []
    monkeypatch.setattr(tf, "_decode", lambda *a: decoded.append(a) or pytest.fail("decoded"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    err = refused(local, r"decodes to about \d+ bytes \(from its Parquet metadata\), more than the \d+ allowed for a "
                         r"\d+-byte file \(max_decoded_bytes, max_expansion\); refused before decoding")
    assert int(err.reason.split("about ")[1].split(" ")[0]) >= 80_000_000
    assert not decoded
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 40_000  # KiB: nothing near 80 MB
    monkeypatch.undo()
    put_part(local, "t", "train/part-00000.parquet", _bomb(rows=100, width=1000), rows=100)  # 400 KB decoded: allowed
    assert read_task(local, "t").train.num_rows == 100
    refused(local, r"refused before decoding", limits=TaskLimits(expansion_allowance=1, max_expansion=8))


def test_the_decoded_bound_counts_values_not_only_encoded_bytes() -> None:
    pf = pq.ParquetFile(pa.BufferReader(_bomb(rows=100, width=1000)))
    decoded, values = tf._decoded_estimate(pf)
    assert values["tokens"] == 100_000 and values["answer_start"] == 100
    assert decoded >= 100_000 * 4 > pf.metadata.row_group(0).total_byte_size


# ------------------------------------------------------------------------------------ reading


def test_parts_are_read_by_row_group_and_hashed_while_streaming(local: Store, monkeypatch) -> None:
    make(local)
    table = pa.table({"tokens": pa.array([[1, 2, 3]] * 10, LI32), "answer_start": pa.array([1] * 10, pa.int32())})
    put_part(local, "t", "train/part-00000.parquet", parquet_bytes(table, row_group_size=3), rows=10)
    groups, chunks = [], []
    real_group = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda self, i, *a, **k: groups.append(i) or real_group(self, i, *a, **k))
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("whole-file read"))
    monkeypatch.setattr(Store, "read_bytes", lambda *a, **k: pytest.fail("whole-file read_bytes"))
    monkeypatch.setattr(tf, "_CHUNK", 64)
    real_update = hashlib.sha256
    monkeypatch.setattr(tf.hashlib, "sha256", lambda *a: _Counting(real_update(*a), chunks))
    task = read_task(local, "t")
    assert task.train.num_rows == 10 and groups[:4] == [0, 1, 2, 3]
    assert max(chunks) <= 64 and len(chunks) > 10


class _Counting:
    """A sha256 that records the size of each update."""

    def __init__(self, inner, sizes: list[int]) -> None:
        self.inner, self.sizes = inner, sizes

    def update(self, data: bytes) -> None:
        self.sizes.append(len(data))
        self.inner.update(data)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


def test_unknown_columns_rule(local: Store) -> None:
    make(local)
    extra = pa.table({"tokens": pa.array([[1, 2, 3]], LI32), "answer_start": pa.array([1], pa.int32()),
                      "blob": pa.array([b"\0" * 1000], pa.binary())})
    put_part(local, "t", "train/part-00000.parquet", parquet_bytes(extra), rows=1)
    refused(local, r"unknown column\(s\) \['blob'\]: a task has only \['tokens', 'answer_start'\] \(unknown_columns='reject'\)")
    assert read_task(local, "t", limits=TaskLimits(unknown_columns="ignore")).train.column("blob").to_pylist() == [b"\0" * 1000]
