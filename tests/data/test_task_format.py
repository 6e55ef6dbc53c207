"""Task / stream format: round trips on both backends and every validation failure by message."""

from __future__ import annotations

import hashlib
import pickle
import re
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cl_platform.data import (
    TaskChangedError,
    TaskLimits,
    TaskValidationError,
    TaskWriter,
    list_ready_streams,
    list_ready_tasks,
    manifest_digest,
    read_manifest,
    read_stream,
    read_task,
    ready_time,
    validate_name,
    verify_dataset,
    write_stream,
    write_task,
)
from cl_platform.store import Store

I32 = pa.int32()
LI32 = pa.list_(pa.int32())


def train_table(rows: list[tuple[list[int], int]]) -> pa.Table:
    return pa.table({"tokens": pa.array([r[0] for r in rows], LI32), "answer_start": pa.array([r[1] for r in rows], I32)})


def eval_table(rows: list[tuple[list[int], list[int]]], answers: list[str] | None = None) -> pa.Table:
    cols = {"prompt_tokens": pa.array([r[0] for r in rows], LI32), "answer_tokens": pa.array([r[1] for r in rows], LI32)}
    if answers is not None:
        cols["answer"] = pa.array(answers, pa.string())
    return pa.table(cols)


TRAIN = train_table([([5, 6, 9, 1], 3), ([7, 9, 2, 3], 2), ([4, 9, 8], 2), ([1, 2, 9, 5, 6], 3), ([3, 9, 4], 2)])
EVAL = eval_table([([5, 9], [1]), ([2, 2, 9], [0, 0])], answers=["1", "00"])


def make_task(store: Store, name: str = "parity", **kw) -> dict:
    return write_task(store, name, TRAIN, EVAL, spec_id="digits-v1", rows_per_file=2, **kw)


def replace_part(store: Store, name: str, rel: str, data: bytes, *, fix_manifest: bool = True, rows: int | None = None) -> None:
    """Overwrite one data file; optionally update its sha256 (and rows) so only the content is wrong."""
    root = f"tasks/{name}"
    store.write_bytes(f"{root}/{rel}", data)
    if fix_manifest:
        manifest = store.read_json(f"{root}/manifest.json")
        manifest["files"][rel]["sha256"] = hashlib.sha256(data).hexdigest()
        if rows is not None:
            old = manifest["files"][rel]["rows"]
            manifest["files"][rel]["rows"] = rows
            manifest["rows"][rel.split("/")[0]] += rows - old
        store.write_json(f"{root}/manifest.json", manifest)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def edit_manifest(store: Store, name: str, fn: Callable[[dict], None]) -> None:
    manifest = store.read_json(f"tasks/{name}/manifest.json")
    fn(manifest)
    store.write_json(f"tasks/{name}/manifest.json", manifest)


# ------------------------------------------------------------------------------------ round trips


def test_task_round_trip(store: Store) -> None:
    manifest = make_task(store)
    assert manifest["schema_version"] == 1 and manifest["kind"] == "task" and manifest["name"] == "parity"
    assert manifest["rows"] == {"train": 5, "eval": 2}
    assert sorted(manifest["files"]) == [
        "eval/part-00000.parquet",
        "train/part-00000.parquet",
        "train/part-00001.parquet",
        "train/part-00002.parquet",
    ]
    for rel, entry in manifest["files"].items():
        data = store.read_bytes(f"tasks/parity/{rel}")
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
    assert store.exists("tasks/parity/_READY")

    task = read_task(store, "parity", vocab_size=10)
    assert task.name == "parity" and task.spec_id == "digits-v1"
    assert task.train.to_pylist() == TRAIN.to_pylist()
    assert task.eval.to_pylist() == EVAL.to_pylist()
    assert task.train.schema.field("tokens").type == LI32
    assert task.train.schema.field("answer_start").type == I32
    assert len(task.files["train"]) == 3 and len(task.files["eval"]) == 1
    assert all(u.startswith(store.uri("tasks/parity") + "/train/part-") for u in task.files["train"])
    assert read_manifest(store, "parity")["rows"] == {"train": 5, "eval": 2}


