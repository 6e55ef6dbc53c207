"""MoDE-official jsonl importer: good and bad lines, read back through the validating reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pytest

from cl_platform.data import list_ready_tasks, read_stream, read_task
from cl_platform.models.modality import ANOLE
from cl_platform.store import Store
from cl_platform.suites.mode_official import (
    LineSkipped,
    eval_score,
    import_mode_official,
    import_task_file,
    main,
    name_from_path,
    parse_stream_line,
    parse_task_line,
)

SEP, BOI, EOI = ANOLE.sep_id, ANOLE.boi_id, ANOLE.eoi_id
MAX_LEN = 12


def good_line(i: int) -> list[int]:
    """A valid task line: image-ish prompt, separator, a short text answer."""
    return [BOI, 4 + i % 100, 5 + i % 7, EOI, 100 + i, SEP, 200 + i % 13, 300 + i]


# (line content, skip reason or None). Line numbers are positions in this list + 1.
TASK_LINES: list[tuple[str, str | None]] = [
    (json.dumps({"tokens": good_line(0)}), None),
    ('{"tokens": [1, 2, ', "bad_json"),
    (json.dumps({"tokens": [1, 2, 3]}), "no_separator"),
    (json.dumps({"tokens": [1, 70000, SEP, 5]}), "id_out_of_range"),
    (json.dumps({"tokens": list(range(10, 10 + MAX_LEN)) + [SEP, 1]}), "too_long"),
    (json.dumps({"tokens": [1, 2, SEP]}), "empty_answer"),
    ("", None),  # blank: ignored, not reported
    (json.dumps({"toks": [1, SEP, 2]}), "bad_record"),
    (json.dumps({"tokens": [1.5, SEP, 2]}), "bad_record"),
    (json.dumps({"tokens": []}), "empty"),
    (json.dumps({"tokens": [1, -4, SEP, 2]}), "id_out_of_range"),
    (json.dumps({"tokens": [1, True, SEP, 2]}), "bad_record"),
    (json.dumps([1, SEP, 2]), "bad_record"),
    (json.dumps({"tokens": [7, SEP, 8, SEP, 9]}), None),  # answer starts after the FIRST separator
    (json.dumps({"tokens": [1, 2**70, SEP, 2]}), "id_out_of_range"),
    ("\xff not json", "bad_json"),
] + [(json.dumps({"tokens": good_line(i)}), None) for i in range(1, 80)]

STREAM_LINES: list[tuple[str, str | None]] = [
    (json.dumps({"image_tokens": [4, 5, 8195]}), None),
    (json.dumps({"image_tokens": [BOI, 10, 11, EOI]}), None),  # already wrapped: kept as is
    ("{oops", "bad_json"),
    (json.dumps({"image_tokens": [4, EOI, 5]}), "id_out_of_range"),
    (json.dumps({"image_tokens": [9000, 4]}), "id_out_of_range"),
    (json.dumps({"image_tokens": []}), "empty"),
    (json.dumps({"image_tokens": list(range(4, 4 + MAX_LEN))}), "too_long"),
    (json.dumps({"tokens": [4, 5]}), "bad_record"),
    (json.dumps({"image_tokens": [BOI, EOI]}), "empty"),
    (json.dumps({"image_tokens": list(range(100, 100 + MAX_LEN - 2))}), None),
]


def write_jsonl(path, lines: list[tuple[str, str | None]]) -> None:
    with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
        for text, _ in lines:
            f.write(text + "\n")


def expected_skips(lines: list[tuple[str, str | None]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for number, (_, reason) in enumerate(lines, start=1):
        if reason:
            out.setdefault(reason, []).append(number)
    return out


@pytest.fixture
def mode_dir(tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_jsonl(tasks / "Science QA.jsonl", TASK_LINES)
    write_jsonl(tasks / "tiny.jsonl", [(json.dumps({"tokens": [1, SEP, 2]}), None), (json.dumps({"tokens": [3, SEP, 4]}), None)])
    write_jsonl(tasks / "only_one.jsonl", [(json.dumps({"tokens": [1, SEP, 2]}), None), ("bad", "bad_json")])
    (tasks / "notes.txt").write_text("not a task")
    stream = tmp_path / "gen_images.jsonl"
    write_jsonl(stream, STREAM_LINES)
    return tasks, stream


def test_import_reads_back_through_the_validating_reader(store: Store, mode_dir) -> None:
    tasks_dir, stream_file = mode_dir
    report = import_mode_official(store, tasks_dir=tasks_dir, stream_file=stream_file, max_len=MAX_LEN, rows_per_file=16)

    # --- the main task
    sq = report.source("science_qa")
    assert sq.ok, sq.error
    good = [json.loads(t)["tokens"] for t, r in TASK_LINES if r is None and t]
    assert sq.lines == len(TASK_LINES) - 1 and sq.blank_lines == 1
    assert sq.rows["train"] + sq.rows["eval"] == len(good)
    expected = expected_skips(TASK_LINES)
    assert {r: sq.skipped_lines(r) for r in expected} == expected
    assert sq.skipped_counts == {r: len(v) for r, v in expected.items()}
    assert sq.num_skipped == sum(len(v) for v in expected.values())
    assert "line" in sq.summary() and "bad_json 2 (lines 2, 16)" in sq.summary()

    task = read_task(store, "science_qa", vocab_size=65536, image_token_ranges=ANOLE.image_token_ranges)
    assert task.spec_id == "anole"
    assert task.manifest["meta"]["source"] == "Science QA.jsonl"
    assert task.manifest["meta"]["skipped"] == sq.skipped_counts
    assert task.train.num_rows == sq.rows["train"] and task.eval.num_rows == sq.rows["eval"]
    assert len(task.files["train"]) == -(-task.train.num_rows // 16)

    # Eval split: exactly the rows whose content hash falls under 5%.
    in_eval = {tuple(t) for t in good if eval_score(pa.array(t).to_numpy()) < 0.05}
    assert 1 <= len(in_eval) < len(good)
    eval_rows = {tuple(p + a) for p, a in zip(task.eval.column("prompt_tokens").to_pylist(), task.eval.column("answer_tokens").to_pylist())}
    train_rows = {tuple(t) for t in task.train.column("tokens").to_pylist()}
    assert eval_rows == in_eval
    assert train_rows == {tuple(t) for t in good} - in_eval

    # Train rows: loss starts right after the first separator; eval prompts end with it.
    for tokens, start in zip(task.train.column("tokens").to_pylist(), task.train.column("answer_start").to_pylist()):
        assert tokens[start - 1] == SEP and SEP not in tokens[: start - 1]
    assert [7, SEP, 8, SEP, 9] in task.train.column("tokens").to_pylist() or (7, SEP, 8, SEP, 9) in eval_rows
    for prompt, answer in zip(task.eval.column("prompt_tokens").to_pylist(), task.eval.column("answer_tokens").to_pylist()):
        assert prompt[-1] == SEP and SEP not in prompt[:-1] and answer

    # --- a two-line task still gets one row on each side
    tiny = read_task(store, "tiny", vocab_size=65536)
    assert tiny.train.num_rows == 1 and tiny.eval.num_rows == 1

    # --- too few valid lines: reported, nothing written
    one = report.source("only_one")
    assert not one.ok and "at least 2 valid lines" in one.error and one.skipped_lines("bad_json") == [2]
    assert not store.exists("tasks/only_one")
    assert not report.ok
    assert list_ready_tasks(store) == ["science_qa", "tiny"]

    # --- the stream
    st = report.source("gen_images")
    assert st.ok and st.kind == "stream"
    assert {r: st.skipped_lines(r) for r in expected_skips(STREAM_LINES)} == expected_skips(STREAM_LINES)
    stream = read_stream(store, "gen_images", vocab_size=65536, image_token_ranges=ANOLE.image_token_ranges)
    assert stream.data.column("tokens").to_pylist() == [
        [BOI, 4, 5, 8195, EOI],
        [BOI, 10, 11, EOI],
        [BOI, *range(100, 100 + MAX_LEN - 2), EOI],
    ]
    assert stream.data.column_names == ["tokens"]
    assert stream.manifest["meta"]["layout"].startswith("prompt-free")


def test_eval_split_is_deterministic_and_order_independent(tmp_path) -> None:
    lines = [(json.dumps({"tokens": good_line(i)}), None) for i in range(200)]
    write_jsonl(tmp_path / "a.jsonl", lines)
    write_jsonl(tmp_path / "b.jsonl", list(reversed(lines)))
    s1, s2 = Store(str(tmp_path / "s1")), Store(str(tmp_path / "s2"))
    import_task_file(s1, tmp_path / "a.jsonl", name="t")
    import_task_file(s2, tmp_path / "a.jsonl", name="t")
    import_task_file(s2, tmp_path / "b.jsonl", name="rev")
    t1, t2, rev = (read_task(s1, "t"), read_task(s2, "t"), read_task(s2, "rev"))
    assert t1.eval.equals(t2.eval) and t1.train.equals(t2.train)
    assert sorted(rev.eval.column("answer_tokens").to_pylist()) == sorted(t1.eval.column("answer_tokens").to_pylist())
    assert 3 <= t1.eval.num_rows <= 20  # ~5% of 200
    # A larger fraction holds out more.
    import_task_file(s1, tmp_path / "a.jsonl", name="t30", eval_fraction=0.3)
    assert read_task(s1, "t30").eval.num_rows > t1.eval.num_rows


def test_existing_task_is_not_overwritten_without_flag(tmp_path, mode_dir) -> None:
    tasks_dir, _ = mode_dir
    store = Store(str(tmp_path / "s"))
    assert import_task_file(store, tasks_dir / "tiny.jsonl").ok
    again = import_task_file(store, tasks_dir / "tiny.jsonl")
    assert not again.ok and "already exists" in again.error
    assert import_task_file(store, tasks_dir / "tiny.jsonl", overwrite=True).ok


def test_names_from_file_names(tmp_path) -> None:
    assert name_from_path("/x/ScienceQA.jsonl") == "scienceqa"
    assert name_from_path("Text VQA (v2).jsonl") == "text_vqa_v2_"
    assert name_from_path("__imagenet-1k.jsonl") == "imagenet-1k"
    assert len(name_from_path("a" * 100 + ".jsonl")) == 64
    with pytest.raises(ValueError, match="invalid name"):
        name_from_path("___.jsonl")
    # Clashing and unusable names are reported per file; the rest is imported.
    d = tmp_path / "t"
    d.mkdir()
    two = [(json.dumps({"tokens": [1, SEP, 2]}), None), (json.dumps({"tokens": [3, SEP, 4]}), None)]
    for f in ["GQA.jsonl", "gqa.jsonl", "___.jsonl"]:
        write_jsonl(d / f, two)
    report = import_mode_official(Store(str(tmp_path / "s")), tasks_dir=d)
    errors = {os.path.basename(s.source): s.error for s in report.sources}
    assert errors["GQA.jsonl"] is None
    assert "already taken" in errors["gqa.jsonl"]
    assert "invalid name" in errors["___.jsonl"]


def test_line_parsers_directly() -> None:
    tokens, sep = parse_task_line(json.dumps({"tokens": [5, SEP, 6, SEP]}).encode())
    assert tokens.tolist() == [5, SEP, 6, SEP] and sep == 1
    with pytest.raises(LineSkipped) as err:
        parse_task_line(b'{"tokens": [5, 6]}')
    assert err.value.reason == "no_separator" and isinstance(err.value, ValueError)
    assert parse_stream_line(b'{"image_tokens": [0, 1]}', image_code_offset=4).tolist() == [BOI, 4, 5, EOI]


def test_cli(tmp_path, mode_dir, capsys) -> None:
    tasks_dir, stream_file = mode_dir
    url = f"file://{tmp_path}/cli-store"
    code = main(["--tasks", str(tasks_dir), "--stream", str(stream_file), "--store", url, "--max-len", str(MAX_LEN), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1  # only_one.jsonl could not be imported
    assert {s["name"]: s["error"] is None for s in out["sources"]} == {
        "only_one": False, "science_qa": True, "tiny": True, "gen_images": True
    }
    with pytest.raises(SystemExit):
        main(["--store", url])
    with pytest.raises(SystemExit):
        main(["--tasks", str(tasks_dir), "--eval-fraction", "1.5"])


def test_module_entry_point(tmp_path, mode_dir) -> None:
    tasks_dir, stream_file = mode_dir
    (tasks_dir / "only_one.jsonl").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "cl_platform.suites.mode_official", "--tasks", str(tasks_dir), "--stream", str(stream_file),
         "--store", str(tmp_path / "m"), "--eval-fraction", "0.1"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "task 'science_qa'" in proc.stdout and "stream 'gen_images'" in proc.stdout
    assert "bad_json 2 (lines 2, 16)" in proc.stdout
    assert list_ready_tasks(Store(str(tmp_path / "m"))) == ["science_qa", "tiny"]


@pytest.mark.parametrize("fraction", [0.0, 0.999999])
def test_both_splits_non_empty_at_extreme_fractions(tmp_path, fraction: float) -> None:
    write_jsonl(tmp_path / "x.jsonl", [(json.dumps({"tokens": good_line(i)}), None) for i in range(5)])
    store = Store(str(tmp_path / "s"))
    report = import_task_file(store, tmp_path / "x.jsonl", eval_fraction=fraction)
    assert report.ok
    task = read_task(store, "x")
    assert task.train.num_rows >= 1 and task.eval.num_rows >= 1
    assert task.train.num_rows + task.eval.num_rows == 5
    assert (task.eval.num_rows == 1) if fraction == 0.0 else (task.train.num_rows == 1)