def test_writer_casts_python_lists_and_the_unknown_columns_rule(store: Store) -> None:
    extra = {"tokens": [[1, 2, 3]], "answer_start": [1], "source_line": [17]}
    with pytest.raises(ValueError, match=r"unknown column\(s\) \['source_line'\].*unknown_columns='reject'"):
        write_task(store, "cast", extra, {"prompt_tokens": [[1]], "answer_tokens": [[2]]}, spec_id="s")
    ignore = TaskLimits(unknown_columns="ignore")
    write_task(store, "cast", extra, {"prompt_tokens": [[1]], "answer_tokens": [[2]]}, spec_id="s", limits=ignore)
    with pytest.raises(TaskValidationError, match=r"file 'train/part-00000.parquet': unknown column\(s\) \['source_line'\]"):
        read_task(store, "cast")
    task = read_task(store, "cast", limits=ignore)
    assert task.train.schema.field("tokens").type == LI32
    assert task.train.column("source_line").to_pylist() == [17]
    with pytest.raises(ValueError, match=r"column 'tokens' of type list<int64> cannot be converted to list<int32>"):
        write_task(store, "overflow", {"tokens": [[2**40, 1]], "answer_start": [1]}, EVAL, spec_id="s")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['answer_start'\]"):
        write_task(store, "missing", {"tokens": [[1, 2]]}, EVAL, spec_id="s")


def test_stream_round_trip_and_image_check(store: Store) -> None:
    data = pa.table(
        {
            "tokens": pa.array([[8197, 4, 5, 8196], [3, 8197, 6, 8196]], LI32),
            "prompt_len": pa.array([0, 1], I32),
            "label": pa.array([0, 1], I32),
        }
    )
    manifest = write_stream(store, "gen", data, spec_id="anole", meta={"source": "unit"})
    assert manifest["kind"] == "stream" and manifest["rows"] == {"data": 2} and manifest["meta"] == {"source": "unit"}
    assert list(manifest["files"]) == ["data/part-00000.parquet"]
    stream = read_stream(store, "gen", vocab_size=65536, image_token_ranges=[[4, 8198]])
    assert stream.data.to_pylist() == data.to_pylist()
    assert list_ready_streams(store) == ["gen"]
    assert list_ready_tasks(store) == []

    write_stream(store, "textonly", {"tokens": [[8197, 4, 8196], [9000, 9001]]}, spec_id="anole")
    with pytest.raises(TaskValidationError, match=r"stream 'textonly' file 'data/part-00000.parquet': row 1: no image token"):
        read_stream(store, "textonly", image_token_ranges=[[4, 8198]])
    with pytest.raises(TaskValidationError, match=r"row 0: prompt_len 2 must satisfy 0 <= prompt_len < len\(tokens\) = 2"):
        write_stream(store, "badplen", {"tokens": [[1, 2]], "prompt_len": [2]}, spec_id="anole")
    # A stream is not a task: tasks/gen does not exist.
    with pytest.raises(TaskValidationError, match=r"task 'gen' file '_READY': missing"):
        read_task(store, "gen")


def test_existing_task_needs_overwrite_and_interrupted_write_is_invisible(store: Store) -> None:
    make_task(store)
    with pytest.raises(FileExistsError, match="parity"):
        make_task(store)
    write_task(store, "parity", train_table([([1, 2], 1)]), EVAL, spec_id="digits-v1", overwrite=True)
    assert read_task(store, "parity").train.num_rows == 1

    # A writer that dies mid-way leaves no _READY and cleans up after itself.
    with pytest.raises(RuntimeError):
        with TaskWriter(store, "dying", spec_id="x", rows_per_file=1) as w:
            w.write("train", train_table([([1, 2], 1), ([1, 2], 1)]))
            raise RuntimeError("producer crashed")
    assert not store.exists("tasks/dying")

    # Parts written without commit are not a task.
    w = TaskWriter(store, "landing", spec_id="x", rows_per_file=1)
    w.write("train", train_table([([1, 2], 1)]))
    assert store.exists("tasks/landing/train/part-00000.parquet")
    assert list_ready_tasks(store) == ["parity"]
    w.write("eval", EVAL)
    w.commit()
    assert list_ready_tasks(store) == ["landing", "parity"]
    assert ready_time(store, "landing") >= ready_time(store, "parity") - 1


def test_writer_validates_rows_before_writing(store: Store) -> None:
    with pytest.raises(TaskValidationError, match=r"row 1: answer_start 2 must satisfy 0 < answer_start < len\(tokens\) = 2"):
        write_task(store, "bad", train_table([([1, 2, 3], 1), ([1, 2], 2)]), EVAL, spec_id="s")
    assert not store.exists("tasks/bad")
    with pytest.raises(TaskValidationError, match=r"task 'empty' file 'eval/': split is empty"):
        write_task(store, "empty", TRAIN, eval_table([]), spec_id="s")
    assert not store.exists("tasks/empty")
    with pytest.raises(TaskValidationError, match=r"token id 12 outside \[0, 10\)"):
        write_task(store, "vocab", train_table([([1, 12], 1)]), EVAL, spec_id="s", vocab_size=10)


def test_list_ready_tasks_ignores_bad_names_and_unready(store: Store) -> None:
    make_task(store, "b-task")
    make_task(store, "a_task")
    store.write_bytes("tasks/Bad Name/_READY", b"")
    store.write_bytes("tasks/unready/train/part-00000.parquet", b"x")
    assert list_ready_tasks(store) == ["a_task", "b-task"]


def test_validation_error_fields_and_pickling() -> None:
    err = TaskValidationError("parity", "train/part-00000.parquet", "column 'answer_start' has type int64, expected int32")
    assert isinstance(err, ValueError)
    assert str(err) == "task 'parity' file 'train/part-00000.parquet': column 'answer_start' has type int64, expected int32"
    back = pickle.loads(pickle.dumps(err))
    assert (back.task, back.file, back.reason, back.kind, str(back)) == (err.task, err.file, err.reason, err.kind, str(err))


@pytest.mark.parametrize("name", ["parity", "a", "x_1-2", "0" * 64])
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "Parity", "-lead", "_lead", "a" * 65, "a/b", "..", "../etc", "a b", "é", "a.b", None, 3])
def test_bad_names_are_rejected_before_any_path_is_built(store: Store, name) -> None:
    with pytest.raises(TaskValidationError, match=r"invalid name: must") as err:
        read_task(store, name)
    assert err.value.file is None
    with pytest.raises(TaskValidationError):
        write_task(store, name, TRAIN, EVAL, spec_id="s")
    assert store.list("") == []


# ------------------------------------------------------------------------------------ failures


def _bad_answer_start_table() -> pa.Table:
    return train_table([([5, 6, 9, 1], 3), ([7, 9], 5)])


FAILURES: list[tuple[str, Callable[[Store], None], str | None, str, dict]] = [
    (
        "missing_ready",
        lambda s: s.delete("tasks/parity/_READY"),
        "_READY",
        r"missing: the dataset is still being written",
        {},
    ),
    (
        "manifest_not_json",
        lambda s: s.write_bytes("tasks/parity/manifest.json", b'{"schema_version": 1,'),
        "manifest.json",
        r"not valid JSON",
        {},
    ),
    (
        "manifest_not_object",
        lambda s: s.write_bytes("tasks/parity/manifest.json", b"[1, 2]"),
        "manifest.json",
        r"must be a JSON object, got list",
        {},
    ),
    (
        "manifest_missing",
        lambda s: s.delete("tasks/parity/manifest.json"),
        "manifest.json",
        r"missing",
        {},
    ),
    (
        "schema_version",
        lambda s: edit_manifest(s, "parity", lambda m: m.update(schema_version=2)),
        "manifest.json",
        r"unsupported schema_version 2; this reader supports \[1\]",
        {},
    ),
    (
        "wrong_name",
        lambda s: edit_manifest(s, "parity", lambda m: m.update(name="other")),
        "manifest.json",
        r"name is 'other', expected 'parity'",
        {},
    ),
    (
        "escaping_file_entry",
        lambda s: edit_manifest(s, "parity", lambda m: m["files"].update({"train/../../x.parquet": {"sha256": "0" * 64, "rows": 1}})),
        "manifest.json",
        r"bad file entry: data file path 'train/../../x.parquet'",
        {},
    ),
    (
        "missing_split_file",
        lambda s: s.delete("tasks/parity/train/part-00001.parquet"),
        "train/part-00001.parquet",
        r"listed in the manifest but missing from the store",
        {},
    ),
    (
        "sha256_mismatch",
        lambda s: replace_part(s, "parity", "train/part-00000.parquet", parquet_bytes(train_table([([1, 2], 1), ([1, 2], 1)])), fix_manifest=False),
        "train/part-00000.parquet",
        r"sha256 mismatch: manifest says [0-9a-f]{64}, file has [0-9a-f]{64}",
        {},
    ),
    (
        "corrupt_parquet",
        lambda s: replace_part(s, "parity", "eval/part-00000.parquet", b"PAR1 this is not parquet"),
        "eval/part-00000.parquet",
        r"not a readable parquet file",
        {},
    ),
    (
        "wrong_column_type",
        lambda s: replace_part(
            s,
            "parity",
            "train/part-00000.parquet",
            parquet_bytes(pa.table({"tokens": pa.array([[5, 6, 9, 1], [7, 9, 2, 3]], LI32), "answer_start": pa.array([3, 2], pa.int64())})),
        ),
        "train/part-00000.parquet",
        r"column 'answer_start' has type int64, expected int32$",
        {},
    ),
    (
        "large_list_tokens",
        lambda s: replace_part(
            s,
            "parity",
            "train/part-00000.parquet",
            parquet_bytes(pa.table({"tokens": pa.array([[5, 6, 9, 1], [7, 9, 2, 3]], pa.large_list(I32)), "answer_start": pa.array([3, 2], I32)})),
        ),
        "train/part-00000.parquet",
        r"column 'tokens' has type large_list<int32>, expected list<int32>",
        {},
    ),
    (
        "missing_column",
        lambda s: replace_part(s, "parity", "eval/part-00000.parquet", parquet_bytes(pa.table({"prompt_tokens": pa.array([[1], [2]], LI32)}))),
        "eval/part-00000.parquet",
        r"missing column 'answer_tokens'",
        {},
    ),
    (
        "empty_split",
        lambda s: edit_manifest(
            s, "parity", lambda m: (m["files"].pop("eval/part-00000.parquet"), m["rows"].update(eval=0))
        ),
        "eval/",
        r"split is empty",
        {},
    ),
    (
        "row_count_mismatch",
        lambda s: edit_manifest(s, "parity", lambda m: m["files"]["train/part-00002.parquet"].update(rows=7)),
        "train/part-00002.parquet",
        r"has 1 rows, the manifest says 7",
        {},
    ),
    (
        "token_out_of_vocab",
        lambda s: None,
        "train/part-00000.parquet",
        r"row 0: column 'tokens' has token id 9 outside \[0, 8\) \(2 bad ids in this file\)",
        {"vocab_size": 8},
    ),
    (
        "negative_token",
        lambda s: replace_part(s, "parity", "eval/part-00000.parquet", parquet_bytes(eval_table([([5, 9], [1]), ([2, -3, 9], [0])]))),
        "eval/part-00000.parquet",
        r"row 1: column 'prompt_tokens' has token id -3 outside \[0, \.\.\.\)",
        {},
    ),
    (
        "answer_start_past_end",
        lambda s: replace_part(s, "parity", "train/part-00000.parquet", parquet_bytes(_bad_answer_start_table())),
        "train/part-00000.parquet",
        r"row 1: answer_start 5 must satisfy 0 < answer_start < len\(tokens\) = 2",
        {},
    ),
    (
        "answer_start_zero",
        lambda s: replace_part(s, "parity", "train/part-00001.parquet", parquet_bytes(train_table([([1, 2, 3], 0), ([1, 2], 1)]))),
        "train/part-00001.parquet",
        r"row 0: answer_start 0 must satisfy 0 < answer_start",
        {},
    ),
    (
        "empty_answer_tokens",
        lambda s: replace_part(s, "parity", "eval/part-00000.parquet", parquet_bytes(eval_table([([5, 9], [1]), ([2, 9], [])]))),
        "eval/part-00000.parquet",
        r"row 1: column 'answer_tokens' is empty",
        {},
    ),
    (
        "null_answer_start",
        lambda s: replace_part(
            s,
            "parity",
            "train/part-00002.parquet",
            parquet_bytes(pa.table({"tokens": pa.array([[3, 9, 4]], LI32), "answer_start": pa.array([None], I32)})),
        ),
        "train/part-00002.parquet",
        r"row 0: column 'answer_start' is null",
        {},
    ),
]


def _as_directory(store: Store, rel: str) -> None:
    """Replace a listed file by a directory (an S3 prefix) of the same name."""
    store.delete(f"tasks/parity/{rel}")
    store.write_bytes(f"tasks/parity/{rel}/inner", b"x")


FAILURES += [
    (
        "image_token_in_eval_answer",
        lambda s: None,
        "eval/part-00000.parquet",
        r"row 1: the answer \(answer_tokens\) holds image token id 0 \(image ids \[\[0, 1\]\]\); answers of a task are text",
        {"image_token_ranges": [[0, 1]], "text_answers": True},
    ),
    (
        "image_token_in_train_answer",
        lambda s: None,
        "train/part-00001.parquet",
        r"row 0: the answer \(tokens\[answer_start:\]\) holds image token id 8",
        {"image_token_ranges": [[8, 9]], "text_answers": True},
    ),
    (
        "padding_only_train_prompt",
        lambda s: replace_part(s, "parity", "train/part-00000.parquet", parquet_bytes(train_table([([7, 9, 2, 3], 2), ([0, 0, 5], 2)]))),
        "train/part-00000.parquet",
        r"row 1: the prompt is only padding \(pad id 0\) \(1 such rows in this file\)",
        {"pad_id": 0},
    ),
    (
        "padding_only_eval_prompt",
        lambda s: replace_part(s, "parity", "eval/part-00000.parquet", parquet_bytes(eval_table([([5, 9], [1]), ([0, 0], [4])]))),
        "eval/part-00000.parquet",
        r"row 1: the prompt is only padding \(pad id 0\)",
        {"pad_id": 0},
    ),
    (
        "eval_row_is_a_train_row",
        lambda s: replace_part(s, "parity", "eval/part-00000.parquet", parquet_bytes(eval_table([([5, 9], [1]), ([4, 9], [8])]))),
        "eval/part-00000.parquet",
        r"row 1: eval prompt \+ answer duplicates a train row \(1 of 2 eval rows are copies of train rows\)",
        {},
    ),
    (
        "unknown_column",
        lambda s: replace_part(s, "parity", "eval/part-00000.parquet", parquet_bytes(
            eval_table([([5, 9], [1]), ([2, 9], [4])]).append_column("blob", pa.array([b"x", b"y"])))),
        "eval/part-00000.parquet",
        r"unknown column\(s\) \['blob'\]",
        {},
    ),
    (
        "listed_part_is_a_directory",
        lambda s: _as_directory(s, "train/part-00001.parquet"),
        "train/part-00001.parquet",
        r"is a directory, not a file",
        {},
    ),
    (
        "file_name_too_long",
        lambda s: edit_manifest(s, "parity", lambda m: m["files"].update({"train/" + "a" * 300 + ".parquet": {"sha256": "0" * 64, "rows": 1}})),
        "manifest.json",
        r"a file name of 308 characters, more than 255",
        {},
    ),
    (
        "backslash_in_file_entry",
        lambda s: edit_manifest(s, "parity", lambda m: m["files"].update({"train/a\\b.parquet": {"sha256": "0" * 64, "rows": 1}})),
        "manifest.json",
        r"backslash and NUL characters are not allowed",
        {},
    ),
    (
        "manifest_bytes_mismatch",
        lambda s: edit_manifest(s, "parity", lambda m: m["files"]["train/part-00002.parquet"].update(bytes=1)),
        "train/part-00002.parquet",
        r"size mismatch: the manifest says 1 bytes, the file has \d+",
        {},
    ),
    (
        "manifest_bytes_not_an_int",
        lambda s: edit_manifest(s, "parity", lambda m: m["files"]["train/part-00002.parquet"].update(bytes="12")),
        "manifest.json",
        r"'bytes' must be a non-negative integer when present, got '12'",
        {},
    ),
]


@pytest.mark.parametrize("case", FAILURES, ids=[c[0] for c in FAILURES])
def test_validation_failures(store: Store, case) -> None:
    _, tamper, file, reason, read_kw = case
    make_task(store)
    read_task(store, "parity")  # valid before tampering
    tamper(store)
    with pytest.raises(TaskValidationError) as err:
        read_task(store, "parity", **read_kw)
    e = err.value
    assert e.task == "parity" and e.file == file, str(e)
    assert re.search(reason, e.reason), str(e)
    prefix = f"task 'parity' file {file!r}: "
    assert str(e).startswith(prefix), str(e)
    assert isinstance(e, ValueError)


# ------------------------------------------------------------------------------------ digests


def test_a_manifest_without_sizes_stays_valid(store: Store) -> None:
    make_task(store)
    edit_manifest(store, "parity", lambda m: [e.pop("bytes") for e in m["files"].values()])
    assert read_task(store, "parity").train.num_rows == 5


def test_manifest_digest_and_verify_dataset(store: Store) -> None:
    make_task(store)
    digest = manifest_digest(store, "parity")
    assert digest == hashlib.sha256(store.read_bytes("tasks/parity/manifest.json")).hexdigest()
    assert read_task(store, "parity").digest == digest
    verify_dataset(store, "parity", digest)
    with pytest.raises(TaskValidationError, match="invalid name"):
        manifest_digest(store, "../x")

    # a data file swapped after the digest was taken (the manifest untouched)
    rel = "train/part-00001.parquet"
    original = store.read_bytes(f"tasks/parity/{rel}")
    store.write_bytes(f"tasks/parity/{rel}", parquet_bytes(train_table([([4, 9, 8], 1), ([1, 2, 9, 5, 6], 3)])))
    with pytest.raises(TaskChangedError, match=r"sha256 mismatch") as err:
        verify_dataset(store, "parity", digest)
    assert err.value.task == "parity" and err.value.file == rel and isinstance(err.value, TaskValidationError)
    store.write_bytes(f"tasks/parity/{rel}", original)
    verify_dataset(store, "parity", digest)

    # the manifest swapped (a new file listed with its matching sha256)
    replace_part(store, "parity", rel, parquet_bytes(train_table([([4, 9, 8], 1), ([1, 2, 9, 5, 6], 3)])))
    with pytest.raises(TaskChangedError, match=r"changed since validation: sha256 is [0-9a-f]{64}, the validated one was") as err:
        verify_dataset(store, "parity", digest)
    assert err.value.file == "manifest.json"

    # a listed file gone, or the same size recorded wrongly
    make_task(store, overwrite=True)
    digest = manifest_digest(store, "parity")
    store.delete(f"tasks/parity/{rel}")
    with pytest.raises(TaskChangedError, match=r"changed since validation: listed in the manifest but missing") as err:
        verify_dataset(store, "parity", digest)
    assert err.value.file == rel
    assert pickle.loads(pickle.dumps(err.value)).file == rel and type(pickle.loads(pickle.dumps(err.value))) is TaskChangedError


def test_verify_dataset_checks_sizes(store: Store) -> None:
    make_task(store)
    edit_manifest(store, "parity", lambda m: m["files"]["eval/part-00000.parquet"].update(bytes=3))
    digest = manifest_digest(store, "parity")
    with pytest.raises(TaskChangedError, match=r"size mismatch: the manifest says 3 bytes") as err:
        verify_dataset(store, "parity", digest)
    assert err.value.file == "eval/part-00000.parquet"


def test_image_answers_are_checked_only_for_text_answer_tasks(store: Store) -> None:
    make_task(store)
    assert read_task(store, "parity", image_token_ranges=[[0, 1]]).eval.num_rows == 2  # ranges alone: well-formed only
    with pytest.raises(ValueError, match="text_answers needs image_token_ranges"):
        read_task(store, "parity", text_answers=True)
